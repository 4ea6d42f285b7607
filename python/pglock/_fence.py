"""``lease.fence(conn)`` (and ``lease_set.fence(conn)``) on the caller's own connection: psycopg 3
(connection or cursor), psycopg2 (connection or cursor), SQLAlchemy
``Connection`` or ``Session``; ``lease.afence(conn)`` for psycopg's
``AsyncConnection`` / ``AsyncCursor``.

The statement is the crate's own, ``SELECT <schema>.fence(pool, name,
token)``: it raises SQLSTATE ``PGL01`` unless the token holds the lease,
and locks the lease row until the caller's transaction ends. A
``LeaseSet`` fences every token in one statement, ``SELECT
<schema>.fence(u.n, u.t) FROM unnest($1::text[], $2::int8[]) AS u(n, t)``.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

FENCE_FAILED = "PGL01"

_REFUSE = (
    "fence needs a connection inside a transaction (psycopg: autocommit off, or "
    "inside `with conn.transaction()`; SQLAlchemy: not AUTOCOMMIT); in autocommit "
    "mode the row lock would end with the statement"
)


def _kind(obj: Any) -> str:
    mod = type(obj).__module__ or ""
    if mod.startswith("sqlalchemy"):
        return "sqlalchemy"
    if mod.startswith("psycopg2"):
        return "psycopg2"
    if mod.startswith("psycopg"):
        return "psycopg"
    return "?"


def _sqlstate(exc: BaseException) -> Any:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    for e in (exc, orig):
        if e is None:
            continue
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if code:
            return code
    return None


def _driver_in_transaction_or_implicit(dbapi: Any) -> bool:
    """Whether a statement on this DB-API connection runs in a transaction
    that outlives it: one is open, or autocommit is off (the statement
    opens one)."""
    if not getattr(dbapi, "autocommit", False):
        return True
    info = getattr(dbapi, "info", None)  # psycopg 3
    if info is not None:
        return int(info.transaction_status) != 0  # 0: IDLE
    status = getattr(dbapi, "get_transaction_status", None)  # psycopg2
    if status is not None:
        return int(status()) != 0
    return False


def _invalid() -> BaseException:
    from . import InvalidInput

    return InvalidInput(f"invalid conn: {_REFUSE}")


def _unsupported(conn: Any) -> BaseException:
    from . import InvalidInput

    return InvalidInput(
        "invalid conn: must be a psycopg 3 connection or cursor, a psycopg2 "
        "connection or cursor, or a SQLAlchemy Connection or Session, got "
        f"{type(conn).__module__}.{type(conn).__qualname__}"
    )


def _format_style(sql: str) -> str:
    return sql.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s")


def _named_style(sql: str, params: Tuple[Any, ...]) -> Tuple[str, Dict[str, Any]]:
    """``$n`` placeholders as SQLAlchemy's ``:pn``, with the parameters."""
    for i in range(len(params), 0, -1):
        sql = sql.replace(f"${i}", f":p{i}")
    return sql, {f"p{i}": v for i, v in enumerate(params, 1)}


def _message(exc: BaseException) -> str:
    """The server's primary message of a driver error (SQLAlchemy wraps it)."""
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    return getattr(diag, "message_primary", None) or str(orig)


def _refused(lease: Any, exc: BaseException) -> None:
    err = lease._fence_refused(_message(exc))
    raise err from exc


def fence(lease: Any, conn: Any) -> None:
    kind = _kind(conn)
    if kind == "?":
        raise _unsupported(conn)
    if kind == "sqlalchemy":
        _fence_sqlalchemy(lease, conn)
        return
    dbapi = getattr(conn, "connection", conn) if _is_cursor(conn) else conn
    if not _driver_in_transaction_or_implicit(dbapi):
        raise _invalid()
    sql, params = lease._fence_statement()
    try:
        if _is_cursor(conn):
            conn.execute(_format_style(sql), params)
        else:
            with dbapi.cursor() as cur:
                cur.execute(_format_style(sql), params)
    except Exception as e:
        if _sqlstate(e) == FENCE_FAILED:
            _refused(lease, e)
        raise


def _is_cursor(obj: Any) -> bool:
    return "cursor" in type(obj).__name__.lower()


def _fence_sqlalchemy(lease: Any, conn: Any) -> None:
    import sqlalchemy

    if hasattr(conn, "get_bind") and hasattr(conn, "connection"):  # Session
        conn = conn.connection()
    dbapi = conn.connection.dbapi_connection
    if not _driver_in_transaction_or_implicit(dbapi):
        raise _invalid()
    sql, params = _named_style(*lease._fence_statement())
    try:
        conn.execute(sqlalchemy.text(sql), params)
    except Exception as e:
        if _sqlstate(e) == FENCE_FAILED:
            _refused(lease, e)
        raise


async def afence(lease: Any, conn: Any) -> None:
    if _kind(conn) != "psycopg":
        raise _unsupported(conn)
    cursor = _is_cursor(conn)
    dbapi = conn.connection if cursor else conn
    if not _driver_in_transaction_or_implicit(dbapi):
        raise _invalid()
    sql, params = lease._fence_statement()
    try:
        await conn.execute(_format_style(sql), params)
    except Exception as e:
        if _sqlstate(e) == FENCE_FAILED:
            _refused(lease, e)
        raise


def fence_statement(lease: Any) -> Tuple[str, Any]:
    """The fence SQL in psycopg's ``%s`` style and its parameters."""
    sql, params = lease._fence_statement()
    return _format_style(sql), params
