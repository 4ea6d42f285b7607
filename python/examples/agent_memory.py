"""Agent memory: several agent processes add facts to one shared memory
table and its embeddings table, each write fenced by a lease. One agent
stalls (SIGSTOP, like a long GC pause or a frozen VM) while it holds the
lease; the others take over once it expires, and when the stalled agent
wakes up its late write is refused.

    python examples/agent_memory.py
"""

import multiprocessing as mp
import os
import signal
import sys
import time
import uuid

import psycopg

import pglock
from pglock._testing import database_url

TTL = 1.0
FACTS = 5


def embed(text: str):
    return [float(b) / 255 for b in text.encode()[:8]]


def agent(url: str, schema: str, idx: int, events) -> None:
    locks = pglock.connect(url, schema=schema, holder=f"agent-{idx}")
    with psycopg.connect(url) as conn:
        for n in range(FACTS):
            try:
                with locks.lease("memory-store", ttl=TTL, timeout=60) as lease:
                    if idx == 0 and n == 0:
                        events.put(("holding", os.getpid(), lease.token))
                        time.sleep(0.5)  # the main process stops us here
                    fact = f"agent-{idx} fact {n}"
                    with conn.transaction():
                        lease.fence(conn)  # refused once the lease has passed on
                        conn.execute(
                            f"INSERT INTO {schema}.memory (fact, token) VALUES (%s, %s)",
                            (fact, lease.token),
                        )
                        conn.execute(
                            f"INSERT INTO {schema}.embeddings (fact, vec) VALUES (%s, %s)",
                            (fact, embed(fact)),
                        )
            except pglock.LeaseLost as e:
                events.put(("refused", os.getpid(), str(e)))
                return
    events.put(("done", os.getpid(), idx))


def main() -> int:
    url = database_url()
    schema = "mem_" + uuid.uuid4().hex[:8]
    locks = pglock.connect(url, schema=schema)
    locks.migrate()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {schema}.memory (id serial PRIMARY KEY, fact text, token bigint)")
        admin.execute(f"CREATE TABLE {schema}.embeddings (fact text, vec float8[])")
        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        procs = [ctx.Process(target=agent, args=(url, schema, i, events)) for i in range(3)]
        procs[0].start()
        kind, pid, stalled_token = events.get(timeout=60)
        assert kind == "holding"
        os.kill(pid, signal.SIGSTOP)
        print(f"agent-0 stalled while holding the lease (token {stalled_token})")
        for p in procs[1:]:
            p.start()
        time.sleep(3 * TTL)  # the lease expires; the others take over and write
        os.kill(pid, signal.SIGCONT)
        print("agent-0 resumed")
        outcomes = [events.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
        rows = admin.execute(f"SELECT fact, token FROM {schema}.memory ORDER BY id").fetchall()
        n_emb = admin.execute(f"SELECT count(*) FROM {schema}.embeddings").fetchone()[0]
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
    refused = [o for o in outcomes if o[0] == "refused"]
    for _, _, msg in refused:
        print(f"agent-0's late write refused: {msg}")
    late = [r for r in rows if r[1] == stalled_token]
    tokens = [t for _, t in rows]
    print(f"memory: {len(rows)} facts, embeddings: {n_emb}; tokens ascending: {tokens == sorted(tokens)}")
    ok = refused and not late and len(rows) == n_emb == 2 * FACTS and tokens == sorted(tokens)
    print("no late write landed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
