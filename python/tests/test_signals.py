"""Ctrl-C (SIGINT) interrupts a blocking wait with KeyboardInterrupt, and
nothing stays held."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import held_by

CHILD = textwrap.dedent(
    """
    import sys, time, pglock
    url, schema, kind = sys.argv[1:4]
    locks = pglock.connect(url, schema=schema, holder="child")
    req = locks.advisory("busy") if kind == "advisory" else locks.lease("busy")
    print("waiting", flush=True)
    try:
        req.lock() if kind == "advisory" else req.acquire()
        print("acquired", flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
    """
)


@pytest.mark.parametrize("kind", ["lease", "advisory"])
def test_ctrl_c_interrupts_a_wait(kind, locks, admin, schema, url):
    held = locks.advisory("busy").lock() if kind == "advisory" else locks.lease("busy").acquire()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, schema, kind],
        stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),  # not python/: import the installed pglock
    )
    try:
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # let it get deep into the wait
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().split()
        assert child.wait(10) == 0
    finally:
        child.kill()
    assert line and line[0] == "interrupted", line
    latency = float(line[1]) - sent
    print(f"SIGINT -> KeyboardInterrupt: {latency * 1000:.1f} ms")
    held.release()
    # Nothing of the child's stays held: no lease row, no advisory lock.
    assert held_by(admin, schema, "busy") is None
    n = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
    assert n == 0
