"""pglock: distributed locks, fenced leases, lease pools and semaphores on
PostgreSQL, on the Rust core of the ``pglock`` crate.

>>> locks = pglock.connect("postgres://...", holder="gpu-07")   # doctest: +SKIP
>>> locks.migrate()                                              # doctest: +SKIP
>>> with locks.lease("shard-17", ttl=30) as lease:               # doctest: +SKIP
...     ...
"""

from __future__ import annotations

from typing import Optional

from ._native import (
    DEFAULT_SCHEMA,
    ELECTION_PREFIX,
    MAX_NAME_BYTES,
    MAX_SET_SIZE,
    Advisory,
    AdvisoryAll,
    AdvisoryGuard,
    AdvisorySet,
    Claim,
    Claims,
    DatabaseError,
    Election,
    Error,
    InvalidInput,
    Leader,
    Leadership,
    Lease,
    LeaseAll,
    LeaseInfo,
    LeaseLost,
    LeasePool,
    LeaseRequest,
    LeaseSet,
    Locks,
    Observer,
    Permit,
    PoolDrained,
    PoolItem,
    PoolLease,
    PoolStatus,
    RateLimiter,
    Semaphore,
    Timeout,
)

__all__ = [
    "DEFAULT_SCHEMA",
    "ELECTION_PREFIX",
    "MAX_NAME_BYTES",
    "MAX_SET_SIZE",
    "Advisory",
    "AdvisoryAll",
    "AdvisoryGuard",
    "AdvisorySet",
    "Claim",
    "Claims",
    "DatabaseError",
    "Election",
    "Error",
    "InvalidInput",
    "Leader",
    "Leadership",
    "Lease",
    "LeaseAll",
    "LeaseInfo",
    "LeaseLost",
    "LeasePool",
    "LeaseRequest",
    "LeaseSet",
    "Locks",
    "Observer",
    "Permit",
    "PoolDrained",
    "PoolItem",
    "PoolLease",
    "PoolStatus",
    "RateLimiter",
    "Semaphore",
    "Timeout",
    "connect",
]


def connect(
    url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    holder: Optional[str] = None,
    max_sessions: Optional[int] = None,
    statement_connections: Optional[int] = None,
) -> Locks:
    """A :class:`Locks` handle on the database at ``url``.

    Nothing is sent until the first operation; the schema, holder and limits
    are checked now (``InvalidInput``). ``holder`` labels lease rows
    (default ``hostname:pid``). The handle is cheap to share across threads;
    a forked child that uses it gets connections of its own.
    """
    return Locks(
        url,
        schema=schema,
        holder=holder,
        max_sessions=max_sessions,
        statement_connections=statement_connections,
    )
