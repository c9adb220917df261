"""Every shipped model (models/*/card.json), registered as ``scripts/run.sh`` registers them, served by a real
worker process on the default set-up (SQLite + the embedded broker): a job with a seed gives exactly the
pixels ``priorforge sample`` gives for that seed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image as PILImage

from priorforge.cli import main as cli
from priorforge.spec.checkpoint import read_card
from tests.service.conftest import FAST_WORKER, base_config
from tests.service.test_worker import submit, wait_status

pytestmark = pytest.mark.integration

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(p.parent for p in MODELS.glob("*/card.json"))
SEED = 123


def request_for(card: dict) -> dict:
    """A job body for the model's first example (label, cluster or prompt)."""
    example = card["examples"][0]
    key = {"class": "label", "cluster": "cluster", "text": "prompt"}[card["condition"]]
    return {"model": card["name"], key: int(example) if key == "cluster" else example}


def service_pixels(client, job_id: str) -> list[bytes]:
    out = []
    for image in client.get(f"/api/v1/jobs/{job_id}").get_json()["images"]:
        with client.get(image["png_url"]) as response, PILImage.open(io.BytesIO(response.data)) as picture:
            out.append(picture.tobytes())
    return out


def cli_pixels(folder: Path, request: dict, seed: int, out: Path) -> bytes:
    flags = [f"--{k}" for k in request if k != "model"]
    value = next(str(v) for k, v in request.items() if k != "model")
    assert cli(["sample", "--checkpoint", str(folder), flags[0], value, "--n", "1", "--seed", str(seed),
                "--device", "cpu", "--out", str(out)]) == 0
    with PILImage.open(out) as picture:
        return picture.tobytes()


def test_a_seed_gives_the_same_pixels_through_the_service_and_the_command_line(tmp_path, start_worker):
    assert SHIPPED, "no shipped models in models/ (bash scripts/build-models.sh makes them)"
    from app import create_app
    from app.core.migrate import upgrade
    from app.services.models import register_shipped

    config = base_config(tmp_path, **FAST_WORKER, DEFAULT_MODEL=None)
    config.pop("TESTING")
    app = create_app({"TESTING": True, **config})
    upgrade(app)
    with app.app_context():
        assert {v.name for v, _ in register_shipped(MODELS)} == {p.name for p in SHIPPED}
    start_worker(config)
    client = app.test_client()
    jobs = {}
    for folder in SHIPPED:
        card = read_card(folder)
        jobs[folder] = (request_for(card), submit(client, **request_for(card), n=2, seed=SEED))
    for folder, (request, job_id) in jobs.items():
        wait_status(app, job_id, ("succeeded",), timeout=300)
        served = service_pixels(client, job_id)
        assert len(served) == 2
        for i, pixels in enumerate(served):  # image i of a job is drawn from seed + i
            assert pixels == cli_pixels(folder, request, SEED + i, tmp_path / f"{folder.name}-{i}.png"), folder.name
