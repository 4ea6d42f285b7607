"""The API from Python: leases, pools, semaphores, rate limits, advisory."""

import datetime

import pytest

import pglock
from conftest import eventually, held_by


def test_lease_with_block_holds_then_releases(locks, other, admin, schema):
    with locks.lease("shard-17", ttl=30) as lease:
        assert isinstance(lease, pglock.Lease)
        assert lease.name == "shard-17" and lease.token > 0 and not lease.lost
        assert lease.holder == "pytest"
        assert isinstance(lease.expires_at, datetime.datetime)
        assert 0 < lease.remaining() <= 30
        assert held_by(admin, schema, "shard-17") == "pytest"
        assert other.lease("shard-17").try_acquire() is None
        lease.set_data({"step": 1200})
        assert lease.data == {"step": 1200}
        lease.renew()
    assert held_by(admin, schema, "shard-17") is None
    again = other.lease("shard-17").try_acquire()
    assert again is not None and again.token > lease.token
    assert again.data == {"step": 1200}
    again.release()


def test_timeout_raises_timeout_naming_the_lease(locks, other):
    with locks.lease("busy"):
        with pytest.raises(pglock.Timeout, match="busy"):
            other.lease("busy", timeout=0.2).acquire()


def test_pool_claims_until_drained(locks):
    trials = locks.lease_pool("sweep-42")
    assert trials.add(["lr=1e-3", "lr=3e-4"]) == 2
    assert trials.add(["lr=1e-3"]) == 0
    seen = []
    for trial in trials.claims(ttl=60):
        with trial:
            assert isinstance(trial, pglock.PoolLease) and trial.pool == "sweep-42"
            seen.append(trial.name)
            trial.complete()
    assert sorted(seen) == ["lr=1e-3", "lr=3e-4"]
    s = trials.status()
    assert (s.total, s.free, s.held, s.delayed, s.done) == (2, 0, 0, 0, 2)
    with pytest.raises(pglock.PoolDrained):
        trials.claim().acquire()


def test_released_pool_item_is_claimed_again_with_its_progress(locks, other):
    pool = locks.lease_pool("p")
    pool.add(["a"])
    with pool.claim(ttl=30) as item:
        item.set_data({"step": 3})
    again = other.lease_pool("p").claim().try_acquire()
    assert again.name == "a" and again.data == {"step": 3}
    again.complete()


def test_complete_is_only_for_pool_items(locks):
    lease = locks.lease("plain").acquire()
    assert not hasattr(lease, "complete")
    lease.release()


def test_semaphore_admits_n(locks, other):
    sem = locks.semaphore("api", 2)
    with sem as a, sem as b:
        assert isinstance(a, pglock.Permit) and a.name != b.name
        assert other.semaphore("api", 2).try_acquire() is None
    p = other.semaphore("api", 2).try_acquire()
    assert p is not None
    p.release()


def test_rate_limiter_takes_n_per_period(locks):
    limit = locks.rate_limiter("embeddings-api", 3, per=60)
    assert [limit.try_acquire() for _ in range(4)] == [True, True, True, False]
    with pytest.raises(pglock.Timeout):
        limit.acquire(timeout=0.2)


def test_advisory_excludes_and_shared_share(locks, other):
    with locks.advisory("ckpt/run-42", timeout=5) as g:
        assert g.locked() and not g.shared
        assert other.advisory("ckpt/run-42").try_lock() is None
        with pytest.raises(pglock.Timeout, match="ckpt/run-42"):
            other.advisory("ckpt/run-42", timeout=0.2).lock()
    g2 = other.advisory("ckpt/run-42").try_lock()
    assert g2 is not None
    g2.release()
    with locks.advisory(42, shared=True), other.advisory(42, shared=True):
        assert locks.advisory(42).try_lock() is None


def test_request_release_reaches_the_holder(locks, other):
    with locks.lease("leader", ttl=30) as lease:
        assert not lease.release_requested
        assert other.request_release("leader") == lease.token
        assert lease.wait_release_requested(5)
        assert eventually(lambda: lease.release_requested)


def test_leases_lists_rows(locks):
    with locks.lease("listed"):
        rows = [r for r in locks.leases() if r.name == "listed"]
        assert len(rows) == 1 and rows[0].held and rows[0].holder == "pytest"


def test_the_listing_names_whose_data_it_is(locks, other):
    with locks.lease("resume", data={"step": 1800}) as first:
        mine = [r for r in locks.leases() if r.name == "resume"][0]
        assert (mine.data_token, mine.data_holder) == (first.token, "pytest")
    # Taken without data: the previous holder's payload, and the listing says so.
    with other.lease("resume") as second:
        assert second.data == {"step": 1800}
        row = [r for r in locks.leases() if r.name == "resume"][0]
        assert row.token == second.token and row.holder == "other"
        assert (row.data_token, row.data_holder) == (first.token, "pytest")
        second.set_data({"step": 1900})
        row = [r for r in locks.leases() if r.name == "resume"][0]
        assert (row.data_token, row.data_holder) == (second.token, "other")


def test_threads_take_a_hot_lease_in_turn_handed_on_within_one_locks(locks, other):
    """Three threads share `locks` (a release hands the lease straight to
    one of them), a fourth uses `other` (another process, in effect): one
    holder at a time, tokens rising in the order they held it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    guard = threading.Lock()
    holding = []
    turns = []

    def worker(handle):
        for _ in range(10):
            lease = handle.lease("hot", ttl=30, timeout=30).acquire()
            with guard:
                assert not holding, "two holders at once"
                holding.append(lease.token)
                turns.append(lease.token)
            time.sleep(0.001)
            with guard:
                holding.pop()
            lease.release()

    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(worker, h) for h in (locks, locks, locks, other)]:
            f.result()
    assert len(turns) == 40
    assert turns == sorted(turns) and len(set(turns)) == 40
