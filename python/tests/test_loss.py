"""A lease lost while its block runs: lost, wait_lost, LeaseLost on the way out."""

import psycopg
import pytest

import pglock


def test_lost_lease_is_reported_everywhere(locks, other, url):
    with pytest.raises(pglock.LeaseLost, match=r'"job" lost \(token \d+\)'):
        with locks.lease("job", ttl=1) as lease:
            assert not lease.lost
            assert lease.wait_lost(0.2) is False
            other.force_release("job")
            # The next renewal (every ttl/3) finds the lease gone.
            assert lease.wait_lost(5) is True
            assert lease.lost and lease.remaining() == 0
            with pytest.raises(pglock.LeaseLost):
                lease.renew()
            with pytest.raises(pglock.LeaseLost):
                lease.set_data({"x": 1})
            with psycopg.connect(url) as conn:
                with pytest.raises(pglock.LeaseLost):
                    lease.fence(conn)
    # the with block itself raised LeaseLost on the way out


def test_an_exception_from_the_block_wins_over_loss(locks, other):
    with pytest.raises(KeyError):
        with locks.lease("job2", ttl=1) as lease:
            other.force_release("job2")
            assert lease.wait_lost(5)
            raise KeyError("mine")


def test_release_after_loss_does_not_touch_the_new_holder(locks, other, admin, schema):
    lease = locks.lease("job3", ttl=1).acquire()
    other.force_release("job3")
    assert lease.wait_lost(5)
    newer = other.lease("job3").acquire()
    with pytest.raises(pglock.LeaseLost):
        lease.release()
    newer.renew()  # still the new holder's
    newer.release()
