//! A TCP proxy between pglock and PostgreSQL that can blackhole traffic
//! (a network cut: sockets stay open, nothing passes) or reset every
//! connection. Loopback only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast};

pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    healed: Arc<Notify>,
    reset: broadcast::Sender<()>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let healed = Arc::new(Notify::new());
        let (reset, _) = broadcast::channel(4);
        let (c, h, r) = (cut.clone(), healed.clone(), reset.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (c, h, mut rx) = (c.clone(), h.clone(), r.subscribe());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, c.clone(), h.clone()) => {}
                        _ = pipe(sr, cw, c, h) => {}
                        _ = rx.recv() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cut,
            healed,
            reset,
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Blackholes every connection, open or new: bytes stop flowing.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Lets bytes flow again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.healed.notify_waiters();
    }

    /// Closes every open connection.
    pub fn reset(&self) {
        let _ = self.reset.send(());
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    healed: Arc<Notify>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while cut.load(Ordering::SeqCst) {
            let wait = healed.notified();
            if !cut.load(Ordering::SeqCst) {
                break;
            }
            wait.await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as the cut started are held back until it heals.
        while cut.load(Ordering::SeqCst) {
            let wait = healed.notified();
            if !cut.load(Ordering::SeqCst) {
                break;
            }
            wait.await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
