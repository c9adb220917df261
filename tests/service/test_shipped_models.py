"""Every shipped model (models/*/card.json), registered as ``scripts/run.sh`` registers them, served by a real
worker process on the default set-up (SQLite + the embedded broker): a job with a seed gives exactly the
pixels ``priorforge sample`` gives for that seed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image as PILImage

from priorforge.cli import main as cli
from priorforge_spec.checkpoint import read_card
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


def cli_pixels(folder: Path, request: dict, seed: int, n: int, out: Path, mode: str) -> list[bytes]:
    """The ``n`` images ``priorforge sample`` makes for ``seed`` (one grid row, as the service's job of n: one
    decode pass of n rows), cut out of its grid (padding 2; torchvision's grid is RGB, so grey images are
    converted back to ``mode``)."""
    import torch

    flags = [f"--{k}" for k in request if k != "model"]
    value = next(str(v) for k, v in request.items() if k != "model")
    # the test worker decodes with one thread (OMP_NUM_THREADS=1); oneDNN's kernels for another thread count
    # may round a pixel a level apart (seen on cifar10-text), so the command runs with one thread too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli(["sample", "--checkpoint", str(folder), flags[0], value, "--n", str(n), "--nrow", str(n),
                    "--seed", str(seed), "--device", "cpu", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    with PILImage.open(out) as grid:
        size = (grid.width - 2) // n - 2
        return [grid.crop((2 + i * (size + 2), 2, 2 + i * (size + 2) + size, 2 + size)).convert(mode).tobytes()
                for i in range(n)]


def test_a_seed_gives_the_same_pixels_through_the_service_and_the_command_line(tmp_path, start_worker):
    assert SHIPPED, "no shipped models in models/ (bash scripts/build-models.sh makes them)"
    from app import create_app
    from app.core.migrate import upgrade
    from app.services.model_versions import register_shipped

    config = base_config(tmp_path, **FAST_WORKER, DEFAULT_MODEL=None)
    config.pop("TESTING")
    app = create_app({"TESTING": True, **config})
    upgrade(app)
    with app.app_context():
        assert {v.name for v, _ in register_shipped(MODELS)} == {p.name for p in SHIPPED}
    start_worker(config)
    client = app.test_client()
    jobs, card_of = {}, {}
    for folder in SHIPPED:
        card = card_of[folder] = read_card(folder)
        jobs[folder] = (request_for(card), submit(client, **request_for(card), n=2, seed=SEED))
    for folder, (request, job_id) in jobs.items():
        wait_status(app, job_id, ("succeeded",), timeout=300)
        served = service_pixels(client, job_id)
        assert len(served) == 2
        # image i of a job is drawn from seed + i, both decoded in one pass of 2 rows
        mode = "L" if card_of[folder]["image_shape"][0] == 1 else "RGB"
        assert served == cli_pixels(folder, request, SEED, 2, tmp_path / f"{folder.name}.png", mode), folder.name
