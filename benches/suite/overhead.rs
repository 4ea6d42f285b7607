//! The cost of pglock's metrics and tracing with no recorder and no
//! subscriber installed (this benchmark installs neither): the calls an
//! uncontended acquire+release makes, timed over a million repeats, beside
//! the acquire+release it rides on (the lease case's p50 from this run).

use std::time::Instant;

use crate::Ctx;
use crate::stats::Record;

const CASE: &str = "metrics+tracing, no recorder";
const REPEATS: u32 = 1_000_000;

pub fn run(ctx: &mut Ctx) {
    for _ in 0..10_000 {
        pglock::metrics::__record_one_acquire_release();
    }
    let mut per_op_ns = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..REPEATS {
            pglock::metrics::__record_one_acquire_release();
        }
        per_op_ns.push(t.elapsed().as_nanos() as f64 / f64::from(REPEATS));
    }
    per_op_ns.sort_by(f64::total_cmp);
    let ns = per_op_ns[per_op_ns.len() / 2];
    let lease_p50_ms = ctx
        .out
        .iter()
        .find(|r| r.case.starts_with("lease acquire+release") && r.imp == "pglock" && r.tasks == 1)
        .map(|r| r.p50_ms);
    let mut r = Record::new(CASE, "pglock", 1);
    r.ops_s = 1e9 / ns;
    r.p50_ms = ns / 1e6;
    r.n = (REPEATS * 5) as usize;
    let mut r = r.extra("ns_per_acquire_release", ns);
    if let Some(p50) = lease_p50_ms {
        r = r.extra("pct_of_lease_p50", 100.0 * ns / (p50 * 1e6));
    }
    ctx.push(r.note("median of 5 x 1M; pct_of_lease_p50 = share of one 1-task lease acquire+release of this run"));
}
