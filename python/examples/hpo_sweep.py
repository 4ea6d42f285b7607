"""Hyperparameter sweep: worker processes claim trials from a lease pool,
report progress with set_data, and write each trial's result with a fenced
write. One worker is SIGKILLed mid-trial; once its claim expires another
worker resumes that trial from the progress it left. Every trial ends with
exactly one result.

    python examples/hpo_sweep.py        # throwaway cluster unless DATABASE_URL is set
"""

import multiprocessing as mp
import os
import signal
import sys
import time
import uuid

import psycopg

import pglock
from pglock._testing import database_url

TRIALS = [f"lr={lr}" for lr in ("1e-2", "3e-3", "1e-3", "3e-4", "1e-4", "3e-5")]
STEPS = 10
TTL = 2.0  # a killed worker's trial is claimed again after at most this


def worker(url: str, schema: str, idx: int, events) -> None:
    locks = pglock.connect(url, schema=schema, holder=f"worker-{idx}")
    trials = locks.lease_pool("sweep")
    with psycopg.connect(url) as conn:
        for trial in trials.claims(ttl=TTL):
            with trial:
                start = (trial.data or {}).get("step", 0)
                events.put((idx, os.getpid(), trial.name, start))
                loss = 1.0
                for step in range(start, STEPS):
                    time.sleep(0.05)  # one training step
                    loss *= 0.9
                    trial.set_data({"step": step + 1})  # progress, with the renewal
                with conn.transaction():
                    trial.fence(conn)  # still ours? then no takeover before commit
                    conn.execute(
                        f"INSERT INTO {schema}.results (trial, loss, token, worker) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (trial) DO NOTHING",
                        (trial.name, loss, trial.token, idx),
                    )
                trial.complete()


def main() -> int:
    url = database_url()
    schema = "hpo_" + uuid.uuid4().hex[:8]
    locks = pglock.connect(url, schema=schema)
    locks.migrate()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            f"CREATE TABLE {schema}.results (trial text PRIMARY KEY, loss float8, token bigint, worker int)"
        )
        locks.lease_pool("sweep").add(TRIALS)

        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(url, schema, i, events)) for i in range(3)]
        for p in procs:
            p.start()

        # Kill worker 0 once it is a few steps into its first trial.
        killed_trial = None
        resumed = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            idx, pid, name, start = events.get(timeout=60)
            print(f"worker-{idx} claimed {name} at step {start}" + (" (resumed)" if start else ""))
            if start and name == killed_trial:
                resumed = (idx, start)
            if idx == 0 and killed_trial is None:
                while True:
                    row = admin.execute(
                        f"SELECT data FROM {schema}.leases WHERE pool = 'sweep' AND name = %s", (name,)
                    ).fetchone()
                    if row[0] and row[0].get("step", 0) >= 3:
                        break
                    time.sleep(0.02)
                os.kill(pid, signal.SIGKILL)
                killed_trial = name
                print(f"SIGKILL worker-0 in the middle of {name} (step {row[0]['step']})")
            if resumed:
                break
        for p in procs:
            p.join(120)

        results = admin.execute(
            f"SELECT trial, count(*) FROM {schema}.results GROUP BY trial ORDER BY trial"
        ).fetchall()
        status = locks.lease_pool("sweep").status()
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
    print(f"results: {len(results)} trials, {status.done} done")
    ok = (
        sorted(t for t, _ in results) == sorted(TRIALS)
        and all(n == 1 for _, n in results)
        and status.done == len(TRIALS)
        and resumed is not None
    )
    if resumed:
        print(f"{killed_trial} was resumed by worker-{resumed[0]} from step {resumed[1]}")
    print("every trial has exactly one result" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
