"""Evaluation: the metrics themselves, the cached classifier, ``evaluate_model`` and ``priorforge evaluate``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from generation.checkpoint import save_checkpoint
from generation.registry import build_model
from priorforge.cli import main
from training.classifier import classifier_path, get_classifier
from training.data import cache_root
from training.evaluate import (FEATURE_FID_NOTE, best_match_accuracy, evaluate_model, frechet_distance,
                               precision_recall)

TINY_AAE = dict(image_shape=(1, 28, 28), base_channels=8, hidden_dim=32, disc_hidden=32, code_disc_hidden=[32])


def tiny_aae(condition: str = "class", num_classes: int = 10):
    torch.manual_seed(0)
    return build_model("aae-cg", condition=condition, num_classes=num_classes, **TINY_AAE)


@pytest.fixture(scope="module")
def trained_digits_cache(tmp_path_factory):
    """A cache folder holding a digits classifier trained for a few steps (once per module)."""
    folder = tmp_path_factory.mktemp("classifier-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRIORFORGE_CACHE", str(folder))
        get_classifier("digits", None, "cpu", max_steps=10, quiet=True)
    return folder


@pytest.fixture
def digits_classifier(trained_digits_cache):
    """That classifier copied into this test's own cache, so evaluate_model loads it instead of training."""
    shutil.copytree(trained_digits_cache / "classifiers", cache_root() / "classifiers", dirs_exist_ok=True)
    loaded = get_classifier("digits", None, "cpu")
    assert not loaded.trained_now
    return loaded


# -- metrics -----------------------------------------------------------------------------------------
def test_frechet_distance_zero_for_identical_sets_and_grows_with_mean_shift():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 6))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    distances = [frechet_distance(feats, feats + shift) for shift in (0.5, 1.0, 2.0)]
    # same covariance: the distance is exactly ||shift||^2 = 6 * shift^2
    assert distances == pytest.approx([6 * 0.25, 6 * 1.0, 6 * 4.0], rel=1e-6)
    other = rng.normal(size=(400, 6))
    assert 0 < frechet_distance(feats, other) < 0.5  # two samples of one distribution: small, not zero


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_precision_recall_same_distribution_high_disjoint_zero():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(500, 4, generator=gen)
    same = torch.randn(500, 4, generator=gen)
    pr = precision_recall(real, same)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8
    far = precision_recall(real, same + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}
    # a collapsed generator (all samples near one real point): precise, but recalls little
    collapsed = real[:1] + 0.01 * torch.randn(500, 4, generator=gen)
    pr_collapsed = precision_recall(real, collapsed)
    assert pr_collapsed["precision"] > 0.9 and pr_collapsed["recall"] < 0.1


def test_best_match_accuracy_ignores_cluster_numbering():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert best_match_accuracy(np.array([2, 2, 0, 0, 1, 1]), labels) == 1.0
    assert best_match_accuracy(np.array([0, 0, 0, 0, 1, 1]), labels) == pytest.approx(4 / 6)


# -- classifier cache --------------------------------------------------------------------------------
def test_classifier_is_cached_and_loaded_the_second_time():
    first = get_classifier("digits", None, "cpu", max_steps=3, quiet=True)
    assert first.trained_now
    path = classifier_path("digits", (1, 28, 28))
    assert first.path == path and path.is_file()
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["class_names"] == [str(i) for i in range(10)]
    assert info["settings"]["max_steps"] == 3 and 0.0 <= info["test_accuracy"] <= 1.0
    mtime = path.stat().st_mtime_ns
    second = get_classifier("digits", None, "cpu")
    assert not second.trained_now
    assert path.stat().st_mtime_ns == mtime
    images = torch.rand(7, 1, 28, 28) * 2 - 1
    assert torch.equal(first.features_and_logits(images)[0], second.features_and_logits(images)[0])
    assert first.features_and_logits(images)[0].shape == (7, 128)
    assert not list(path.parent.glob(".*.safetensors.*"))  # no temporary file left behind
    assert get_classifier("digits", None, "cpu", max_steps=4, quiet=True).trained_now  # other settings: retrain


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_a_classifier_trained_on_first_use_inside_no_grad_code_trains(mode):
    """The text-alignment metrics run under torch.no_grad(); the first one on a data set trains its classifier
    there (bench/text_alignment.py crashed with 'element 0 of tensors does not require grad')."""
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        trained = get_classifier("digits", None, "cpu", max_steps=3, quiet=True)
    assert trained.trained_now and trained.path.is_file()


# -- evaluate_model ----------------------------------------------------------------------------------
def test_evaluate_model_class_aae_on_digits_is_complete_and_deterministic(digits_classifier):
    model = tiny_aae("class")
    names = [str(i) for i in range(10)]
    kwargs = dict(dataset="digits", class_names=names, data_root=None, device="cpu", n_samples=60, seed=3)
    first = evaluate_model(model, **kwargs)
    second = evaluate_model(model, **kwargs)
    assert first == second
    for key in ("reconstruction_mse", "feature_fid", "precision", "recall", "label_accuracy",
                "label_accuracy_per_class"):
        assert key in first, key
    assert first["feature_fid_note"] == FEATURE_FID_NOTE
    assert first["n_real"] == 60 and first["n_generated"] == 60
    assert set(first["label_accuracy_per_class"]) == set(names)
    assert 0.0 <= first["label_accuracy"] <= 1.0 and first["feature_fid"] > 0 and first["reconstruction_mse"] > 0
    json.dumps(first)  # JSON-able
    other_seed = evaluate_model(model, **(kwargs | {"seed": 4}))
    assert other_seed["feature_fid"] != first["feature_fid"]


def test_evaluate_model_cluster_aae_reports_alignment(digits_classifier):
    model = tiny_aae("cluster", num_classes=4)
    metrics = evaluate_model(model, dataset="digits", class_names=[str(i) for i in range(10)], data_root=None,
                             device="cpu", n_samples=40)
    assert set(metrics["cluster_alignment"]) == {"0", "1", "2", "3"}
    entry = metrics["cluster_alignment"]["0"]
    assert sum(entry["histogram"].values()) == 10 and entry["majority_class"] in entry["histogram"]
    assert 0.0 < entry["purity"] <= 1.0
    assert 0.0 <= metrics["cluster_nmi"] <= 1.0 and 0.0 < metrics["cluster_accuracy"] <= 1.0
    assert "label_accuracy" not in metrics
    json.dumps(metrics)


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_evaluate_writes_json(tmp_path, digits_classifier, capsys):
    ckpt = save_checkpoint(tiny_aae("class"), tmp_path / "ckpt", dataset="digits",
                           class_names=[str(i) for i in range(10)], extra={"data_root": None})
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--n-samples", "30", "--device", "cpu",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["dataset"] == "digits" and "label_accuracy" in printed and printed["n_real"] == 30


@pytest.mark.parametrize("case", ["missing-checkpoint", "bad-n-samples", "data-root-without-dataset"])
def test_cli_evaluate_errors_name_the_flag(tmp_path, capsys, case):
    ckpt = save_checkpoint(tiny_aae("class"), tmp_path / "ckpt", dataset="mnist",
                           class_names=[str(i) for i in range(10)], extra={"data_root": None})
    empty = tmp_path / "empty"
    empty.mkdir()
    argv, flag = {
        "missing-checkpoint": (["--checkpoint", str(tmp_path / "nope")], "--checkpoint"),
        "bad-n-samples": (["--checkpoint", str(ckpt), "--n-samples", "0"], "--n-samples"),
        "data-root-without-dataset": (["--checkpoint", str(ckpt), "--data-root", str(empty)], "--data-root"),
    }[case]
    assert main(["evaluate", "--device", "cpu", *argv]) == 2
    assert flag in capsys.readouterr().err


def test_train_command_stores_the_final_evaluation(tmp_path, digits_classifier, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "aae-cg", "--dataset", "digits", "--condition", "class", "--out", str(out),
                 "--max-steps", "2", "--batch-size", "16", "--device", "cpu", "--quiet", "--sample-every", "0",
                 "--eval-samples", "30", "--base-channels", "8", "--hidden-dim", "32", "--latent-dim", "8",
                 "--set", "disc_hidden=32", "--set", "code_disc_hidden=[32]"]) == 0
    evaluation = json.loads((out / "metrics.json").read_text())["evaluation"]
    assert evaluation["n_real"] == 30 and "feature_fid" in evaluation and "label_accuracy" in evaluation
