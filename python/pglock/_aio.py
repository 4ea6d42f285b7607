"""asyncio glue: ``async with`` on requests, and ``LeaseRequest.run``."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


async def request_enter(request: Any) -> Any:
    """``async with request as lease``: acquire and remember the lease."""
    lease = await request.aacquire()
    request._push(lease)
    return lease


async def advisory_enter(request: Any) -> Any:
    """``async with locks.advisory(...) as guard``."""
    guard = await request.alock()
    request._push(guard)
    return guard


async def run(request: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Acquire, await ``work(lease)`` while the lease is kept alive, release.

    If the lease is lost first, the work is cancelled and ``LeaseLost`` is
    raised; cancelling ``run`` itself cancels the work and releases.
    """
    from . import LeaseLost

    lease = await request.aacquire()
    try:
        task = asyncio.ensure_future(work(lease))
        lost = asyncio.ensure_future(lease.await_lost())
        try:
            done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            lost.cancel()
            raise
        if task in done:
            lost.cancel()
            result = task.result()
        else:
            task.cancel()
            try:
                await task
            except BaseException:
                pass
            raise LeaseLost(f"lease {lease.name!r} lost (token {lease.token})")
    except BaseException:
        try:
            await lease.arelease()
        except Exception:
            pass
        raise
    await lease.arelease()
    return result
