"""asyncio: await / async with forms; a task cancelled at any await point
leaves nothing held; run() cancels the work on loss."""

import asyncio

import pytest

import pglock
from conftest import held_by


def run(coro):
    return asyncio.run(coro)


def test_async_with_forms(locks, other, admin, schema):
    async def main():
        async with locks.lease("a", ttl=30) as lease:
            assert isinstance(lease, pglock.Lease)
            assert held_by(admin, schema, "a") == "pytest"
            assert await other.lease("a").atry_acquire() is None
            await lease.aset_data({"k": 1})
            await lease.arenew()
        assert held_by(admin, schema, "a") is None
        async with locks.advisory("adv") as g:
            assert await other.advisory("adv").atry_lock() is None
        pool = locks.lease_pool("ap")
        pool.add(["x", "y"])
        names = []
        async for item in pool.claims(ttl=30):
            async with item:
                names.append(item.name)
                await item.acomplete()
        assert sorted(names) == ["x", "y"]
        async with locks.semaphore("as", 1) as permit:
            assert isinstance(permit, pglock.Permit)
        assert await locks.rate_limiter("ar", 1, per=60).atry_acquire()
        await locks.amigrate()

    run(main())


def _nothing_held(other, name):
    async def check():
        for _ in range(100):
            lease = await other.lease(name).atry_acquire()
            if lease is not None:
                await lease.arelease()
                return True
            await asyncio.sleep(0.02)
        return False

    return check()


@pytest.mark.parametrize("release_holder_at", [None, 0, 1, 3])
def test_cancelled_acquire_leaves_nothing_held(locks, other, release_holder_at):
    async def main():
        for steps in range(12):
            holder = await other.lease("c").aacquire()
            task = asyncio.ensure_future(locks.lease("c").aacquire())
            for i in range(steps):
                if i == release_holder_at:
                    await holder.arelease()
                await asyncio.sleep(0.001 * i)
            task.cancel()
            try:
                got = await task
            except asyncio.CancelledError:
                got = None
            if got is not None:  # the acquire won the race: release it ourselves
                await got.arelease()
            await holder.arelease()
            assert await _nothing_held(other, "c"), f"held after cancel at step {steps}"

    run(main())


def test_cancelled_advisory_lock_leaves_nothing_held(locks, other, admin):
    async def main():
        for steps in range(8):
            holder = await other.advisory("c").alock()
            task = asyncio.ensure_future(locks.advisory("c").alock())
            for i in range(steps):
                await asyncio.sleep(0.001 * i)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await holder.arelease()
            for _ in range(100):
                n = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
                if n == 0:
                    break
                await asyncio.sleep(0.02)
            assert n == 0, f"advisory lock held after cancel at step {steps}"

    run(main())


def test_cancelled_async_with_releases(locks, other, admin, schema):
    async def main():
        started = asyncio.Event()

        async def work():
            async with locks.lease("w", ttl=30):
                started.set()
                await asyncio.sleep(60)

        task = asyncio.ensure_future(work())
        await started.wait()
        assert held_by(admin, schema, "w") == "pytest"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert held_by(admin, schema, "w") is None

    run(main())


def test_run_cancels_the_work_on_loss(locks, other):
    async def main():
        cancelled = asyncio.Event()

        async def work(lease):
            other.force_release(lease.name)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(pglock.LeaseLost, match="run-me"):
            await locks.lease("run-me", ttl=1).run(work)
        assert cancelled.is_set()

        async def ok(lease):
            return lease.token

        token = await locks.lease("run-me", ttl=5).run(ok)
        assert token > 0 and await other.lease("run-me").atry_acquire() is not None

    run(main())
