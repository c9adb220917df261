"""The shapes of the API's answers, written once: the OpenAPI document's answer components (``Job``, ``Image``,
``Batch``, ``Experiment``, ``Model``, ``TrainingRun``, ``Health``, ``Error``...) are generated from these models
(:func:`response_schemas`), and the tests check the answers of the views against them (``extra="forbid"``: a
field the views add must be declared here first). The fuzz tests (tests/fuzz/) check the live answers against the
document.

The views build plain dicts (the read path is every waiting client's: no model instance per answer); these
models are the contract they are held to.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


CANCEL_SECRET = ("an anonymous creator's capability, returned once at creation: send it as the X-Cancel-Secret header "
                 "to cancel (a token's jobs are cancelled with the token instead)")


def date_time() -> Any:
    return Field(json_schema_extra={"format": "date-time"})


# a job's states, spelled out for the type checker; a test holds them equal to JobStatus
Status = Literal["queued", "running", "succeeded", "failed", "canceled"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageOut(_Answer):
    """An image and the exact model version that made it."""

    id: str
    job_id: str
    index: int
    width: int
    height: int
    seed: int
    created_at: str = date_time()
    url: str
    png_url: str
    model: str
    model_version: int = Field(description="the exact version that made the image")
    model_version_id: int
    parameters: dict[str, Any] | None = Field(None, description="the PNG's text chunk (GET /images/{id} only)")


class Delivery(_Answer):
    id: str
    event: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str | None
    delivered_at: str | None


class WebhookOut(_Answer):
    """The job's webhook and its deliveries: for the token that created it and admins only."""

    url: str
    events_filter: list[str]
    deliveries: list[Delivery]


class JobOut(_Answer):
    """A job as it stands; its images once it has succeeded."""

    id: str
    url: str
    status: Status
    progress: float = Field(ge=0, le=1)
    error: str | None
    model: str
    model_version: int
    model_version_id: int
    backend: str
    condition: str
    label: str | None
    cluster: int | None
    prompt: str | None
    n: int
    seed: int
    attempts: int
    batch_id: str | None
    created_at: str = date_time()
    started_at: str | None = date_time()
    finished_at: str | None = date_time()
    images: list[ImageOut]
    webhook: WebhookOut | None = None
    cancel_secret: str | None = Field(None, description=CANCEL_SECRET)


class JobCreated(_Answer):
    """A queued job: without wait its id, url and status; with wait the whole Job as it stood when the wait ran
    out. cancel_secret only for an anonymous creator."""

    id: str
    url: str
    status: Status
    cancel_secret: str | None = Field(None, description=CANCEL_SECRET)


class JobRef(_Answer):
    """One job of a batch or an experiment, in short (its url has the whole job)."""

    id: str
    url: str
    status: Status
    progress: float = Field(ge=0, le=1)
    error: str | None


class ExperimentJobRef(JobRef):
    model: str


class BatchOut(_Answer):
    """A batch: its combined status (the least advanced of its jobs'), counts per status and its jobs."""

    id: str
    url: str
    status: Status
    created_at: str = date_time()
    source: str | None = Field(description="json, csv or jsonl: how the batch was sent")
    total: int
    counts: dict[str, int]
    progress: float = Field(ge=0, le=1)
    jobs: list[JobRef]
    webhook: WebhookOut | None = Field(None, description="the batch's own webhook and its deliveries (one per "
                                                         "event for the whole batch)")
    cancel_secret: str | None = Field(None, description=CANCEL_SECRET + " (cancels each of its jobs)")


class GridColumn(_Answer):
    label: str
    job_id: str | None


class RowFigures(_Answer):
    """A comparison row's model: its card's headline figures and its speed in this run."""

    accuracy: float | None
    diversity: float | None
    fid: float | None
    backend: str
    seconds_per_image: float | None


class GridRow(_Answer):
    label: str
    job_id: str | None
    figures: RowFigures | None = None
    cells: list[ImageOut | None] = Field(description="the images of the row, each null while it is not made")


class ExperimentOut(_Answer):
    """An experiment and its result as a grid: rows (each with its label, its cells and, for a comparison, the
    model's card figures and its speed in this run) and columns (each with its label), along the named axes
    row_axis and column_axis; a cell is the image or null while it is not made. varied says in words what
    changes along the columns."""

    id: str
    url: str
    page_url: str
    kind: Literal["compare", "sweep", "interpolate", "reconstruct", "mix"]
    status: Status
    progress: float = Field(ge=0, le=1)
    counts: dict[str, int]
    created_at: str = date_time()
    params: dict[str, Any] = Field(description="the request with its defaults filled in (the seed drawn)")
    varied: str
    row_axis: str
    column_axis: str
    columns: list[GridColumn]
    rows: list[GridRow]
    jobs: list[ExperimentJobRef]
    cancel_secret: str | None = Field(None, description=CANCEL_SECRET + " (cancels each of its jobs)")


class CardTraining(_Answer):
    command: str | None
    steps: int | None
    cpu_minutes: float


class CardOut(_Answer):
    """A model's card: what it makes, examples to try (labels, cluster ids or prompts), and for a shipped model its
    metric summary and the recipe that trained it. An admin writes title, description and examples (PATCH
    /admin/models/{version_id}/card). The sample grid is at /models/{name}/samples.png."""

    title: str | None
    description: str | None
    examples: list[str]
    clusters: dict[str, str] = Field(description="a cluster model's clusters: what each one holds")
    metrics: dict[str, float]
    evaluation_samples: int | None
    caveats: list[str] = Field(description="where the model falls short by its own evaluation, in plain words")
    training: CardTraining
    export: dict[str, Any]
    size_bytes: int | None
    default: bool


class ModelOut(_Answer):
    """A serving model version: what it takes and makes, its metrics and its card (null while nobody wrote one)."""

    name: str
    version: int
    backend: str
    condition: str
    supported_conditions: list[str]
    class_names: list[str]
    num_clusters: int | None
    image_shape: list[int]
    dataset: str
    metrics: dict[str, Any]
    serving: bool
    created_at: str = date_time()
    card: CardOut | None


class ModelList(_Answer):
    models: list[ModelOut]


class VersionOut(ModelOut):
    """A model version as an admin sees it: the model's fields, its id (what promote and compare take), where
    its checkpoint is and the digest of its weights, and whether it was evaluated."""

    id: int
    checkpoint_path: str | None
    checkpoint_key: str | None
    weights_sha256: str | None
    evaluation: "RunEvaluation"


class VersionList(_Answer):
    versions: list[VersionOut]


class MetricRow(_Answer):
    metric: str
    candidate: Any
    serving: Any
    better: bool | None = Field(description="whether the candidate's figure is the better one (null: not comparable)")


class VersionComparison(_Answer):
    """A version's metrics beside those of the serving version of the same name."""

    candidate: VersionOut
    serving: VersionOut | None
    metrics: list[MetricRow]


class DatasetOut(_Answer):
    """An uploaded data set, with the statistics its check found."""

    name: str
    layout: str = Field(description="how the archive was laid out: class folders, or images with captions.jsonl")
    images: int
    classes: int
    class_names: list[str]
    captions: int = Field(description="captions in all (an image may have several)")
    size_bytes: int
    source: str | None = Field(description="the uploaded file's name")
    created_at: str = date_time()
    builtin: Literal[False]
    ignored: list[str] | None = Field(None, description="archivers' metadata skipped (on upload only)")


class BuiltinDataset(_Answer):
    name: str
    builtin: Literal[True]
    available: bool = Field(description="whether DATA_ROOT holds it")
    captions: bool


class DatasetList(_Answer):
    datasets: list[DatasetOut]
    builtin: list[BuiltinDataset]


class VersionRef(_Answer):
    id: int
    name: str
    version: int
    serving: bool
    compare_url: str
    page_url: str


class RunEvaluation(_Answer):
    """Whether the run is (or will be) evaluated, and why not."""

    state: Literal["pending", "off", "not evaluated", "evaluated", "skipped", "missing"]
    reason: str | None
    notes: list[str]
    evaluated_on: Any


class TrainingRunOut(_Answer):
    """A training run as it stands: its settings, progress (step, losses, time left), metrics and, once it has
    succeeded, the model version it registered."""

    id: str
    url: str
    status: Status
    phase: str | None
    backend: str
    dataset: str
    condition: str
    model_name: str
    settings: dict[str, Any]
    step: int
    total_steps: int
    epoch: int
    losses: dict[str, Any]
    elapsed_seconds: float
    eta_seconds: float | None = Field(description="the time left while the run is alive")
    cancel_requested: bool
    attempts: int
    error: str | None
    metrics: dict[str, Any]
    evaluation: RunEvaluation
    progress: dict[str, Any] | None = Field(description="while running: rate (steps per second) and, while it "
                                                        "evaluates, the evaluation's stage")
    evaluation_table: list[dict[str, Any]]
    created_at: str = date_time()
    started_at: str | None = date_time()
    finished_at: str | None = date_time()
    model_version: VersionRef | None
    sample_url: str | None
    sample_step: int | None
    sample_prompts: list[str]
    history: list[dict[str, Any]] | None = Field(None, description="the loss history (GET of one run only)")


class TrainingRunList(_Answer):
    trainings: list[TrainingRunOut]


class HealthOut(_Answer):
    """ok or degraded; the database, the broker and the store (with the error text) for an admin's token only."""

    status: Literal["ok", "degraded"]
    database: dict[str, Any] | None = None
    broker: dict[str, Any] | None = None
    storage: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    """An error: its message, and where it applies the field (or line) at fault and other details."""

    model_config = ConfigDict(extra="allow", strict=True)

    error: str


VersionOut.model_rebuild()

# the models' names in the document
COMPONENTS = {"ImageOut": "Image", "JobOut": "Job", "JobCreated": "JobCreated", "Delivery": "WebhookDelivery",
              "WebhookOut": "Webhook", "JobRef": "JobRef", "ExperimentJobRef": "ExperimentJobRef",
              "BatchOut": "Batch", "GridColumn": "GridColumn", "RowFigures": "RowFigures", "GridRow": "GridRow",
              "ExperimentOut": "Experiment", "CardTraining": "CardTraining", "CardOut": "ModelCard",
              "ModelOut": "Model", "ModelList": "ModelList", "VersionRef": "VersionRef",
              "RunEvaluation": "RunEvaluation", "TrainingRunOut": "TrainingRun", "TrainingRunList": "TrainingRunList",
              "HealthOut": "Health", "ErrorOut": "Error", "VersionOut": "ModelVersion",
              "VersionList": "ModelVersionList", "MetricRow": "MetricRow", "VersionComparison": "VersionComparison",
              "DatasetOut": "Dataset", "BuiltinDataset": "BuiltinDataset", "DatasetList": "DatasetList"}
ANSWERS = (JobOut, JobCreated, BatchOut, ExperimentOut, ModelList, TrainingRunList, HealthOut, ErrorOut, VersionList,
           VersionComparison, DatasetList)


def response_schemas() -> dict[str, dict[str, Any]]:
    """The answers' components (and the ones they refer to) of the OpenAPI 3.0 document, from the models."""
    from app.services.schemas import openapi_3_0

    out: dict[str, dict[str, Any]] = {}
    for model in ANSWERS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            out[COMPONENTS[name]] = openapi_3_0(definition, nullable=True)
        out[COMPONENTS[model.__name__]] = openapi_3_0(schema, nullable=True)
    return _renamed_refs(out)


def _renamed_refs(node: Any) -> Any:
    """``$ref``s by the document's names of the components."""
    if isinstance(node, dict):
        return {key: (f"#/components/schemas/{COMPONENTS[value.rsplit('/', 1)[1]]}" if key == "$ref" else
                      _renamed_refs(value)) for key, value in node.items()}
    if isinstance(node, list):
        return [_renamed_refs(item) for item in node]
    return node
