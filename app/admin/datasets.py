"""Data set uploads: reading the multipart upload, and ``/api/v1/admin/datasets`` (the HTML form is on the
admin's index page, :mod:`app.admin.pages`)."""

from __future__ import annotations

from flask import g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.admin.blueprints import api_bp
from app.core.errors import ApiError
from app.services.datasets import builtin_datasets, dataset_to_dict, uploaded_datasets
from app.services.uploads import UploadRejected, limit, store_upload


def too_large() -> UploadRejected:
    return UploadRejected(413, f"the upload is too large; the limit is "
                                       f"{limit('DATASET_MAX_UPLOAD_BYTES')} bytes; nothing was stored")


def upload_from_request():
    """(data set name, file) of a multipart upload; 413 past the limit."""
    try:
        upload = request.files.get("file")
        name = request.form.get("name", "")
    except RequestEntityTooLarge:
        raise too_large() from None
    if upload is None or not upload.filename:
        raise ApiError(422, "send the zip archive as the multipart field 'file' (and optionally 'name')")
    if not name.strip():
        name = upload.filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return name, upload


@api_bp.get("/datasets")
def list_datasets():
    return jsonify({"datasets": [dataset_to_dict(d) for d in uploaded_datasets()],
                    "builtin": builtin_datasets()})


@api_bp.post("/datasets")
def upload_dataset_api():
    name, upload = upload_from_request()
    row = store_upload(name, upload.stream, upload.filename or "upload.zip", g.admin_user)
    return jsonify(dataset_to_dict(row)), 201


@api_bp.get("/datasets/<name>")
def get_dataset(name: str):
    for row in uploaded_datasets():
        if row.name == name:
            return jsonify(dataset_to_dict(row))
    raise ApiError(404, f"no uploaded data set named {name!r}")
