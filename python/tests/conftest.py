"""Fixtures: a real PostgreSQL (``$DATABASE_URL``, else a throwaway cluster
started for the session), and a freshly migrated schema per test."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Iterator

import psycopg
import pytest

import pglock
from pglock._testing import database_url


@pytest.fixture(scope="session")
def url() -> str:
    return database_url()


@pytest.fixture
def schema() -> str:
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
def locks(url: str, schema: str) -> pglock.Locks:
    locks = pglock.connect(url, schema=schema, holder="pytest")
    locks.migrate()
    return locks


@pytest.fixture
def other(url: str, schema: str, locks: pglock.Locks) -> pglock.Locks:
    """A second, independent handle on the same schema (another 'process')."""
    return pglock.connect(url, schema=schema, holder="other")


@pytest.fixture
def admin(url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def eventually(check: Callable[[], bool], within: float = 3.0) -> bool:
    """Whether ``check()`` becomes true within ``within`` seconds (for
    effects that happen in the background, like a release on drop)."""
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def expire(admin: psycopg.Connection, schema: str, name: str) -> None:
    """Makes lease ``name`` expired by the database clock (a stalled holder
    that missed its renewals), without waiting out its TTL."""
    n = admin.execute(
        f'UPDATE "{schema}".leases SET expires_at = clock_timestamp() - interval \'1 second\' '
        "WHERE pool = '' AND name = %s AND owner IS NOT NULL",
        (name,),
    ).rowcount
    assert n == 1, f"lease {name!r} was not held"


def held_by(admin: psycopg.Connection, schema: str, name: str):
    """The holder label of lease ``name`` if held by the database clock."""
    row = admin.execute(
        f'SELECT holder FROM "{schema}".leases WHERE pool = \'\' AND name = %s '
        "AND owner IS NOT NULL AND expires_at > clock_timestamp()",
        (name,),
    ).fetchone()
    return row[0] if row else None
