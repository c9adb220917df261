"""Shipped models with cards: registration from models/, the default model, the public Models page, the
sample grid, the card in GET /api/v1/models, and what the job form offers for text and cluster models."""

from __future__ import annotations

import json
import shutil

import pytest
from bs4 import BeautifulSoup

from tests.web.conftest import DIGITS_CHECKPOINT

CARD = {"title": "Digits for the tests", "description": "A tiny digits model.", "default": False,
        "examples": ["7", "3"], "clusters": {}, "labels": [str(i) for i in range(10)],
        "metrics": {"label_accuracy": 0.981, "feature_fid": 1.23},
        "training": {"command": "OMP_NUM_THREADS=1 priorforge train --model aae-cg ...", "steps": 6500,
                     "cpu_seconds": 1500.0, "budget_cpu_minutes": 25},
        "export": {"precision": "fp16", "max_abs_pixel_diff": 1}, "evaluation_samples": 5000}


def shipped(folder, name: str, **changes):
    """A copy of the test digits model with a card, as the zoo build writes it."""
    target = folder / name
    shutil.copytree(DIGITS_CHECKPOINT, target)
    (target / "card.json").write_text(json.dumps({**CARD, "name": name, **changes}))
    return target


@pytest.fixture
def models_dir(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shipped(folder, "numbers", default=True, examples=["7", "3", "0"])
    shipped(folder, "numbers-b")
    (folder / "not-a-model").mkdir()  # no card.json: ignored
    return folder


def test_register_shipped_registers_once_and_a_rebuild_as_a_new_version(web_app, models_dir):
    from app.core.extensions import db
    from app.services.model_versions import make_serving, register_model, register_shipped, serving_version

    with web_app.app_context():
        first = register_shipped(models_dir)
        assert [(v.name, what) for v, what in first] == [("numbers", "registered"), ("numbers-b", "registered")]
        assert all(v.serving and v.card["weights_sha256"] for v, _ in first)
        assert [what for _, what in register_shipped(models_dir)] == ["unchanged", "unchanged"]
        # a rebuilt model (other weights) becomes the next version and serves, as it replaces its own folder
        weights = models_dir / "numbers" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
        again = dict((v.name, (v, what)) for v, what in register_shipped(models_dir))
        version, what = again["numbers"]
        assert what == "updated" and version.version == 2 and serving_version("numbers").id == version.id
        # a version an admin promoted is not displaced by a rebuild of the shipped folder
        other, _ = register_model("numbers-b", DIGITS_CHECKPOINT)
        make_serving(other)
        db.session.commit()
        weights = models_dir / "numbers-b" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\1" * 8)
        version, what = dict((v.name, (v, w)) for v, w in register_shipped(models_dir))["numbers-b"]
        assert what == "updated" and not version.serving and serving_version("numbers-b").id == other.id


def test_the_default_model_is_the_card_default_unless_configured(web_app, models_dir):
    from app.services.model_versions import default_model_name, register_shipped

    with web_app.app_context():
        register_shipped(models_dir)
        assert default_model_name(None) == "numbers"
        assert default_model_name("digits") == "digits"
    client = web_app.test_client()
    response = client.post("/api/v1/jobs", json={"label": "7"})
    assert response.status_code == 202
    assert client.get(response.get_json()["url"]).get_json()["model"] == "numbers"
    page = BeautifulSoup(client.get("/").data, "html.parser")
    assert page.find("select", id="model").find("option", selected=True)["value"] == "numbers"


def test_models_page_shows_every_card_with_samples_metrics_and_recipe(web_app, models_dir):
    from app.services.model_versions import register_shipped

    with web_app.app_context():
        register_shipped(models_dir)
    client = web_app.test_client()
    page = BeautifulSoup(client.get("/models").data, "html.parser")
    card = page.find("section", id="model-numbers")
    assert "Digits for the tests" in card.find("h2").text and "the default model" in card.text
    assert card.find("img")["src"] == "/models/numbers/samples.png"
    metrics = {row.th.text: row.td.text for row in card.find("table", class_="metrics").find_all("tr")[1:]}
    assert metrics == {"label_accuracy": "98.1%", "feature_fid": "1.23"}
    assert "priorforge train --model aae-cg" in card.find("pre").text
    assert [a["href"] for a in card.find_all("a", class_="example")][0] == "/?model=numbers&label=7"
    assert page.find("section", id="model-digits") is not None  # a model without a card is listed too
    with client.get("/models/numbers/samples.png") as grid:
        assert grid.status_code == 200 and grid.mimetype == "image/png" and grid.data[:4] == b"\x89PNG"
    assert client.get("/models/nothing/samples.png").status_code == 404
    assert client.get("/models/..%2F..%2Fetc/samples.png").status_code == 404


def test_api_models_lists_the_card_summary(web_app, models_dir):
    from app.services.model_versions import register_shipped

    with web_app.app_context():
        register_shipped(models_dir)
    models = {m["name"]: m for m in web_app.test_client().get("/api/v1/models").get_json()["models"]}
    card = models["numbers"]["card"]
    assert card["title"] == "Digits for the tests" and card["examples"] == ["7", "3", "0"]
    assert card["metrics"]["label_accuracy"] == 0.981 and card["training"]["cpu_minutes"] == 25.0
    assert card["default"] is True and "weights_sha256" not in card
    assert models["digits"]["card"] is None


def test_the_form_offers_example_prompts_and_named_clusters(web_app, tmp_path):
    from app.core.extensions import db
    from app.core.tables import ModelVersion

    with web_app.app_context():
        for name, condition, card in (
                ("captions", "text", {"title": "Garments", "examples": ["a dark, wide pullover", "a pale sneaker"]}),
                ("blobs", "cluster", {"clusters": {"0": "mostly 7 (58%)", "1": "mostly 1 (85%)"}})):
            db.session.add(ModelVersion(name=name, version=1, backend="aae-cg", checkpoint_path=f"/x/{name}",
                                        condition=condition, num_classes=2 if condition == "cluster" else 0,
                                        class_names=[], image_shape=[1, 28, 28], dataset="test", metrics={},
                                        card=card, serving=True))
        db.session.commit()
    client = web_app.test_client()
    page = BeautifulSoup(client.get("/?model=captions").data, "html.parser")
    links = page.select('fieldset[data-model="captions"] a.example-prompt')
    assert [a["data-prompt"] for a in links] == ["a dark, wide pullover", "a pale sneaker"]
    assert links[0]["href"] == "/?model=captions&prompt=a+dark,+wide+pullover"
    # without JavaScript, the example's link fills the prompt box
    filled = BeautifulSoup(client.get(links[0]["href"]).data, "html.parser")
    assert filled.select_one('fieldset[data-model="captions"] textarea').text == "a dark, wide pullover"
    options = [o.text for o in page.select('fieldset[data-model="blobs"] option')]
    assert options == ["Any cluster (random)", "Cluster 0: mostly 7 (58%)", "Cluster 1: mostly 1 (85%)"]
    assert "captions: Garments" in page.find("select", id="model").text
