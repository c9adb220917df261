"""The service's configuration, lowest to highest precedence: the defaults below, the conventional
``DATABASE_URL`` / ``REDIS_URL`` / ``CELERY_BROKER_URL``, ``PRIORFORGE_*`` environment variables
(``from_prefixed_env``; values are parsed as JSON, so ``PRIORFORGE_TASK_TIME_LIMIT=60`` is an int), then
``test_config``. The web and the worker processes read the same (docs/service.md lists every key).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask

from app.core.secret_key import check_secret_key, ensure_secret_key
from app.core.settings import check_settings
from priorforge_spec.precision import DECODE_PASS_ROWS


def default_config(instance_path: str) -> dict[str, Any]:
    instance = Path(instance_path)
    return {
        # None: generated once and kept in the instance folder (app/core/secret_key.py); a known or short key
        # is refused in every mode (docs/security.md, "Secret key")
        "SECRET_KEY": None,
        "SECRET_KEY_FILE": str(instance / "secret_key"),  # where the generated key is kept (mode 0600)
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance / 'priorforge.sqlite3'}",
        # embedded broker: kombu's SQLAlchemy transport on its own SQLite file (no server needed)
        "CELERY_BROKER_URL": f"sqla+sqlite:///{instance / 'broker.sqlite3'}",
        "STORAGE_BACKEND": "local",
        "STORAGE_ROOT": str(instance / "images"),
        # one store for images, checkpoints, training grids and uploaded data sets. None: the local
        # STORAGE_ROOT (one machine); s3://bucket/prefix: an S3 API shared by every node
        "STORAGE_URL": None,
        "S3_ENDPOINT_URL": None,  # MinIO/Ceph (None: AWS, or boto3's AWS_ENDPOINT_URL); credentials: AWS_* variables
        "S3_REGION": None,  # None: boto3's (AWS_DEFAULT_REGION)
        "S3_ADDRESSING_STYLE": "auto",  # path for most MinIO set-ups behind one host name
        "STORAGE_TIMEOUT": 5.0,  # seconds to connect to the store: an unreachable one is an error, not a hang
        "IMAGE_DELIVERY": "stream",  # stream: through the API; redirect: 302 to a presigned URL of the store
        "PRESIGNED_URL_SECONDS": 3600,
        "MODEL_CACHE_DIR": str(instance / "model-cache"),  # checkpoints fetched from the store, by version
        # Celery queue of each model's jobs ({"cifar10-text": "generate.gpu"}); others go to GENERATE_QUEUE
        "MODEL_QUEUES": {},
        "GENERATE_QUEUE": "generate",
        "MAX_CONTENT_LENGTH": 1024 * 1024,  # request bodies (JSON, batch files) above this get 413
        "MAX_IMAGES_PER_JOB": 64,
        "MAX_BATCH_ITEMS": 500,
        "MAX_PROMPT_LENGTH": 500,
        "DEVICE": "auto",
        "MODEL_CACHE_SIZE": 2,  # loaded models kept per worker process (LRU)
        # rows per decode pass; always this many (padded), so pixels never depend on batching. A lone 1-image job
        # decodes this many rows: on a CPU, 8 instead of 16 cut that job's added latency by 40% on a 64x64 model
        # with batched throughput within noise (docs/benchmarks.md, "Decode passes"); a GPU likely wants more
        "GENERATE_CHUNK": DECODE_PASS_ROWS,
        "BATCH_MAX_IMAGES": 64,  # a task also claims queued jobs of its model version, up to this many images
        # when none is queued, how long a task waits for some to arrive (0: a lone job is never delayed)
        "BATCH_WAIT_MS": 0,
        # threads per worker pool process that encode and write a task's PNGs while its next pass decodes
        # (0: inline, in the task's thread)
        "PNG_THREADS": 1,
        "INFERENCE_PRECISION": "auto",  # fp32 | bf16 | fp16 | auto (fp32 on CPU, bf16/fp16 autocast on CUDA)
        "TASK_SOFT_TIME_LIMIT": 300,  # seconds; the job fails with a timeout message
        "TASK_TIME_LIMIT": 360,  # hard limit: the pool process is killed
        # seconds between polls of the embedded (sqla) broker's table; None: 0.5 for a SQLite broker file with
        # LOCAL_WAKEUPS on (every publisher is on this machine and rings, so the poll is only a fallback), else 0.05
        "BROKER_POLLING_INTERVAL": None,
        # without Redis: a publish wakes the embedded broker's worker and a job's end wakes its waiting requests
        # at once, through Unix sockets on this machine (app/core/fastpath/doorbell.py); the polls above and below stay
        "LOCAL_WAKEUPS": True,
        # every fast path at once (app/core/fastpath): false turns off the rings, the ?wait= announcements and
        # the worker's dropping of settled jobs' messages; jobs then run on the polls alone, slower
        "FAST_PATHS": True,
        "BROKER_VISIBILITY_TIMEOUT": None,  # None: TASK_TIME_LIMIT + 300 (must exceed the hard limit)
        "WORKER_CONCURRENCY": 1,
        # worker death (docs/reliability.md): a running job's lease is renewed this often, and
        # a lease older than LEASE_TIMEOUT means its worker died; every worker reconciles every RECONCILE_INTERVAL
        "HEARTBEAT_INTERVAL": 1.0,
        "LEASE_TIMEOUT": 4.0,
        "RECONCILE_INTERVAL": 1.0,
        # a job run by a process of this machine that is gone is re-queued at the next reconciliation, without
        # waiting for its lease (off: leases alone, e.g. where workers share a host name but not a process table)
        "LOCAL_DEATH_CHECK": True,
        "QUEUED_STALE_AFTER": 120.0,  # a queued job whose message is this old is sent again
        "MAX_ATTEMPTS": 3,  # a job whose worker died this many times while it ran alone is failed (poison)
        # the transactional outbox (app/services/outbox.py): how often a relay looks for messages not yet published
        "OUTBOX_RELAY_INTERVAL": 0.5,
        # the rows of published messages are deleted together, every this many seconds per process, not one
        # statement per request; a relay leaves rows younger than the grace to the process that wrote them
        "OUTBOX_SWEEP_INTERVAL": 0.2,
        "OUTBOX_RELAY_GRACE": 2.0,
        "IDEMPOTENCY_KEY_TTL": 24 * 3600,  # seconds an Idempotency-Key is remembered
        "BROKER_CLEANUP_INTERVAL": 600.0,  # embedded broker: seconds between clean-ups of its file (0: never)
        # seconds a web process keeps a model name's serving version before reading it again (a promotion made
        # by another process reaches new jobs within this time; 0: read it for every job)
        "SERVING_CACHE_SECONDS": 2.0,
        "DEFAULT_MODEL": None,  # None: the serving model whose card is the default (mnist), else the first
        "DB_POOL_SIZE": 16,  # connections kept per process (PostgreSQL); at least the web server's threads
        # PostgreSQL: a pooled connection is pinged before use when it rested this many seconds (0: always)
        "DB_PING_AFTER_IDLE": 1.0,
        # ?wait=S on the job and batch endpoints (app/core/fastpath/job_events.py): the longest wait a request may ask for,
        # how often the web process reads which awaited jobs ended when the broker is not Redis, and how
        # often a waiting request re-reads its jobs anyway (a lost notification costs at most this)
        "JOB_WAIT_MAX_SECONDS": 60.0,
        "JOB_WAIT_POLL_INTERVAL": 0.02,
        "JOB_WAIT_RECHECK_INTERVAL": 1.0,
        "ENV": "development",  # production: Secure cookies are required (docs/security.md)
        "SESSION_COOKIE_SAMESITE": "Lax",
        # the session cookie only over HTTPS; must be true when ENV is production (behind TLS)
        "SESSION_COOKIE_SECURE": False,
        # how long a signed session cookie is accepted (Flask's default is 31 days), and how long an admin
        # sign-in lasts however busy the session (app/admin/sessions.py): 12 hours, a working day
        "PERMANENT_SESSION_LIFETIME": 12 * 3600,
        "ADMIN_SESSION_LIFETIME": 12 * 3600,
        # abuse limits (docs/security.md, "Quotas"): Flask-Limiter's own settings, per client (API token, else
        # address); the storage is the broker's Redis when the service uses Redis, else this process's memory
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_DEFAULT": "600 per minute",
        "RATELIMIT_STORAGE_URI": None,  # None: derived from CELERY_BROKER_URL as above
        "RATELIMIT_CREATE": "60 per minute",  # POST of jobs and batches (API and forms), on top of the default
        # images a client may have queued or running at once (jobs and batches); more: 429
        "MAX_IMAGES_IN_FLIGHT_PER_CLIENT": 1024,
        # jobs of a batch and jobs of more images than this go to the ``bulk`` queue, the rest to ``generate``:
        # a worker consumes both in turn, so a large batch cannot starve a 1-image job
        "INTERACTIVE_MAX_IMAGES": 16,
        # requests allowed to wait (?wait=) at once per web process, of its 32 threads (WEB_THREADS): beyond it they
        # answer at once as the job stands (as if wait=0), so waiting clients cannot hold every thread; the other
        # 8 serve the rest. Fewer waiting slots than clients made the extra clients ask again at once, round after
        # round
        "JOB_WAIT_MAX_CONCURRENT": 24,
        "ANONYMOUS_GENERATION": True,  # false: creating jobs and batches needs an API token (the form: off)
        "PUBLIC_GALLERY": True,  # false: /gallery answers 404 (images stay reachable by their unguessable ids)
        # admin sign-in throttle: failures counted per (user name, address) and per address in this window
        "LOGIN_WINDOW_SECONDS": 900,
        "LOGIN_MAX_FAILURES": 10,
        "LOGIN_MAX_FAILURES_PER_ADDRESS": 30,
        "DATASET_ROOT": str(instance / "datasets"),  # uploaded data sets (admin)
        "DATA_ROOT": None,  # folder of the built-in data sets (mnist, fashion-mnist, cifar10)
        # data set uploads (app/services/uploads.py); the upload's own body limit replaces MAX_CONTENT_LENGTH there
        "DATASET_MAX_UPLOAD_BYTES": 100 * 1024 * 1024,  # the zip archive
        "DATASET_MAX_UNCOMPRESSED_BYTES": 500 * 1024 * 1024,  # its members, declared and as extracted
        "DATASET_MAX_RATIO": 100,  # uncompressed / compressed, for members of 1 MiB and more
        "DATASET_MAX_FILES": 100_000,  # members of the archive
        "DATASET_MAX_IMAGES": 100_000,
        "DATASET_MAX_IMAGE_SIDE": 4096,  # pixels
        # training runs (app/services/trainings.py, workers/training_tasks.py), on the ``train`` queue
        "TRAINING_ROOT": str(instance / "trainings"),  # one folder per run: checkpoints, grids, history
        "TRAINING_DEVICE": None,  # None: DEVICE
        "TRAINING_MAX_STEPS": 1_000_000,
        "TRAINING_MAX_BATCH_SIZE": 1024,
        "TRAINING_SOFT_TIME_LIMIT": 24 * 3600,  # seconds; the run stops (checkpoint kept) and fails
        "TRAINING_TIME_LIMIT": 24 * 3600 + 600,  # hard limit: the pool process is killed
        "TRAINING_PROGRESS_INTERVAL": 1.0,  # seconds between progress writes to the run's row
        "TRAINING_MAX_ATTEMPTS": 3,  # a run abandoned by its worker this many times is failed
        # steps of the evaluation classifier trained on an uploaded set with labels (None: its default, at
        # least 600 steps and 2 epochs); tests and quick trials set a handful
        "TRAINING_EVAL_CLASSIFIER_STEPS": None,
        # operations (docs/service.md, "Metrics", "Webhooks"). METRICS_DIR: where every process of this machine
        # writes its Prometheus counters (None: PROMETHEUS_MULTIPROC_DIR, else instance/metrics)
        "METRICS_DIR": None,
        # networks (CIDR) whose addresses may read /metrics without signing in (admins always may)
        "METRICS_ALLOW_NETWORKS": [],
        # webhook targets in these networks (CIDR) are allowed although private, loopback or link-local
        "WEBHOOK_ALLOW_NETWORKS": [],
        "WEBHOOK_TIMEOUT": 10.0,  # seconds per delivery attempt
        "WEBHOOK_MAX_ATTEMPTS": 8,  # tries before a delivery is given up (recorded as failed)
        "WEBHOOK_RETRY_BASE": 1.0,  # seconds before the 2nd try; doubled each try, at most WEBHOOK_RETRY_MAX
        "WEBHOOK_RETRY_MAX": 300.0,
        "WEBHOOK_INTERVAL": 0.5,  # seconds between a worker's looks for webhook events to record and send
    }


def load_config(app: Flask, test_config: dict[str, Any] | None = None) -> None:
    """Fill ``app.config`` (see the module's docstring) and check it; a ValueError or RuntimeError names a bad
    setting."""
    app.config.from_mapping(default_config(app.instance_path))
    # the conventional variables of hosting platforms; PRIORFORGE_* (more specific) win over them
    if os.environ.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")
    if broker:
        app.config["CELERY_BROKER_URL"] = broker
    app.config.from_prefixed_env("PRIORFORGE")
    if test_config:
        app.config.from_mapping(test_config)
    # CSRF on every HTML form; only an app that says TESTING and sets nothing else turns it off
    app.config.setdefault("WTF_CSRF_ENABLED", not app.config.get("TESTING"))
    ensure_secret_key(app)
    check_secret_key(app)
    _check_production(app.config)
    app.config["SQLALCHEMY_DATABASE_URI"] = _normalise_db_url(app.config["SQLALCHEMY_DATABASE_URI"])
    _require_whole_number(app.config, "PNG_THREADS", 0, "from 0 (inline) up")
    _require_whole_number(app.config, "GENERATE_CHUNK", 1, "of rows from 1 up")
    _check_storage_settings(app.config)
    _check_networks(app.config)
    check_settings(app, default_config(app.instance_path))  # every setting as its declared type from here on
    if app.config["BROKER_VISIBILITY_TIMEOUT"] is None:
        app.config["BROKER_VISIBILITY_TIMEOUT"] = app.config["TASK_TIME_LIMIT"] + 300
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {})
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # the web and worker processes share the file: wait for locks instead of failing at once
        app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("connect_args", {"timeout": 30})
    else:
        # every checkout pinged only with DB_PING_AFTER_IDLE <= 0; otherwise the idle ones (app/core/db_ping.py)
        app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("pool_pre_ping", app.config["DB_PING_AFTER_IDLE"] <= 0)
        # one pooled connection per web server thread that is not waiting (gthread: 32 threads, 24 of them may wait): with the
        # default 5, busy threads opened and closed "overflow" connections, a new PostgreSQL backend each time
        app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("pool_size", app.config["DB_POOL_SIZE"])


def _check_production(config: Any) -> None:
    """Production runs behind TLS: a session cookie sent over plain HTTP could be read on the way."""
    if str(config.get("ENV", "development")).lower() == "production" and config.get("SESSION_COOKIE_SECURE") is not True:
        raise RuntimeError("PRIORFORGE_ENV=production needs PRIORFORGE_SESSION_COOKIE_SECURE=true (serve over "
                           "HTTPS); see docs/security.md")


def _normalise_db_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` -> the psycopg 3 driver this project installs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _check_storage_settings(config: Any) -> None:
    """The storage and routing settings that are not checked where they are used (a ValueError names them)."""
    if config["IMAGE_DELIVERY"] not in ("stream", "redirect"):
        raise ValueError(f"IMAGE_DELIVERY must be stream or redirect, got {config['IMAGE_DELIVERY']!r}")
    queues = config["MODEL_QUEUES"]
    if not isinstance(queues, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                               for k, v in queues.items()):
        raise ValueError(f"MODEL_QUEUES must be a JSON object of model name -> queue name, got {queues!r}")


def _check_networks(config: Any) -> None:
    """METRICS_ALLOW_NETWORKS and WEBHOOK_ALLOW_NETWORKS: lists of CIDR networks (a ValueError names a bad one)."""
    import ipaddress

    for key in ("METRICS_ALLOW_NETWORKS", "WEBHOOK_ALLOW_NETWORKS"):
        value = config[key]
        if isinstance(value, str):  # one network, or several separated by commas
            value = config[key] = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list of networks such as [\"10.0.0.0/8\"], got {value!r}")
        for network in value:
            try:
                ipaddress.ip_network(str(network), strict=False)
            except ValueError:
                raise ValueError(f"{key}: {network!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from None


def _require_whole_number(config: Any, key: str, minimum: int, what: str) -> None:
    """A ValueError naming ``key`` unless its value is an int (not a bool) of at least ``minimum``."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be a whole number {what}, got {value!r}")
