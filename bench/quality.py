"""Every backend on real data under one CPU budget: train, evaluate, one comparison table.

For each (backend, data set, condition): ``priorforge train --condition C --max-cpu-minutes B --no-eval`` in
its own process (one thread), then an evaluation process: ``training.evaluate.evaluate_model`` (feature FID,
label accuracy for class models, reconstruction MSE, precision/recall) and the trained model's sampling speed at
batch 64. ``--jobs`` (run, evaluation) pairs run side by side. A backend that fails is recorded with its error;
the others go on.

Every backend gets the same budget and nothing else: each trainer plans its own schedules (IAE code growth, the
LDE's stage split, PGA's warm-up, lr annealing and halving) from the steps the budget buys
(``training/trainer.py``), and the budget covers every stage (the LDE's density stage, the class prior's fit).

``--code-priors`` evaluates class-conditional checkpoints a second (third) time with another prior over codes,
decoded by the same networks: ``gaussian``, one full-covariance Gaussian per class fitted to the codes of 10,000
training images (for ``vae``/``pga`` exactly their ``class_prior="gaussian"`` fit; for the others the "AE +
Gaussian codes" baseline of the LDE and GLF papers) and ``standard``, N(0, I) codes for every class (``vae`` and
``pga``: the CVAE alone, what they sampled before class priors were added). A prior a row already has is not repeated.

    OMP_NUM_THREADS=1 python bench/quality.py --data-root ../shared/data --cpu-minutes 15 --preset small
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
CONDITIONS = ("class", "none")
CODE_PRIORS = ("model", "gaussian", "standard")
PRIOR_LABELS = {"model": "model", "gaussian": "Gaussian per class", "standard": "N(0, I)"}
# --preset small: applied to every backend that has the field (the VAE has no hidden_dim / disc_hidden)
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {"base_channels": 32, "hidden_dim": 512, "disc_hidden": 512},
}
SAMPLING_BATCH = 64
GAUSSIAN_CODES = 10000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help="class and/or none")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cpu-minutes", type=float, default=2.0, help="training CPU budget per backend per data set")
    p.add_argument("--epochs", type=int, default=100,
                   help="passed to train: more than any budget here buys, so that the CPU budget and not the epoch "
                        "count ends every run (at the trainers' default of 10, GLF and the LDE stop before a "
                        "15-minute budget is spent). GLF stretches its lr halvings (every 50 of these epochs) over "
                        "the steps the budget buys, so 100 halves once, half-way, as the zoo recipes do")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="model sizes: the backends' defaults, or 'small' (fields in PRESETS) for every backend")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a model-config field (JSON value) for every backend that has it, e.g. class_prior=flow")
    p.add_argument("--eval-samples", type=int, default=5000, help="generated (and test) images per evaluation")
    p.add_argument("--code-priors", default="model",
                   help="class models are evaluated with each of these priors over codes: "
                        f"{', '.join(CODE_PRIORS)} (see the module docstring)")
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
    p.add_argument("--eval-code-prior", default="model", choices=CODE_PRIORS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.cpu_minutes, args.eval_samples = "digits", 0.05, 40
    for flag, value, valid in (("--conditions", args.conditions, CONDITIONS),
                               ("--code-priors", args.code_priors, CODE_PRIORS)):
        unknown = sorted(set(value.split(",")) - set(valid) - {""})
        if unknown:
            p.error(f"{flag}: unknown {unknown}; valid: {', '.join(valid)}")
    return args


# -- the evaluation of one checkpoint (the child process) ---------------------------------------------------
def evaluate_checkpoint(checkpoint: str, *, data_root: str | None, n_samples: int, seed: int,
                        device_name: str, code_prior: str = "model") -> dict[str, Any]:
    """``evaluate_model`` of the checkpoint plus its sampling speed at batch 64 (median of 3, after a warm-up).

    ``code_prior``: ``model`` (its own prior), ``gaussian`` or ``standard`` (see the module docstring)."""
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
        extra["code_prior"] = use_gaussian_codes(model, train, GAUSSIAN_CODES, seed)
    elif code_prior == "standard":
        use_standard_codes(model)
        extra["code_prior"] = "N(0, I) for every class"
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


def has_class_prior(model) -> bool:
    """Whether ``model`` is a CVAE-style backend with a ``class_prior`` option (vae, pga)."""
    from generation.base import ConditionalDecoderMixin

    return isinstance(model, ConditionalDecoderMixin) and model.config.condition == "class"


def use_standard_codes(model) -> None:
    """A vae/pga class model samples N(0, I) codes for every class (its class prior removed)."""
    if not has_class_prior(model):
        raise ValueError(f"code prior 'standard' is for class-conditional vae and pga, not {model.backend}")
    model.class_prior = model.prior_flow = None


def use_gaussian_codes(model, data, n: int, seed: int) -> str:
    """Replace the model's prior by one full-covariance Gaussian per class (one for all, unconditional models)
    fitted to the codes of up to ``n`` training images; returns what was fitted.

    vae/pga class models get their own ``class_prior="gaussian"`` fit (``ClassPriorTraining.fit_class_prior``:
    each image encoded with its label); the others' label-free codes are fitted here, and ``sample_latents`` (on
    this instance) draws from the fit."""
    from generation.layers import ClassGaussianPrior
    from training.registry import get_trainer_class
    from training.trainer import TrainConfig

    classes = model.config.condition == "class"
    if has_class_prior(model):
        model.prior_flow = None
        model.class_prior = ClassGaussianPrior(model.config.num_classes, model.config.latent_dim).to(model.device)
        trainer = get_trainer_class(model.backend)(model, TrainConfig(seed=seed, device=str(model.device),
                                                                      progress_bar=False, evaluate=False),
                                                   {"prior_codes": n})
        fitted = trainer.fit_class_prior(data)["class_prior"]
        return f"Gaussian per class (full covariance) fitted to {fitted['codes']} training codes (the model's fit)"
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    codes, labels = [], []
    with torch.inference_mode():
        for i in range(0, len(rows), 256):
            batch = data.batch(rows[i:i + 256])
            codes.append(model.encode(batch.images.to(model.device)).latents.float().cpu())  # (b, D)
            labels.append(batch.labels if classes else torch.zeros_like(batch.labels))
    prior = ClassGaussianPrior(model.config.num_classes if classes else 1, codes[0].shape[1])
    prior.fit(torch.cat(codes), torch.cat(labels))

    def sample_latents(n: int, condition, generator: torch.Generator) -> torch.Tensor:
        model.check_condition(condition)
        noise = torch.randn(n, prior.mean.shape[1], generator=generator)  # (n, D)
        index = torch.full((n,), condition.index if classes else 0, dtype=torch.long)
        return prior.sample(index, noise).to(model.device)  # (n, D)

    model.sample_latents = sample_latents
    return f"Gaussian {'per class ' if classes else ''}(full covariance) fitted to {len(rows)} training codes"


# -- one (backend, data set, condition) run --------------------------------------------------------------------
def dataset_image_shape(dataset: str) -> tuple[int, int, int]:
    return {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}.get(dataset, (1, 28, 28))


def parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def train_argv(backend: str, dataset: str, condition: str, out: Path,
               args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The ``priorforge train`` arguments for one run, and the settings it got."""
    from generation.registry import config_class

    sizes = dict(TINY_MODEL) if args.quick else dict(PRESETS[args.preset])
    sets = model_overrides(config_class(backend), sizes | parse_sets(args.sets))
    max_steps: int | None = 2 if args.quick else None
    argv = ["train", "--model", backend, "--dataset", dataset, "--condition", condition, "--out", str(out),
            "--seed", str(args.seed), "--device", args.device, "--no-eval", "--quiet",
            "--sample-every", "0", "--checkpoint-every", "0", "--max-cpu-minutes", f"{args.cpu_minutes:.6g}",
            "--epochs", str(args.epochs)]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    if args.data_root:
        argv += ["--data-root", args.data_root]
    if args.quick:
        argv += ["--batch-size", "16"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv, {"model_sets": sets, "max_cpu_minutes": args.cpu_minutes, "max_steps": max_steps,
                  "epochs": args.epochs}


def run_child(cmd: list[str], log: Path) -> tuple[int, str]:
    """Run ``cmd`` with one thread; its output goes to ``log``; returns the status and the last error line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return rc, (lines[-1][-300:] if lines else "")


def run_one(backend: str, dataset: str, condition: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Train and evaluate one backend on one data set for one condition: one row per code prior evaluated."""
    tag = f"{backend}-{dataset}-{condition}"
    out = work / tag
    row: dict[str, Any] = {"backend": backend, "dataset": dataset, "condition": condition, "prior": "model",
                           "checkpoint": str(out)}
    try:
        argv, settings = train_argv(backend, dataset, condition, out, args)
    except Exception as exc:  # noqa: BLE001 - a backend that cannot even be configured is recorded, not fatal
        return [row | {"error": f"setup: {type(exc).__name__}: {exc}"}]
    row |= settings | {"train_command": "priorforge " + " ".join(argv)}
    w0 = time.perf_counter()
    if args.quick:
        rc, err = _train_in_process(argv)
    else:
        rc, err = run_child([sys.executable, "-m", "priorforge.cli", *argv], work / f"{tag}.train.log")
    row["process_wall_seconds"] = round(time.perf_counter() - w0, 1)
    if rc != 0:
        return [row | {"error": f"train exit {rc}: {err}"}]
    metrics = json.loads((out / "metrics.json").read_text())
    row |= {k: metrics.get(k) for k in ("steps", "cpu_seconds", "train_seconds", "lde_test_nll", "ae_steps",
                                        "lde_steps", "schedule", "class_prior")}
    config = json.loads((out / "config.json").read_text())["model_config"]
    own = config.get("class_prior") if backend in ("vae", "pga") and condition == "class" else None
    rows = []
    for prior in args.code_priors.split(","):
        if prior == "model" or (condition == "class" and prior != own
                                and (prior != "standard" or backend in ("vae", "pga"))):
            rows.append(row | {"prior": PRIOR_LABELS[prior]} | _evaluate(out, tag, args, work, prior))
    return rows


def _evaluate(out: Path, tag: str, args: argparse.Namespace, work: Path, code_prior: str) -> dict[str, Any]:
    """The evaluation of checkpoint ``out`` (in this process for --quick, else in a child): metrics or an error."""
    try:
        if args.quick:
            return evaluate_checkpoint(str(out), data_root=args.data_root, n_samples=args.eval_samples,
                                       seed=args.seed, device_name=args.device, code_prior=code_prior)
        tag += "" if code_prior == "model" else f".{code_prior}"
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
COLUMNS = [("backend", "backend"), ("dataset", "data set"), ("condition", "condition"), ("prior", "codes from"),
           ("steps", "steps"), ("cpu_seconds", "train CPU s"), ("label_accuracy", "label acc"),
           ("feature_fid", "feature FID"), ("precision", "precision"), ("recall", "recall"),
           ("reconstruction_mse", "recon MSE"), ("sampling_images_per_cpu_s", "img/s @64 (CPU)"),
           ("sampling_images_per_s", "img/s @64 (wall)"), ("error", "error")]
ROW_KEY = ("backend", "dataset", "condition", "prior")


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
    conditions = [c for c in args.conditions.split(",") if c]
    started = time.perf_counter()
    if args.quick:
        _quick_classifiers(datasets, args.data_root)
    runs = [(b, d, c) for d in datasets for c in conditions for b in backends]
    with ThreadPoolExecutor(max_workers=1 if args.quick else max(1, args.jobs)) as pool:
        per_job = pool.map(lambda run: run_one(*run, args, work), runs)
        rows = [row for job_rows in per_job for row in job_rows]
    settings = {"cpu_minutes": args.cpu_minutes, "epochs": args.epochs, "preset": args.preset,
                "preset_fields": PRESETS[args.preset],
                "sets": parse_sets(args.sets), "conditions": conditions, "code_priors": args.code_priors.split(","),
                "eval_samples": args.eval_samples, "gaussian_codes": GAUSSIAN_CODES, "jobs": args.jobs,
                "seed": args.seed, "quick": args.quick,
                "command": " ".join(["quality.py", *(argv if argv is not None else sys.argv[1:])])}
    payload = {"benchmark": "quality", "machine": machine, "settings": settings, "rows": rows,
               "wall_seconds": round(time.perf_counter() - started, 1)}
    json_out = Path(args.json_out) if args.json_out else work / "quality.json"
    json_out.write_text(json.dumps(payload, indent=1, default=str))
    emit(render(rows), {**payload, "rows": [{k: r.get(k) for k, _ in COLUMNS} for r in rows]})
    return 0


def merge(paths: list[str], json_out: str | None) -> int:
    """One table (and JSON) from several result files; a row of a later file replaces an earlier one's with the
    same backend, data set, condition and prior (files from before conditions were recorded count as class)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:
        for row in run["rows"]:
            row = {"condition": "class", "prior": "model"} | row
            rows[tuple(str(row[k]) for k in ROW_KEY)] = row
    order = {name: i for i, name in enumerate(BACKENDS)}
    ordered = sorted(rows.values(), key=lambda r: (r["dataset"], CONDITIONS.index(r["condition"])
                                                   if r["condition"] in CONDITIONS else 9,
                                                   order.get(r["backend"], 9), r["backend"], r["prior"]))
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
