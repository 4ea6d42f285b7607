//! A throwaway PostgreSQL for tests, examples and benchmarks.
//!
//! With `DATABASE_URL` set, that server is used. Otherwise a private cluster
//! is created in a temporary directory from the installed server binaries
//! (`PGLOCK_PG_BIN`, then `PATH`, then `/usr/lib/postgresql/*/bin`), started
//! with `fsync=off` on a unix socket (and a free loopback port when asked),
//! and removed when the process that started it exits, even if it panics.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running PostgreSQL cluster owned by this process.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// Loopback TCP port, when the cluster listens on TCP.
    pub port: Option<u16>,
    as_postgres: bool,
}

impl Cluster {
    /// Starts a new cluster that listens on a unix socket only.
    pub fn start() -> Cluster {
        Self::start_with(false)
    }

    /// Starts a new cluster that also listens on a free 127.0.0.1 port.
    pub fn start_tcp() -> Cluster {
        Self::start_with(true)
    }

    fn start_with(tcp: bool) -> Cluster {
        let bin = find_bin();
        let as_postgres = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "pglock-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        if as_postgres {
            chown_postgres(&dir);
        }
        let port = tcp.then(free_port);
        let cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
        };
        cluster.watchdog();
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data().to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        std::fs::write(
            cluster.data().join("postgresql.auto.conf"),
            cluster.config(),
        )
        .expect("write postgresql.auto.conf");
        cluster.ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    fn config(&self) -> String {
        let listen = if self.port.is_some() { "127.0.0.1" } else { "" };
        format!(
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             listen_addresses = '{listen}'\nport = {port}\n\
             unix_socket_directories = '{sock}'\nmax_connections = 300\n\
             shared_buffers = 128MB\nlog_min_messages = fatal\n",
            port = self.port.unwrap_or(5432),
            sock = self.dir.display(),
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A connection URL over the unix socket.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}&port={}",
            self.dir.display(),
            self.port.unwrap_or(5432)
        )
    }

    /// A connection URL over loopback TCP (only for [`Cluster::start_tcp`]).
    pub fn tcp_url(&self) -> String {
        let port = self.port.expect("cluster started without TCP");
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    /// `pg_ctl restart` with the given shutdown mode (`fast`, `immediate`).
    pub fn restart(&self, mode: &str) {
        self.ctl(&["restart", "-w", "-t", "60", "-m", mode]);
    }

    /// Stops the cluster (it is also stopped when the process exits).
    pub fn stop(&self) {
        self.ctl(&["stop", "-w", "-m", "immediate"]);
    }

    /// Starts a stopped cluster again, on the same port.
    pub fn start_again(&self) {
        self.ctl(&["start", "-w", "-t", "60"]);
    }

    fn ctl(&self, args: &[&str]) {
        let log = self.dir.join("server.log");
        let data = self.data();
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "{program} {args:?} failed: {}\n{}\n{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Stops the server and deletes the directory once this process exits.
    // The watchdog outlives this process by design; nobody waits for it.
    #[allow(clippy::zombie_processes)]
    fn watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let stop = if self.as_postgres {
            format!(
                "runuser -u postgres -- {} -D {} stop -m immediate",
                pg_ctl.display(),
                data.display()
            )
        } else {
            format!(
                "{} -D {} stop -m immediate",
                pg_ctl.display(),
                data.display()
            )
        };
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            parent = std::process::id(),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cluster watchdog");
    }
}

/// The URL of the server to use: `DATABASE_URL`, or a cluster started once per
/// process (and kept for the process's lifetime).
pub fn shared_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let cluster = Box::leak(Box::new(Cluster::start()));
            cluster.url()
        }
    })
    .clone()
}

fn find_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PGLOCK_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return dir;
        }
        panic!("PGLOCK_PG_BIN={} holds no initdb", dir.display());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    let mut candidates: Vec<PathBuf> = on_path
        .filter(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .map(|d| {
            std::fs::canonicalize(d.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(d)
        })
        .collect();
    let mut debian: Vec<PathBuf> = debian.filter(|d| d.join("initdb").exists()).collect();
    debian.sort();
    candidates.extend(debian.into_iter().rev());
    candidates.into_iter().next().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries found (initdb, pg_ctl). Install them \
             (Debian/Ubuntu: `apt-get install -y postgresql`), point PGLOCK_PG_BIN at \
             their directory, or set DATABASE_URL to a running server, e.g. \
             `docker run -d -p 5432:5432 -e POSTGRES_PASSWORD=pw postgres:17` and \
             DATABASE_URL=postgres://postgres:pw@127.0.0.1:5432/postgres"
        )
    })
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn chown_postgres(dir: &Path) {
    let ok = Command::new("chown")
        .args(["postgres:postgres", dir.to_str().unwrap()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "cannot chown {} to postgres (is there a postgres user?)",
        dir.display()
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
