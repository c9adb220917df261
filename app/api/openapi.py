"""The OpenAPI 3 document of ``/api/v1`` (a test checks it against the Flask url_map, both ways)."""

from __future__ import annotations

from typing import Any

from app.api.responses import CANCEL_SECRET, response_schemas
from app.core.status import JobStatus
from app.services.cards import card_edit_schema
from app.services.experiment_schema import MAX_COLUMNS as EXPERIMENT_MAX_COLUMNS, experiment_request_schema
from app.services.jobs import job_limits
from app.services.schemas import JOB_FIELDS, job_request_schema
from app.services.trainings import request_schema as training_request_schema

JOB_STATUSES = [status.value for status in JobStatus]  # jobs' and training runs'


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _id(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


BAD = {"400": _error("malformed JSON"), "413": _error("request body too large"),
       "415": _error("wrong content type"), "422": _error("invalid request (message names the field or line)")}
# every operation may answer these (docs/security.md): a NUL character in the query, a rate limit or quota
COMMON = {"400": _error("malformed request (a NUL character in the query string, malformed JSON)"),
          "429": {"description": "too many requests, or too many images queued or running for this client; "
                                 "retry after the Retry-After header's seconds",
                  "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
NO_TOKEN = {"401": _error("anonymous generation is switched off (ANONYMOUS_GENERATION): send a bearer token")}



def _wait(what: str) -> dict[str, Any]:
    from flask import current_app

    limit = current_app.config["JOB_WAIT_MAX_SECONDS"]
    return {"name": "wait", "in": "query", "required": False,
            "schema": {"type": "number", "minimum": 0, "maximum": limit},
            "description": f"seconds to wait for {what} to end (succeeded, failed or canceled) before answering, "
                           f"at most JOB_WAIT_MAX_SECONDS ({limit:g} here); instead of polling. When this web "
                           "process already has JOB_WAIT_MAX_CONCURRENT waiting requests, it answers at once "
                           "(as with wait=0)"}


def _idempotency_key(what: str) -> dict[str, Any]:
    return {"name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"},
            "description": f"a key of the client's choosing (e.g. a UUID), to retry safely: a request with a key "
                           f"used before (within IDEMPOTENCY_KEY_TTL, 24 h by default) and the same body returns "
                           f"the {what} the first one made instead of making another; the same key with a "
                           f"different body is refused with 422"}


def _experiment_upload() -> dict[str, Any]:
    """POST /experiments as multipart: the same fields as text, and the input images as files."""
    fields = {name: {"type": "string"} for name in ("model", "label", "prompt", "image", "a", "b")}
    files = {name: {"type": "string", "format": "binary", "description": f"the {name} input image (PNG, JPEG, BMP, "
                                                                          f"GIF, WebP or TIFF)"}
             for name in ("image", "a", "b")}
    return {"type": "object", "required": ["kind"], "properties": {
        "kind": {"type": "string", "enum": ["reconstruct", "mix"]}, **fields, **files,
        "steps": {"type": "integer", "minimum": 2, "maximum": EXPERIMENT_MAX_COLUMNS},
        "cluster": {"type": "integer", "minimum": 0},
        "as": {"type": "string", "description": "reconstruct: the conditions to re-generate under, one per line"}}}


def spec() -> dict[str, Any]:
    schemas = {
        **job_request_schema(job_limits()),
        **response_schemas(),  # every answer's: from the models of app/api/responses.py
        **experiment_request_schema(),
        "CardEdit": card_edit_schema(),
        "TrainingRequest": training_request_schema(),
    }
    job_id = _id("job_id", "job id")
    run_id = _id("run_id", "training run id")
    version_id = {"name": "version_id", "in": "path", "required": True,
                  "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                  "description": "model version id (the id field, not the version number)"}
    ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
    DENIED = {"401": _error("no valid bearer token"), "403": _error("the token's user is not an admin")}
    paths: dict[str, dict[str, Any]] = {
        "/jobs": {"post": {
            "summary": "Queue a generation job", "operationId": "createJob",
            "parameters": [_wait("the job"), _idempotency_key("job")],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/JobRequest"}}}},
            "responses": {"200": _json("with wait: the job, ended within the wait", "Job"),
                          "202": _json("queued; poll the url", "JobCreated"), **BAD, **NO_TOKEN}}},
        "/jobs/{job_id}": {"get": {
            "summary": "A job's status, progress, images and error", "operationId": "getJob",
            "parameters": [job_id, _wait("the job")],
            "responses": {"200": _json("the job", "Job"), "404": _error("no such job"),
                          "422": _error("a bad wait")}}},
        "/jobs/{job_id}/cancel": {"post": {
            "summary": "Cancel a queued or running job (only its creator: the token that created it, or the "
                       "cancel_secret handed to an anonymous creator)", "operationId": "cancelJob",
            "parameters": [job_id, {"name": "X-Cancel-Secret", "in": "header", "required": False,
                                    "schema": {"type": "string"}, "description": CANCEL_SECRET}],
            "responses": {"200": _json("the job, now canceled", "Job"), "403": _error("not the job's creator"),
                          "404": _error("no such job"), "409": _error("the job has already finished")}}},
        "/batches": {"post": {
            "summary": "Queue many jobs at once (all items are validated before anything is stored)",
            "operationId": "createBatch", "parameters": [_idempotency_key("batch")],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"oneOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/JobRequest"}},
                    {"$ref": "#/components/schemas/BatchRequest"}]}},
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": f"UTF-8 text, by the file name's extension: a .csv file with a header "
                                                f"row of {', '.join(JOB_FIELDS)} (any subset), or a .jsonl (.ndjson) "
                                                "file with one job object per line; another extension: 415"},
                        "webhook": {"type": "string", "maxLength": 2000,
                                    "description": "the batch's own webhook, as in BatchRequest"},
                        "webhook_events_filter": {"type": "string", "description": "comma-separated events of "
                                                                                   "the batch's webhook (start, "
                                                                                   "completed); default completed"}}},
                    "encoding": {"file": {"contentType": "text/csv, application/jsonl, application/x-ndjson, "
                                                         "text/plain, application/octet-stream"}}}}},
            "responses": {"202": _json("queued (its jobs go to the bulk queue)", "Batch"), **BAD, **NO_TOKEN}}},
        "/batches/{batch_id}": {"get": {
            "summary": "A batch's combined status", "operationId": "getBatch",
            "parameters": [_id("batch_id", "batch id"), _wait("all the batch's jobs")],
            "responses": {"200": _json("the batch", "Batch"), "404": _error("no such batch"),
                          "422": _error("a bad wait")}}},
        "/experiments": {"post": {
            "summary": "Run an experiment as ordinary jobs: compare models, an attribute sweep, an interpolation, "
                       "a reconstruction or a mix (every request and upload is validated before anything is "
                       "stored)", "operationId": "createExperiment",
            "parameters": [_wait("every job of the experiment")],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ExperimentRequest"}},
                "multipart/form-data": {"schema": _experiment_upload()}}},
            "responses": {"200": _json("with wait: the experiment, ended within the wait", "Experiment"),
                          "202": _json("queued; poll the url", "Experiment"), **BAD, **NO_TOKEN}}},
        "/experiments/{experiment_id}": {"get": {
            "summary": "An experiment's status and its grid of images", "operationId": "getExperiment",
            "parameters": [_id("experiment_id", "experiment id"), _wait("every job of the experiment")],
            "responses": {"200": _json("the experiment", "Experiment"), "404": _error("no such experiment"),
                          "422": _error("a bad wait")}}},
        "/experiments/{experiment_id}/cancel": {"post": {
            "summary": "Cancel an experiment's queued and running jobs (only its creator)",
            "operationId": "cancelExperiment",
            "parameters": [_id("experiment_id", "experiment id"),
                           {"name": "X-Cancel-Secret", "in": "header", "required": False,
                            "schema": {"type": "string"}, "description": CANCEL_SECRET}],
            "responses": {"200": _json("the experiment, now canceled", "Experiment"),
                          "403": _error("not the experiment's creator"),
                          "404": _error("no such experiment"), "409": _error("every job has ended already")}}},
        "/models": {"get": {
            "summary": "The models being served", "operationId": "listModels",
            "responses": {"200": _json("serving model versions", "ModelList")}}},
        "/images/{image_id}": {"get": {
            "summary": "An image's metadata (with the generation parameters from its PNG)",
            "operationId": "getImage", "parameters": [_id("image_id", "image id")],
            "responses": {"200": _json("the image", "Image"), "404": _error("no such image")}}},
        "/images/{image_id}.png": {"get": {
            "summary": "The PNG (generation parameters in its text chunks)", "operationId": "getImagePng",
            "parameters": [_id("image_id", "image id")],
            "responses": {"200": {"description": "the PNG", "content": {"image/png": {
                "schema": {"type": "string", "format": "binary"}}}},
                "302": {"description": "IMAGE_DELIVERY=redirect: a presigned URL of the object store"},
                "404": _error("no such image"), "503": _error("the object store is unavailable")}}},
        "/webhook-secret": {"get": {
            "summary": "The secret that signs the webhooks of this token's jobs (HMAC-SHA256 over "
                       "'<Webhook-Timestamp>.<body>')", "operationId": "getWebhookSecret", "security": [{"bearer": []}],
            "responses": {"200": {"description": "the secret", "content": {"application/json": {"schema": {
                "type": "object", "required": ["secret"], "properties": {
                    "secret": {"type": "string"}, "algorithm": {"type": "string"}, "signed": {"type": "string"},
                    "header": {"type": "string"}}}}}},
                "401": _error("no API token")}}},
        "/health": {"get": {
            "summary": "Database, broker and image store reachability (details for an admin's token only)",
            "operationId": "health", "security": [{}, {"bearer": []}],
            "responses": {"200": _json("all reachable", "Health"), "503": _json("something is down", "Health")}}},
        # admin: bearer tokens only (priorforge create-admin --token, or the admin page)
        "/admin/datasets": {
            "get": {"summary": "Uploaded and built-in data sets", "operationId": "listDatasets", "security": ADMIN,
                    "responses": {"200": _json("uploaded and built-in data sets", "DatasetList"), **DENIED}},
            "post": {"summary": "Upload a zip (class folders of images, or images + captions.jsonl); every file "
                                "is checked before anything is stored", "operationId": "uploadDataset",
                     "security": ADMIN,
                     "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                         "type": "object", "required": ["file"], "properties": {
                             "file": {"type": "string", "format": "binary"}, "name": {"type": "string"}}}}}},
                     "responses": {"201": _json("stored, with its statistics", "Dataset"),
                         "409": _error("the name is taken"), "413": _error("over a size limit"),
                         "422": _error("rejected files, each with its reason (rejected[])"), **DENIED}}},
        "/admin/datasets/{name}": {"get": {
            "summary": "One uploaded data set", "operationId": "getDataset", "security": ADMIN,
            "parameters": [_id("name", "data set name")],
            "responses": {"200": _json("the data set", "Dataset"), "404": _error("no such data set"), **DENIED}}},
        "/admin/trainings": {
            "get": {"summary": "Recent training runs", "operationId": "listTrainings", "security": ADMIN,
                    "responses": {"200": _json("runs, newest first", "TrainingRunList"), **DENIED}},
            "post": {"summary": "Start a training run on the train queue (validated against the backend's "
                                "config and hyper-parameters)", "operationId": "createTraining",
                     "security": ADMIN, "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"$ref": "#/components/schemas/TrainingRequest"}}}},
                     "responses": {"202": _json("queued; poll the url", "TrainingRun"), **BAD, **DENIED}}},
        "/admin/trainings/{run_id}": {"get": {
            "summary": "A run's progress: step, losses, elapsed and remaining time, loss history, metrics",
            "operationId": "getTraining", "security": ADMIN, "parameters": [run_id],
            "responses": {"200": _json("the run", "TrainingRun"), "404": _error("no such run"), **DENIED}}},
        "/admin/trainings/{run_id}/cancel": {"post": {
            "summary": "Cancel a run (a running one saves a checkpoint and stops)", "operationId": "cancelTraining",
            "security": ADMIN, "parameters": [run_id],
            "responses": {"200": _json("canceled or cancel requested", "TrainingRun"),
                          "404": _error("no such run"), "409": _error("the run has already finished"), **DENIED}}},
        "/admin/models": {"get": {
            "summary": "Every registered model version, serving or not", "operationId": "listModelVersions",
            "security": ADMIN, "responses": {"200": _json("versions", "ModelVersionList"), **DENIED}}},
        "/admin/models/{version_id}/compare": {"get": {
            "summary": "A version's metrics beside the serving version's", "operationId": "compareModelVersion",
            "security": ADMIN, "parameters": [version_id],
            "responses": {"200": _json("side by side", "VersionComparison"), "404": _error("no such version"),
                          **DENIED}}},
        "/admin/models/{version_id}/promote": {"post": {
            "summary": "Serve this version for new jobs (promote, or roll back to an earlier version); jobs "
                       "already queued or running keep their version", "operationId": "promoteModelVersion",
            "security": ADMIN, "parameters": [version_id],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"card": {"$ref": "#/components/schemas/CardEdit"}}}}}},
            "responses": {"200": _json("the version, now serving", "ModelVersion"), "404": _error("no such version"), **BAD,
                "422": _error("the card does not validate (nothing is promoted)"), **DENIED}}},
        "/admin/models/{version_id}/card": {"patch": {
            "summary": "Write a version's card (title, description, examples); fields left out stay, null or "
                       "empty removes one", "operationId": "editModelCard",
            "security": ADMIN, "parameters": [version_id],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/CardEdit"}}}},
            "responses": {"200": _json("the version with its card", "ModelVersion"), "404": _error("no such version"), **BAD,
                "422": _error("a field does not validate"), **DENIED}}},
        "/docs": {"get": {
            "summary": "This document as a readable HTML reference page", "operationId": "apiReference",
            "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi",
            "responses": {"200": {"description": "OpenAPI 3 document",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    cross_site = _error("a browser marked the request as sent from another site (Sec-Fetch-Site / Origin); "
                        "call the API from a script or this site's pages")
    for item in paths.values():
        for method, operation in item.items():
            for code, response in COMMON.items():
                operation["responses"].setdefault(code, response)
            if method in ("post", "put", "patch", "delete"):  # every write refuses cross-site browser requests
                operation["responses"].setdefault("403", cross_site)
    return {
        "openapi": "3.0.3",
        "info": {"title": "priorforge API", "version": "1",
                 "description": "Conditional image generation jobs. Errors are JSON {\"error\": ...}."},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
