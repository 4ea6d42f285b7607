"""pglock from Python vs the same SQL sent raw with psycopg, in one run.

    python bench/bench.py [--seconds 3] [--threads 1,8] [--fast] [--rust]

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
slow the first time).
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", default="1,8")
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
        for kind in ("advisory lock+unlock", "lease acquire+release"):
            ratio = results[(f"{kind}, pglock", threads)] / results[(f"{kind}, raw psycopg", threads)]
            print(f"  -> {kind}: pglock/raw = {ratio:.2f} at {threads} thread(s)", flush=True)
    if args.rust:
        rust_rates(url, args, results)


def rust_rates(url: str, args, results) -> None:
    """The crate's own rates for the same cases, from its benchmark suite run
    against the same server, beside the Python ones."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, DATABASE_URL=url)
    cmd = ["cargo", "bench", "--features", "internals", "--bench", "suite", "--",
           "--only", "lease,advisory", "--secs", str(args.seconds), "--no-charts"]
    print("\n== the crate, same server: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    doc = json.loads((root / "target" / "bench" / "suite.json").read_text())
    threads = [int(x) for x in args.threads.split(",")]
    # The crate from tokio tasks (two runtime threads serve them all), and
    # from as many OS threads, each blocking on one call at a time as a
    # Python thread does.
    impls = [("pglock", "Rust crate, tasks"), ("pglock, OS threads", "Rust crate, OS threads")]
    for kind in ("advisory lock+unlock", "lease acquire+release"):
        for imp, label in impls:
            for r in doc["medians"]:
                if r["case"] == kind and r["impl"] == imp and r["tasks"] in threads:
                    py = results[(f"{kind}, pglock", r["tasks"])]
                    print(f"{kind + ', ' + label:<44} {r['tasks']:>2} thr  {r['ops_per_s']:>9.0f} ops/s  "
                          f"p50 {r['p50_ms'] * 1000:>7.0f} µs  p99 {r['p99_ms'] * 1000:>7.0f} µs"
                          f"   -> Python/Rust = {py / r['ops_per_s']:.2f}", flush=True)


if __name__ == "__main__":
    main()
