//! A throwaway PgBouncer (Debian's `pgbouncer`) in front of a test cluster.
//!
//! Runs as the `postgres` user when the tests run as root (PgBouncer refuses
//! root), daemonized with a pid file; stopped when dropped, and by a
//! watchdog when the test binary exits without dropping it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{chown_postgres, free_port, running_as_root};

/// A running PgBouncer owned by this process.
#[derive(Debug)]
pub struct PgBouncer {
    dir: PathBuf,
    /// The port PgBouncer listens on (127.0.0.1).
    pub port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer (the executable `bin`, an absolute path from
    /// [`require_tool`](super::require_tool)) in `pool_mode` (`transaction`
    /// or `session`) in front of the server on 127.0.0.1:`pg_port`.
    pub fn start(bin: &Path, pg_port: u16, pool_mode: &str) -> PgBouncer {
        let dir = std::env::temp_dir().join(format!(
            "pglock-pgbouncer-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create pgbouncer dir");
        let port = free_port();
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        let pid = dir.join("pgbouncer.pid");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        // sqlx sends extra_float_digits (and options / application_name when
        // set) as startup parameters, which PgBouncer must be told to ignore.
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
                 pool_mode = {pool_mode}\nmax_client_conn = 200\n\
                 default_pool_size = 20\n\
                 ignore_startup_parameters = extra_float_digits,options,application_name\n\
                 logfile = {log}\npidfile = {pid}\n",
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
                pid = pid.display(),
            ),
        )
        .unwrap();
        let as_postgres = running_as_root();
        if as_postgres {
            for p in [&dir, &ini, &users] {
                chown_postgres(p);
            }
        }
        let bouncer = PgBouncer { dir, port };
        bouncer.watchdog();
        let mut cmd = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let out = cmd
            .arg("-d")
            .arg(&ini)
            .stdin(Stdio::null())
            .output()
            .expect("run pgbouncer");
        assert!(
            out.status.success(),
            "pgbouncer failed to start: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            bouncer.log()
        );
        // Listening once a TCP connect succeeds.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer not listening: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// A connection URL through PgBouncer.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pgbouncer.pid")
    }

    /// Stops PgBouncer once this process exits, if `Drop` did not.
    // The watchdog outlives this process by design; nobody waits for it.
    #[allow(clippy::zombie_processes)]
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; \
             [ -f '{pid}' ] && kill $(cat '{pid}') 2>/dev/null; sleep 1; rm -rf '{dir}'",
            parent = std::process::id(),
            pid = self.pid_file().display(),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pgbouncer watchdog");
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill")
                .arg(pid.trim())
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
