"""``/api/v1/experiments``: the papers' experiments (compare, attribute sweep, interpolate) as jobs of the queue:
create, read (optionally waiting for every job to end), cancel. The rules are in
:mod:`app.services.experiments`."""

from __future__ import annotations

from flask import g, jsonify, request, url_for

from app.api.blueprint import bp, wait_seconds
from app.api.jobs import _owner
from app.api.views import experiment_to_dict
from app.core.http import json_body
from app.services import experiments
from app.core.fastpath.job_events import wait_until_ended
from app.core.status import FINAL


def _reader(experiment_id: str):
    def read():
        experiment = experiments.get_experiment(experiment_id)
        jobs = experiments.jobs_of(experiment)
        return (experiment, jobs), [job.id for job in jobs if job.status not in FINAL]
    return read


def _multipart() -> tuple[dict, dict[str, tuple[str, bytes]]]:
    """A multipart request (uploaded input images): its text fields as the JSON body would have them (integers
    parsed) and its files {field: (file name, bytes)}."""
    from app.services.jobs import parse_int_text

    data: dict = {}
    for key, value in request.form.items():
        if not isinstance(key, str):  # a part without a name: nothing this API takes
            continue
        if key == "as":  # a list in JSON; one label, cluster or prompt per line here
            data[key] = [line.strip() for line in value.splitlines() if line.strip()]
            continue
        number = parse_int_text(value.strip()) if key in ("steps", "cluster", "seed", "n") else None
        data[key] = number if number is not None else value
    files = {str(key): (upload.filename or str(key), upload.read()) for key, upload in request.files.items()}
    return data, files


@bp.post("/experiments")
def create_experiment():
    wait = wait_seconds()  # checked before anything is stored
    owner = _owner()
    if request.mimetype == "multipart/form-data":
        plan = experiments.validate_experiment(*_multipart())
    else:
        plan = experiments.validate_experiment(json_body())
    created = experiments.create_experiment(plan, owner)
    url = url_for("api.get_experiment", experiment_id=created.id)
    capability = {"cancel_secret": created.cancel_secret} if created.cancel_secret else {}
    read = _reader(created.id)
    experiment, jobs = wait_until_ended(wait, read, None) if wait is not None else read()[0]
    body = experiment_to_dict(experiment, jobs)
    return jsonify({**body, **capability}), 200 if body["status"] in FINAL else 202, \
        {"Location": url}


@bp.get("/experiments/<experiment_id>")
def get_experiment(experiment_id: str):
    wait = wait_seconds()
    read = _reader(experiment_id)
    experiment, jobs = wait_until_ended(wait, read, None) if wait is not None else read()[0]
    return jsonify(experiment_to_dict(experiment, jobs))


@bp.post("/experiments/<experiment_id>/cancel")
def cancel_experiment(experiment_id: str):
    """Only for its creator: the token that created it, or the anonymous creator's X-Cancel-Secret."""
    client = g.client
    experiments.cancel_experiment(experiment_id, token_id=client.token_id,
                                  secret=request.headers.get("X-Cancel-Secret"), admin=client.is_admin)
    read = _reader(experiment_id)
    return jsonify(experiment_to_dict(*read()[0]))
