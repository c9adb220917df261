"""Where a worker's wall time goes, from its log: real tasks, no-op tasks and the gaps between tasks.

Reads a Celery worker log at INFO level (``bench/service_throughput.py --keep`` leaves ``worker-1.log`` in
its temporary folder) and, over the last ``--last`` task events, sums the run time of the tasks that
generated images (result ``'succeeded'``), of the no-op tasks (``'skipped (...)'``: the job had already been
batched or finished) and the gaps from one task's end to the next task's receipt (the main process fetching
the message and handing it to the pool). Prints a markdown table and one ``BENCH_JSON`` line.

    python bench/service_throughput.py --clients 32 --images 1 --min-jobs 300 --keep --database-url ... --redis-url ...
    python bench/worker_timeline.py /tmp/pf-bench-service-*/worker-1.log
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, markdown_table  # noqa: E402

EVENT = re.compile(r"\[(\S+ \S+): INFO/\S+\] Task \S+\[\S+\] (received|succeeded in ([0-9.e-]+)s: '(\w+))")


def timeline(lines: list[str], last: int) -> dict:
    events = []
    for line in lines:
        m = EVENT.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            kind = "received" if m.group(2) == "received" else "done"
            events.append((when, kind, float(m.group(3) or 0), m.group(4)))
    events = events[-last:]
    if len(events) < 2:
        raise SystemExit("fewer than two task events in the log (is it a worker log at INFO level?)")
    done = [e for e in events if e[1] == "done"]
    real = [e for e in done if e[3] == "succeeded"]
    noop = [e for e in done if e[3] == "skipped"]
    gaps = [b[0] - a[0] for a, b in zip(events, events[1:]) if a[1] == "done" and b[1] == "received"]
    return {"span_s": round(events[-1][0] - events[0][0], 3), "real_tasks": len(real),
            "real_s": round(sum(e[2] for e in real), 3), "noop_tasks": len(noop),
            "noop_s": round(sum(e[2] for e in noop), 3), "gaps": len(gaps), "gaps_s": round(sum(gaps), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log", type=Path, help="a Celery worker log (INFO level)")
    p.add_argument("--last", type=int, default=600, help="task events (receipts and ends) to read, from the end")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if not args.log.is_file():
        p.error(f"log {str(args.log)!r}: no such file")
    t = timeline(args.log.read_text(errors="replace").splitlines(), args.last)
    table = markdown_table(["span s", "real tasks", "in real tasks s", "no-op tasks", "in no-op tasks s",
                            "gaps between tasks s"],
                           [[t["span_s"], t["real_tasks"], t["real_s"], t["noop_tasks"], t["noop_s"], t["gaps_s"]]])
    emit(table, {"benchmark": "worker_timeline", "log": str(args.log), **t}, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
