"""A forked child (multiprocessing 'fork', DataLoader workers, Celery
prefork) using its parent's Locks works on connections of its own, never
touches what the parent holds, and never hangs."""

import multiprocessing
import os

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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_fresh_connections(locks, admin, schema):
    ctx = multiprocessing.get_context("fork")
    lease = locks.lease("p", ttl=30).acquire()
    with locks.advisory("parent-lock"):
        results = ctx.Queue()
        child = ctx.Process(target=_child, args=(locks, lease, results))
        child.start()
        out = results.get(timeout=60)
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
