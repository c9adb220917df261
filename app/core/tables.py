"""Database tables (SQLAlchemy 2.x typed models). The job row is the source of truth for a job's state."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, TypeVar, overload

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Table, Text, \
    UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.errors import ApiError
from app.core.extensions import Model, db
from app.core.status import JobStatus



def utcnow() -> datetime:
    return datetime.now(timezone.utc)


T = TypeVar("T")


@overload
def aware(dt: datetime) -> datetime: ...
@overload
def aware(dt: None) -> None: ...
@overload
def aware(dt: datetime | None) -> datetime | None: ...


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (they are stored in UTC); make them aware."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def iso(dt: datetime | None) -> str | None:
    dt = aware(dt)
    return dt.isoformat(timespec="seconds") if dt else None


def get_or_404(model: type[Any], key: Any, what: str) -> Any:
    """The row of ``model`` with primary key ``key``; ``ApiError(404)`` "no <what> <key>" otherwise."""
    row = db.session.get(model, key)
    if row is None:
        raise ApiError(404, f"no {what} {key!r}")
    return row


def get_row(model: type[T], key: Any) -> T:
    """The row of ``model`` with primary key ``key``, which the caller knows exists (a foreign key points at
    it); ``LookupError`` if it has gone all the same."""
    row = db.session.get(model, key)
    if row is None:
        raise LookupError(f"{model.__name__} {key!r} is gone")
    return row


def new_id() -> str:
    return str(uuid.uuid4())


def table_of(model: type[Model]) -> Table:
    """A mapped class's table, for Core statements on a hot path (no unit of work, no ORM objects)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class ModelVersion(Model):
    """One registered checkpoint of a model name; exactly one version per name is ``serving``."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        # at most one serving version per name (partial unique index: PostgreSQL and SQLite both have them)
        Index("uq_model_versions_serving_name", "name", unique=True,
              sqlite_where=db.text("serving"), postgresql_where=db.text("serving")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str] = mapped_column(String(50))
    checkpoint_path: Mapped[str] = mapped_column(Text)
    condition: Mapped[str] = mapped_column(String(20))
    num_classes: Mapped[int] = mapped_column(Integer, default=0)
    class_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    image_shape: Mapped[list[int]] = mapped_column(JSON, default=list)
    dataset: Mapped[str | None] = mapped_column(String(100))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the checkpoint folder's card.json (shipped models: title, examples, metric summary, recipe), or None
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    serving: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # SHA-256 of the weights, checked by the worker before it loads them (a mismatch fails the job);
    # checkpoint_key: the checkpoint's folder in the object store (None: checkpoint_path is read directly), with
    # checkpoint_files the SHA-256 of each of its files, checked when a worker fetches it into its cache
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    checkpoint_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    checkpoint_files: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)


class Batch(Model):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str | None] = mapped_column(String(200))  # uploaded file name or "json"
    # ownership (docs/security.md): the API token that created it, else the hash of the capability secret
    # handed to its anonymous creator; either is needed to cancel its jobs
    owner_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"))
    cancel_hash: Mapped[str | None] = mapped_column(String(64))
    # a callback URL POSTed when the batch starts or ends (app/services/webhooks.py), the events it wants, and
    # whether an event is still to be recorded (true until the batch has ended and its deliveries exist)
    webhook: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    webhook_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=db.false(), index=True)

    jobs: Mapped[list[Job]] = relationship(back_populates="batch", order_by="Job.batch_index")


class Experiment(Model):
    """One of the papers' experiments run as ordinary jobs of the queue (:mod:`app.services.experiments`): a
    comparison of models, an attribute sweep or an interpolation. Its jobs carry ``experiment_id`` and their
    place in its grid (``experiment_index``); ``params`` is the validated request, which the pages and the API
    read the grid's axes from."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(20))  # compare | sweep | interpolate
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # ownership as for a batch: the creating token, else the hash of the anonymous creator's capability secret
    owner_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"))
    cancel_hash: Mapped[str | None] = mapped_column(String(64))

    jobs: Mapped[list[Job]] = relationship(back_populates="experiment", order_by="Job.experiment_index")


class Job(Model):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),
                      Index("ix_jobs_client_key_status", "client_key", "status"),
                      # the fair share of a lane reads each client's recently claimed jobs (workers/batching.py)
                      Index("ix_jobs_started_at", "started_at"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    condition_kind: Mapped[str] = mapped_column(String(20))  # none | class | cluster | text
    label: Mapped[str | None] = mapped_column(String(200))  # the class name, as stored in the model
    label_index: Mapped[int | None] = mapped_column(Integer)
    cluster: Mapped[int | None] = mapped_column(Integer)
    prompt: Mapped[str | None] = mapped_column(Text)
    n: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    batch_index: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # last message sent
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # lease of the running worker
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    claim_token: Mapped[str | None] = mapped_column(String(36))  # fences writes to the attempt that claimed it
    # ownership and quotas (docs/security.md): the creating token, else the hash of the creator's capability
    # secret (a batch's jobs share the batch's); client_key is who the quota counts it for
    owner_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"))
    cancel_hash: Mapped[str | None] = mapped_column(String(64))
    client_key: Mapped[str | None] = mapped_column(String(80))
    # worker deaths charged to this job: only those where it ran alone, so it is the likely cause
    deaths: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # run alone (no companions) next time: its worker died while it was batched with others
    isolated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=db.false())
    # the worker main process (a worker_nodes id) whose pool process claimed the job: when it died too, the
    # whole worker was killed (a deploy, a lost machine) and the death is not charged; None: not known
    worker_main: Mapped[str | None] = mapped_column(String(40))
    # a callback URL POSTed when the job starts or ends (app/services/webhooks.py), as for a batch
    webhook: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON)
    webhook_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=db.false(), index=True)
    # the experiment the job is a cell (or row) of, and its place there; None for an ordinary job
    experiment_id: Mapped[str | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    experiment_index: Mapped[int | None] = mapped_column(Integer)
    # None: the job samples its n images (image i from seed + i). Otherwise what else it decodes, e.g. an
    # interpolation {"op": "interpolate", "between": "seed" | "label" | "prompt", ...} from the job's own
    # condition and seed (one end) to the other end named here; such a job is never batched with others
    operation: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)

    model_version: Mapped[ModelVersion] = relationship()
    batch: Mapped[Batch | None] = relationship(back_populates="jobs")
    experiment: Mapped[Experiment | None] = relationship(back_populates="jobs")
    images: Mapped[list[Image]] = relationship(back_populates="job", order_by="Image.index",
                                               cascade="all, delete-orphan")


class OutboxMessage(Model):
    """A task message waiting to be published (the transactional outbox, :mod:`app.services.outbox`): written
    in the transaction that creates or re-queues its row, deleted once the broker has accepted it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(50))
    ref_id: Mapped[str] = mapped_column(String(36))  # the job's (or training run's) id: the task's argument
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IdempotencyKey(Model):
    """What a creating request with an ``Idempotency-Key`` header made, so that a retry returns it."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(20), primary_key=True)  # "jobs" | "batches"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the request body
    resource_id: Mapped[str] = mapped_column(String(36))  # the job's or batch's id
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Image(Model):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    # deterministic id (uuid5 of job id + index): a retried job upserts the same rows
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(300))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="images")


def image_id(job_id: str, index: int) -> str:
    return str(uuid.uuid5(uuid.UUID(job_id), f"image-{index}"))


# -- access control and data sets --------------------------------------------------------
class User(Model):
    """A person who signs in to the admin pages; ``password_hash`` is an argon2id hash
    (:mod:`app.services.accounts`)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # copied into the session at sign-in and compared on each request; bumped by sign-out and a password
    # change, which revokes every session signed in before (app/admin/sessions.py)
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(Model):
    """A bearer token for scripts. Only its SHA-256 is stored (the token is 256 random bits, so a fast hash
    is enough); ``prefix`` (the first characters) lets a person tell tokens apart on the admin page."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the key that signs the webhooks of this token's jobs (HMAC-SHA256), made when first asked for
    webhook_secret: Mapped[str | None] = mapped_column(String(80))

    user: Mapped[User] = relationship(back_populates="tokens")


class Dataset(Model):
    """An uploaded data set, stored under ``DATASET_ROOT/<name>`` (``layout``: ``classes`` or ``captions``)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    layout: Mapped[str] = mapped_column(String(20))
    path: Mapped[str] = mapped_column(Text)
    images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[int] = mapped_column(Integer)
    captions: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    class_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    source: Mapped[str | None] = mapped_column(String(200))  # the uploaded file name
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- training runs and promotion ----------------------------------------------------------


class TrainingRun(Model):
    """One training of a backend on a data set, run by a worker of the ``train`` queue.

    The row is the source of truth, as for jobs: the claim token fences every write of the attempt that holds
    the run, ``heartbeat_at`` is its lease, and ``output_dir`` holds the checkpoint a new attempt resumes from.
    ``settings`` is the validated request (:func:`app.services.trainings.validate_training`).
    """

    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_status", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    backend: Mapped[str] = mapped_column(String(50))
    dataset: Mapped[str] = mapped_column(String(100))  # a built-in name or an uploaded data set's name
    condition: Mapped[str] = mapped_column(String(20))
    model_name: Mapped[str] = mapped_column(String(100))  # the new version is registered under this name
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output_dir: Mapped[str] = mapped_column(Text)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    losses: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    elapsed_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    sample_step: Mapped[int | None] = mapped_column(Integer)  # step of the latest sample grid
    phase: Mapped[str | None] = mapped_column(String(40))  # loading data | training | evaluating | ...
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    claim_token: Mapped[str | None] = mapped_column(String(36))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    model_version: Mapped[ModelVersion | None] = relationship()


class LoginFailure(Model):
    """A failed admin sign-in, kept for LOGIN_WINDOW_SECONDS to throttle password guessing
    (:mod:`app.services.accounts`)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_remote_addr_at", "remote_addr", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), index=True)
    remote_addr: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- operations: webhooks and the queue dashboard -------------------------------------------------------
class WebhookDelivery(Model):
    """One event of a job or batch to POST to its webhook (app/services/webhooks.py): made once per (job or
    batch, event) from the committed state, then tried until the receiver answers 2xx or the tries run out."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("job_id", "event"), UniqueConstraint("batch_id", "event"),
                      Index("ix_webhook_deliveries_state_next", "state", "next_attempt_at"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)  # the Webhook-Id header
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(20))  # start | completed
    url: Mapped[str] = mapped_column(Text)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerNode(Model):
    """A Celery worker's main process, alive while it renews ``seen_at`` (every RECONCILE_INTERVAL): tells a
    pool process that died alone (charged to its job) from a worker killed whole (:mod:`app.services.reconcile`).
    The id is new at every start, so a restarted worker (the same host and pid in a container) is another row."""

    __tablename__ = "worker_nodes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class WorkerStatus(Model):
    """What a generation worker's pool process last said of itself (the admin's queue page): its loaded models.
    Its current job is the running job whose ``worker`` column names it."""

    __tablename__ = "worker_status"

    worker: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, as in jobs.worker
    node: Mapped[str | None] = mapped_column(String(200))  # the Celery node name (name@host)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)  # "name vN" of each loaded model, LRU order
    tasks: Mapped[int] = mapped_column(Integer, default=0)  # tasks run by this process
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
