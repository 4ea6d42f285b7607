//! What pglock tells people: exit codes, one-sentence errors with the fix,
//! progress on stderr, and the live status line.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

/// Any other error: the database failed or refused, a file could not be
/// read.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Bad arguments (clap's code too).
pub(crate) const EXIT_USAGE: u8 = 2;
/// The lock was lost while the command ran (sysexits' `EX_SOFTWARE`).
pub(crate) const EXIT_LOST: u8 = 70;
/// The command has ended, but its lease (or pool item) could not be
/// released or completed: it may still be held until its TTL runs out
/// (sysexits' `EX_OSERR`).
pub(crate) const EXIT_MAY_BE_HELD: u8 = 71;
/// The lock was not obtained: held (`--no-wait`), timed out, or a drained
/// pool (sysexits' `EX_TEMPFAIL`: try again later).
pub(crate) const EXIT_NOT_OBTAINED: u8 = 75;
/// The command was found but could not be run (as in shells).
pub(crate) const EXIT_CANNOT_RUN: u8 = 126;
/// The command was not found (as in shells).
pub(crate) const EXIT_NOT_FOUND: u8 = 127;

/// Why pglock stops without a status of the command's own: one sentence for
/// stderr, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    /// An expected outcome rather than an error (a lock not obtained):
    /// `--quiet` silences it, the exit code still tells.
    pub(crate) expected: bool,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            expected: false,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure::new(EXIT_USAGE, message)
    }

    pub(crate) fn not_obtained(message: impl Into<String>) -> Failure {
        Failure {
            expected: true,
            ..Failure::new(EXIT_NOT_OBTAINED, message)
        }
    }

    /// Explains a library error, with the fix where there is one.
    pub(crate) fn from_lib(e: pglock::Error) -> Failure {
        use pglock::Error;
        match e {
            Error::InvalidInput { field, rule } => {
                Failure::usage(format!("invalid {field}: {rule}"))
            }
            Error::NotMigrated { schema } => Failure::new(
                EXIT_FAILURE,
                format!(
                    "schema {schema:?} is not installed in this database; run `pglock --schema {schema} migrate` \
                     first, or pass the --schema you migrated"
                ),
            ),
            Error::Database(e) => Failure::from_sqlx(e),
            Error::Migrate(e) => Failure::new(
                EXIT_FAILURE,
                format!(
                    "migrating failed: {e}; migrate with a role that may create the schema (README: Least privilege)"
                ),
            ),
            Error::Timeout { what, waited } => Failure::not_obtained(format!(
                "{what} not obtained within {}",
                crate::duration::human(waited)
            )),
            Error::PoolDrained { pool } => Failure::not_obtained(format!(
                "pool {pool:?} is drained: every item is done (or it has none); nothing to run"
            )),
            Error::PoolNotFound { pool } => Failure::new(
                EXIT_FAILURE,
                format!("no pool named {pool:?}; pglock pool add creates one"),
            ),
            e @ (Error::LeaseLost { .. } | Error::LockLost { .. }) => {
                Failure::new(EXIT_LOST, e.to_string())
            }
            e => Failure::new(EXIT_FAILURE, e.to_string()),
        }
    }

    /// Explains a driver error: connection, login, permission, or whatever
    /// the server said.
    pub(crate) fn from_sqlx(e: sqlx::Error) -> Failure {
        use sqlx::Error;
        let check_url = "check --database-url (or DATABASE_URL)";
        let is_it_running = "is PostgreSQL running there? check --database-url (or DATABASE_URL)";
        let message = match &e {
            Error::Configuration(cause) => {
                return Failure::usage(format!(
                    "invalid database URL ({cause}); expected postgres://user:password@host:5432/database"
                ));
            }
            Error::Io(cause) => {
                format!("cannot reach the database ({cause}); {is_it_running}")
            }
            Error::Tls(cause) => {
                format!("TLS with the database failed ({cause}); {check_url} (sslmode)")
            }
            Error::PoolTimedOut => {
                format!("no connection to the database within 10s; {is_it_running}")
            }
            Error::Database(db) => {
                let what = db.message();
                match db.code().as_deref() {
                    Some("28P01" | "28000") => {
                        format!(
                            "the database refused the login ({what}); {check_url}: user and password"
                        )
                    }
                    Some("3D000") => format!("{what}; {check_url}"),
                    Some("42501") => {
                        format!(
                            "the database refused ({what}); the user needs rights on pglock's schema"
                        )
                    }
                    _ => format!("the database refused: {what}"),
                }
            }
            other => format!("database error: {other}"),
        };
        Failure::new(EXIT_FAILURE, message)
    }
}

impl From<pglock::Error> for Failure {
    fn from(e: pglock::Error) -> Failure {
        Failure::from_lib(e)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        Failure::from_sqlx(e)
    }
}

/// How chatty pglock is on stderr. Output asked for (`ls`, `pool status`)
/// goes to stdout whatever the level.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    quiet: bool,
    verbose: bool,
    /// stderr is a terminal: draw the live status line.
    live: bool,
    /// Columns of that terminal: a longer status line would wrap.
    width: usize,
}

impl Ui {
    pub(crate) fn new(quiet: bool, verbose: bool) -> Ui {
        let live = !quiet && std::io::stderr().is_terminal();
        Ui {
            quiet,
            verbose,
            live,
            width: if live { terminal_width() } else { 80 },
        }
    }

    /// An error, always printed.
    pub(crate) fn error(&self, message: impl Display) {
        eprintln_ok(format_args!("pglock: {message}"));
    }

    /// What happened, for people: silenced by `--quiet`.
    pub(crate) fn info(&self, message: impl Display) {
        if !self.quiet {
            eprintln_ok(format_args!("pglock: {message}"));
        }
    }

    /// Details, only with `--verbose`.
    pub(crate) fn detail(&self, message: impl Display) {
        if self.verbose {
            eprintln_ok(format_args!("pglock: {message}"));
        }
    }

    pub(crate) fn is_verbose(&self) -> bool {
        self.verbose
    }

    /// Whether the live status line is drawn (stderr is a terminal and not
    /// `--quiet`).
    pub(crate) fn is_live(&self) -> bool {
        self.live
    }

    /// Redraws the status line in place.
    pub(crate) fn status(&self, line: &str) {
        if self.live {
            let line: String = line.chars().take(self.width.saturating_sub(1)).collect();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        }
    }

    /// Erases the status line.
    pub(crate) fn clear_status(&self) {
        if self.live {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    /// Reports why pglock stops.
    pub(crate) fn failure(&self, f: &Failure) {
        if f.expected {
            self.info(&f.message);
        } else {
            self.error(&f.message);
        }
    }
}

/// The terminal's width: `COLUMNS`, else what `stty size` says of the
/// terminal, else 80.
fn terminal_width() -> usize {
    let from_env = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
    from_env
        .or_else(|| {
            let tty = std::fs::File::open("/dev/tty").ok()?;
            let out = std::process::Command::new("stty")
                .arg("size")
                .stdin(tty)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .filter(|&w: &usize| w >= 20)
        .unwrap_or(80)
}

/// Prints to stdout; a closed pipe (`pglock ls | head -1`) is not an error.
pub(crate) fn print(text: impl Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

fn eprintln_ok(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// A plain text table: a header line and left-aligned columns. Cells are
/// shown with [`escape`]: names and labels come from the database, where
/// anybody may have put terminal escapes or newlines in them.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push('\n');
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `text` with its control characters (C0, DEL, C1) written as escapes
/// (`\n`, `\t`, `\r`, `\x1b`, `\u{9b}`) and backslashes doubled, so that
/// it cannot move the cursor, retitle the window or break a table line.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls, and the bidirectional overrides that reorder
            // what follows them on the screen.
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Shortens `text` to `max` characters, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "TOKEN", "DATA"],
            &[
                vec!["a".into(), "12345".into(), "{}".into()],
                vec!["longer".into(), "1".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME    TOKEN  DATA\na       12345  {}\nlonger  1      -"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\u{1b}[31mb\u{7}\n\t\\\u{9b}é"),
            "a\\x1b[31mb\\x07\\n\\t\\\\\\u{9b}é"
        );
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
