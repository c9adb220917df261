"""Every backend on real data under one CPU budget: train, evaluate, one comparison table (issue 4).

For each (backend, data set): ``priorforge train --condition class --max-cpu-minutes B --no-eval`` in its
own process (one thread), then an evaluation process: ``training.evaluate.evaluate_model`` (feature FID,
label accuracy, reconstruction MSE, precision/recall) and the trained model's sampling speed at batch 64.
``--jobs`` (run, evaluation) pairs run side by side. A backend that fails is recorded with its error; the
others go on. The ``lde`` checkpoint is evaluated a second time with its prior replaced by a Gaussian per
class fitted to training codes (the row ``lde AE + Gaussian codes``: "plain AE sampling" as a baseline).

Same budget for everyone, with two backend-specific settings so that each one's prior is actually trained
within it (written into the table's notes and the JSON):

- ``lde``: its density stage runs after the training loop and is not bounded by ``--max-cpu-minutes`` (when
  the budget stops the loop early, the stage even takes over the loop's unused steps). So the LDE gets step
  counts instead, calibrated in this process (CPU time of one autoencoder step and of one LDE update): AE
  steps for ``1 - LDE_SHARE`` of the budget (``--max-steps``), LDE updates for ``LDE_SHARE`` of it
  (``--hparam lde_steps``). Its measured CPU time is in the table like everyone's.
- ``pga``: its latent terms switch on after ``warmup_steps`` (3,000 by default, far more steps than a CPU
  budget of minutes allows); here ``--pga-warmup`` steps (default 50).

    OMP_NUM_THREADS=1 python bench/quality.py --data-root /work/shared/data --cpu-minutes 1.5 --preset small
    python bench/quality.py --quick          # tiny models, 2 steps, sklearn digits: a smoke test
    python bench/quality.py --merge a.json b.json --json-out all.json   # one table from several runs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/quality.py` from anywhere

import torch  # noqa: E402

from bench.common import TINY_MODEL, emit, machine_info, markdown_table, model_overrides, time_call  # noqa: E402

BACKENDS = ("aae-cg", "glf", "lde", "pga", "vae")
LDE_SHARE = 0.25
# --preset small: applied to every backend that has the field (the VAE has no hidden_dim / disc_hidden)
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {"base_channels": 32, "hidden_dim": 512, "disc_hidden": 512},
}
SAMPLING_BATCH = 64
GAUSSIAN_CODES = 10000
GAUSSIAN_ROW = "lde AE + Gaussian codes"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cpu-minutes", type=float, default=2.0, help="training CPU budget per backend per data set")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="model sizes: the backends' defaults, or 'small' (fields in PRESETS) for every backend")
    p.add_argument("--pga-warmup", type=int, default=50, help="pga: steps before its latent terms switch on")
    p.add_argument("--eval-samples", type=int, default=2000, help="generated (and test) images per evaluation")
    p.add_argument("--no-gaussian-baseline", dest="gaussian_baseline", action="store_false",
                   help="skip the extra row: lde's autoencoder sampled with per-class Gaussian codes")
    p.add_argument("--jobs", type=int, default=2, help="(train, evaluate) pairs run in parallel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (passed to train and evaluation)")
    p.add_argument("--work-dir", default="runs/bench-quality", help="checkpoints and logs go here")
    p.add_argument("--json-out", default=None, help="results JSON (default: WORK_DIR/quality.json)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no runs: one table from these result files (a later file's row replaces an earlier one's)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny models, 2 steps, digits, in one process, a throwaway classifier")
    # worker mode: evaluate one checkpoint (the parent runs this in a child process)
    p.add_argument("--eval-checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval-code-prior", default="model", choices=("model", "gaussian"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.cpu_minutes, args.eval_samples = "digits", 0.05, 40
    return args


# -- the evaluation of one checkpoint (the child process) ---------------------------------------------------
def evaluate_checkpoint(checkpoint: str, *, data_root: str | None, n_samples: int, seed: int,
                        device_name: str, code_prior: str = "model") -> dict[str, Any]:
    """``evaluate_model`` of the checkpoint plus its sampling speed at batch 64 (median of 3, after a warm-up).

    ``code_prior="gaussian"``: the model's own prior is replaced by a Gaussian per class fitted to the codes of
    training images (the "plain AE sampling" baseline the LDE and GLF papers compare with)."""
    from generation.base import Condition
    from generation.checkpoint import load_checkpoint
    from generation.device import resolve_device
    from training.data import load_dataset
    from training.evaluate import evaluate_model

    device = resolve_device(device_name)
    model, info = load_checkpoint(checkpoint, device=device)
    shape = tuple(model.config.image_shape)
    test = load_dataset(info.dataset, data_root, "test", image_size=int(shape[1]), channels=int(shape[0]))
    extra: dict[str, Any] = {}
    if code_prior == "gaussian":
        train = load_dataset(info.dataset, data_root, "train", image_size=int(shape[1]), channels=int(shape[0]))
        use_gaussian_codes(model, fit_gaussian_codes(model, train, GAUSSIAN_CODES, seed))
        extra["code_prior"] = f"Gaussian per class (full covariance) fitted to {GAUSSIAN_CODES} training codes"
    c0, w0 = time.process_time(), time.perf_counter()
    metrics = evaluate_model(model, dataset=info.dataset, class_names=info.class_names, data_root=data_root,
                             device=device, n_samples=n_samples, seed=seed, test_data=test)
    metrics["eval_cpu_seconds"] = round(time.process_time() - c0, 1)
    metrics["eval_wall_seconds"] = round(time.perf_counter() - w0, 1)
    condition = Condition("class", index=0) if model.config.condition == "class" else Condition("none")
    generator = torch.Generator().manual_seed(seed)

    def sample() -> None:
        model.decode(model.sample_latents(SAMPLING_BATCH, condition, generator).to(device), condition)

    model.eval()
    with torch.inference_mode():
        timing = time_call(sample, device, warmup=1, repeats=3)
    metrics["sampling_images_per_s"] = round(SAMPLING_BATCH / timing.wall, 1)
    metrics["sampling_images_per_cpu_s"] = round(SAMPLING_BATCH / max(timing.cpu, 1e-9), 1)
    return metrics | extra


def fit_gaussian_codes(model, data, n: int, seed: int) -> dict[int | None, tuple[torch.Tensor, torch.Tensor]]:
    """Per class (``None``: one for all, unconditional models): the mean ``(D,)`` and Cholesky factor ``(D, D)``
    of the codes of up to ``n`` training images (a seeded subset)."""
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    codes, labels = [], []
    with torch.inference_mode():
        for i in range(0, len(rows), 256):
            batch = data.batch(rows[i:i + 256])
            codes.append(model.encode(batch.images.to(model.device)).latents.float().cpu())  # (b, D)
            labels.append(batch.labels)
    z_all, y_all = torch.cat(codes).double(), torch.cat(labels)
    keys = y_all.unique().tolist() if model.config.condition == "class" else [None]
    out = {}
    for key in keys:
        z = z_all if key is None else z_all[y_all == key]
        cov = torch.cov(z.T) + 1e-6 * torch.eye(z.shape[1], dtype=z.dtype)  # (D, D)
        out[key] = (z.mean(0).float(), torch.linalg.cholesky(cov).float())
    return out


def use_gaussian_codes(model, params: dict[int | None, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Replace ``model.sample_latents`` (on this instance) by draws from the fitted Gaussians."""
    def sample_latents(n: int, condition, generator: torch.Generator) -> torch.Tensor:
        mean, chol = params[condition.index if model.config.condition == "class" else None]
        eps = torch.randn(n, mean.shape[0], generator=generator)  # (n, D)
        return mean + eps @ chol.T  # (n, D)

    model.sample_latents = sample_latents


# -- the LDE's budget ------------------------------------------------------------------------------------
def lde_calibration(image_shape: tuple[int, int, int], overrides: dict[str, Any], batch_size: int) -> dict[str, float]:
    """CPU seconds of one autoencoder step (batch ``batch_size``) and of one LDE update (batch 128) of the
    model that will be trained (class condition, 10 classes), measured in this process with one thread."""
    from generation.registry import build_model
    from training.lde import LDETrainer
    from training.trainer import TrainConfig

    torch.manual_seed(0)
    model = build_model("lde", image_shape=image_shape, condition="class", **overrides)
    trainer = LDETrainer(model, TrainConfig(device="cpu", progress_bar=False, evaluate=False))
    cpu = torch.device("cpu")
    images = torch.rand(batch_size, *image_shape) * 2 - 1
    labels = torch.arange(batch_size) % 10
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    ae = time_call(lambda: trainer.train_step(images, onehot, labels), cpu, warmup=2, repeats=7)
    batch = int(trainer.hparams["lde_batch_size"])
    codes = torch.randn(batch, model.config.latent_dim)  # (128, D)
    cond = torch.nn.functional.one_hot(torch.arange(batch) % 10, 10).float()  # (128, 10)
    lde = time_call(lambda: trainer.lde_step(codes, cond), cpu, warmup=3, repeats=15)
    return {"ae_step": ae.cpu, "lde_update": lde.cpu}


# -- one (backend, data set) run ---------------------------------------------------------------------------
def dataset_image_shape(dataset: str) -> tuple[int, int, int]:
    return {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}.get(dataset, (1, 28, 28))


def train_argv(backend: str, dataset: str, out: Path, args: argparse.Namespace,
               lde_cost: dict[str, dict[str, float]]) -> tuple[list[str], dict[str, Any]]:
    """The ``priorforge train`` arguments for one run, and the backend-specific settings it got."""
    from generation.registry import config_class

    sizes = dict(TINY_MODEL) if args.quick else dict(PRESETS[args.preset])
    sets = model_overrides(config_class(backend), sizes)
    budget = args.cpu_minutes
    notes: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    max_steps: int | None = 2 if args.quick else None
    if backend == "lde":
        # its density stage runs after the loop and is not bounded by --max-cpu-minutes; when that budget stops
        # the loop early, the stage also takes over the loop's unused steps (training/lde.py, finish()). So the
        # LDE gets step counts calibrated to the budget instead: AE steps for 1 - LDE_SHARE of it, LDE updates
        # for LDE_SHARE; its measured CPU time is in the table.
        cost = lde_cost.get(dataset)
        if not args.quick:
            if not cost:
                raise RuntimeError("lde: no calibration for this data set")
            max_steps = max(1, int((1 - LDE_SHARE) * budget * 60 / cost["ae_step"]))
            hparams["lde_steps"] = max(1, int(LDE_SHARE * budget * 60 / cost["lde_update"]))
            budget = None
        else:
            hparams["lde_steps"] = 2
        notes["lde"] = f"{max_steps} AE steps + {hparams['lde_steps']} LDE updates (calibrated to the budget)"
    if backend == "pga":
        hparams["warmup_steps"] = 1 if args.quick else args.pga_warmup
        notes["pga"] = f"warmup_steps={hparams['warmup_steps']}"
    argv = ["train", "--model", backend, "--dataset", dataset, "--condition", "class", "--out", str(out),
            "--seed", str(args.seed), "--device", args.device, "--no-eval", "--quiet",
            "--sample-every", "0", "--checkpoint-every", "0"]
    if budget is not None:
        argv += ["--max-cpu-minutes", f"{budget:.6g}"]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    if args.quick:
        argv += ["--batch-size", "16"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    for key, value in hparams.items():
        argv += ["--hparam", f"{key}={json.dumps(value)}"]
    return argv, {"model_sets": sets, "hparams": hparams, "max_cpu_minutes": budget, "max_steps": max_steps, **notes}


def run_child(cmd: list[str], log: Path) -> tuple[int, str]:
    """Run ``cmd`` with one thread; its output goes to ``log``; returns the status and the last error line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return rc, (lines[-1][-300:] if lines else "")


def run_one(backend: str, dataset: str, args: argparse.Namespace, work: Path,
            lde_cost: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Train and evaluate one backend on one data set; its row (two for lde: also its AE with Gaussian codes)."""
    out = work / f"{backend}-{dataset}"
    row: dict[str, Any] = {"backend": backend, "dataset": dataset, "checkpoint": str(out)}
    try:
        argv, settings = train_argv(backend, dataset, out, args, lde_cost)
    except Exception as exc:  # noqa: BLE001 - a backend that cannot even be configured is recorded, not fatal
        return [row | {"error": f"setup: {type(exc).__name__}: {exc}"}]
    row |= settings | {"train_command": "priorforge " + " ".join(argv)}
    w0 = time.perf_counter()
    if args.quick:
        rc, err = _train_in_process(argv)
    else:
        rc, err = run_child([sys.executable, "-m", "priorforge.cli", *argv], work / f"{backend}-{dataset}.train.log")
    row["process_wall_seconds"] = round(time.perf_counter() - w0, 1)
    if rc != 0:
        return [row | {"error": f"train exit {rc}: {err}"}]
    metrics = json.loads((out / "metrics.json").read_text())
    row |= {k: metrics.get(k) for k in ("steps", "cpu_seconds", "train_seconds", "lde_test_nll")}
    rows = [row | _evaluate(out, backend, dataset, args, work, "model")]
    if backend == "lde" and args.gaussian_baseline and not rows[0].get("error"):
        base = {k: row.get(k) for k in ("dataset", "checkpoint", "steps", "cpu_seconds", "train_seconds")}
        rows.append(base | {"backend": GAUSSIAN_ROW} | _evaluate(out, backend, dataset, args, work, "gaussian"))
    return rows


def _evaluate(out: Path, backend: str, dataset: str, args: argparse.Namespace, work: Path,
              code_prior: str) -> dict[str, Any]:
    """The evaluation of checkpoint ``out`` (in this process for --quick, else in a child): metrics or an error."""
    try:
        if args.quick:
            return evaluate_checkpoint(str(out), data_root=args.data_root, n_samples=args.eval_samples,
                                       seed=args.seed, device_name=args.device, code_prior=code_prior)
        tag = f"{backend}-{dataset}" + (".gauss" if code_prior == "gaussian" else "")
        result = work / f"{tag}.eval.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--eval-checkpoint", str(out),
               "--eval-out", str(result), "--eval-samples", str(args.eval_samples), "--seed", str(args.seed),
               "--device", args.device, "--eval-code-prior", code_prior]
        rc, err = run_child(cmd + (["--data-root", args.data_root] if args.data_root else []), work / f"{tag}.eval.log")
        if rc != 0:
            return {"error": f"evaluate exit {rc}: {err}"}
        return json.loads(result.read_text())
    except Exception as exc:  # noqa: BLE001 - record and go on with the other backends
        return {"error": f"evaluate: {type(exc).__name__}: {exc}"}


def _train_in_process(argv: list[str]) -> tuple[int, str]:
    from priorforge.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except Exception as exc:  # noqa: BLE001
        return 1, f"{type(exc).__name__}: {exc}"
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return rc, (lines[-1] if lines else "")


# -- the table ------------------------------------------------------------------------------------------
COLUMNS = [("backend", "backend"), ("dataset", "data set"), ("steps", "steps"), ("cpu_seconds", "train CPU s"),
           ("train_seconds", "train wall s"), ("feature_fid", "feature FID"), ("label_accuracy", "label acc"),
           ("reconstruction_mse", "recon MSE"), ("precision", "precision"), ("recall", "recall"),
           ("sampling_images_per_s", "img/s @64 (wall)"), ("sampling_images_per_cpu_s", "img/s @64 (CPU)"),
           ("error", "error")]


def render(rows: list[dict[str, Any]]) -> str:
    return markdown_table([title for _, title in COLUMNS], [[row.get(key) for key, _ in COLUMNS] for row in rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.eval_checkpoint:  # worker mode
        metrics = evaluate_checkpoint(args.eval_checkpoint, data_root=args.data_root, n_samples=args.eval_samples,
                                      seed=args.seed, device_name=args.device, code_prior=args.eval_code_prior)
        Path(args.eval_out).write_text(json.dumps(metrics, indent=1, default=str))
        return 0
    if args.merge:
        return merge(args.merge, args.json_out)
    with contextlib.ExitStack() as stack:
        if args.quick and "PRIORFORGE_CACHE" not in os.environ:  # the throwaway classifier stays out of the cache
            os.environ["PRIORFORGE_CACHE"] = stack.enter_context(tempfile.TemporaryDirectory(prefix="priorforge-"))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-quality-")) if args.quick
                    else args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        return run_all(args, argv, work)


def run_all(args: argparse.Namespace, argv: list[str] | None, work: Path) -> int:
    machine = machine_info(torch.device("cpu") if args.device == "cpu" else torch.device(args.device))
    backends = [b for b in args.backends.split(",") if b]
    datasets = [d for d in args.datasets.split(",") if d]
    started = time.perf_counter()
    if args.quick:
        _quick_classifiers(datasets, args.data_root)
    lde_cost: dict[str, dict[str, float]] = {}
    if "lde" in backends and not args.quick:
        from generation.registry import config_class

        for dataset in datasets:
            lde_cost[dataset] = lde_calibration(dataset_image_shape(dataset),
                                                model_overrides(config_class("lde"), PRESETS[args.preset]), 64)
    pairs = [(b, d) for d in datasets for b in backends]
    with ThreadPoolExecutor(max_workers=1 if args.quick else max(1, args.jobs)) as pool:
        per_job = pool.map(lambda pair: run_one(pair[0], pair[1], args, work, lde_cost), pairs)
        rows = [row for job_rows in per_job for row in job_rows]
    settings = {"cpu_minutes": args.cpu_minutes, "preset": args.preset, "preset_fields": PRESETS[args.preset],
                "pga_warmup": args.pga_warmup, "lde_share": LDE_SHARE, "lde_calibration_cpu_seconds": lde_cost,
                "eval_samples": args.eval_samples, "gaussian_codes": GAUSSIAN_CODES, "jobs": args.jobs,
                "seed": args.seed, "quick": args.quick, "condition": "class",
                "command": " ".join(["quality.py", *(argv if argv is not None else sys.argv[1:])])}
    payload = {"benchmark": "quality", "machine": machine, "settings": settings, "rows": rows,
               "wall_seconds": round(time.perf_counter() - started, 1)}
    json_out = Path(args.json_out) if args.json_out else work / "quality.json"
    json_out.write_text(json.dumps(payload, indent=1, default=str))
    emit(render(rows), {**payload, "rows": [{k: r.get(k) for k, _ in COLUMNS} for r in rows]})
    return 0


def merge(paths: list[str], json_out: str | None) -> int:
    """One table (and JSON) from several result files; a (backend, data set) row of a later file wins."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        for row in run["rows"]:
            rows[(row["backend"], row["dataset"])] = row
    datasets = list(dict.fromkeys(d for _, d in rows))
    ordered = [rows[(b, d)] for d in datasets for b in sorted({b for b, _ in rows}) if (b, d) in rows]
    payload = {"benchmark": "quality", "merged_from": [{"file": p, "settings": r["settings"], "machine": r["machine"],
                                                         "wall_seconds": r.get("wall_seconds")}
                                                        for p, r in zip(paths, runs)], "rows": ordered}
    if json_out:
        Path(json_out).write_text(json.dumps(payload, indent=1, default=str))
    emit(render(ordered), {**payload, "rows": [{k: r.get(k) for k, _ in COLUMNS} for r in ordered]})
    return 0


def _quick_classifiers(datasets: list[str], data_root: str | None) -> None:
    """--quick: a throwaway 20-step classifier per data set (in the temporary cache) so evaluation is fast."""
    from training.classifier import get_classifier

    for dataset in datasets:
        get_classifier(dataset, data_root, "cpu", max_steps=20, quiet=True)


if __name__ == "__main__":
    sys.exit(main())
