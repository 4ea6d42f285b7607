//! The command pglock runs: starting it, passing signals on, stopping it
//! when the lock is lost, and turning its end into an exit code.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::str::FromStr;
use std::time::Duration;

use tokio::process::Command;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use crate::report::{EXIT_CANNOT_RUN, EXIT_NOT_FOUND, Failure, Ui};

/// A signal pglock passes on to its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    Hup,
    Int,
    Term,
}

impl Sig {
    /// The signal's number (the same on Linux and the BSDs).
    pub(crate) fn number(self) -> u8 {
        match self {
            Sig::Hup => 1,
            Sig::Int => 2,
            Sig::Term => 15,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Sig::Hup => "HUP",
            Sig::Int => "INT",
            Sig::Term => "TERM",
        }
    }

    /// The exit code of a process that ended by this signal: 128 + N.
    pub(crate) fn exit_code(self) -> u8 {
        128 + self.number()
    }
}

/// SIGHUP, SIGINT and SIGTERM, caught from the start so that pglock is
/// never killed by them while it holds something: it passes them on, or
/// stops waiting.
#[derive(Debug)]
pub(crate) struct Signals {
    hup: Signal,
    int: Signal,
    term: Signal,
}

impl Signals {
    pub(crate) fn catch() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal received.
    ///
    /// Cancel safe: a signal is never consumed by a dropped call.
    pub(crate) async fn recv(&mut self) -> Sig {
        loop {
            let got = tokio::select! {
                s = self.int.recv() => s.map(|()| Sig::Int),
                s = self.term.recv() => s.map(|()| Sig::Term),
                s = self.hup.recv() => s.map(|()| Sig::Hup),
            };
            match got {
                Some(sig) => return sig,
                // The runtime is shutting down: nothing more will arrive.
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// How the command ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Its status as an exit code: its own, or 128 + N when a signal ended it.
    pub(crate) code: u8,
    /// The lock was lost while it ran, and pglock stopped it.
    pub(crate) lost: bool,
    /// pglock passed it a signal it received.
    pub(crate) interrupted: Option<Sig>,
    /// The grace period ran out and pglock sent SIGKILL.
    pub(crate) killed: bool,
}

/// What the supervised command is told about its lock, and when.
pub(crate) struct Watch<L, R> {
    /// Resolves when the lock is lost: SIGTERM, then SIGKILL after `grace`.
    pub(crate) lost: L,
    /// Resolves when somebody asks for the lock: SIGTERM, once.
    pub(crate) release_requested: R,
    pub(crate) grace: Duration,
}

/// Starts `argv` with `env` added to pglock's environment and waits for it
/// to end, passing signals on and stopping it when `watch.lost` resolves.
///
/// Where pglock is not in the foreground of a terminal (services, CI,
/// background jobs), the command runs in a process group of its own and
/// every signal goes to that whole group, so that the helpers it started
/// stop with it. On a terminal, the command stays in pglock's foreground
/// group so that it can use the terminal; signals then go to the command
/// alone.
pub(crate) async fn run<L, R>(
    argv: &[String],
    env: &[(&str, String)],
    watch: Watch<L, R>,
    signals: &mut Signals,
    ui: Ui,
) -> Result<Finished, Failure>
where
    L: Future<Output = ()>,
    R: Future<Output = ()>,
{
    let (program, args) = argv.split_first().expect("clap requires a command");
    let own_group = !in_terminal_foreground();
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // A safety net: should pglock stop supervising early, the command
        // must not run on without the lock.
        .kill_on_drop(true);
    if own_group {
        command.process_group(0);
    }
    die_with_pglock(&mut command);
    let mut child = command.spawn().map_err(|e| not_started(program, &e))?;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    // kill(2) signals a process group given as a negative pid.
    let target = if own_group {
        format!("-{pid}")
    } else {
        pid.clone()
    };
    ui.detail(format_args!("started {program:?} (pid {pid})"));

    let mut lost = std::pin::pin!(watch.lost);
    let mut requested = std::pin::pin!(watch.release_requested);
    let mut finished = Finished {
        code: 0,
        lost: false,
        interrupted: None,
        killed: false,
    };
    let mut asked = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            biased;
            status = child.wait() => break status,
            sig = signals.recv() => {
                finished.interrupted = Some(sig);
                if sig == Sig::Int && !own_group {
                    ui.detail("SIGINT came from the terminal, which sent it to the command too");
                } else {
                    ui.detail(format_args!("passing SIG{} on to the command", sig.name()));
                    send(&target, sig.name(), ui).await;
                }
            }
            () = &mut lost, if !finished.lost => {
                finished.lost = true;
                ui.detail(format_args!(
                    "lock lost: SIGTERM to the command, SIGKILL in {}",
                    crate::duration::human(watch.grace)
                ));
                send(&target, "TERM", ui).await;
                kill_at = Some(Instant::now() + watch.grace);
            }
            () = &mut requested, if !asked && !finished.lost => {
                asked = true;
                ui.info("release requested: sending SIGTERM to the command");
                send(&target, "TERM", ui).await;
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)),
                if kill_at.is_some() && !finished.killed =>
            {
                finished.killed = true;
                ui.detail("grace period over: SIGKILL to the command");
                if !send(&target, "KILL", ui).await {
                    let _ = child.start_kill();
                }
            }
        }
    };
    let status = status.map_err(|e| {
        Failure::new(
            crate::report::EXIT_FAILURE,
            format!("cannot wait for {program:?}: {e}"),
        )
    })?;
    finished.code = exit_code(status);
    ui.detail(format_args!("{program:?} exited: {}", describe(status)));
    if finished.lost && own_group && !finished.killed {
        // The lock is gone: what the command started must stop too.
        let kill_at = kill_at.unwrap_or_else(Instant::now);
        while group_alive(&target).await {
            if Instant::now() >= kill_at {
                finished.killed = send(&target, "KILL", ui).await;
                break;
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
    }
    Ok(finished)
}

/// Makes the kernel SIGKILL the command when pglock dies, however it dies
/// (SIGKILL included, when pglock can tell nobody): the command must not run
/// on without the lock. Linux only (`PR_SET_PDEATHSIG`, kept across
/// `execve` of a binary that is not set-user-ID); elsewhere nothing is set
/// and a command outlives a SIGKILLed pglock until it ends by itself.
///
/// The death signal is tied to the thread that started the command; pglock
/// starts it from the runtime's main thread (`block_on`), which lives as
/// long as pglock.
#[cfg(target_os = "linux")]
// The one `unsafe` of the CLI: std and tokio offer no safe way to run code
// in the child between fork and exec, and the parent-death signal can only
// be set by the child itself. The closure calls only async-signal-safe
// system calls (prctl, getppid) and allocates nothing.
#[allow(unsafe_code)]
fn die_with_pglock(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec; it makes two
    // system calls and touches no lock, allocator or shared state.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // pglock may have died between fork and prctl: then the signal
            // will never come, and the command must not start.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other(
                    "pglock exited before the command started",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_pglock(_command: &mut Command) {}

/// How often pglock looks whether a lost command's process group is empty.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// Sends `SIG<name>` to `target` (a pid, or `-pgid` for a process group),
/// with kill(2). Returns whether it was delivered.
async fn send(target: &str, name: &str, ui: Ui) -> bool {
    let sig = match nix::sys::signal::Signal::from_str(&format!("SIG{name}")) {
        Ok(sig) => sig,
        Err(e) => {
            ui.error(format_args!("unknown signal SIG{name}: {e}"));
            return false;
        }
    };
    match kill(target, Some(sig)) {
        Ok(()) => true,
        // The command has just exited: nothing to signal.
        Err(e) => {
            ui.detail(format_args!("kill -{name} {target}: {e}"));
            false
        }
    }
}

/// Whether any process of the group `target` (`-pgid`) is still alive.
async fn group_alive(target: &str) -> bool {
    kill(target, None).is_ok()
}

/// kill(2) on a pid, or on a process group given as `-pgid`.
fn kill(target: &str, sig: Option<nix::sys::signal::Signal>) -> nix::Result<()> {
    let pid: i32 = target.parse().map_err(|_| nix::errno::Errno::EINVAL)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
}

/// Whether pglock runs in the foreground process group of a terminal, where
/// Ctrl-C reaches every process of the group, its command included.
/// (Linux: read from `/proc`; elsewhere, `false`.)
fn in_terminal_foreground() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    // After the command name in parentheses: state ppid pgrp session tty_nr tpgid …
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    matches!((fields.get(2), fields.get(5)), (Some(pgrp), Some(tpgid)) if pgrp == tpgid)
}

/// The shell's view of an exit status: the code, or 128 + the signal.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => 128u8.saturating_add((sig & 0x7f) as u8),
        (None, None) => crate::report::EXIT_FAILURE,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

fn not_started(program: &str, e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::NotFound => Failure::new(
            EXIT_NOT_FOUND,
            format!("cannot run {program:?}: command not found; check its name and PATH"),
        ),
        std::io::ErrorKind::PermissionDenied => Failure::new(
            EXIT_CANNOT_RUN,
            format!("cannot run {program:?}: permission denied; is it executable (chmod +x)?"),
        ),
        _ => Failure::new(EXIT_CANNOT_RUN, format!("cannot run {program:?}: {e}")),
    }
}

/// Replaces every `{}` in `argv` with `item`, as `xargs -I{}` does.
pub(crate) fn substitute(argv: &[String], item: &str) -> Vec<String> {
    argv.iter().map(|a| a.replace("{}", item)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_become_the_item() {
        let argv = ["python", "train.py", "--shard", "{}", "--out=ckpt/{}.pt"].map(String::from);
        assert_eq!(
            substitute(&argv, "shard-007"),
            [
                "python",
                "train.py",
                "--shard",
                "shard-007",
                "--out=ckpt/shard-007.pt"
            ]
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(Sig::Int.exit_code(), 130);
    }
}
