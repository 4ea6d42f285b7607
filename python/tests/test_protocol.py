"""The documented protocol (PROTOCOL.md, pinned to the crate's SQL by a
Rust test) works from another driver: psycopg sends None as an untyped
NULL, so every parameter the statements test must be typed by the SQL."""

import re
import uuid
from pathlib import Path

from conftest import held_by


def protocol_sql(heading: str, schema: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "PROTOCOL.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1]
    sql = section.split("```sql\n", 1)[1].split("```", 1)[0]
    return re.sub(r"\$(\d+)", r"%(p\1)s", sql.replace("{schema}", schema))


def test_a_lease_taken_and_released_with_the_documented_sql(locks, admin, schema):
    acquire = protocol_sql("Acquire a lease", schema)
    release = protocol_sql("Release a plain lease", schema)
    owner = uuid.uuid4()
    for data in (None, '{"step": 3}'):
        row = admin.execute(
            acquire,
            {"p1": "by-hand", "p2": owner, "p3": "psql-worker", "p4": 30_000, "p5": data, "p6": None},
        ).fetchone()
        assert row[0] is True, row
        token = row[1]
        assert held_by(admin, schema, "by-hand") == "psql-worker"
        # pglock sees it held, and whose data it is.
        assert locks.lease("by-hand").try_acquire() is None
        info = [i for i in locks.leases() if i.name == "by-hand"][0]
        assert info.token == token
        if data is not None:
            assert (info.data_token, info.data_holder) == (token, "psql-worker")
        admin.execute(
            release,
            {"p1": "", "p2": "by-hand", "p3": token, "p4": owner, "p5": f"{schema}:by-hand"},
        ).fetchall()
    with locks.lease("by-hand") as mine:
        assert mine.token > token
        assert mine.data == {"step": 3}
