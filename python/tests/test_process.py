"""What a Python process needs: the GIL released while waiting, keep-alive
in the Rust core while the interpreter is busy, garbage collection
releasing, and exclusion across processes."""

import gc
import multiprocessing
import threading
import time

import psycopg

import pglock
from conftest import eventually, held_by


def test_waiting_releases_the_gil(locks, other):
    holder = locks.lease("gil").acquire()
    started = threading.Event()
    outcome = {}

    def waiter():
        started.set()
        try:
            other.lease("gil", timeout=1.0).acquire()
        except pglock.Timeout as e:
            outcome["timeout"] = e

    t = threading.Thread(target=waiter)
    t.start()
    started.wait()
    count = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # pure Python: needs the GIL
        count += 1
    t.join()
    holder.release()
    assert "timeout" in outcome
    assert count > 10_000, f"main thread made only {count} steps while the other waited"


def test_two_threads_waiting_both_progress(locks, other):
    a = locks.lease("g1").acquire()
    b = locks.lease("g2").acquire()
    got = []

    def wait_for(name):
        lease = other.lease(name, timeout=10).acquire()
        got.append(name)
        lease.release()

    threads = [threading.Thread(target=wait_for, args=(n,)) for n in ("g1", "g2")]
    for t in threads:
        t.start()
    b.release()
    assert eventually(lambda: got == ["g2"])
    a.release()
    for t in threads:
        t.join()
    assert got == ["g2", "g1"]


def test_keep_alive_survives_a_busy_interpreter(locks, other, admin, schema, url):
    with locks.lease("busy", ttl=1) as lease:
        first = lease.expires_at
        end = time.monotonic() + 3  # 3x the TTL, spinning in pure Python
        while time.monotonic() < end:
            pass
        assert not lease.lost and held_by(admin, schema, "busy") == "pytest"
        time.sleep(3)  # 3x the TTL inside a C call
        assert not lease.lost and held_by(admin, schema, "busy") == "pytest"
        assert lease.expires_at > first
        assert other.lease("busy").try_acquire() is None
        with psycopg.connect(url) as conn:
            lease.fence(conn)


def test_garbage_collected_lease_is_released(locks, other, admin, schema):
    lease = locks.lease("gc", ttl=60).acquire()
    assert held_by(admin, schema, "gc") == "pytest"
    del lease
    gc.collect()
    assert eventually(lambda: held_by(admin, schema, "gc") is None, within=1.0)
    assert other.lease("gc").try_acquire() is not None


def test_garbage_collected_guard_is_released(locks, other):
    guard = locks.advisory("gc-advisory").lock()
    assert other.advisory("gc-advisory").try_lock() is None
    del guard
    gc.collect()

    def free():
        g = other.advisory("gc-advisory").try_lock()
        if g is None:
            return False
        g.release()
        return True

    assert eventually(free, within=1.0)


def _count_under_lock(url, schema, kind, rounds):
    locks = pglock.connect(url, schema=schema)
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(rounds):
            scope = locks.advisory("counter") if kind == "advisory" else locks.lease("counter", ttl=10)
            with scope:
                (n,) = conn.execute("SELECT n FROM counter").fetchone()
                time.sleep(0.001)  # widen the window a missing lock would expose
                conn.execute("UPDATE counter SET n = %s", (n + 1,))


def test_exclusion_across_processes(locks, admin, schema, url):
    ctx = multiprocessing.get_context("spawn")
    for kind in ("advisory", "lease"):
        admin.execute("DROP TABLE IF EXISTS counter")
        admin.execute("CREATE TABLE counter (n int)")
        admin.execute("INSERT INTO counter VALUES (0)")
        procs = [ctx.Process(target=_count_under_lock, args=(url, schema, kind, 25)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        assert admin.execute("SELECT n FROM counter").fetchone() == (100,), kind
