"""Bad input raises InvalidInput naming the field, before any SQL runs:
these handles point at a port where nothing listens, so any SQL sent would
fail with DatabaseError instead."""

import asyncio
import socket

import pytest

import pglock


@pytest.fixture
def nowhere():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return pglock.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")


LONG = "x" * (pglock.MAX_NAME_BYTES + 1)
BAD_NAMES = [("", "empty"), ("a\0b", "NUL"), (LONG, "oversized"), (17, "int"), (None, "None"), (b"x", "bytes")]
BAD_SECONDS = [0, -1, -0.5, float("nan"), float("inf"), "5", True, [1]]


def test_nothing_listens_there(nowhere):
    with pytest.raises(pglock.DatabaseError):
        nowhere.lease("ok").try_acquire()


@pytest.mark.parametrize("name,why", BAD_NAMES, ids=[w for _, w in BAD_NAMES])
def test_bad_lease_names(nowhere, name, why):
    with pytest.raises(pglock.InvalidInput, match="lease name"):
        nowhere.lease(name).acquire()
    with pytest.raises(pglock.InvalidInput, match="lease name"):
        nowhere.lease(name).try_acquire()


@pytest.mark.parametrize("name,why", BAD_NAMES, ids=[w for _, w in BAD_NAMES])
def test_bad_pool_and_item_names(nowhere, name, why):
    with pytest.raises(pglock.InvalidInput, match="pool name"):
        nowhere.lease_pool(name).claim().try_acquire()
    if isinstance(name, str) or name is None or isinstance(name, (int, bytes)):
        with pytest.raises(pglock.InvalidInput, match="item"):
            nowhere.lease_pool("ok").add(["fine", name])


@pytest.mark.parametrize("ttl", BAD_SECONDS, ids=repr)
def test_bad_ttl(nowhere, ttl):
    with pytest.raises(pglock.InvalidInput, match="ttl"):
        nowhere.lease("ok", ttl=ttl).acquire()
    with pytest.raises(pglock.InvalidInput, match="ttl"):
        nowhere.lease_pool("ok").claim(ttl=ttl).acquire()
    with pytest.raises(pglock.InvalidInput, match="ttl"):
        nowhere.semaphore("ok", 2, ttl=ttl).acquire()


@pytest.mark.parametrize("ttl", [0.05, 31 * 24 * 3600], ids=["too short", "too long"])
def test_ttl_out_of_range(nowhere, ttl):
    with pytest.raises(pglock.InvalidInput, match="ttl"):
        nowhere.lease("ok", ttl=ttl).acquire()


@pytest.mark.parametrize("timeout", BAD_SECONDS, ids=repr)
def test_bad_timeout(nowhere, timeout):
    with pytest.raises(pglock.InvalidInput, match="timeout"):
        nowhere.lease("ok").acquire(timeout=timeout)
    with pytest.raises(pglock.InvalidInput, match="timeout"):
        nowhere.advisory("ok", timeout=timeout).lock()


@pytest.mark.parametrize("key", ["", "a\0b", LONG, 2**64, 1.5, None], ids=repr)
def test_bad_advisory_keys(nowhere, key):
    with pytest.raises(pglock.InvalidInput, match="key"):
        nowhere.advisory(key).try_lock()


def test_bad_semaphore_and_rate(nowhere):
    with pytest.raises(pglock.InvalidInput, match="permits"):
        nowhere.semaphore("s", 0).try_acquire()
    with pytest.raises(pglock.InvalidInput, match="permits"):
        nowhere.semaphore("s", -1)
    with pytest.raises(pglock.InvalidInput, match="permits"):
        nowhere.semaphore("s", "4")
    with pytest.raises(pglock.InvalidInput, match="per"):
        nowhere.rate_limiter("r", 5, per=0)
    with pytest.raises(pglock.InvalidInput, match=r"\bn\b"):
        nowhere.rate_limiter("r", 0, per=1).try_acquire()


def test_bad_data(nowhere):
    with pytest.raises(pglock.InvalidInput, match="data"):
        nowhere.lease("ok", data=object())
    with pytest.raises(pglock.InvalidInput, match="data"):
        nowhere.lease("ok", data="x" * (70 * 1024)).acquire()


def test_bad_connect_arguments():
    with pytest.raises(pglock.InvalidInput, match="schema"):
        pglock.connect("postgresql://localhost/x", schema='bad"; DROP')
    with pytest.raises(pglock.InvalidInput, match="schema"):
        pglock.connect("postgresql://localhost/x", schema="")
    with pytest.raises(pglock.InvalidInput, match="url"):
        pglock.connect("mysql://localhost/x")
    with pytest.raises(pglock.InvalidInput, match="url"):
        pglock.connect(5)


def test_async_forms_check_input_too(nowhere):
    async def main():
        with pytest.raises(pglock.InvalidInput, match="lease name"):
            await nowhere.lease("").aacquire()
        with pytest.raises(pglock.InvalidInput, match="ttl"):
            await nowhere.lease("ok", ttl=-1).aacquire()

    asyncio.run(main())


BAD_SETS = [([], "empty"), ((), "empty tuple"), ("abc", "one str"), (5, "not iterable")]


@pytest.mark.parametrize("keys,why", BAD_SETS, ids=[w for _, w in BAD_SETS])
def test_bad_advisory_sets(nowhere, keys, why):
    with pytest.raises(pglock.InvalidInput, match="advisory keys"):
        nowhere.advisory_all(keys)


@pytest.mark.parametrize("names,why", BAD_SETS, ids=[w for _, w in BAD_SETS])
def test_bad_lease_sets(nowhere, names, why):
    with pytest.raises(pglock.InvalidInput, match="lease names"):
        nowhere.lease_all(names)


def test_bad_set_members_and_terms(nowhere):
    with pytest.raises(pglock.InvalidInput, match="key"):
        nowhere.advisory_all(["ok", 1.5])
    with pytest.raises(pglock.InvalidInput, match="key"):
        nowhere.advisory_all(["ok", ""]).lock()
    with pytest.raises(pglock.InvalidInput, match="lease names"):
        nowhere.lease_all(["k"] * (pglock.MAX_SET_SIZE + 1))
    with pytest.raises(pglock.InvalidInput, match="lease name"):
        nowhere.lease_all(["ok", ""]).acquire()
    with pytest.raises(pglock.InvalidInput, match="lease name"):
        nowhere.lease_all(["ok", 7])
    with pytest.raises(pglock.InvalidInput, match="ttl"):
        nowhere.lease_all(["ok"], ttl=-1)
    with pytest.raises(pglock.InvalidInput, match="timeout"):
        nowhere.advisory_all(["ok"]).lock(timeout=0)


def test_bad_election_input(nowhere):
    with pytest.raises(pglock.InvalidInput, match="election name"):
        nowhere.election("").campaign("v")
    with pytest.raises(pglock.InvalidInput, match="election name"):
        nowhere.election(None)
    with pytest.raises(pglock.InvalidInput, match="ttl"):
        nowhere.election("e", ttl=0)
    with pytest.raises(pglock.InvalidInput, match="value"):
        nowhere.election("e").campaign(5)
    with pytest.raises(pglock.InvalidInput, match="election name"):
        nowhere.election("").leader()


@pytest.mark.parametrize("delay", [-1, -0.5, float("nan"), float("inf"), "5", True, [1]], ids=repr)
def test_bad_lock_delay(nowhere, delay):
    with pytest.raises(pglock.InvalidInput, match="lock_delay"):
        nowhere.lease("ok", lock_delay=delay)
    with pytest.raises(pglock.InvalidInput, match="lock_delay"):
        nowhere.lease_pool("ok").claim(lock_delay=delay)
    with pytest.raises(pglock.InvalidInput, match="lock_delay"):
        nowhere.semaphore("ok", 2, lock_delay=delay)


def test_lock_delay_out_of_range_is_refused_before_sql(nowhere):
    with pytest.raises(pglock.InvalidInput, match="lock_delay"):
        nowhere.lease("ok", lock_delay=31 * 24 * 3600).acquire()
