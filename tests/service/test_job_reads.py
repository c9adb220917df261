"""The API reads a job with one Core statement (app/services/job_reads.py), not through the ORM: its answer must
be, field for field, what the ORM objects render, whatever state the job is in."""

from __future__ import annotations

import pytest

from tests.service.test_metrics import admin_token, make_app


def answers_agree(app, client, job_id: str, headers: dict[str, str]) -> dict:
    """The API's answer for the job, checked against ``job_to_dict`` of the ORM objects in the same context."""
    from flask import g

    from app.api.views import job_to_dict
    from app.core.extensions import db
    from app.services import jobs
    from app.services.job_reads import read_job

    answer = client.get(f"/api/v1/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200, answer.get_json()
    with app.test_request_context(f"/api/v1/jobs/{job_id}", headers=headers):
        app.preprocess_request()  # identifies the client (g.client), as the request did
        assert g.client is not None
        through_orm, through_view = job_to_dict(jobs.get_job(job_id)), job_to_dict(read_job(job_id))
        db.session.rollback()
    assert through_view == through_orm
    assert answer.get_json() == through_orm
    return through_orm


@pytest.mark.integration
def test_the_api_answer_is_what_the_orm_objects_render(tmp_path, checkpoints):
    from workers.tasks import generate_images

    app, _ = make_app(tmp_path, checkpoints, WEBHOOK_ALLOW_NETWORKS=["127.0.0.0/8"])
    owner = {"Authorization": f"Bearer {admin_token(app, admin=False)}"}
    client = app.test_client()
    created = client.post("/api/v1/jobs", headers=owner, json={
        "label": "3", "n": 3, "seed": 11, "webhook": "http://127.0.0.1:9/hook"}).get_json()
    queued = answers_agree(app, client, created["id"], owner)
    assert queued["status"] == "queued" and queued["images"] == [] and queued["webhook"]["url"].endswith("/hook")
    assert "webhook" not in answers_agree(app, client, created["id"], {})  # the owner's only

    with app.app_context():
        assert generate_images.run(created["id"]) == "succeeded"
    done = answers_agree(app, client, created["id"], owner)
    assert [image["index"] for image in done["images"]] == [0, 1, 2]  # in index order
    assert [image["seed"] for image in done["images"]] == [11, 12, 13]
    assert done["model"] and done["finished_at"] and done["webhook"]["deliveries"] is not None

    missing = client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "no job" in missing.get_json()["error"]
