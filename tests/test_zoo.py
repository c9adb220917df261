"""The shipped models' recipes, run end to end in tiny mode on a tiny copy of the data sets, and the shipped
models themselves (cards, sizes, export)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import zoo, zoo_report

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MB = 1024 * 1024


def write_idx(folder: Path, stem: str, array: np.ndarray) -> None:
    """An MNIST-format idx file, gzipped (the layout of ../shared/data/mnist)."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(folder / f"{stem}.gz", "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def tiny_data_root(root: Path, per_class: int = 8) -> Path:
    """mnist/, fashion-mnist/ (scikit-learn's digits as idx files) and cifar10-jpeg/ (coloured squares as
    JPEGs in a zip), each with every class in both splits."""
    from training.data import load_dataset

    digits = load_dataset("digits", None, "train")
    rng = np.random.default_rng(0)
    for name in ("mnist", "fashion-mnist"):
        folder = root / name
        folder.mkdir(parents=True)
        for stem in ("train", "t10k"):
            index = np.concatenate([np.nonzero(digits.labels.numpy() == c)[0][:per_class] for c in range(10)])
            rng.shuffle(index)
            write_idx(folder, f"{stem}-images-idx3-ubyte", digits.images[index, 0].numpy())
            write_idx(folder, f"{stem}-labels-idx1-ubyte", digits.labels[index].numpy())
    (root / "cifar10-jpeg").mkdir()
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with zipfile.ZipFile(root / "cifar10-jpeg" / "tiny.zip", "w") as zf:
        for split in ("train", "test"):
            for c, cls in enumerate(classes):
                for i in range(per_class):
                    pixels = np.full((32, 32, 3), rng.integers(0, 256, 3), dtype=np.uint8)
                    pixels[8 + c:24, 8:24 - c // 2] = rng.integers(0, 256, 3)
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).save(buffer, format="JPEG")
                    zf.writestr(f"{split}/{cls}/{i:04d}.jpg", buffer.getvalue())
    return root


def test_every_recipe_runs_in_tiny_mode_and_writes_a_card(tmp_path):
    data_root = tiny_data_root(tmp_path / "data")
    models = tmp_path / "models"
    folders = zoo.build(None, data_root=str(data_root), work_dir=tmp_path / "work", models_dir=models, tiny=True,
                        jobs=2, log=lambda msg: None)
    assert [f.name for f in folders] == zoo.recipe_names()
    for recipe, folder in zip(zoo.RECIPES, folders):
        card = json.loads((folder / "card.json").read_text())
        assert card["name"] == recipe.name and card["tiny"] is True
        assert card["training"]["command"].startswith("OMP_NUM_THREADS=1 priorforge train --model ")
        assert "--max-steps 2" in card["training"]["command"] and card["training"]["steps"] == 2
        assert card["export"]["precision"] == "fp16" and card["size_bytes"] > 0
        assert {"model.safetensors", "config.json", "metrics.json", "samples.png", "README.md"} <= \
            {p.name for p in folder.iterdir()}
        assert recipe.title in (folder / "README.md").read_text()
        if recipe.condition == "text":
            phrasings = json.loads((folder / "metrics.json").read_text())["evaluation"]["text_alignment_by_phrasing"]
            assert set(phrasings) == set(zoo.TEXT_PHRASINGS)
            assert 4 <= len(card["examples"]) <= 6
        if recipe.condition == "class":
            assert card["labels"] and "label_accuracy" in card["metrics"]
        if recipe.condition == "cluster":
            assert set(card["clusters"]) == {str(k) for k in range(recipe.clusters)}
        assert isinstance(card["caveats"], list)  # a tiny model falls short everywhere: its card says so
        if recipe.condition == "text":
            assert card["caveats"] and len(card["per_class"]) == 10  # a row per class
            # each text model is shown beside the other backend's model of its data set, figure by figure
            peers = [r.name for r in zoo.RECIPES if r.dataset == recipe.dataset and r.condition == "text"]
            readme = (folder / "README.md").read_text()
            assert len(peers) == 2 and "## Compared with the other" in readme
            assert all(f"`{name}` (" in readme for name in peers) and "| class, held-out wording |" in readme
    assert (models / zoo.MONTAGE_FILE).is_file()  # the README's picture: a row per model
    index = (models / "README.md").read_text()
    assert all(f"[{name}]({name}/README.md)" in index for name in zoo.recipe_names())
    report = zoo_report.report(models)  # the tables docs/results.md quotes
    assert all(f"`{name}`" in report for name in zoo.recipe_names())
    assert "| heldout-synonyms |" in report and "Asked-for color followed (heldout)" in report
    # a second build with --reuse takes the finished trainings instead of training again
    log: list[str] = []
    zoo.build(["mnist"], data_root=str(data_root), work_dir=tmp_path / "work", models_dir=models, tiny=True,
              reuse=True, log=log.append)
    assert any("reusing the finished training" in line for line in log)
    assert any("reusing the evaluation of the same training" in line for line in log)
    # `zoo cards` re-renders a card from its card.json alone (a README edited by hand is rewritten)
    (models / "mnist" / "README.md").write_text("stale")
    assert models / "mnist" in zoo.refresh_cards(models)
    assert zoo.RECIPES[0].title in (models / "mnist" / "README.md").read_text()


def test_reuse_refuses_a_training_of_another_recipe(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "backend": "aae-cg", "condition": "class", "dataset": "mnist", "model_config": {"base_channels": 16},
        "training": {"max_cpu_seconds": 60.0, "seed": 0, "hparams": {}}}))
    with pytest.raises(ValueError, match="not trained by this recipe.*base_channels=16"):
        zoo.check_trained_by(zoo.select(["mnist"])[0], folder, tiny=False)


def test_recipes_are_consistent():
    assert sum(r.default for r in zoo.RECIPES) == 1
    assert {r.condition for r in zoo.RECIPES} >= {"class", "text", "cluster"}
    assert len({r.backend for r in zoo.RECIPES}) >= 2  # the form offers a choice of backend
    with pytest.raises(ValueError, match="the shipped models are: mnist, fashion-text"):
        zoo.select(["digits"])


# -- what is shipped ---------------------------------------------------------------------------------------
SHIPPED = sorted(p.parent for p in MODELS.glob("*/card.json"))


def test_every_recipe_is_shipped_within_the_size_limits():
    assert sorted(p.name for p in SHIPPED) == sorted(zoo.recipe_names())
    sizes = {p.name: sum(f.stat().st_size for f in p.iterdir() if f.is_file()) for p in SHIPPED}
    assert all(size <= 8 * MB for size in sizes.values()), sizes
    assert sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file()) <= 60 * MB


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_model_loads_and_samples_the_same_pixels_every_time(folder):
    import torch

    from generation.checkpoint import load_checkpoint
    from generation.sampling import generate

    card = json.loads((folder / "card.json").read_text())
    assert not card["tiny"] and card["evaluation_samples"] == zoo.EVAL_SAMPLES
    model, info = load_checkpoint(folder)
    export = json.loads((folder / "config.json").read_text())["export"]  # an export, checked when it was made
    assert export["precision"] == "fp16" and export["repeatable"] and export["max_abs_pixel_diff"] <= 2
    # something training-only was dropped, unless the recipe keeps the encoder and nothing else is droppable
    assert model.inference_only or (card["keeps_encoder"] and not export["dropped_modules"])
    rows = zoo.sample_grid_rows(zoo.select([card["name"]])[0], model, info)
    _, condition = rows[0]
    first = generate(model, 3, condition, seed=11)
    assert torch.equal(first, generate(model, 3, condition, seed=11))


@pytest.mark.parametrize("argv,message", [
    (["zoo", "cards", "--models-dir", "no/such/folder"], "--models-dir: no/such/folder is not a folder"),
    (["zoo", "report", "--models-dir", "no/such/folder"], "--models-dir: no/such/folder is not a folder"),
    (["zoo", "build", "--data-root", "no/such/folder"], "--data-root: no/such/folder is not a folder"),
    (["zoo", "build", "--data-root", ".", "--only", "nosuch"], "--only:"),
    (["zoo", "build", "--data-root", ".", "--jobs", "0"], "--jobs must be at least 1"),
    (["zoo", "report", "--curve", "no/such/run"], "--curve: no/such/run has no history.jsonl"),
])
def test_zoo_command_errors_name_the_flag(argv, message, capsys, tmp_path, monkeypatch):
    from priorforge.cli import main

    monkeypatch.chdir(tmp_path)  # nothing is written: each error comes before any work
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_learning_curve_averages_the_window_up_to_each_step(tmp_path):
    (tmp_path / "history.jsonl").write_text("".join(
        json.dumps({"step": k, "rec_pix": float(k), "d_img": 1.0}) + "\n" for k in range(1, 11)))
    table = zoo_report.learning_curve(tmp_path, [4, 10, 50], window=2)
    assert "| 4 | 3.5 | 1 |" in table and "| 10 | 9.5 | 1 |" in table
    assert "| 50 |" not in table  # no step in its window


def test_a_card_names_the_prompts_that_give_near_copies():
    recipe = zoo.select(["cifar10-text"])[0]
    held = {"text_diversity_median": 0.66, "text_diversity_min": 0.31, "text_class_accuracy": 0.9,
            "text_attribute_accuracy_per_attribute": {"color": 0.9},
            "text_diversity_lowest": [["a purple bird", 0.31], ["a white cat", 0.39], ["a red car", 0.45]]}
    said = zoo.caveats(recipe, {"text_alignment_by_phrasing": {"heldout": held}})
    assert 'Some prompts give near-copies (variety against real images of their kind): "a purple bird" 0.31, ' \
        '"a white cat" 0.39.' in said  # the prompts below the floor, least varied first; "a red car" is above it
    del held["text_diversity_lowest"]  # an evaluation from before the prompts were recorded
    assert any("the least varied prompt: 0.31" in line for line in zoo.caveats(recipe, {
        "text_alignment_by_phrasing": {"heldout": held}}))
