"""What a PostgreSQL commit's wait for the disk costs: one-row UPDATE + COMMIT round trips with
``synchronous_commit`` on (the commit waits for the WAL flush, an fsync) and off (it does not), alternated in
one run. The generation task commits its claim and its success with it off (docs/reliability.md).

The table is a fresh regular one (a temporary table writes no WAL, so it would show no difference), dropped
afterwards.

    python bench/commit_flush.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", required=True, help="a PostgreSQL server (a table is created and dropped)")
    p.add_argument("--commits", type=int, default=200, help="commits per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each setting, alternated")
    args = p.parse_args(argv)
    if args.commits < 1 or args.rounds < 1:
        p.error("--commits and --rounds must be at least 1")

    import psycopg

    url = args.database_url.replace("postgresql+psycopg://", "postgresql://")
    table = f"pf_commit_flush_{uuid.uuid4().hex[:8]}"
    per_commit: dict[str, list[float]] = {"on": [], "off": []}
    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 0)")
        conn.commit()
        try:
            for _ in range(args.rounds):
                for setting in ("on", "off"):
                    conn.execute(f"SET synchronous_commit TO {setting}")
                    conn.commit()
                    start = time.perf_counter()
                    for _ in range(args.commits):
                        conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
                        conn.commit()
                    per_commit[setting].append((time.perf_counter() - start) / args.commits * 1e3)
        finally:
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
    medians = {setting: round(statistics.median(values), 3) for setting, values in per_commit.items()}
    print("| synchronous_commit | ms per UPDATE + COMMIT (median of rounds) |")
    print("| --- | --- |")
    for setting, value in medians.items():
        print(f"| {setting} | {value} |")
    print(f"the flush wait: {medians['on'] - medians['off']:.2f} ms per commit")
    print("BENCH_JSON " + json.dumps({"benchmark": "commit_flush", "ms_per_commit": medians,
                                      "settings": {"commits": args.commits, "rounds": args.rounds}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
