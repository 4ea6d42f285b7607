//! A throwaway highly available PostgreSQL: one etcd member, two Patroni
//! nodes (PostgreSQL 15) and HAProxy routing to whichever node answers
//! Patroni's `GET /primary` with 200, as an application would reach it.
//!
//! Everything lives in one temp dir on free loopback ports. When the tests
//! run as root, every process runs as the `postgres` user (set in the child
//! itself, so the pid we keep is the program's own, not a `runuser`'s). Each
//! Patroni talks to etcd through its own in-test TCP proxy ([`Proxy`]), so a
//! test can cut one node off from the DCS while the other and the clients
//! still reach everything: a real partition of the primary from etcd.
//!
//! Only processes this harness started are ever signalled, by pid: etcd,
//! HAProxy, the Patroni daemons, and the postmasters those Patroni daemons
//! started (read from each data dir's `postmaster.pid`, and only while the
//! process is a `postgres` whose data dir is ours). `Drop` kills them; a
//! watchdog does it if the test binary exits without dropping.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{chown_postgres, free_port, running_as_root};
use crate::support::proxy::Proxy;

/// DCS timings. Patroni's rule: `loop_wait + 2 * retry_timeout <= ttl`.
/// With ttl 10 a primary cut off from etcd demotes itself after
/// `retry_timeout` (4 s), well before its leader key expires (10 s), so two
/// primaries never both pass `GET /primary`.
pub const TTL_SECS: u64 = 10;
pub const LOOP_WAIT_SECS: u64 = 1;
pub const RETRY_TIMEOUT_SECS: u64 = 4;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Tools the harness needs: (program, Debian package).
const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/etcd", "etcd-server"),
    ("/usr/bin/patroni", "patroni"),
    ("/usr/bin/patronictl", "patroni"),
    ("/usr/sbin/haproxy", "haproxy"),
];

/// Whether every tool is installed. Prints `SKIPPED <what>: <tool> not
/// installed (apt-get install ...)` and returns false when one is missing;
/// panics instead when `PGLOCK_REQUIRE_TOOLS=1` or `CI=true`, since CI must
/// never skip.
pub fn tools_present(what: &str) -> bool {
    let mut tools: Vec<(String, &str)> =
        TOOLS.iter().map(|(p, pkg)| (p.to_string(), *pkg)).collect();
    tools.push((format!("{PG_BIN}/postgres"), "postgresql-15"));
    let hidden = std::env::var("PGLOCK_TEST_HIDE_TOOLS").unwrap_or_default();
    let is_hidden = |path: &str| {
        let tool = Path::new(path).file_name().and_then(|n| n.to_str());
        hidden.split(',').any(|h| Some(h.trim()) == tool)
    };
    for (path, pkg) in tools {
        if !Path::new(&path).exists() || is_hidden(&path) {
            let msg = format!("SKIPPED {what}: {path} not installed (apt-get install {pkg})");
            let required = std::env::var("PGLOCK_REQUIRE_TOOLS").as_deref() == Ok("1")
                || std::env::var("CI").as_deref() == Ok("true");
            if required {
                panic!("{msg}; PGLOCK_REQUIRE_TOOLS=1 or CI=true forbids skipping");
            }
            // Past the test harness's capture, so that it shows in a plain run.
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "{msg}");
            return false;
        }
    }
    true
}

/// One Patroni node and the PostgreSQL it manages.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub rest_port: u16,
    data: PathBuf,
    config: PathBuf,
    patroni: Option<Child>,
}

impl Node {
    /// A URL straight to this node's PostgreSQL, bypassing HAProxy.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    /// The pid of the postmaster Patroni started, if it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        // Only a live postgres whose data dir is ours (pid files go stale).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("postgres") && cmdline.contains(self.data.to_str()?)).then_some(pid)
    }

    /// Patroni's answer (HTTP status) to `GET path` on its REST API; 0 if
    /// it does not answer.
    pub fn rest(&self, path: &str) -> u16 {
        http_get(self.rest_port, path).map(|(s, _)| s).unwrap_or(0)
    }
}

/// A running HA cluster owned by this process.
pub struct Ha {
    dir: PathBuf,
    pub nodes: Vec<Node>,
    /// HAProxy's port: the address applications use.
    pub port: u16,
    etcd_port: u16,
    /// Node i's link to etcd; cut it to partition node i from the DCS.
    etcd_links: Vec<Proxy>,
    etcd: Option<Child>,
    haproxy: Option<Child>,
    pub synchronous: bool,
    ids: Option<(u32, u32)>,
}

impl Ha {
    /// Starts etcd, two Patroni nodes (node 0 bootstraps, node 1 clones it)
    /// and HAProxy; returns once the primary answers through HAProxy and, in
    /// synchronous mode, node 1 is the synchronous standby. `synchronous`
    /// sets Patroni's `synchronous_mode`.
    pub async fn start(synchronous: bool) -> Ha {
        let dir = std::env::temp_dir().join(format!(
            "pglock-ha-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create HA dir");
        let ids = running_as_root().then(postgres_ids);
        if ids.is_some() {
            chown_postgres(&dir);
        }
        let etcd_port = free_port();
        let mut ha = Ha {
            dir,
            nodes: Vec::new(),
            port: free_port(),
            etcd_port,
            etcd_links: Vec::new(),
            etcd: None,
            haproxy: None,
            synchronous,
            ids,
        };
        ha.watchdog();
        ha.start_etcd().await;
        for i in 0..2 {
            let link = Proxy::start(etcd_port).await;
            let node = ha.write_node(i, link.port);
            ha.etcd_links.push(link);
            ha.nodes.push(node);
        }
        ha.start_patroni(0);
        ha.wait_for(
            Duration::from_secs(90),
            "node 0 bootstraps as primary",
            |ha| ha.nodes[0].rest("/primary") == 200,
        )
        .await;
        ha.start_patroni(1);
        ha.start_haproxy();
        ha.wait_healthy(Duration::from_secs(120)).await;
        ha
    }

    /// The URL applications use: through HAProxy, to the primary.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The index of the node that answers `GET /primary` with 200, if
    /// exactly one does.
    pub fn primary(&self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].rest("/primary") == 200)
            .collect();
        (up.len() == 1).then(|| up[0])
    }

    /// Waits until one node is primary, the other a (synchronous, in
    /// synchronous mode) replica, and a query through HAProxy reaches a
    /// server that is not in recovery. Returns the primary's index.
    pub async fn wait_healthy(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let standby_check = if self.synchronous {
            "/sync"
        } else {
            "/replica"
        };
        loop {
            if let Some(p) = self.primary() {
                let other = 1 - p;
                if self.nodes[other].rest(standby_check) == 200 && self.writable_via_haproxy().await
                {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "HA cluster not healthy within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until some node is primary and HAProxy leads to a writable
    /// server (the other node may still be down). Returns the primary.
    pub async fn wait_primary(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.primary()
                && self.writable_via_haproxy().await
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no primary within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn writable_via_haproxy(&self) -> bool {
        use sqlx::Connection;
        let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::PgConnection::connect(&self.url()),
        )
        .await
        else {
            return false;
        };
        let ro: Result<bool, _> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await;
        let _ = conn.close().await;
        matches!(ro, Ok(false))
    }

    /// Fault: SIGKILL node `i`'s Patroni, its postmaster and every backend
    /// (a machine that died). Returns when they are gone.
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let postmaster = node.postmaster_pid();
        if let Some(mut p) = node.patroni.take() {
            let _ = p.kill();
            let _ = p.wait();
            forget_pid(&self.dir, p.id());
        }
        if let Some(pm) = postmaster {
            let children = children_of(pm);
            signal(pm, "-KILL");
            for c in children {
                signal(c, "-KILL");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.nodes[i].postmaster_pid().is_some() {
            assert!(
                Instant::now() < deadline,
                "postmaster of node {i} survives SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the machine of killed node `i`: an empty data dir and its
    /// Patroni again, which clones the new primary and rejoins as a replica.
    /// (A SIGKILLed primary may hold WAL the synchronous standby never
    /// confirmed: written, not acknowledged. Patroni 3.0 does not rewind a
    /// crashed data dir on its own; replication then stops with "requested
    /// starting point ... is not in this server's history".)
    pub fn replace_node(&mut self, i: usize) {
        assert!(self.nodes[i].patroni.is_none(), "node {i} runs");
        assert!(
            self.nodes[i].postmaster_pid().is_none(),
            "node {i}'s postmaster runs"
        );
        std::fs::remove_dir_all(&self.nodes[i].data).expect("remove the killed node's data dir");
        self.start_patroni(i);
    }

    /// Fault: `patronictl switchover --force` from the current primary to
    /// the other node.
    pub fn switchover(&self) {
        let from = self.primary().expect("a primary to switch over from");
        let to = 1 - from;
        let out = self
            .command("/usr/bin/patronictl")
            .arg("-c")
            .arg(&self.nodes[from].config)
            .args([
                "switchover",
                "--force",
                "--leader",
                &self.nodes[from].name,
                "--candidate",
                &self.nodes[to].name,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run patronictl");
        assert!(
            out.status.success(),
            "patronictl switchover failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fault: node `i` can no longer reach etcd (its connections stall,
    /// new ones get nowhere); clients still reach it.
    pub fn cut_from_etcd(&self, i: usize) {
        self.etcd_links[i].cut();
        self.etcd_links[i].reset();
    }

    /// Ends [`Ha::cut_from_etcd`].
    pub fn heal_etcd(&self, i: usize) {
        self.etcd_links[i].heal();
    }

    /// Patroni's and PostgreSQL's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "{}: /primary {} /replica {} /sync {}\n",
                n.name,
                n.rest("/primary"),
                n.rest("/replica"),
                n.rest("/sync")
            ));
        }
        if let Some(n) = self.nodes.first()
            && let Ok(o) = self
                .command("/usr/bin/patronictl")
                .arg("-c")
                .arg(&n.config)
                .arg("list")
                .output()
        {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        for node in &self.nodes {
            let log = std::fs::read_to_string(self.dir.join(format!("{}.log", node.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} (last 30 lines)\n", node.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir);
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid).env("HOME", &self.dir);
        }
        cmd
    }

    fn spawn(&self, mut cmd: Command, log: &str) -> Child {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn HA process");
        // The watchdog kills what is listed here if we never drop.
        let mut pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pids"))
            .unwrap();
        writeln!(pids, "{}", child.id()).unwrap();
        child
    }

    async fn start_etcd(&mut self) {
        let peer = free_port();
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{peer}");
        let mut cmd = self.command("/usr/bin/etcd");
        cmd.args(["--name", "e0", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e0={peer}")])
            .args(["--log-level", "warn"]);
        self.etcd = Some(self.spawn(cmd, "etcd.log"));
        let port = self.etcd_port;
        self.wait_for(Duration::from_secs(30), "etcd answers", |_| {
            http_get(port, "/health").is_some_and(|(s, _)| s == 200)
        })
        .await;
    }

    fn write_node(&self, i: usize, etcd_port: u16) -> Node {
        let name = format!("n{i}");
        let pg_port = free_port();
        let rest_port = free_port();
        let data = self.dir.join(format!("{name}-data"));
        let config = self.dir.join(format!("{name}.yml"));
        let dir = self.dir.display();
        let yaml = format!(
            "scope: pglock-ha\nname: {name}\n\
             restapi:\n  listen: 127.0.0.1:{rest_port}\n  connect_address: 127.0.0.1:{rest_port}\n\
             etcd3:\n  hosts: 127.0.0.1:{etcd_port}\n  use_proxies: true\n\
             bootstrap:\n  dcs:\n    ttl: {TTL_SECS}\n    loop_wait: {LOOP_WAIT_SECS}\n    retry_timeout: {RETRY_TIMEOUT_SECS}\n\
             \x20   maximum_lag_on_failover: 1048576\n    synchronous_mode: {sync}\n\
             \x20   postgresql:\n      use_pg_rewind: true\n      use_slots: true\n\
             \x20     parameters:\n        wal_log_hints: 'on'\n        max_connections: 300\n\
             \x20       fsync: 'off'\n        full_page_writes: 'off'\n\
             \x20 initdb:\n    - encoding: UTF8\n    - locale: C\n\
             \x20 pg_hba:\n    - local all all trust\n    - host all all 127.0.0.1/32 trust\n\
             \x20   - host replication all 127.0.0.1/32 trust\n\
             postgresql:\n  listen: 127.0.0.1:{pg_port}\n  connect_address: 127.0.0.1:{pg_port}\n\
             \x20 data_dir: {data}\n  bin_dir: {PG_BIN}\n  remove_data_directory_on_rewind_failure: true\n\
             \x20 remove_data_directory_on_diverged_timelines: true\n  pgpass: {dir}/{name}.pgpass\n\
             \x20 authentication:\n    superuser:\n      username: postgres\n\
             \x20   replication:\n      username: postgres\n    rewind:\n      username: postgres\n\
             \x20 parameters:\n    unix_socket_directories: '{dir}'\n\
             \x20   log_min_messages: warning\n\
             log:\n  level: INFO\n",
            sync = self.synchronous,
            data = data.display(),
        );
        std::fs::write(&config, yaml).unwrap();
        if self.ids.is_some() {
            chown_postgres(&config);
        }
        Node {
            name,
            pg_port,
            rest_port,
            data,
            config,
            patroni: None,
        }
    }

    fn start_patroni(&mut self, i: usize) {
        let mut cmd = self.command("/usr/bin/patroni");
        cmd.arg(&self.nodes[i].config);
        let child = self.spawn(cmd, &format!("{}.log", self.nodes[i].name));
        self.nodes[i].patroni = Some(child);
    }

    fn start_haproxy(&mut self) {
        let mut servers = String::new();
        for n in &self.nodes {
            servers.push_str(&format!(
                "  server {} 127.0.0.1:{} check port {}\n",
                n.name, n.pg_port, n.rest_port
            ));
        }
        // Check each node's Patroni every 500 ms; a node that stops being
        // primary is marked down after one failed check and its sessions
        // are shut, so clients reconnect (to the new primary).
        let cfg = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30m\n\
             \x20 timeout server 30m\n  timeout check 1s\n\
             listen pg\n  bind 127.0.0.1:{port}\n  option httpchk GET /primary\n\
             \x20 http-check expect status 200\n\
             \x20 default-server inter 500ms fall 1 rise 1 on-marked-down shutdown-sessions\n{servers}",
            port = self.port
        );
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let mut cmd = self.command("/usr/sbin/haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        self.haproxy = Some(self.spawn(cmd, "haproxy.log"));
    }

    async fn wait_for(&self, within: Duration, what: &str, ok: impl Fn(&Ha) -> bool) {
        let deadline = Instant::now() + within;
        while !ok(self) {
            assert!(
                Instant::now() < deadline,
                "not within {within:?}: {what}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills everything listed in `pids` and every postmaster in our data
    /// dirs once this process exits, then deletes the dir.
    // The watchdog outlives this process by design; nobody waits for it.
    #[allow(clippy::zombie_processes)]
    fn watchdog(&self) {
        let dir = self.dir.display();
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; \
             for p in $(cat '{dir}/pids' 2>/dev/null); do kill -9 $p 2>/dev/null; done; \
             for f in '{dir}'/n*-data/postmaster.pid; do [ -f \"$f\" ] && \
             grep -q \"$(dirname \"$f\")\" /proc/$(head -1 \"$f\")/cmdline 2>/dev/null && \
             kill -QUIT $(head -1 \"$f\") 2>/dev/null; done; sleep 1; \
             [ -e '{dir}/keep' ] || rm -rf '{dir}'",
            parent = std::process::id(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn HA watchdog");
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let postmaster = node.postmaster_pid();
            if let Some(mut p) = node.patroni.take() {
                let _ = p.kill();
                let _ = p.wait();
            }
            // SIGQUIT: immediate shutdown, the postmaster ends its backends.
            if let Some(pm) = postmaster {
                signal(pm, "-QUIT");
            }
        }
        for mut child in [self.haproxy.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.nodes.iter().any(|n| n.postmaster_pid().is_some()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if std::thread::panicking() && std::env::var_os("PGLOCK_HA_KEEP").is_some() {
            eprintln!("PGLOCK_HA_KEEP: HA dir kept at {}", self.dir.display());
            let _ = std::fs::write(self.dir.join("keep"), "");
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Takes a reaped child off the watchdog's list: its pid may be reused.
fn forget_pid(dir: &Path, pid: u32) {
    let path = dir.join("pids");
    let kept: String = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim() != pid.to_string())
        .map(|l| format!("{l}\n"))
        .collect();
    let _ = std::fs::write(&path, kept);
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user")
    };
    (id("-u"), id("-g"))
}

/// Sends `sig` (`-KILL`, `-STOP`, ...) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Direct children of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the ")" that ends the command name: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(child);
        }
    }
    out
}

/// `GET path` on 127.0.0.1:`port`: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, resp))
}
