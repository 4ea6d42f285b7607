//! Timing loops, percentiles and the result records the suite prints,
//! writes as JSON and charts.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One measured figure: a case, by one implementation, at one task count.
#[derive(Debug, Clone)]
pub struct Record {
    /// `production` (fsync=on) or `fast` (fsync=off).
    pub durability: String,
    /// What was measured, e.g. `lease acquire+release`.
    pub case: String,
    /// `pglock`, or the floor it is compared with (`raw`, ...).
    pub imp: String,
    /// Concurrent tasks (or waiters, for the wake-up and hand-off cases).
    pub tasks: usize,
    pub ops_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Operations timed.
    pub n: usize,
    /// Case-specific figures (RSS per lease, server CPU, ...).
    pub extra: BTreeMap<String, f64>,
    /// What went wrong or what the figure means, when it is not plain.
    pub note: Option<String>,
}

impl Record {
    pub fn new(case: &str, imp: &str, tasks: usize) -> Record {
        Record {
            durability: String::new(),
            case: case.to_owned(),
            imp: imp.to_owned(),
            tasks,
            ops_s: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            n: 0,
            extra: BTreeMap::new(),
            note: None,
        }
    }

    /// A record from latencies of `ops` operations done in `elapsed`.
    pub fn from_lat(
        case: &str,
        imp: &str,
        tasks: usize,
        mut lat: Vec<Duration>,
        elapsed: Duration,
    ) -> Record {
        lat.sort();
        let mut r = Record::new(case, imp, tasks);
        r.n = lat.len();
        r.ops_s = lat.len() as f64 / elapsed.as_secs_f64().max(1e-9);
        r.p50_ms = percentile_ms(&lat, 0.50);
        r.p99_ms = percentile_ms(&lat, 0.99);
        r.max_ms = lat.last().map_or(0.0, ms);
        r
    }

    pub fn extra(mut self, key: &str, v: f64) -> Record {
        self.extra.insert(key.to_owned(), v);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Record {
        self.note = Some(note.into());
        self
    }

    pub fn print(&self) {
        let extra: Vec<String> = self
            .extra
            .iter()
            .map(|(k, v)| format!("{k}={}", fmt_num(*v)))
            .collect();
        println!(
            "  {:<40} {:<18} {:>4}  {:>9.0} ops/s  p50 {:>8.3}  p99 {:>8.3}  max {:>8.3} ms  (n={}){}{}",
            self.case,
            self.imp,
            self.tasks,
            self.ops_s,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.n,
            if extra.is_empty() {
                String::new()
            } else {
                format!("  {}", extra.join(" "))
            },
            self.note
                .as_deref()
                .map_or(String::new(), |n| format!("  [{n}]"))
        );
    }

    pub fn to_json(&self) -> Value {
        json!({
            "durability": self.durability,
            "case": self.case,
            "impl": self.imp,
            "tasks": self.tasks,
            "ops_per_s": round3(self.ops_s),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "max_ms": round3(self.max_ms),
            "n": self.n,
            "extra": self.extra.iter().map(|(k, v)| (k.clone(), json!(round3(*v)))).collect::<serde_json::Map<_, _>>(),
            "note": self.note,
        })
    }

    fn key(&self) -> (String, String, String, usize) {
        (
            self.durability.clone(),
            self.case.clone(),
            self.imp.clone(),
            self.tasks,
        )
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` percentile of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    ms(&sorted[i])
}

/// The median of each figure over the runs of the same case (records with
/// the same durability, case, implementation and task count), in the order
/// they were first measured.
pub fn medians(all: &[Record]) -> Vec<Record> {
    let mut order = Vec::new();
    let mut groups: BTreeMap<_, Vec<&Record>> = BTreeMap::new();
    for r in all {
        let k = r.key();
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    order
        .into_iter()
        .map(|k| {
            let rs = &groups[&k];
            let med = |f: &dyn Fn(&Record) -> f64| {
                let mut v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let mut m = rs[0].clone();
            m.ops_s = med(&|r| r.ops_s);
            m.p50_ms = med(&|r| r.p50_ms);
            m.p99_ms = med(&|r| r.p99_ms);
            m.max_ms = med(&|r| r.max_ms);
            m.n = rs.iter().map(|r| r.n).sum();
            for key in rs[0].extra.keys() {
                m.extra.insert(
                    key.clone(),
                    med(&|r| r.extra.get(key).copied().unwrap_or(f64::NAN)),
                );
            }
            if rs.len() > 1 {
                m.extra.insert("runs".into(), rs.len() as f64);
            }
            m
        })
        .collect()
}

/// Runs `op(task, i)` in `tasks` concurrent loops for `dur`; the latency of
/// each call, and the time from the start until the last loop ended.
pub async fn run_loops<F, Fut>(tasks: usize, dur: Duration, op: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    let end = start + dur;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while Instant::now() < end {
                let s = Instant::now();
                op(t, i).await;
                lat.push(s.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    (lat, start.elapsed())
}

/// As [`run_loops`], from `threads` OS threads that each run one operation
/// at a time with `Handle::block_on` on this runtime, as synchronous code
/// calls an async crate. That is the thread model of a Python caller (one
/// OS thread per caller, woken for every answer), so the Python binding's
/// benchmark compares its rates with these as well as with tasks'.
pub async fn run_threads<F, Fut>(threads: usize, dur: Duration, op: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let rt = tokio::runtime::Handle::current();
    let start = Instant::now();
    let end = start + dur;
    let joins: Vec<_> = (0..threads)
        .map(|t| {
            let (op, rt) = (op.clone(), rt.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < end {
                    let s = Instant::now();
                    rt.block_on(op(t, i));
                    lat.push(s.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let lat = tokio::task::spawn_blocking(move || {
        joins
            .into_iter()
            .flat_map(|j| j.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    (lat, start.elapsed())
}

/// One side of a comparison: runs its operation for the given time and
/// returns its latencies and the time it took.
pub type Runner = Box<
    dyn Fn(Duration) -> std::pin::Pin<Box<dyn Future<Output = (Vec<Duration>, Duration)> + Send>>
        + Send
        + Sync,
>;

/// `op` from `tasks` tasks ([`run_loops`]), as a [`Runner`].
pub fn on_tasks<F, Fut>(tasks: usize, op: F) -> Runner
where
    F: Fn(usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move |dur| Box::pin(run_loops(tasks, dur, op.clone())))
}

/// `op` from `threads` OS threads ([`run_threads`]), as a [`Runner`].
pub fn on_threads<F, Fut>(threads: usize, op: F) -> Runner
where
    F: Fn(usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move |dur| Box::pin(run_threads(threads, dur, op.clone())))
}

/// How many turns each side of [`alternate`] gets.
const TURNS: u32 = 4;

/// Runs the sides in turns (a, b, a, b, ...), [`TURNS`] each, for `dur` in
/// all per side, and returns each side's latencies and time. A machine
/// whose speed drifts (a checkpoint, autovacuum, a neighbour on the host)
/// then slows every side alike, instead of whichever ran second; the
/// figures that count are the ratios between sides.
pub async fn alternate(dur: Duration, sides: &[Runner]) -> Vec<(Vec<Duration>, Duration)> {
    let turn = dur / TURNS;
    let mut out = vec![(Vec::new(), Duration::ZERO); sides.len()];
    for _ in 0..TURNS {
        for (side, run) in out.iter_mut().zip(sides) {
            let (lat, el) = run(turn).await;
            side.0.extend(lat);
            side.1 += el;
        }
    }
    out
}
