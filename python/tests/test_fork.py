"""A forked child (multiprocessing 'fork', DataLoader workers, Celery
prefork) using its parent's Locks works on connections of its own, never
touches what the parent holds, and never hangs."""

import multiprocessing
import os
import queue
import time

import pytest

import pglock
from conftest import held_by


def _child(locks, parents_lease, results):
    try:
        out = {}
        # The parent holds "p": the child sees it held, through its own connections.
        out["p_free"] = locks.lease("p").try_acquire() is not None
        with locks.lease("c", ttl=5) as mine:
            out["c_token"] = mine.token
        with locks.advisory("child-lock"):
            out["advisory"] = True
        try:
            parents_lease.renew()
            out["parents_lease"] = "usable"
        except pglock.Error as e:
            out["parents_lease"] = f"refused: {e}"
        del parents_lease  # must not release the parent's lease
        results.put(out)
    except BaseException as e:  # report, never hang the parent
        results.put({"error": repr(e)})
        raise


def _result_of(child, results, limit=60):
    """The child's report, or a failure naming its exit code as soon as it
    dies without one (a crash must not look like a 60 s hang)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=0.2)
        except queue.Empty:
            if not child.is_alive():
                child.join()
                pytest.fail(f"forked child died without a report, exit code {child.exitcode}")
    pytest.fail(f"forked child gave no report within {limit} s")


def _busy_child(locks, n, results):
    try:
        with locks.lease(f"child-{n}", ttl=5) as mine:
            results.put(mine.token)
    except BaseException as e:
        results.put(repr(e))
        raise


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forks_of_a_busy_parent_all_start_cleanly(locks):
    """Twelve forks, one after another, of a parent whose runtime is busy
    (kept-alive leases, a blocking-pool thread): every child starts its own
    runtime and threads and gets a lease. Catches process-global state
    (a lock table, a parked thread's record) inherited across fork."""
    ctx = multiprocessing.get_context("fork")
    held = [locks.lease(f"parent-{i}", ttl=2).acquire() for i in range(4)]
    try:
        for n in range(12):
            results = ctx.Queue()
            child = ctx.Process(target=_busy_child, args=(locks, n, results))
            child.start()
            token = _result_of(child, results)
            child.join(60)
            assert child.exitcode == 0, token
            assert isinstance(token, int), token
        assert not any(lease.lost for lease in held)
    finally:
        for lease in held:
            lease.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_fresh_connections(locks, admin, schema):
    ctx = multiprocessing.get_context("fork")
    lease = locks.lease("p", ttl=30).acquire()
    with locks.advisory("parent-lock"):
        results = ctx.Queue()
        child = ctx.Process(target=_child, args=(locks, lease, results))
        child.start()
        out = _result_of(child, results)
        child.join(60)
    assert child.exitcode == 0, out
    assert out.get("p_free") is False, out
    assert out["c_token"] > lease.token
    assert out["advisory"]
    assert out["parents_lease"].startswith("refused: ") and "parent" in out["parents_lease"]
    # The parent's lease and connections are untouched.
    assert not lease.lost
    lease.renew()
    assert held_by(admin, schema, "p") == "pytest"
    with locks.lease("c", ttl=5):
        pass
    lease.release()
