"""Checkpoint writer: several processes save one checkpoint file, each
under an advisory lock, and verify every file they read back is whole.
With --no-lock the writes interleave and torn checkpoints show up.

    python examples/checkpoint_writer.py [--no-lock]
"""

import hashlib
import multiprocessing as mp
import os
import sys
import tempfile
import time

import pglock
from pglock._testing import database_url

ROUNDS = 15
CHUNKS = 8


def save_and_verify(url: str, path: str, idx: int, use_lock: bool, torn) -> None:
    locks = pglock.connect(url, holder=f"writer-{idx}")
    for r in range(ROUNDS):
        payload = os.urandom(4096) * CHUNKS
        digest = hashlib.sha256(payload).hexdigest().encode()
        guard = locks.advisory("ckpt/run-42", timeout=30).lock() if use_lock else None
        try:
            with open(path, "wb") as f:
                f.write(digest + b"\n")
                for c in range(CHUNKS):  # a big checkpoint is written in parts
                    f.write(payload[c * 4096 : (c + 1) * 4096])
                    f.flush()
                    time.sleep(0.001)
            with open(path, "rb") as f:
                head, _, body = f.read().partition(b"\n")
            if hashlib.sha256(body).hexdigest().encode() != head:
                with torn.get_lock():
                    torn.value += 1
        finally:
            if guard is not None:
                guard.release()


def main() -> int:
    use_lock = "--no-lock" not in sys.argv
    url = database_url()
    pglock.connect(url).migrate()
    path = os.path.join(tempfile.mkdtemp(prefix="pglock-ckpt-"), "checkpoint.bin")
    ctx = mp.get_context("spawn")
    torn = ctx.Value("i", 0)
    procs = [ctx.Process(target=save_and_verify, args=(url, path, i, use_lock, torn)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    total = 4 * ROUNDS
    mode = "under the advisory lock" if use_lock else "WITHOUT the lock"
    print(f"{total} checkpoints saved {mode}: {torn.value} read back torn")
    if use_lock:
        return 0 if torn.value == 0 and all(p.exitcode == 0 for p in procs) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
