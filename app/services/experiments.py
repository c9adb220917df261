"""The papers' experiments as jobs of the ordinary queue: a comparison of models, an attribute sweep and an
interpolation. An experiment is a row of ``experiments`` and a few ordinary job rows that point at it; they are
stored, sent (the outbox), claimed, batched, retried, written as PNGs and listed in the gallery exactly as any
other job, so every cell of an experiment's grid is the image a single job of that model, condition and seed
makes, pixel for pixel.

* **compare**: one request (a label or a prompt, a seed, n) on several serving models: one job per model, all
  with the same seed. Rows: the models (with their card's figures); columns: the seeds ``seed + i``.
* **sweep**: one model, the same seeds, one word varied: the class label (or cluster) of a class (cluster)
  model, or one word of a prompt (a colour, a tone, a cut; any word with a list of values) for a text model.
  One job per value with the same seed: the models draw the noise from the seed alone, so every column keeps
  the noise and only the condition changes. Rows: the seeds; columns: the values.
* **interpolate**: one job that decodes ``steps`` points on the straight line between two generated codes (two
  seeds, two labels or two prompts; :func:`generation.latent_ops.interpolate_generated`); its two ends are the
  codes that a single job of each end's condition and seed decodes first. One row; columns: the steps.
* **reconstruct** and **mix** (backends with an encoder): one job that encodes an input image (a gallery image,
  or an upload checked like a data set's images) and decodes its code, or mixes two images' codes along
  ``steps`` weights (:func:`generation.latent_ops.reconstruct_and_mix`); the ends of a mix are the two
  reconstructions.

Like :mod:`app.services.jobs`, every function takes plain values and raises :class:`ApiError`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.core.errors import ApiError
from app.core.extensions import db
from app.core.tables import Experiment, Job, ModelVersion, get_or_404
from app.services import outbox
from app.services.experiment_schema import (DEFAULT_N, DEFAULT_STEPS, KINDS, MAX_COLUMNS, MAX_ROWS,
                                            check_experiment_request)
from app.services.jobs import (JobSpec, Owner, _capability_of, _check_quota_or_roll_back, _has_control,
                               _job_from_spec, _secret_hash, check_request_size, lock_client,
                               stage_messages, validate_job)
from app.services.model_versions import card_summary, default_model_name, serving_models, serving_version
from app.core.status import FINAL, JobStatus, count_by_status, overall_status
from priorforge_spec.experiments import CONDITION_FREE_DECODERS, REGENERATING_BACKENDS, SWEEP_WORDS, attribute_of

FIELDS = {
    "compare": ("kind", "models", "label", "prompt", "seed", "n"),
    "sweep": ("kind", "model", "seed", "n", "labels", "clusters", "prompt", "word", "values"),
    "interpolate": ("kind", "model", "from", "to", "steps"),
    # an input image is a gallery image's id, or an uploaded file of the same name (multipart)
    "reconstruct": ("kind", "model", "image", "label", "cluster", "prompt", "as"),
    "mix": ("kind", "model", "a", "b", "steps", "label", "cluster", "prompt"),
}
INPUTS = {"reconstruct": ("image",), "mix": ("a", "b")}


@dataclass
class ExperimentPlan:
    """A validated experiment: what to store (``params``, the request with its defaults filled in) and its jobs
    (a job request and its operation, None for plain sampling), in grid order; ``uploads``: input images sent
    with the request ({input name: (file name, bytes)}), stored with the experiment and named in the
    operation's ``inputs`` as ``upload:<name>`` until then."""

    kind: str
    params: dict[str, Any]
    jobs: list[tuple[JobSpec, dict[str, Any] | None]] = field(default_factory=list)
    uploads: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(spec.n for spec, _ in self.jobs)


# -- validation -------------------------------------------------------------------------------------
# the fields' types and ranges are checked first, once (app/services/experiment_schema.py); what follows reads
# them as checked and adds the rules of each kind
def _seed(data: dict[str, Any], key: str = "seed") -> int:
    seed = data.get(key)
    return secrets.randbelow(2**32) if seed is None else seed


def _count(data: dict[str, Any], key: str, default: int, high: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    if value > high:  # a kind's own limit, below the field's (n of a sweep)
        raise ApiError(422, f"{key} must be an integer from 1 to {high}, got {value!r}", field=key)
    return value


def _job(request: dict[str, Any], where: str) -> JobSpec:
    """One job of the experiment, checked by the rules of a single job (the same messages, prefixed)."""
    try:
        return validate_job(request)
    except ApiError as exc:
        raise ApiError(exc.status, f"{where}: {exc.message}", **exc.details) from None


def _model(data: dict[str, Any]) -> ModelVersion:
    name = data.get("model")
    if name is None:
        name = default_model_name(current_app.config["DEFAULT_MODEL"])
    if not isinstance(name, str) or not name.strip():
        raise ApiError(422, "model must be a non-empty string (see GET /api/v1/models)", field="model")
    name = name.strip()
    version = None if len(name) > 100 or _has_control(name) else serving_version(name)
    if version is None:
        names = ", ".join(m.name for m in serving_models()) or "none registered"
        raise ApiError(422, f"unknown model {name[:100]!r}; available: {names}", field="model")
    return version


def validate_experiment(data: Any, uploads: dict[str, tuple[str, bytes]] | None = None) -> ExperimentPlan:
    """Check an experiment request (a dict as decoded from JSON, or a form's fields) and its uploaded input images
    ({field: (file name, bytes)}); ApiError(422) naming the bad field if bad. Nothing is stored."""
    if not isinstance(data, dict):
        raise ApiError(422, "an experiment must be a JSON object")
    uploads = dict(uploads or {})
    kind = data.get("kind")
    if kind not in KINDS:
        raise ApiError(422, f"kind must be one of {', '.join(KINDS)}, got {kind!r}", field="kind")
    unknown = sorted(str(key) for key in set(data) - set(FIELDS[kind]))
    if unknown:
        raise ApiError(422, f"unknown field(s) for a {kind}: {', '.join(unknown)}; valid: {', '.join(FIELDS[kind])}",
                       field=unknown[0])
    check_experiment_request(data, kind)
    stray = sorted(set(uploads) - set(INPUTS.get(kind, ())))
    if stray:
        raise ApiError(422, f"a {kind} takes no uploaded file {stray[0]!r}", field=stray[0])
    if kind in INPUTS:
        plan = _autoencode(kind, data, uploads)
    else:
        plan = {"compare": _compare, "sweep": _sweep, "interpolate": _interpolate}[kind](data)
    check_request_size(plan.images)
    return plan


def _has_class(version: ModelVersion, label: str | int) -> bool:
    """Whether ``label`` names one of the version's classes. By name only: the same index is another class
    in another model (7 is a sneaker in Fashion-MNIST), so a comparison chooses its models by the name; a
    model named in ``models`` still takes an index, as a single job does."""
    return str(label).strip().lower() in [str(name).lower() for name in version.class_names or []]


def _compare(data: dict[str, Any]) -> ExperimentPlan:
    label, prompt = data.get("label"), data.get("prompt")
    if (label is None) == (prompt is None):
        raise ApiError(422, "a comparison takes one request for every model: give a label or a prompt (one of them)",
                       field="label" if label is None else "prompt")
    if label is not None and (not isinstance(label, (str, int)) or isinstance(label, bool)):
        raise ApiError(422, "label must be a class name or index", field="label")
    n = _count(data, "n", DEFAULT_N, MAX_COLUMNS)
    seed = _seed(data)
    names = data.get("models")
    if names is None:  # every serving model that takes this request
        kind = "class" if label is not None else "text"
        names = [m.name for m in serving_models() if m.condition == kind and
                 (label is None or _has_class(m, label))][:MAX_ROWS]
    if any(not isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ApiError(422, "models must be a list of distinct model names", field="models")
    if len(names) < 2:
        what = f"the label {label!r}" if label is not None else "a prompt"
        found = f" (only {names[0]} does)" if names else ""
        raise ApiError(422, f"a comparison needs at least two models that take {what}{found}", field="models")
    condition = {"label": label} if label is not None else {"prompt": prompt}
    specs = [_job({"model": name, **condition, "n": n, "seed": seed}, f"model {name}") for name in names]
    params = {"models": names, **condition, "seed": seed, "n": n}
    if prompt is not None:
        params["prompt"] = specs[0].prompt  # stripped, as every job has it
    return ExperimentPlan("compare", params, [(spec, None) for spec in specs])


def _sweep(data: dict[str, Any]) -> ExperimentPlan:
    version = _model(data)
    n = _count(data, "n", DEFAULT_N, MAX_ROWS)
    seed = _seed(data)
    base = {"model": version.name, "n": n, "seed": seed}
    given = [key for key in ("labels", "clusters", "prompt", "word", "values") if data.get(key) is not None]
    allowed = {"class": {"labels"}, "cluster": {"clusters"}, "text": {"prompt", "word", "values"}}.get(version.condition)
    if allowed is None:
        raise ApiError(422, f"model {version.name!r} is unconditional: it has no label or prompt to vary",
                       field="model")
    wrong = [key for key in given if key not in allowed]
    if wrong:
        raise ApiError(422, f"model {version.name!r} is trained with condition {version.condition!r}: a sweep of it "
                            f"takes {', '.join(sorted(allowed))}, not {', '.join(wrong)}", field=wrong[0])
    if version.condition == "class":
        labels = data.get("labels") or list(version.class_names)[:MAX_COLUMNS]
        specs = [_job({**base, "label": label}, f"label {label!r}") for label in labels]
        values = [spec.label for spec in specs]
        if len(set(values)) != len(values):
            raise ApiError(422, "labels must name distinct classes", field="labels")
        params = {"model": version.name, "seed": seed, "n": n, "varied": "label", "values": values}
    elif version.condition == "cluster":
        clusters = data.get("clusters") or list(range(min(version.num_classes, MAX_COLUMNS)))
        if len(set(map(repr, clusters))) != len(clusters):
            raise ApiError(422, "clusters must be distinct", field="clusters")
        specs = [_job({**base, "cluster": cluster}, f"cluster {cluster!r}") for cluster in clusters]
        params = {"model": version.name, "seed": seed, "n": n, "varied": "cluster",
                  "values": [spec.cluster for spec in specs]}
    else:
        specs, params = _prompt_sweep(data, version, base)
    if len(specs) < 2:
        raise ApiError(422, "a sweep needs at least two values", field="values" if version.condition == "text"
                       else ("labels" if version.condition == "class" else "clusters"))
    return ExperimentPlan("sweep", params, [(spec, None) for spec in specs])



def _replace_first(pattern: re.Pattern[str], prompt: str, value: str) -> str:
    """``prompt`` with the first match of ``pattern`` replaced by ``value`` taken literally (no group refs)."""
    return pattern.sub(lambda _match: value, prompt, count=1)

def _prompt_sweep(data: dict[str, Any], version: ModelVersion, base: dict[str, Any]):
    prompt, word = data.get("prompt"), data.get("word")
    if prompt is None:
        raise ApiError(422, f"model {version.name!r} needs a prompt to vary a word of", field="prompt")
    _job({**base, "prompt": prompt}, "prompt")  # the rules of a prompt (type, length, characters)
    prompt = prompt.strip()
    if not isinstance(word, str) or not word.strip():
        raise ApiError(422, "word must be the word of the prompt to vary (such as a colour: \"red\")", field="word")
    word = word.strip()
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
    if not pattern.search(prompt):
        raise ApiError(422, f"the word {word[:40]!r} is not in the prompt {prompt[:80]!r}", field="word")
    values = data.get("values")
    attribute = attribute_of(word)
    if values is None:
        if attribute is None:
            known = "; ".join(f"{name}: {', '.join(words)}" for name, words in SWEEP_WORDS.items())
            raise ApiError(422, f"give the values to put in place of {word!r} (values has no default for it; there "
                                f"is one for these words: {known})", field="values")
        values = list(SWEEP_WORDS[attribute])
    if any(not isinstance(v, str) or not v.strip() for v in values):
        raise ApiError(422, "values must be non-empty strings", field="values")
    values = [v.strip() for v in values]
    if len({v.lower() for v in values}) != len(values):
        raise ApiError(422, "values must be distinct", field="values")
    prompts = [_replace_first(pattern, prompt, value) for value in values]
    specs = [_job({**base, "prompt": text}, f"value {value!r}") for value, text in zip(values, prompts)]
    params = {"model": version.name, "seed": base["seed"], "n": base["n"], "varied": "word", "prompt": prompt,
              "word": word, "attribute": attribute, "values": values, "prompts": [spec.prompt for spec in specs]}
    return specs, params


def _end(data: dict[str, Any] | None) -> dict[str, Any]:
    return dict(data or {})


def _condition_of(spec: JobSpec) -> dict[str, Any]:
    return {"condition_kind": spec.condition_kind, "label": spec.label, "label_index": spec.label_index,
            "cluster": spec.cluster, "prompt": spec.prompt}


def _interpolate(data: dict[str, Any]) -> ExperimentPlan:
    version = _model(data)
    steps = _count(data, "steps", DEFAULT_STEPS, MAX_COLUMNS)
    start, end = _end(data.get("from")), _end(data.get("to"))
    start["seed"] = _seed(start)
    end.setdefault("seed", start["seed"])
    end["seed"] = _seed(end)
    if not any(key in end for key in ("label", "cluster", "prompt")):  # the same condition at both ends
        end.update({key: start[key] for key in ("label", "cluster", "prompt") if key in start})
    a = _job({"model": version.name, **start, "n": 1}, "from")
    b = _job({"model": version.name, **end, "n": 1}, "to")
    between = [name for name, differs in (("seed", a.seed != b.seed), ("label", a.label != b.label),
                                          ("cluster", a.cluster != b.cluster), ("prompt", a.prompt != b.prompt))
               if differs]
    if not between:
        raise ApiError(422, "the two ends are the same image: give another seed, label or prompt in \"to\"",
                       field="to")
    if set(between) - {"seed"} and version.backend not in CONDITION_FREE_DECODERS:
        raise ApiError(422, f"model {version.name!r} ({version.backend}) decodes with the condition, so it interpolates "
                            "between two seeds of one condition only", field="to")
    spec = JobSpec(a.model_version_id, a.condition_kind, steps, a.seed, label=a.label, label_index=a.label_index,
                   cluster=a.cluster, prompt=a.prompt)
    operation = {"op": "interpolate", "between": between, "steps": steps, "to": {**_condition_of(b), "seed": b.seed}}
    ends = [{**{k: v for k, v in (("label", s.label), ("cluster", s.cluster), ("prompt", s.prompt)) if v is not None},
             "seed": s.seed} for s in (a, b)]
    params = {"model": version.name, "steps": steps, "from": ends[0], "to": ends[1], "between": between}
    return ExperimentPlan("interpolate", params, [(spec, operation)])


def _encoder_problem(version: ModelVersion) -> str | None:
    """Why this version cannot encode an image, or None (also when its checkpoint folder is not on this machine:
    then the worker finds out and fails the job with its reason)."""
    from pathlib import Path

    from priorforge_spec.checkpoint import CheckpointError, read_checkpoint_config

    try:
        config = read_checkpoint_config(Path(version.checkpoint_path))
    except (CheckpointError, OSError, ValueError):
        return None
    if "encoder" in ((config.get("export") or {}).get("dropped_modules") or []):
        return (f"model {version.name!r} is an inference-only export without its encoder, so it cannot encode an "
                "image (models with one: those whose card says it keeps its encoder)")
    return None


def _input(kind: str, name: str, data: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """One input image: an uploaded file (checked like a data set's images) or a gallery image's id."""
    from app.core.tables import Image
    from app.services.uploads import image_bytes_problem

    if name in uploads:
        if data.get(name) is not None:
            raise ApiError(422, f"{name}: give a gallery image id or upload a file, not both", field=name)
        filename, content = uploads[name]
        if not content:
            raise ApiError(422, f"{name}: the uploaded file is empty", field=name)
        problem = image_bytes_problem(content)
        if problem is not None:
            raise ApiError(422, f"{name}: {filename[:100]!r} {problem}", field=name)
        return {"source": "upload", "name": "".join(c for c in filename if ord(c) >= 32)[:200],
                "key": f"upload:{name}"}
    image_id = data.get(name)
    if image_id is None:
        what = "an image" if kind == "reconstruct" else "two images (a and b)"
        raise ApiError(422, f"a {kind} needs {what}: a gallery image's id or an uploaded file named {name!r}",
                       field=name)
    image = db.session.get(Image, image_id) if isinstance(image_id, str) and len(image_id) <= 36 and \
        not _has_control(image_id) else None
    if image is None:
        raise ApiError(422, f"{name}: no image {str(image_id)[:40]!r} in the gallery", field=name)
    return {"source": "gallery", "image_id": image.id, "key": image.storage_key}


def _autoencode(kind: str, data: dict[str, Any], uploads: dict[str, tuple[str, bytes]]) -> ExperimentPlan:
    """reconstruct: an image and its reconstruction, decode(encode(image)). mix: the codes of two images mixed
    along ``steps`` weights, from all A to all B. Backends with an encoder; the image's condition (label,
    cluster or prompt) is needed only by a backend whose encoder and decoder read it (pga, vae)."""
    version = _model(data)
    problem = _encoder_problem(version)
    if problem is not None:
        raise ApiError(422, problem, field="model")
    condition = {key: data[key] for key in ("label", "cluster", "prompt") if data.get(key) is not None}
    needs_condition = version.backend not in CONDITION_FREE_DECODERS and version.condition != "none"
    if needs_condition or condition:
        spec = _job({"model": version.name, **condition, "n": 1, "seed": 0}, "the image's condition")
    else:
        spec = JobSpec(version.id, "none", 1, 0)
    targets = _regenerate_targets(version, data, condition, spec) if kind == "reconstruct" else []
    inputs = [_input(kind, name, data, uploads) for name in INPUTS[kind]]
    steps = _count(data, "steps", DEFAULT_STEPS, MAX_COLUMNS) if kind == "mix" else None
    n = 2 + len(targets) if steps is None else steps  # reconstruct: the input, its decoding, one per target
    job = JobSpec(spec.model_version_id, spec.condition_kind, n, 0, label=spec.label, label_index=spec.label_index,
                  cluster=spec.cluster, prompt=spec.prompt)
    operation = {"op": kind, "inputs": [item["key"] for item in inputs], "steps": steps}
    if targets:
        operation["as"] = [_condition_of(target) for target in targets]
    shown = [{k: v for k, v in item.items() if k != "key"} for item in inputs]
    params = {"model": version.name, **condition, "inputs": shown, **({"steps": steps} if steps else {}),
              **({"as": [_condition_label_of(target) for target in targets]} if targets else {})}
    return ExperimentPlan(kind, params, [(job, operation)],
                          uploads={name: uploads[name] for name in INPUTS[kind] if name in uploads})


def _condition_label_of(spec: JobSpec) -> str:
    if spec.condition_kind == "class":
        return str(spec.label)
    if spec.condition_kind == "cluster":
        return f"cluster {spec.cluster}"
    return str(spec.prompt)


def _regenerate_targets(version: ModelVersion, data: dict[str, Any], condition: dict[str, Any],
                        spec: JobSpec) -> list[JobSpec]:
    """The conditions to re-generate a reconstructed image under (``as``: labels, clusters or prompts, by the
    model's condition), keeping its code; only glf, pga and vae can, and they need the image's own condition."""
    values = data.get("as")
    if values is None:
        return []
    if version.backend not in REGENERATING_BACKENDS or version.condition == "none":
        raise ApiError(422, f"model {version.name!r} ({version.backend}, condition {version.condition}) cannot "
                            f"re-generate an image under another condition; backends that can: "
                            f"{', '.join(sorted(REGENERATING_BACKENDS))} with a label, cluster or prompt", field="as")
    if not condition:
        key = {"class": "label", "cluster": "cluster", "text": "prompt"}[version.condition]
        raise ApiError(422, f"to re-generate the image as something else, give its own {key} too", field=key)
    key = {"class": "label", "cluster": "cluster", "text": "prompt"}[version.condition]
    return [_job({"model": version.name, key: value, "n": 1, "seed": 0}, f"as {value!r}") for value in values]


# -- creating ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Created:
    id: str
    cancel_secret: str | None  # the anonymous creator's capability (cancels its jobs), None for a token


def create_experiment(plan: ExperimentPlan, owner: Owner | None = None) -> Created:
    """The experiment row, its job rows and their messages (outbox rows) in one transaction, then the messages
    are published: the durability of any job. The quota counts all of its images."""
    client_key = owner.client_key if owner else None
    check_request_size(plan.images)
    lock_client(client_key)
    experiment = Experiment(kind=plan.kind, params=plan.params, owner_token_id=owner.token_id if owner else None)
    db.session.add(experiment)
    db.session.flush()
    experiment_id = experiment.id
    secret = _capability_of(owner, "experiment", experiment_id)
    experiment.cancel_hash = cancel_hash = _secret_hash(secret) if secret else None
    if plan.uploads:  # the input images, stored before the jobs that read them are committed
        keys = {f"upload:{name}": f"inputs/{experiment_id}/{name}" for name in plan.uploads}
        current_app.extensions["priorforge_storage"].put_many(
            [(keys[f"upload:{name}"], content) for name, (_filename, content) in plan.uploads.items()])
        plan.jobs = [(spec, {**operation, "inputs": [keys.get(key, key) for key in operation["inputs"]]}
                      if operation and "inputs" in operation else operation) for spec, operation in plan.jobs]
    jobs = [_job_from_spec(spec, owner, cancel_hash, experiment_id=experiment_id, experiment_index=i,
                           **({"operation": operation} if operation else {}))
            for i, (spec, operation) in enumerate(plan.jobs)]
    db.session.add_all(jobs)
    db.session.flush()
    _check_quota_or_roll_back(client_key, plan.images)
    messages = stage_messages([job.id for job in jobs])  # each job's lane, as if it came alone
    db.session.commit()
    outbox.publish_pending(messages)
    return Created(experiment_id, secret)


# -- reading ----------------------------------------------------------------------------------------
def get_experiment(experiment_id: str) -> Experiment:
    return get_or_404(Experiment, experiment_id, "experiment")


def jobs_of(experiment: Experiment) -> list[Job]:
    return list(db.session.scalars(
        select(Job).where(Job.experiment_id == experiment.id).order_by(Job.experiment_index)
        .options(selectinload(Job.images), selectinload(Job.model_version)).execution_options(populate_existing=True)))


def summary(jobs: list[Job]) -> dict[str, Any]:
    statuses = [job.status for job in jobs]
    counts = count_by_status(statuses)
    return {"status": overall_status(statuses), "counts": counts, "final": all(s in FINAL for s in statuses),
            "progress": round(sum(float(job.progress or 0) for job in jobs) / max(1, len(jobs)), 4)}


def _figures(version: ModelVersion) -> dict[str, Any]:
    """The card's headline figures of a model, for a comparison's rows: accuracy (the requested class, the
    prompt's object, or a cluster's purity), diversity (text models), FID (in the project's own feature space)."""
    metrics = dict((card_summary(version) or {}).get("metrics") or {})
    evaluation = (version.metrics or {}).get("evaluation")
    if not metrics and isinstance(evaluation, dict):
        metrics = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def first(*keys: str) -> float | None:
        return next((metrics[k] for k in keys if isinstance(metrics.get(k), (int, float))), None)

    return {"accuracy": first("label_accuracy", "text_class_accuracy[heldout]", "cluster_sample_purity"),
            "diversity": first("text_diversity_median[heldout]", "text_diversity_median"),
            "fid": first("feature_fid", "text_feature_fid[heldout]", "text_feature_fid")}


def _seconds_per_image(job: Job) -> float | None:
    """The worker's time for this job (start of its attempt to its end) per image: the speed in this run."""
    if job.status != JobStatus.SUCCEEDED or job.started_at is None or job.finished_at is None:
        return None
    return max(0.0, (job.finished_at - job.started_at).total_seconds()) / max(1, job.n)


def _condition_label(job: Job) -> str:
    if job.condition_kind == "class":
        return str(job.label)
    if job.condition_kind == "cluster":
        return f"cluster {job.cluster}"
    if job.condition_kind == "text":
        return str(job.prompt)
    return "unconditional"


def _end_label(end: dict[str, Any]) -> str:
    what = end.get("prompt") or (f"label {end['label']}" if end.get("label") is not None else
                                 (f"cluster {end['cluster']}" if end.get("cluster") is not None else "unconditional"))
    return f"{what}, seed {end['seed']}"


def grid(experiment: Experiment, jobs: list[Job]) -> dict[str, Any]:
    """The experiment's result as a grid with named axes: ``rows`` and ``columns`` ({"axis", "labels"}),
    ``cells[r][c]`` an :class:`Image` or None (not made yet), ``row_jobs[r]`` / ``column_jobs[c]`` the job of a
    row or column (None where a row or column spans several), and for a comparison ``figures[r]``, the row's
    model card figures and its speed in this run. ``varied`` says in words what changes along the columns."""
    p = experiment.params
    images = {job.id: {image.index: image for image in job.images} if job.status == JobStatus.SUCCEEDED else {}
              for job in jobs}
    if experiment.kind == "compare":
        n = int(p["n"])
        rows = [f"{job.model_version.name} v{job.model_version.version}" for job in jobs]
        columns = [f"seed {int(p['seed']) + i}" for i in range(n)]
        cells = [[images[job.id].get(i) for i in range(n)] for job in jobs]
        figures = [{**_figures(job.model_version), "seconds_per_image": _seconds_per_image(job),
                    "backend": job.model_version.backend} for job in jobs]
        condition = f"label {p['label']}" if p.get("label") is not None else f"prompt \u201c{p.get('prompt')}\u201d"
        return {"rows": {"axis": "model", "labels": rows}, "columns": {"axis": "seed", "labels": columns},
                "cells": cells, "row_jobs": jobs, "column_jobs": [None] * n, "figures": figures,
                "varied": f"the model; every model gets {condition} with the same seeds"}
    if experiment.kind == "sweep":
        n = int(p["n"])
        rows = [f"seed {int(p['seed']) + i}" for i in range(n)]
        columns = [_condition_label(job) for job in jobs]
        cells = [[images[job.id].get(i) for job in jobs] for i in range(n)]
        if p.get("varied") == "word":
            varied = f"the word \u201c{p['word']}\u201d of the prompt \u201c{p['prompt']}\u201d" + (
                f" (its {p['attribute']})" if p.get("attribute") else "")
            axis = "word"
        else:
            varied, axis = f"the {p['varied']}, with the noise of each seed kept", p["varied"]
        return {"rows": {"axis": "seed", "labels": rows}, "columns": {"axis": axis, "labels": columns},
                "cells": cells, "row_jobs": [None] * n, "column_jobs": jobs, "figures": None, "varied": varied}
    if experiment.kind in ("reconstruct", "mix"):
        job = jobs[0]
        names = [_input_label(item) for item in p["inputs"]]
        if experiment.kind == "reconstruct":
            columns = ["input (as the model sees it)", "reconstruction", *[f"as {value}" for value in p.get("as", [])]]
            row = names[0]
            varied = "the condition the image's code is re-generated under" if p.get("as") else \
                "nothing: the image, then the decoding of its code"
        else:
            steps = int(p["steps"])
            columns = [f"{1 - i / (steps - 1):.2f} A + {i / (steps - 1):.2f} B" for i in range(steps)]
            row, varied = f"A: {names[0]} \u2192 B: {names[1]}", "the share of each image's code in the mix"
        return {"rows": {"axis": "input", "labels": [row]}, "columns": {"axis": "image", "labels": columns},
                "cells": [[images[job.id].get(i) for i in range(len(columns))]], "row_jobs": [job],
                "column_jobs": [None] * len(columns), "figures": None, "varied": varied}
    steps = int(p["steps"])
    job = jobs[0]
    columns = [f"t = {i / (steps - 1):.2f}" for i in range(steps)]
    return {"rows": {"axis": "path", "labels": [f"{_end_label(p['from'])} \u2192 {_end_label(p['to'])}"]},
            "columns": {"axis": "t", "labels": columns}, "cells": [[images[job.id].get(i) for i in range(steps)]],
            "row_jobs": [job], "column_jobs": [None] * steps, "figures": None,
            "varied": "the position on the line from one code to the other (between "
                      f"{' and '.join(p['between'])})"}


def _input_label(item: dict[str, Any]) -> str:
    if item.get("source") == "gallery":
        return f"gallery image {str(item.get('image_id'))[:8]}"
    return f"upload {item.get('name') or ''}".strip()


def compare_defaults(job: Job) -> dict[str, Any]:
    """The compare form's fields for "compare this request" from a job page: its condition, seed and n."""
    out: dict[str, Any] = {"seed": job.seed, "n": min(job.n, MAX_COLUMNS)}
    if job.condition_kind == "class":
        out["label"] = job.label
    elif job.condition_kind == "text":
        out["prompt"] = job.prompt
    return out


def cancel_experiment(experiment_id: str, *, token_id: int | None = None, secret: str | None = None,
                      admin: bool = False) -> Experiment:
    """Cancel the experiment's jobs that are still queued or running (:func:`app.services.jobs.cancel_job`,
    which says who may); 403 unless the caller may cancel them, 409 when every job has ended already."""
    from app.services.jobs import cancel_job, may_cancel

    experiment = get_experiment(experiment_id)
    jobs = jobs_of(experiment)
    if jobs and not may_cancel(jobs[0], token_id=token_id, secret=secret, admin=admin):
        raise ApiError(403, "only the experiment's creator can cancel it: send the token that created it, or the "
                            "cancel_secret returned when it was created (header X-Cancel-Secret)")
    live = [job.id for job in jobs if job.status not in FINAL]
    if not live:
        raise ApiError(409, f"experiment {experiment_id} has ended already")
    for job_id in live:
        try:
            cancel_job(job_id, token_id=token_id, secret=secret, admin=admin)
        except ApiError as exc:
            if exc.status != 409:  # one that ended meanwhile stays as it ended
                raise
    return experiment
