"""The priorforge command line: a tiny end-to-end run, determinism, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from generation.sampling import read_png_params
from priorforge.cli import main

TINY = ["--set", "base_channels=8", "--set", "hidden_dim=32", "--set", "disc_hidden=32",
        "--set", "code_disc_hidden=[32]", "--latent-dim", "8"]


@pytest.fixture(scope="module")
def class_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    rc = main(["train", "--model", "aae-cg", "--dataset", "digits", "--condition", "class", "--out", str(out),
               "--max-steps", "3", "--batch-size", "16", "--sample-every", "0", "--no-eval", "--quiet", *TINY])
    assert rc == 0
    return out


def run_cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.err


def test_sample_writes_a_grid_png_with_its_parameters(class_checkpoint, tmp_path, capsys):
    out = tmp_path / "seven.png"
    rc, _ = run_cli(capsys, "sample", "--checkpoint", str(class_checkpoint), "--n", "9", "--label", "7",
                    "--seed", "3", "--out", str(out))
    assert rc == 0
    params = read_png_params(out)
    assert params["label"] == "7" and params["n"] == 9 and params["seed"] == 3 and params["backend"] == "aae-cg"
    with Image.open(out) as image:
        assert image.size == (3 * 28 + 4 * 2, 3 * 28 + 4 * 2)  # 3x3 grid with 2-pixel padding


def test_same_seed_same_pixels_other_seed_other_pixels(class_checkpoint, tmp_path, capsys):
    paths = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        paths.append(tmp_path / f"{name}.png")
        assert run_cli(capsys, "sample", "--checkpoint", str(class_checkpoint), "--n", "4", "--label", "2",
                       "--seed", seed, "--out", str(paths[-1]))[0] == 0
    pixels = [np.asarray(Image.open(p)) for p in paths]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_label_by_name_and_by_index_agree(class_checkpoint, tmp_path, capsys):
    assert run_cli(capsys, "sample", "--checkpoint", str(class_checkpoint), "--label", "3", "--out",
                   str(tmp_path / "x.png"))[0] == 0
    assert read_png_params(tmp_path / "x.png")["index"] == 3


@pytest.mark.parametrize("args, message", [
    (["--label", "cat"], "unknown label 'cat'; this model knows: 0, 1"),
    (["--label", "10"], "unknown label '10'"),
    (["--cluster", "1"], "does not take a cluster id"),
    (["--prompt", "a seven"], "does not take a text prompt"),
    ([], "needs a label"),
    (["--label", "1", "--n", "0"], "--n must be between 1 and"),
    (["--label", "1", "--n", "5000"], "--n must be between 1 and"),
])
def test_sample_errors(class_checkpoint, tmp_path, capsys, args, message):
    rc, err = run_cli(capsys, "sample", "--checkpoint", str(class_checkpoint), "--out", str(tmp_path / "x.png"), *args)
    assert rc == 2
    assert message in err
    assert not (tmp_path / "x.png").exists()


def test_sample_from_missing_checkpoint(tmp_path, capsys):
    rc, err = run_cli(capsys, "sample", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "does not exist" in err


def test_sample_out_must_be_png(class_checkpoint, tmp_path, capsys):
    rc, err = run_cli(capsys, "sample", "--checkpoint", str(class_checkpoint), "--label", "1", "--out",
                      str(tmp_path / "x.jpg"))
    assert rc == 2 and "--out must be a .png" in err


@pytest.mark.parametrize("args, message", [
    (["--model", "gan"], "unknown backend 'gan'; valid backends: aae-cg"),
    (["--dataset", "svhn"], "unknown data set 'svhn'"),
    (["--dataset", "mnist"], "needs --data-root"),
    (["--dataset", "mnist", "--data-root", "/nonexistent/path"], "/nonexistent/path does not exist"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--variant", "vpga"], "--variant is not an option of backend 'aae-cg'"),
    (["--set", "widthh=3"], "has no config field(s) ['widthh']"),
    (["--set", "novalue"], "--set expects KEY=VALUE"),
    (["--hparam", "nonsense=1"], "--hparam: backend 'aae-cg' has no hyper-parameter 'nonsense'"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--clusters", "1", "--condition", "cluster"], "--clusters: must be at least 2"),
    (["--batch-size", "5000"], "fewer than --batch-size 5000"),
])
def test_train_errors_name_the_flag(tmp_path, capsys, args, message):
    base = {"--model": "aae-cg", "--dataset": "digits"}
    argv = ["train", "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet", "--no-eval", *TINY]
    for flag, value in base.items():
        if flag not in args:
            argv += [flag, value]
    rc, err = run_cli(capsys, *argv, *args)
    assert rc == 2, err
    assert message in err


def test_train_refuses_unsupported_condition_listing_the_supported(tmp_path, capsys, monkeypatch):
    from generation.aae_cg import CodeGeneratorAAE

    monkeypatch.setattr(CodeGeneratorAAE, "supported_conditions", ("none", "class"))
    rc, err = run_cli(capsys, "train", "--model", "aae-cg", "--dataset", "digits", "--condition", "text",
                      "--out", str(tmp_path / "r"), "--quiet")
    assert rc == 2 and "supports none, class" in err


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "aae-cg", "--dataset", "digits", "--out", "x", "--bogus"])
    assert exc.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_console_script_runs(class_checkpoint, tmp_path):
    out = tmp_path / "one.png"
    result = subprocess.run([sys.executable, "-m", "priorforge.cli", "sample", "--checkpoint", str(class_checkpoint),
                             "--label", "0", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    metrics = json.loads((class_checkpoint / "metrics.json").read_text())
    assert metrics["steps"] == 3
