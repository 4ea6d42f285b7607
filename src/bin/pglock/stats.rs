//! `pglock exec --stats`: a small recorder for the library's metrics
//! (`pglock::metrics`), printed to stderr when the command ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// One metric: a counter's total, or a histogram's count, sum and max.
#[derive(Debug, Default)]
struct Cell {
    count: AtomicU64,
    sum_max: Mutex<(f64, f64)>,
}

impl CounterFn for Cell {
    fn increment(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }
    fn absolute(&self, n: u64) {
        self.count.fetch_max(n, Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, v: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut s = self.sum_max.lock().unwrap();
        s.0 += v;
        s.1 = s.1.max(v);
    }
}

/// Each metric by its key, with whether it is a histogram.
type Cells = BTreeMap<String, (bool, Arc<Cell>)>;

/// Counters and histograms by key, in name order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    cells: Arc<Mutex<Cells>>,
}

impl Stats {
    /// Installs the recorder; `None` if another one is installed already.
    pub(crate) fn install() -> Option<Stats> {
        let stats = Stats::default();
        metrics::set_global_recorder(stats.clone()).ok()?;
        Some(stats)
    }

    fn cell(&self, key: &Key, histogram: bool) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        let mut cells = self.cells.lock().unwrap();
        cells
            .entry(name)
            .or_insert_with(|| (histogram, Arc::default()))
            .1
            .clone()
    }

    /// One line per metric: counters as totals, histograms as count, mean
    /// and max in milliseconds.
    pub(crate) fn print(&self) {
        for (name, (histogram, cell)) in self.cells.lock().unwrap().iter() {
            let n = cell.count.load(Ordering::Relaxed);
            if *histogram {
                let (sum, max) = *cell.sum_max.lock().unwrap();
                let mean = if n == 0 { 0.0 } else { sum / n as f64 };
                eprintln!(
                    "pglock: {name} count={n} mean={:.3}ms max={:.3}ms",
                    mean * 1e3,
                    max * 1e3
                );
            } else {
                eprintln!("pglock: {name} {n}");
            }
        }
    }
}

impl Recorder for Stats {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key, false))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key, true))
    }
}
