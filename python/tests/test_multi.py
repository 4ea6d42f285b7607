"""Several locks at once (advisory_all, lease_all), leader election with
observers, and lock-delay, from Python."""

import asyncio
import threading
import time

import psycopg
import psycopg2
import pytest

import pglock
from conftest import eventually, expire, held_by


def advisory_held_by(admin, pid):
    """How many advisory locks the server session ``pid`` holds."""
    return admin.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s",
        (pid,),
    ).fetchone()[0]


def test_advisory_all_holds_every_key_on_one_session(locks, other, admin):
    with locks.advisory_all(["mem/b", "mem/a", 3], timeout=5) as guards:
        assert isinstance(guards, pglock.AdvisorySet)
        assert guards.keys == ["mem/b", "mem/a", "3"]
        assert guards.numeric_keys == sorted(guards.numeric_keys)
        assert len(guards.numeric_keys) == 3 and 3 in guards.numeric_keys
        assert guards.locked() and not guards.shared
        assert advisory_held_by(admin, guards.pid) == 3
        for key in ("mem/a", "mem/b", 3):
            assert other.advisory(key).try_lock() is None
    assert not guards.locked()
    assert eventually(lambda: advisory_held_by(admin, guards.pid) == 0)
    for key in ("mem/a", "mem/b", 3):
        g = other.advisory(key).try_lock()
        assert g is not None
        g.release()


def test_advisory_all_is_all_or_none(locks, other, admin):
    with other.advisory("mem/b"):
        with pytest.raises(pglock.Timeout, match="mem/b"):
            locks.advisory_all(["mem/a", "mem/b", "mem/c"]).lock(timeout=0.3)
        # Whatever the set took before it timed out is not held.
        g = other.advisory("mem/a").try_lock()
        assert g is not None
        g.release()
    s = locks.advisory_all(["mem/a", "mem/b"]).lock(timeout=5)
    s.release()
    assert not s.locked()


def test_advisory_all_async_and_cancelled(locks, other):
    async def main():
        async with locks.advisory_all(["x", "y"]) as guards:
            assert isinstance(guards, pglock.AdvisorySet)
            assert other.advisory("x").try_lock() is None
        blocker = other.advisory("y").lock()
        task = asyncio.ensure_future(locks.advisory_all(["x", "y"]).alock())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        blocker.release()

    asyncio.run(main())
    assert eventually(lambda: _free(other, "x") and _free(other, "y"))


def _free(locks, key):
    g = locks.advisory(key).try_lock()
    if g is None:
        return False
    g.release()
    return True


def test_lease_all_takes_every_name_once_in_byte_order(locks, other, admin, schema, url):
    with locks.lease_all(["shard-7", "shard-1", "shard-7"], ttl=30, timeout=5) as leases:
        assert isinstance(leases, pglock.LeaseSet)
        assert leases.names == ["shard-1", "shard-7"] and len(leases) == 2
        tokens = leases.tokens
        assert set(tokens) == {"shard-1", "shard-7"} and all(t > 0 for t in tokens.values())
        assert [lease.token for lease in leases.leases] == [tokens["shard-1"], tokens["shard-7"]]
        assert held_by(admin, schema, "shard-1") == "pytest"
        assert held_by(admin, schema, "shard-7") == "pytest"
        assert other.lease("shard-7").try_acquire() is None
        assert not leases.lost
        with psycopg.connect(url) as conn, conn.transaction():
            leases.fence(conn)
        conn2 = psycopg2.connect(url)
        try:
            leases.fence(conn2)
            conn2.commit()
        finally:
            conn2.close()
    assert held_by(admin, schema, "shard-1") is None
    assert held_by(admin, schema, "shard-7") is None


def test_lease_all_is_all_or_none(locks, other, admin, schema):
    with other.lease("shard-7"):
        with pytest.raises(pglock.Timeout):
            locks.lease_all(["shard-1", "shard-7"]).acquire(timeout=0.3)
        assert eventually(lambda: held_by(admin, schema, "shard-1") is None)


def test_lease_all_fence_refuses_after_a_takeover(locks, other, admin, schema, url):
    with pytest.raises(pglock.LeaseLost, match="shard-7"):
        with locks.lease_all(["shard-1", "shard-7"], ttl=30) as leases:
            expire(admin, schema, "shard-7")
            newer = other.lease("shard-7").acquire(timeout=5)
            assert newer.token > leases.tokens["shard-7"]
            with psycopg.connect(url) as conn:
                with pytest.raises(pglock.LeaseLost, match="shard-7"):
                    with conn.transaction():
                        leases.fence(conn)
            assert leases.lost
            assert not leases.leases[0].lost  # shard-1 is still ours
    # The block's exit released shard-1 and raised LeaseLost for shard-7.
    assert held_by(admin, schema, "shard-1") is None
    assert held_by(admin, schema, "shard-7") == "other"
    newer.release()


def test_lease_all_async(locks, other, url):
    async def main():
        async with locks.lease_all(["a", "b"], ttl=30) as leases:
            assert other.lease("b").try_acquire() is None
            async with await psycopg.AsyncConnection.connect(url) as conn:
                async with conn.transaction():
                    await leases.afence(conn)
        assert (await other.lease("a").atry_acquire()) is not None

    asyncio.run(main())


def test_election_campaign_leader_resign_and_observe(locks, other):
    election = locks.election("coord", ttl=5)
    assert election.lease_name == pglock.ELECTION_PREFIX + "coord"
    assert election.leader() is None
    observer = other.election("coord").observe()
    assert observer.next(timeout=0.2) is None  # nobody leads yet
    with election.campaign("10.0.0.7:29500") as lead:
        assert isinstance(lead, pglock.Leadership) and isinstance(lead, pglock.Lease)
        assert lead.value == "10.0.0.7:29500" and lead.name == "election/coord"
        leader = other.election("coord").leader()
        assert (leader.value, leader.token, leader.holder) == ("10.0.0.7:29500", lead.token, "pytest")
        seen = observer.next(timeout=5)
        assert (seen.value, seen.token) == ("10.0.0.7:29500", lead.token)
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("b", other.election("coord").campaign("b")))
        t.start()
        time.sleep(0.2)
        assert "b" not in got  # one leader at a time
    t.join(5)
    second = got["b"]
    assert second.token > lead.token
    seen = observer.next(timeout=5)
    assert (seen.value, seen.token) == ("b", second.token)
    # A late observer sees the current leader first.
    assert locks.election("coord").observe().next(timeout=5).token == second.token
    second.resign()
    assert eventually(lambda: locks.election("coord").leader() is None)


def test_election_async(locks, other):
    async def main():
        election = locks.election("coord-async", ttl=5)
        lead = await election.acampaign("me")
        leader = await other.election("coord-async").aleader()
        assert leader.token == lead.token
        async for seen in other.election("coord-async").observe():
            assert seen.token == lead.token
            break
        await lead.aresign()
        assert (await election.aleader()) is None

    asyncio.run(main())


def test_lock_delay_keeps_an_expired_lease_from_the_next_holder(locks, other, admin, schema):
    lease = locks.lease("gpu-3", ttl=30, lock_delay=3).acquire()
    expire(admin, schema, "gpu-3")  # its holder "died": 1 s past expiry
    assert other.lease("gpu-3").try_acquire() is None
    info = [i for i in locks.leases() if i.name == "gpu-3"][0]
    assert info.delayed_until is not None and info.delayed_until > info.expires_at
    started = time.monotonic()
    nxt = other.lease("gpu-3", timeout=10).acquire()
    assert time.monotonic() - started > 0.5
    assert nxt.token > lease.token
    nxt.release()
    with pytest.raises(pglock.LeaseLost, match="gpu-3"):
        lease.renew()  # the "dead" holder finds out at its next renewal
    assert lease.lost


def test_pool_items_show_an_expired_item_in_its_lock_delay(locks, admin, schema):
    pool = locks.lease_pool("delayed-shards")
    pool.add(["s0", "s1"])
    item = pool.claim(lock_delay=60).acquire()
    n = admin.execute(
        f'UPDATE "{schema}".leases SET expires_at = clock_timestamp() - interval \'1 second\' '
        "WHERE pool = 'delayed-shards' AND name = %s AND owner IS NOT NULL",
        (item.name,),
    ).rowcount
    assert n == 1
    by_name = {i.name: i for i in pool.items()}
    delayed = by_name[item.name]
    assert not delayed.held and not delayed.done
    assert delayed.delayed_until is not None and delayed.delayed_until > delayed.expires_at
    free = [i for name, i in by_name.items() if name != item.name][0]
    assert free.delayed_until is None and not free.held
    assert pool.status().delayed == 1


def test_lock_delay_never_delays_a_release(locks, other):
    locks.lease("gpu-4", lock_delay=30).acquire().release()
    nxt = other.lease("gpu-4").try_acquire()
    assert nxt is not None
    nxt.release()
    permit = locks.semaphore("gpus", 1, lock_delay=30).acquire()
    permit.release()
    assert other.semaphore("gpus", 1).try_acquire() is not None


def test_lock_delay_on_pool_claims(locks, other, admin, schema):
    pool = locks.lease_pool("trials")
    pool.add(["t1"])
    item = pool.claim(ttl=30, lock_delay=3).acquire()
    n = admin.execute(
        f'UPDATE "{schema}".leases SET expires_at = clock_timestamp() - interval \'1 second\' '
        "WHERE pool = 'trials' AND name = 't1' AND owner IS NOT NULL"
    ).rowcount
    assert n == 1
    assert other.lease_pool("trials").claim().try_acquire() is None
    again = other.lease_pool("trials").claim(timeout=10).acquire()
    assert again.name == "t1" and again.token > item.token
    again.release()
