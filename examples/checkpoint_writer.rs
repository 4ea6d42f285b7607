//! Several training processes save ONE checkpoint file, under an advisory
//! lock, and every checkpoint any of them reads back is whole.
//!
//! The parent starts [`WORKERS`] workers as separate OS processes (this
//! example re-run with `worker` as its first argument). Each worker, for
//! [`ROUNDS`] rounds, writes the shared checkpoint in place, slowly, in
//! chunks (as a large `torch.save` to a network file system does), then
//! reads it back and checks it: a header naming the writer and step, a
//! payload of the writer's byte, and a trailer that repeats the header.
//! Writers hold the exclusive advisory lock `ckpt/run-42`; readers hold it
//! shared, so a read never sees a write half done.
//!
//! `--no-lock` runs the same workers without the lock: reads then see torn
//! files (one writer's header, another's bytes, or a truncated file), the
//! workers report each one, and the example exits 1.
//!
//! Runs with no setup: it uses `DATABASE_URL` if set, or starts a throwaway
//! PostgreSQL. `cargo run --example checkpoint_writer [-- --no-lock]`
//!
//! A lock serializes writers that are alive. To also keep out a writer that
//! was paused past its lease (a file write cannot call `fence()`), put the
//! lease's fencing token in the checkpoint's name or metadata and have
//! readers take the highest token, or commit a pointer row under `fence()`;
//! see "Fencing files and object stores" in the README.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use pglock::Locks;
use sqlx::postgres::PgPoolOptions;

const WORKERS: usize = 4;
const ROUNDS: usize = 6;
/// The checkpoint's payload, written in [`CHUNKS`] pieces.
const PAYLOAD: usize = 64 * 1024;
const CHUNKS: usize = 16;
/// Between two chunks: a slow disk, so that unlocked writes overlap.
const CHUNK_PAUSE: Duration = Duration::from_millis(2);
const KEY: &str = "ckpt/run-42";
const SCHEMA: &str = "checkpoint_example";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = if args.first().map(String::as_str) == Some("worker") {
        runtime.block_on(worker(&args[1..]))
    } else {
        let locked = !args.iter().any(|a| a == "--no-lock");
        runtime.block_on(parent(locked))
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("checkpoint_writer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the workers, waits for them, and sums up what they saw.
async fn parent(locked: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    // The database (a throwaway cluster lives as long as this process).
    common::fresh_schema(SCHEMA).await?;
    let url = common::database_url();
    let dir = std::env::temp_dir().join(format!("pglock-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("checkpoint.bin");
    println!(
        "{WORKERS} worker processes save {} {ROUNDS} times each{}",
        file.display(),
        if locked {
            " under the advisory lock"
        } else {
            " WITHOUT the lock (--no-lock)"
        }
    );
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(&exe)
                .args([
                    "worker",
                    &w.to_string(),
                    if locked { "lock" } else { "no-lock" },
                ])
                .arg(&file)
                .env("DATABASE_URL", &url)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let (mut reads, mut torn) = (0, 0);
    let mut failed = false;
    for child in children {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        failed |= !out.status.success();
        // The worker's last line: "worker W: R reads, T torn".
        if let Some(last) = text.lines().last() {
            let numbers: Vec<usize> = last
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [_, r, t] = numbers[..] {
                reads += r;
                torn += t;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if torn > 0 {
        println!(
            "CORRUPTION: {torn} of {reads} checkpoint reads were torn{}",
            if locked {
                " — the lock failed to serialize writers!"
            } else {
                ": without the lock, writers and readers overlap"
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    if failed {
        println!("a worker failed (see above)");
        return Ok(ExitCode::FAILURE);
    }
    if locked {
        println!("ok: all {reads} checkpoint reads were whole");
    } else {
        println!("no torn read this time (timing); run again to see one");
    }
    Ok(ExitCode::SUCCESS)
}

/// One worker process: `worker W lock|no-lock FILE`.
async fn worker(args: &[String]) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let [w, mode, file] = args else {
        return Err("usage: checkpoint_writer worker W lock|no-lock FILE".into());
    };
    let w: u8 = w.parse()?;
    let locked = mode == "lock";
    let file = PathBuf::from(file);
    let url = std::env::var("DATABASE_URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let locks = Locks::builder(pool)
        .schema(SCHEMA)
        .holder(format!("worker-{w}"))
        .build()?;
    let (mut reads, mut torn) = (0, 0);
    for step in 0..ROUNDS {
        {
            let guard = if locked {
                Some(locks.advisory(KEY).lock().await?)
            } else {
                None
            };
            write_checkpoint(&file, w, step)?;
            if let Some(g) = guard {
                g.release().await?;
            }
        }
        // Yield a little, so that the workers take turns.
        tokio::time::sleep(Duration::from_millis(u64::from(w) * 3)).await;
        let guard = if locked {
            Some(locks.advisory(KEY).shared().lock().await?)
        } else {
            None
        };
        let seen = read_checkpoint(&file);
        if let Some(g) = guard {
            g.release().await?;
        }
        reads += 1;
        match seen {
            Ok((by, at)) => {
                println!("worker {w}: read a whole checkpoint (worker {by}, step {at})")
            }
            Err(why) => {
                torn += 1;
                println!("worker {w}: TORN checkpoint: {why}");
            }
        }
    }
    println!("worker {w}: {reads} reads, {torn} torn");
    Ok(if torn == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes the checkpoint in place, in chunks: header, payload, trailer.
fn write_checkpoint(path: &Path, w: u8, step: usize) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let header = format!("ckpt worker={w} step={step} bytes={PAYLOAD}\n");
    f.write_all(header.as_bytes())?;
    let chunk = vec![b'a' + w; PAYLOAD / CHUNKS];
    for _ in 0..CHUNKS {
        f.write_all(&chunk)?;
        f.flush()?;
        std::thread::sleep(CHUNK_PAUSE);
    }
    f.write_all(format!("\nend worker={w} step={step}\n").as_bytes())?;
    f.sync_data()
}

/// Reads the checkpoint and checks that it is whole: one writer's header,
/// payload and trailer. Returns (writer, step).
fn read_checkpoint(path: &Path) -> Result<(u8, usize), String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8_lossy(&data);
    let (header, rest) = text.split_once('\n').ok_or("no header line")?;
    let fields: Vec<&str> = header.split(' ').collect();
    let value = |prefix: &str| {
        fields
            .iter()
            .find_map(|f| f.strip_prefix(prefix))
            .ok_or_else(|| format!("header {header:?} lacks {prefix}"))
    };
    let w: u8 = value("worker=")?.parse().map_err(|_| "bad worker")?;
    let step: usize = value("step=")?.parse().map_err(|_| "bad step")?;
    let expected_trailer = format!("\nend worker={w} step={step}\n");
    let payload = rest
        .strip_suffix(expected_trailer.as_str())
        .ok_or_else(|| format!("{} bytes, no trailer of worker {w} step {step}", data.len()))?;
    if payload.len() != PAYLOAD {
        return Err(format!("payload of {} bytes, not {PAYLOAD}", payload.len()));
    }
    if let Some(other) = payload.bytes().find(|&b| b != b'a' + w) {
        return Err(format!(
            "worker {w}'s checkpoint holds bytes of worker {}",
            other.wrapping_sub(b'a')
        ));
    }
    Ok((w, step))
}
