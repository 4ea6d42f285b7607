"""Fenced writes on the caller's own connection, across a takeover from a
stalled holder, with each supported driver."""

import contextlib

import psycopg
import psycopg2
import pytest
import sqlalchemy
from sqlalchemy.orm import Session

import pglock
from conftest import expire


@pytest.fixture
def table(admin):
    admin.execute("CREATE TABLE IF NOT EXISTS fenced (id int PRIMARY KEY, writer text, token bigint)")
    admin.execute("DELETE FROM fenced")
    admin.execute("INSERT INTO fenced VALUES (1, 'nobody', 0)")
    return "fenced"


def sa_url(url: str, driver: str) -> str:
    return url.replace("postgresql://", f"postgresql+{driver}://", 1)


@contextlib.contextmanager
def psycopg3_conn(url):
    with psycopg.connect(url) as conn:  # autocommit off: the fence opens the transaction
        yield conn, lambda sql, p: conn.execute(sql, p), conn.commit, conn.rollback


@contextlib.contextmanager
def psycopg3_cursor(url):
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        tx = conn.transaction()
        tx.__enter__()
        state = {"tx": tx}

        def end(ok):
            state["tx"].__exit__(None if ok else Exception, None, None)

        yield cur, lambda sql, p: cur.execute(sql, p), lambda: end(True), lambda: end(False)


@contextlib.contextmanager
def psycopg2_conn(url):
    conn = psycopg2.connect(url)
    try:
        def run(sql, p):
            with conn.cursor() as c:
                c.execute(sql, p)
        yield conn, run, conn.commit, conn.rollback
    finally:
        conn.close()


@contextlib.contextmanager
def sa_connection(url):
    engine = sqlalchemy.create_engine(sa_url(url, "psycopg"))
    try:
        with engine.connect() as conn:
            def run(sql, p):
                conn.execute(sqlalchemy.text(sql.replace("%s", ":a", 1).replace("%s", ":b", 1)),
                             {"a": p[0], "b": p[1]})
            yield conn, run, conn.commit, conn.rollback
    finally:
        engine.dispose()


@contextlib.contextmanager
def sa_session(url):
    engine = sqlalchemy.create_engine(sa_url(url, "psycopg2"))
    try:
        with Session(engine) as s:
            def run(sql, p):
                s.execute(sqlalchemy.text(sql.replace("%s", ":a", 1).replace("%s", ":b", 1)),
                          {"a": p[0], "b": p[1]})
            yield s, run, s.commit, s.rollback
    finally:
        engine.dispose()


DRIVERS = [psycopg3_conn, psycopg3_cursor, psycopg2_conn, sa_connection, sa_session]
UPDATE = "UPDATE fenced SET writer = %s, token = %s WHERE id = 1"


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.__name__)
def test_stalled_holder_cannot_write_after_takeover(driver, locks, other, admin, schema, url, table):
    stalled = locks.lease("shard-17", ttl=30).acquire()
    # The stalled holder missed its renewals: the lease expired on the server.
    expire(admin, schema, "shard-17")
    with other.lease("shard-17", ttl=30) as fresh:
        assert fresh.token > stalled.token
        with driver(url) as (conn, run, commit, rollback):
            fresh.fence(conn)
            run(UPDATE, ("fresh", fresh.token))
            commit()
        # The stalled holder wakes up and tries its late write.
        with driver(url) as (conn, run, commit, rollback):
            with pytest.raises(pglock.LeaseLost, match=r'"shard-17" lost \(token'):
                stalled.fence(conn)
            rollback()
        assert stalled.lost
        with pytest.raises(pglock.LeaseLost):
            stalled.renew()
    assert admin.execute("SELECT writer, token FROM fenced").fetchone() == ("fresh", fresh.token)


def test_open_fence_keeps_a_newer_holder_out_until_commit(locks, other, admin, schema, url, table):
    lease = locks.lease("shard-9", ttl=30).acquire()
    with psycopg.connect(url) as conn:
        lease.fence(conn)
        conn.execute(UPDATE, ("first", lease.token))
        expire(admin, schema, "shard-9")
        # Expired, but the fenced transaction still holds the row: no takeover yet.
        assert other.lease("shard-9").try_acquire() is None
        conn.commit()
    newer = other.lease("shard-9", timeout=5).acquire()
    assert newer.token > lease.token
    with pytest.raises(pglock.LeaseLost):
        lease.release()  # taken over: ours no more
    newer.release()
    assert admin.execute("SELECT writer FROM fenced").fetchone() == ("first",)


@pytest.mark.parametrize("kind", ["psycopg", "psycopg-cursor", "psycopg2", "sqlalchemy"])
def test_fence_refuses_a_connection_outside_a_transaction(kind, locks, url, admin):
    with locks.lease("x") as lease:
        if kind.startswith("psycopg") and kind != "psycopg2":
            conn = psycopg.connect(url, autocommit=True)
            target = conn.cursor() if kind == "psycopg-cursor" else conn
        elif kind == "psycopg2":
            conn = psycopg2.connect(url)
            conn.autocommit = True
            target = conn
        else:
            engine = sqlalchemy.create_engine(sa_url(url, "psycopg"), isolation_level="AUTOCOMMIT")
            conn = engine.connect()
            target = conn
        try:
            with pytest.raises(pglock.InvalidInput, match="conn.*transaction"):
                lease.fence(target)
        finally:
            conn.close()
        assert not lease.lost


def test_fence_refuses_other_objects(locks):
    with locks.lease("x") as lease:
        with pytest.raises(pglock.InvalidInput, match="conn"):
            lease.fence(object())


def test_afence_on_async_connection(locks, other, admin, schema, url, table):
    import asyncio

    async def main():
        stalled = await locks.lease("a", ttl=30).aacquire()
        expire(admin, schema, "a")
        fresh = await other.lease("a").aacquire()
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await fresh.afence(conn)
            await conn.execute(UPDATE, ("fresh", fresh.token))
            await conn.commit()
            with pytest.raises(pglock.LeaseLost):
                await stalled.afence(conn)
            await conn.rollback()
        await fresh.arelease()

    asyncio.run(main())
    assert admin.execute("SELECT writer FROM fenced").fetchone() == ("fresh",)
