"""pglock from Python vs the same SQL sent raw with psycopg, in one run.

    python bench/bench.py [--seconds 3] [--threads 1,8] [--rounds 3] [--fast] [--rust]

Advisory lock+unlock (``lock()`` + ``release()`` vs ``pg_advisory_lock`` /
``pg_advisory_unlock`` on a dedicated connection per thread) and lease
acquire+release (``acquire()`` + ``release()`` vs the crate's own two
statements, prepared, on a dedicated connection per thread). Each thread
uses its own key, so this measures overhead, not contention. Prints ops/s
and per-cycle p50/p99. With DATABASE_URL unset it starts a throwaway
cluster with fsync=on and synchronous_commit=on (production settings).

``--rust`` also runs the crate's benchmark suite (``cargo bench --features
internals --bench suite -- --only lease,advisory``) against the same server
afterwards and prints the crate's rates at the same counts, called from
tokio tasks and from OS threads (each blocking on one call, as a Python
thread does), with the ratio Python/Rust (a release build of the suite:
slow the first time). ``--rounds N`` makes N passes, each the Python
cases then the crate's, and prints medians: the machine's speed drifts, so
a ratio is taken within one pass.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, List

import psycopg

import pglock
from pglock._testing import database_url


def run(label: str, threads: int, seconds: float, make_cycle: Callable[[int], Callable[[], None]]):
    cycles = [make_cycle(t) for t in range(threads)]
    for c in cycles:  # warm up connections and prepared statements
        for _ in range(20):
            c()
    lat: List[List[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def body(t: int) -> None:
        cycle, out = cycles[t], lat[t]
        start.wait()
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= stop_at[0]:
                return
            cycle()
            out.append(clock() - t0)

    ts = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    begin = time.perf_counter()
    start.wait()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - begin
    all_lat = sorted(x for l in lat for x in l)
    n = len(all_lat)
    p50 = all_lat[n // 2] * 1e6
    p99 = all_lat[min(n - 1, int(n * 0.99))] * 1e6
    rate = n / elapsed
    print(f"{label:<44} {threads:>2} thr  {rate:>9.0f} ops/s  p50 {p50:>7.0f} µs  p99 {p99:>7.0f} µs", flush=True)
    return rate


def named(sql: str) -> str:
    """``$1`` → ``%(p1)s`` for psycopg."""
    return re.sub(r"\$(\d+)", r"%(p\1)s", sql)


def protocol_sql(heading: str, schema: str) -> str:
    """The statement under `### heading` in the repository's PROTOCOL.md
    (pinned to the crate's SQL by a test), for this schema."""
    text = (Path(__file__).resolve().parents[2] / "PROTOCOL.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1]
    sql = section.split("```sql\n", 1)[1].split("```", 1)[0]
    return sql.replace("{schema}", schema)


def python_round(url: str, locks, schema: str, args, acquire_sql: str, release_sql: str) -> dict:
    """One pass of every Python case at every thread count: {(label, threads): ops/s}."""
    results = {}
    for threads in [int(x) for x in args.threads.split(",")]:

        def pg_advisory(t: int):
            req = locks.advisory(f"bench-adv-{t}")
            return lambda: req.lock().release()

        def raw_advisory(t: int):
            conn = psycopg.connect(url, autocommit=True)
            key = f"raw-adv-{t}"

            def cycle():
                conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,), prepare=True)
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,), prepare=True)

            return cycle

        def pg_lease(t: int):
            req = locks.lease(f"bench-lease-{t}", ttl=30)
            return lambda: req.acquire().release()

        def raw_lease(t: int):
            conn = psycopg.connect(url, autocommit=True)
            name = f"raw-lease-{t}"

            def cycle():
                owner = uuid.uuid4()
                row = conn.execute(
                    acquire_sql,
                    {"p1": name, "p2": owner, "p3": "bench", "p4": 30_000, "p5": None, "p6": None},
                    prepare=True,
                ).fetchone()
                assert row[0]
                conn.execute(
                    release_sql,
                    {"p1": "", "p2": name, "p3": row[1], "p4": owner, "p5": f"bench:{name}"},
                    prepare=True,
                ).fetchall()

            return cycle

        for label, make in [
            ("advisory lock+unlock, pglock", pg_advisory),
            ("advisory lock+unlock, raw psycopg", raw_advisory),
            ("lease acquire+release, pglock", pg_lease),
            ("lease acquire+release, raw psycopg", raw_lease),
        ]:
            results[(label, threads)] = run(label, threads, args.seconds, make)
    return results


KINDS = ("advisory lock+unlock", "lease acquire+release")
# The crate from tokio tasks (two runtime threads serve them all), and from
# as many OS threads, each blocking on one call at a time as a Python thread
# does.
RUST_IMPLS = [("pglock", "Rust, tasks"), ("pglock, OS threads", "Rust, OS threads")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,8")
    ap.add_argument("--rounds", type=int, default=1,
                    help="passes; with --rust each pass runs the Python cases, then the crate's")
    ap.add_argument("--rust", action="store_true",
                    help="also run the crate's suite on the same server and compare")
    ap.add_argument("--fast", action="store_true",
                    help="throwaway cluster with fsync=off, like `cargo bench`'s")
    args = ap.parse_args()
    url = database_url(durable=not args.fast)
    schema = "bench_" + uuid.uuid4().hex[:8]
    locks = pglock.connect(url, schema=schema, holder="bench")
    locks.migrate()
    acquire_sql = named(protocol_sql("Acquire a lease", schema))
    release_sql = named(protocol_sql("Release a plain lease", schema))
    threads = [int(x) for x in args.threads.split(",")]
    rounds = []
    for r in range(args.rounds):
        print(f"\n== pass {r + 1} of {args.rounds}", flush=True)
        py = python_round(url, locks, schema, args, acquire_sql, release_sql)
        rust = rust_rates(url, args) if args.rust else {}
        rounds.append((py, rust))
    print(f"\n== medians of {len(rounds)} pass(es); ratios are medians of each pass's ratio", flush=True)
    med = statistics.median
    for kind in KINDS:
        for t in threads:
            ours = [py[(f"{kind}, pglock", t)] for py, _ in rounds]
            raw = [py[(f"{kind}, raw psycopg", t)] for py, _ in rounds]
            line = (f"{kind:<24} {t:>2} thr  pglock {med(ours):>8.0f}  raw psycopg {med(raw):>8.0f}"
                    f"  pglock/raw {med([a / b for a, b in zip(ours, raw)]):.2f}")
            for imp, label in RUST_IMPLS if args.rust else []:
                crate = [rust[(kind, imp, t)] for _, rust in rounds]
                line += (f"  {label} {med(crate):>8.0f}"
                         f" (Python/Rust {med([a / b for a, b in zip(ours, crate)]):.2f})")
            print(line, flush=True)


def rust_rates(url: str, args) -> dict:
    """The crate's own rates for the same cases, from its benchmark suite run
    against the same server: {(case, impl, tasks): ops/s}."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, DATABASE_URL=url)
    cmd = ["cargo", "bench", "--features", "internals", "--bench", "suite", "--",
           "--only", "lease,advisory", "--secs", str(args.seconds), "--no-charts"]
    print("== the crate, same server: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    doc = json.loads((root / "target" / "bench" / "suite.json").read_text())
    threads = [int(x) for x in args.threads.split(",")]
    out = {}
    for r in doc["medians"]:
        if r["case"] in KINDS and r["tasks"] in threads:
            out[(r["case"], r["impl"], r["tasks"])] = r["ops_per_s"]
    for kind in KINDS:
        for imp, label in RUST_IMPLS:
            for t in threads:
                print(f"{kind + ', ' + label:<44} {t:>2} thr  {out[(kind, imp, t)]:>9.0f} ops/s", flush=True)
    return out


if __name__ == "__main__":
    main()
