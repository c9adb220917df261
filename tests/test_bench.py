"""Smoke tests of the benchmark scripts (bench/): each runs end to end with --quick settings and prints a
markdown table and a BENCH_JSON line whose figures parse. No timing is asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import job_codes, quality, sampling_speed, training_speed
from bench.common import parse_json_line
from generation.registry import backend_names


def run_script(module, argv: list[str], capsys) -> dict:
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    assert out.lstrip().startswith("| ")  # the markdown table comes first
    payload = parse_json_line(out)
    machine = payload["machine"]
    assert machine["cpu_cores"] >= 1 and machine["torch"] and len(machine["load_average"]) == 3
    return payload


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_sampling_speed_quick(capsys):
    payload = run_script(sampling_speed, ["--quick", "--device", "cpu", "--backends", "glf,lde"], capsys)
    rows = payload["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [("glf", 1), ("glf", 4), ("lde", 1), ("lde", 4)]
    for row in rows:
        assert positive(row["images_per_s"]) and positive(row["images_per_cpu_s"])
        assert 0 <= row["latents_share"] <= 1 and row["latent_dim"] > 0


def test_training_speed_quick(capsys):
    payload = run_script(training_speed, ["--quick", "--device", "cpu", "--backends", "lde,pga,vae"], capsys)
    cases = [r["case"] for r in payload["rows"]]
    assert cases == ["lde (stage 1: AE)", "lde (stage 2: density, codes/s)", "pga (warm-up: AE only)",
                     "pga (latent terms on)", "vae"]
    assert all(positive(r["images_per_s"]) and positive(r["step_cpu_ms"]) for r in payload["rows"])


def test_job_codes_times_both_ways_on_the_same_codes(capsys):
    payload = run_script(job_codes, ["--images", "1,9", "--rounds", "1"], capsys)
    assert [row["images"] for row in payload["rows"]] == [1, 9]
    for row in payload["rows"]:
        assert all(positive(ms) for ms in row["cpu_ms"].values()) and positive(row["ratio"])
        assert row["max_abs_difference"] < 1e-4  # the same codes, up to a bigger batch's rounding


@pytest.mark.timeout(180)
def test_quality_quick_every_backend_class_and_unconditional(capsys):
    payload = run_script(quality, ["--quick"], capsys)
    rows = payload["rows"]
    assert sorted((r["backend"], r["condition"]) for r in rows) == sorted(
        (b, c) for b in backend_names() for c in ("class", "none"))
    for row in rows:
        assert row["error"] is None, row
        assert row["dataset"] == "digits" and row["steps"] >= 2 and row["prior"] == "model"
        assert math.isfinite(row["feature_fid"]) and positive(row["sampling_images_per_s"])
        assert (0 <= row["label_accuracy"] <= 1) if row["condition"] == "class" else row["label_accuracy"] is None
    assert payload["settings"]["quick"] is True
    assert payload["settings"]["epochs"] == 100  # the CPU budget, not the trainers' default 10 epochs, ends a run


def test_quality_evaluates_class_models_with_other_code_priors(capsys):
    payload = run_script(quality, ["--quick", "--backends", "vae,lde", "--conditions", "class", "--set",
                                   "class_prior=flow", "--code-priors", "model,gaussian,standard"], capsys)
    rows = {(r["backend"], r["prior"]): r for r in payload["rows"]}
    # the VAE (trained with a flow prior) three ways; the LDE has no N(0, I) option
    assert sorted(rows) == [("lde", "Gaussian per class"), ("lde", "model"), ("vae", "Gaussian per class"),
                            ("vae", "N(0, I)"), ("vae", "model")]
    assert all(r["error"] is None and 0 <= r["label_accuracy"] <= 1 for r in rows.values())
    assert len({rows[("vae", p)]["feature_fid"] for p in ("model", "Gaussian per class", "N(0, I)")}) == 3


def test_quality_records_a_failing_backend(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(quality, "evaluate_checkpoint", broken)
    payload = run_script(quality, ["--quick", "--backends", "vae", "--conditions", "class"], capsys)
    (row,) = payload["rows"]
    assert "boom" in row["error"]


def test_quality_refuses_an_unknown_condition_or_prior(capsys):
    for flag, value in (("--conditions", "text"), ("--code-priors", "mixture")):
        with pytest.raises(SystemExit):
            quality.main(["--quick", flag, value])
        assert flag in capsys.readouterr().err


def test_lde_sampling_quick(capsys):
    from bench import lde_sampling

    payload = run_script(lde_sampling, ["--quick"], capsys)
    assert [(r["shape"], r["batch"]) for r in payload["rows"]] == [("1x28x28", 1), ("1x28x28", 4)]
    for row in payload["rows"]:
        assert row["reference_ms"] > 0 and row["incremental_ms"] > 0
        assert row["max_abs_diff"] < 1e-4  # the two samplers draw the same codes up to float rounding


def test_png_pipeline_quick(capsys):
    from bench import png_pipeline

    payload = run_script(png_pipeline, ["--quick", "--threads", "0,1"], capsys)
    rows = payload["rows"]
    assert [(r["png_threads"], r["n"], r["batched_jobs"]) for r in rows] == [(0, 16, 1), (1, 16, 1)]
    for row in rows:
        assert row["task_wall_ms"] > 0 and row["task_cpu_ms"] > 0
        assert row["wall_ms_per_image"] == pytest.approx(row["task_wall_ms"] / 16, rel=1e-2)
    assert rows[0]["wall_vs_first"] == rows[0]["cpu_vs_first"] == 1
    assert payload["settings"]["model"] == "tests/fixtures/digits-aae-cg"


@pytest.mark.parametrize("bad", ["-1", "a", ""])
def test_png_pipeline_refuses_bad_threads_naming_the_flag(bad, capsys):
    from bench import png_pipeline

    with pytest.raises(SystemExit):
        png_pipeline.parse_args(["--threads", bad])
    assert "--threads" in capsys.readouterr().err


def test_worker_timeline_reads_a_worker_log(tmp_path, capsys):
    from bench import worker_timeline

    log = tmp_path / "worker.log"
    log.write_text(
        "[2026-12-01 04:00:10,000: INFO/MainProcess] Task workers.tasks.generate_images[a] received\n"
        "[2026-12-01 04:00:10,030: INFO/ForkPoolWorker-1] Task workers.tasks.generate_images[a] succeeded in "
        "0.03s: 'succeeded'\n"
        "[2026-12-01 04:00:10,040: INFO/MainProcess] Task workers.tasks.generate_images[b] received\n"
        "[2026-12-01 04:00:10,041: INFO/ForkPoolWorker-1] Task workers.tasks.generate_images[b] succeeded in "
        "0.001s: 'skipped (succeeded)'\n")
    assert worker_timeline.main([str(log)]) == 0
    payload = parse_json_line(capsys.readouterr().out)
    assert (payload["real_tasks"], payload["noop_tasks"], payload["gaps"]) == (1, 1, 1)
    assert payload["real_s"] == 0.03 and payload["noop_s"] == 0.001 and payload["gaps_s"] == 0.01
    with pytest.raises(SystemExit):
        worker_timeline.main([str(tmp_path / "missing.log")])


def test_text_encoder_probe_quick(capsys):
    from bench import text_encoder_probe

    payload = run_script(text_encoder_probe, ["--datasets", "fashion-mnist-captions", "--per-combination", "4"],
                         capsys)
    rows = payload["rows"]
    assert {(r["target"], r["phrasing"]) for r in rows} == {
        (t, k) for t in ("class", "tone", "shape") for k in text_encoder_probe.KINDS}
    for row in rows:
        assert 0 <= row["linear"] <= 1 and 0 <= row["knn"] <= 1 and row["training_captions"] == 40 * 4
    train_class = next(r for r in rows if r["target"] == "class" and r["phrasing"] == "train")
    assert train_class["linear"] > 0.5  # the training words are easy: far above the 10% of chance
    assert set(train_class["linear_per_value"]) == set(text_encoder_probe.CLASS_NAMES["fashion-mnist-captions"])


def test_text_encoder_probe_refuses_an_unknown_dataset(capsys):
    from bench import text_encoder_probe

    with pytest.raises(SystemExit) as exc:
        text_encoder_probe.main(["--datasets", "mnist"])
    assert exc.value.code == 2 and "--datasets" in capsys.readouterr().err


def test_noise_batch_stats_decodes_the_same_draws_served_and_as_trained():
    """bench/noise_batch_stats on the shipped cifar10-text: a ratio per prompt both ways, and a class model is
    refused with a message naming what is needed."""
    from bench.noise_batch_stats import measure

    models = Path(__file__).resolve().parents[1] / "models"
    result = measure(str(models / "cifar10-text"), ["a red car", "a green frog"], rows=4)
    assert len(result["served"]) == len(result["as_trained"]) == 2
    assert all(v > 0 for v in result["served"] + result["as_trained"]) and result["diversity_cap"] is not None
    with pytest.raises(SystemExit, match="text condition is needed"):
        measure(str(models / "mnist"), ["a red car"], rows=2)


def test_ema_ab_evaluates_the_raw_weights_beside_their_average(tmp_path, monkeypatch, capsys):
    """A tiny text recipe trained with the weight average: the A/B rebuilds the raw-weights model from the
    training state and evaluates both."""
    import dataclasses

    from bench.ema_ab import main
    from tests.test_zoo import tiny_data_root
    from training import zoo

    recipes = tuple(dataclasses.replace(r, hparams={**r.hparams, "ema_decay": 0.9}) if r.name == "fashion-text"
                    else r for r in zoo.RECIPES)
    monkeypatch.setattr(zoo, "RECIPES", recipes)
    data_root = tiny_data_root(tmp_path / "data")
    (tmp_path / "work").mkdir()
    [recipe] = [r for r in recipes if r.name == "fashion-text"]
    zoo.train(recipe, str(data_root), tmp_path / "work", tiny=True, log=lambda line: None)
    run = tmp_path / "work" / "fashion-text"
    assert main(["--run", str(run), "--recipe", "fashion-text", "--data-root", str(data_root), "--tiny",
                 "--json-out", str(tmp_path / "ab.json")]) == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    assert set(result["headline"]) == {"raw", "averaged"} and result["steps"] >= 1
    assert "| text_class_accuracy[heldout] |" in capsys.readouterr().out
