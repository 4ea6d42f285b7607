#!/usr/bin/env python3
"""Markdown tables from the benchmark suite's JSON (target/bench/suite.json):
pglock beside its raw floor from the same run, per durability.

    python3 docs/bench/table.py [target/bench/suite.json] [--durability production]
"""

import argparse
import json
from collections import defaultdict


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?", default="target/bench/suite.json")
    ap.add_argument("--durability", default=None)
    a = ap.parse_args()
    doc = json.load(open(a.file))
    rows = defaultdict(dict)
    order = []
    for r in doc["medians"]:
        if a.durability and r["durability"] != a.durability:
            continue
        key = (r["durability"], r["case"], r["tasks"])
        if key not in rows:
            order.append(key)
        rows[key][r["impl"]] = r
    print(f"Machine: {doc['machine']}; medians of {doc['runs']} run(s){' (quick)' if doc['quick'] else ''}.")
    for s in doc["settings"]:
        if a.durability and s["durability"] != a.durability:
            continue
        print(f"- {s['durability']}: PostgreSQL {s['server_version'].split()[0]}, fsync={s['fsync']}, synchronous_commit={s['synchronous_commit']}")
    print()
    print("| durability | case | tasks | floor ops/s (p50/p99 ms) | pglock ops/s (p50/p99 ms) | pglock / floor |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key in order:
        d, case, tasks = key
        imps = rows[key]
        pg = imps.get("pglock")
        floor = next((v for k, v in imps.items() if k != "pglock"), None)
        cell = lambda r: f"{fmt(r['ops_per_s'])} ({r['p50_ms']:.2f}/{r['p99_ms']:.2f})" if r else "-"
        ratio = f"{pg['ops_per_s'] / floor['ops_per_s']:.2f}x" if pg and floor and floor["ops_per_s"] else "-"
        print(f"| {d} | {case} | {tasks} | {cell(floor)} | {cell(pg)} | {ratio} |")


if __name__ == "__main__":
    main()
