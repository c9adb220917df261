"""The floor under a request of this stack: what the web server's CPU pays before any of the service's own work.

One client sends requests one after another (``--requests`` each, after 30 untimed ones) and the server's
CPU is read from /proc (its whole process group), on a quiet machine:

* ``bare gunicorn``: gunicorn (gthread, 32 threads, one worker) serving a WSGI callable that answers a
  constant 12-byte JSON: the HTTP server alone;
* ``service 404``: the service (``app.wsgi:app`` through gunicorn, one worker, on a fresh PostgreSQL database
  and Redis key prefix, as ``bench/service_throughput.py`` starts it) answering a path it does not have:
  gunicorn plus Flask's routing, hooks and error answer;
* ``service job read``: ``GET /api/v1/jobs/<id>`` of an ended job (one SQL statement);
* ``one statement``: in this process, the cheapest query a request makes (``SELECT status FROM jobs WHERE id =
  ...`` through the app's SQLAlchemy session, then its commit), CPU per call.

Each HTTP figure is taken twice: a new TCP connection per request (what ``urllib`` clients do) and one
kept-alive connection.

    python bench/request_floor.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --redis-url redis://127.0.0.1:6379/0 --json-out bench/results/request_floor.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import emit, markdown_table  # noqa: E402
from bench.service_throughput import Deadline, free_port, group_cpu_seconds, running_service  # noqa: E402

BARE_APP = '''
def app(environ, start_response):
    body = b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--database-url", required=True, help="a PostgreSQL server (a fresh database is made there)")
    p.add_argument("--redis-url", required=True, help="a Redis server (keys under a prefix of their own)")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def sender(base: str, path: str, keep_alive: bool) -> Callable[[], None]:
    """``GET path`` once per call: on one kept-alive connection, or on a new one each time."""
    if not keep_alive:
        def send() -> None:
            try:
                urllib.request.urlopen(base + path, timeout=30).read()
            except urllib.error.HTTPError as exc:  # the 404 case
                exc.read()
        return send
    host, port = base.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def send_kept() -> None:
        conn.request("GET", path)
        conn.getresponse().read()
    return send_kept


def server_cost(base: str, pgid: int, path: str, requests: int) -> dict[str, float]:
    """Server CPU ms per request for ``GET path``: a new connection each, then one kept-alive connection."""
    out = {}
    for how, keep_alive in (("new connection", False), ("kept alive", True)):
        send = sender(base, path, keep_alive)
        for _ in range(30):
            send()
        cpu0 = group_cpu_seconds(pgid)
        for _ in range(requests):
            send()
        out[how] = round((group_cpu_seconds(pgid) - cpu0) * 1e3 / requests, 3)
    return out


def bare_gunicorn(requests: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pf-bench-floor-") as tmp:
        (Path(tmp) / "bare_app.py").write_text(BARE_APP)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread",
                                 "--threads", "32", "--bind", f"127.0.0.1:{port}", "bare_app:app"], cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(base + "/", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            return server_cost(base, proc.pid, "/", requests)
        finally:
            proc.terminate()
            proc.wait(30)


def one_statement_ms(job_id: str, database_url: str, redis_url: str, requests: int) -> float:
    """CPU ms of the app's cheapest query and its commit, in this process."""
    from sqlalchemy import select

    from app import create_app
    from app.core.extensions import db
    from app.core.tables import Job

    with tempfile.TemporaryDirectory(prefix="pf-bench-floor-") as tmp:
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "CELERY_BROKER_URL": redis_url,
                          "STORAGE_ROOT": f"{tmp}/images", "METRICS_DIR": f"{tmp}/metrics",
                          "SECRET_KEY_FILE": f"{tmp}/secret_key", "MODEL_CACHE_DIR": f"{tmp}/model-cache",
                          "DATASET_ROOT": f"{tmp}/datasets", "TRAINING_ROOT": f"{tmp}/trainings",
                          "RECONCILE_INTERVAL": 0})
        with app.app_context():
            statement = select(Job.status).where(Job.id == job_id)

            def query() -> None:
                db.session.execute(statement).scalar_one()
                db.session.commit()

            for _ in range(30):
                query()
            t0 = time.process_time()
            for _ in range(requests):
                query()
            cost = (time.process_time() - t0) * 1e3 / requests
            db.session.remove()
            db.engine.dispose()
    return round(cost, 3)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: dict[str, Any] = {"bare gunicorn": bare_gunicorn(args.requests)}
    service_args = argparse.Namespace(database_url=args.database_url, redis_url=args.redis_url, web_workers=1,
                                      web_threads=32, keep=False)
    deadline = Deadline(600)
    with running_service(service_args, deadline, concurrency=1) as service:
        request = urllib.request.Request(service.base + "/api/v1/jobs?wait=30", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": "digits", "label": "3", "n": 1, "seed": 1}).encode())
        job = json.loads(urllib.request.urlopen(request, timeout=60).read())
        web = service.groups["web"]
        rows["service 404"] = server_cost(service.base, web, "/no-such-page", args.requests)
        rows["service job read"] = server_cost(service.base, web, f"/api/v1/jobs/{job['id']}", args.requests)
        db_url = service.env["PRIORFORGE_SQLALCHEMY_DATABASE_URI"]
        rows["one statement"] = {"in process": one_statement_ms(job["id"], db_url, args.redis_url, args.requests)}
    table = markdown_table(["request", "server CPU ms, new connection", "kept alive / in process"],
                           [[name, row.get("new connection", "-"), row.get("kept alive", row.get("in process"))]
                            for name, row in rows.items()])
    emit(table, {"benchmark": "request_floor", "rows": rows,
                 "settings": {"command": " ".join(["request_floor.py", *(argv or sys.argv[1:])]),
                              "requests": args.requests}}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
