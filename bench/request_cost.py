"""What one API request costs the web server, by stage: CPU, SQL statements, connection checkouts and Redis
commands, counted in this process (no HTTP server, no worker).

The app is built on a fresh PostgreSQL database (``--database-url``; created and dropped) and a Redis key
prefix of its own (``--redis-url``; deleted afterwards), as the servers build it, with the per-client limits ON
but raised so that the one client of this script is never refused (the limiter's Redis work is part of what a
request costs). The shipped test model ``tests/fixtures/digits-aae-cg`` is registered as ``digits``.

For each kind of request it sends ``--requests`` of them through Flask's test client (the app's own WSGI
call: routing, hooks, limiter, views, JSON) after ``--warmup`` untimed ones:

* ``submit``: ``POST /api/v1/jobs`` of a 1-image job (no worker runs: the job stays queued);
* ``read``: ``GET /api/v1/jobs/<id>`` of a finished job;
* ``wait``: ``GET /api/v1/jobs/<id>?wait=30`` of a finished job (the ``?wait`` path's fixed cost).

Counted per request: SQL statements (engine events), pool checkouts (a connection that rested in the pool
``DB_PING_AFTER_IDLE`` seconds is pinged first, ``app/core/db_ping.py``: none is, between these back-to-back
requests), Redis commands (the server's own ``INFO commandstats``, this script's INFO excluded)
and CPU milliseconds (``time.process_time``). The statement, checkout and command counts do not depend on
how busy the machine is; the CPU figures do, a little. With ``--stages`` the CPU is also split by stage with
cProfile (process-time clock; its own overhead inflates every figure by a similar factor, so read them as
shares): limiter, client identification, body parsing, validation, the job and outbox rows and commit,
publishing, response.

    python bench/request_cost.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 --stages
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import emit, markdown_table  # noqa: E402
from bench.service_throughput import (CHECKPOINT, create_pg_database, delete_redis_keys,  # noqa: E402
                                      drop_pg_database)

# stage -> functions whose cumulative CPU makes it (file suffix, function name); a stage nested in another
# (publishing inside the job's rows) is subtracted from its parent in the table
STAGES: dict[str, list[tuple[str, str]]] = {
    "limiter": [("flask_limiter/_extension.py", "_check_request_limit")],
    "client": [("app/api/jobs.py", "_owner")],
    "body": [("app/core/http.py", "json_body"), ("app/api/jobs.py", "_idempotent")],
    "validation": [("app/services/jobs.py", "validate_job")],
    "rows+commit": [("app/services/jobs.py", "create_job")],
    "publish": [("app/services/outbox.py", "publish_pending")],
    "read": [("app/services/jobs.py", "get_job"), ("app/services/job_reads.py", "read_job")],
    "wait": [("app/core/fastpath/job_events.py", "wait_until_ended")],
    "response": [("flask/json/__init__.py", "jsonify"), ("app/api/views.py", "job_to_dict")],
    "request": [("flask/app.py", "wsgi_app")],
}
NESTED = {"rows+commit": "publish", "wait": "read"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True, help="a PostgreSQL server (a fresh database is made on it)")
    p.add_argument("--redis-url", required=True, help="a Redis server (a key prefix of its own)")
    p.add_argument("--requests", type=int, default=200, help="timed requests of each kind")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests of each kind first")
    p.add_argument("--stages", action="store_true", help="also split the CPU by stage (cProfile)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if args.requests < 1 or args.warmup < 0:
        p.error("--requests must be at least 1 and --warmup at least 0")
    return args


class Counters:
    """SQL statements and pool checkouts of one engine, and Redis commands of one server."""

    def __init__(self, engine, redis_client):
        from sqlalchemy import event

        self.statements = self.checkouts = 0
        self.redis = redis_client
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine.pool, "checkout", self._checkout)

    def _statement(self, *_: Any) -> None:
        self.statements += 1

    def _checkout(self, *_: Any) -> None:
        self.checkouts += 1

    def redis_commands(self) -> int:
        stats = self.redis.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    def snapshot(self) -> tuple[int, int, int, float]:
        return self.statements, self.checkouts, self.redis_commands(), time.process_time()


def measure(counters: Counters, send: Callable[[int], None], requests: int, warmup: int,
            stages: bool) -> dict[str, Any]:
    for i in range(warmup):
        send(10**6 + i)  # seeds apart from the timed ones
    profile = cProfile.Profile(time.process_time) if stages else None
    before = counters.snapshot()
    if profile:
        profile.enable()
    for i in range(requests):
        send(i)
    if profile:
        profile.disable()
    after = counters.snapshot()
    per = [(a - b) / requests for a, b in zip(after, before)]
    # each INFO call above is one command of this script's own, excluded: 1 per snapshot, 0 per request
    row = {"sql_statements": round(per[0], 2), "pool_checkouts": round(per[1], 2),
           "redis_commands": round(per[2], 2), "cpu_ms": round(per[3] * 1e3, 3)}
    if profile:
        row["stage_cpu_share"] = stage_shares(profile)
    return row


def stage_shares(profile: cProfile.Profile) -> dict[str, float]:
    """Each stage's cumulative CPU as a share of the whole request (``wsgi_app``), nested stages taken out of
    their parents."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    for stage, functions in STAGES.items():
        cumulative[stage] = sum(ct for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items()
                                if any(path.endswith(suffix) and name == fn for suffix, fn in functions))
    for parent, child in NESTED.items():
        cumulative[parent] = max(0.0, cumulative[parent] - cumulative[child])
    whole = cumulative.pop("request") or 1.0
    shares = {stage: round(value / whole, 3) for stage, value in cumulative.items() if value > 0}
    shares["other"] = round(max(0.0, 1 - sum(shares.values())), 3)
    return shares


def build_app(db_url: str, redis_url: str, prefix: str, storage: Path):
    from app import create_app
    from app.core.migrate import upgrade
    from app.services.model_versions import register_model

    app = create_app({
        "SQLALCHEMY_DATABASE_URI": db_url, "CELERY_BROKER_URL": redis_url, "BROKER_KEY_PREFIX": prefix,
        "STORAGE_ROOT": str(storage / "images"), "METRICS_DIR": str(storage / "metrics"), "DEVICE": "cpu",
        "SECRET_KEY_FILE": str(storage / "secret_key"),
        "RECONCILE_INTERVAL": 0,  # no background resends during the measurement
        # limits on, raised far above what one client sends here
        "RATELIMIT_DEFAULT": "1000000 per minute", "RATELIMIT_CREATE": "1000000 per minute",
        "MAX_IMAGES_IN_FLIGHT_PER_CLIENT": 10**9,
    })
    upgrade(app)
    with app.app_context():
        register_model("digits", CHECKPOINT, serve=True)
    return app


def finish_job(app, job_id: str) -> None:
    """Mark a queued job succeeded (as a worker would, without images): the read paths' subject."""
    from app.core.extensions import db
    from app.core.tables import Job, utcnow

    with app.app_context():
        job = db.session.get(Job, job_id)
        job.status, job.progress, job.finished_at = "succeeded", 1.0, utcnow()
        db.session.commit()


def main(argv: list[str] | None = None) -> int:
    import redis

    args = parse_args(argv)
    db_url, name, conninfo = create_pg_database(args.database_url)
    prefix = f"pfcost-{uuid.uuid4().hex[:10]}:"
    redis_client = redis.Redis.from_url(args.redis_url)
    rows: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="pf-bench-cost-") as tmp:
            app = build_app(db_url, args.redis_url, prefix, Path(tmp))
            client = app.test_client()
            from app.core.extensions import db

            with app.app_context():
                counters = Counters(db.engine, redis_client)

            def submit(i: int) -> None:
                answer = client.post("/api/v1/jobs", json={"model": "digits", "label": "7", "n": 1, "seed": i})
                assert answer.status_code == 202, answer.get_data(as_text=True)

            rows["submit"] = measure(counters, submit, args.requests, args.warmup, args.stages)
            answer = client.post("/api/v1/jobs", json={"model": "digits", "label": "3", "n": 1, "seed": 1})
            job_id = answer.get_json()["id"]
            finish_job(app, job_id)

            def read(_: int) -> None:
                assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200

            def wait(_: int) -> None:
                assert client.get(f"/api/v1/jobs/{job_id}?wait=30").status_code == 200

            rows["read"] = measure(counters, read, args.requests, args.warmup, args.stages)
            rows["wait"] = measure(counters, wait, args.requests, args.warmup, args.stages)
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
    finally:
        delete_redis_keys(args.redis_url, prefix)
        redis_client.close()
        drop_pg_database(name, conninfo)

    table = markdown_table(["request", "CPU ms", "SQL statements", "pool checkouts", "Redis commands"],
                           [[kind, r["cpu_ms"], r["sql_statements"], r["pool_checkouts"], r["redis_commands"]]
                            for kind, r in rows.items()])
    if args.stages:
        stages = sorted({s for r in rows.values() for s in r.get("stage_cpu_share", {})})
        table += "\n\nCPU share by stage (cProfile)\n\n" + markdown_table(
            ["request", *stages], [[kind, *(r["stage_cpu_share"].get(s, "") for s in stages)]
                                   for kind, r in rows.items()])
    payload = {"benchmark": "request_cost", "rows": rows,
               "settings": {"requests": args.requests, "warmup": args.warmup, "stages": args.stages,
                            "command": "request_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])}}
    emit(table, payload, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
