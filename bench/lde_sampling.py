"""LDE latent sampling: the incremental sampler against the full-pass reference, in one process.

``LatentDensityEstimator.sample`` (incremental, one position per step) and ``_sample_reference`` (a full
forward pass over all D dims per step) are timed on the same model, same seed, one after the other:
``sample_latents`` CPU time on one thread, median of ``--repeats`` after ``--warmup`` calls, for each image
shape (its default code size D) and batch. Also the largest absolute difference between the two samplers'
codes (they draw the same codes up to float rounding). Prints a markdown table and one ``BENCH_JSON`` line.

    OMP_NUM_THREADS=1 python bench/lde_sampling.py
    python bench/lde_sampling.py --quick          # tiny model, 1x28x28, batch 1 and 4: a smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/lde_sampling.py` from anywhere

import torch  # noqa: E402

from bench.common import TINY_MODEL, emit, machine_info, markdown_table, model_overrides  # noqa: E402


def cpu_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shapes", default="1x28x28,3x32x32", help="image shapes (CxHxW), comma-separated")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json-out", default=None)
    p.add_argument("--quick", action="store_true", help="tiny model, 1x28x28, batches 1 and 4, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.batch_sizes, args.warmup, args.repeats = "1x28x28", "1,4", 0, 1
    return args


def main(argv: list[str] | None = None) -> int:
    from generation.base import Condition
    from generation.registry import build_model, get_model_class

    args = parse_args(argv)
    torch.set_num_threads(1)
    machine = machine_info(torch.device("cpu"))
    overrides = model_overrides(get_model_class("lde").config_class, TINY_MODEL) if args.quick else {}
    rows = []
    for shape_text in args.shapes.split(","):
        shape = tuple(int(x) for x in shape_text.split("x"))
        torch.manual_seed(0)
        model = build_model("lde", image_shape=shape, condition="none", **overrides).eval()
        lde = model.lde
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            def draw() -> torch.Tensor:
                # called within this iteration only
                return model.sample_latents(batch, Condition("none"), torch.Generator().manual_seed(0))  # noqa: B023

            with torch.inference_mode():
                fast_codes = draw()
                fast = cpu_ms(draw, args.warmup, args.repeats)
                lde.sample = lde._sample_reference  # the instance attribute shadows the method
                try:
                    reference_codes = draw()
                    reference = cpu_ms(draw, args.warmup, args.repeats)
                finally:
                    del lde.sample
            rows.append({"shape": shape_text, "latent_dim": lde.latent_dim, "batch": batch,
                         "reference_ms": round(reference, 2), "incremental_ms": round(fast, 2),
                         "speedup": round(reference / fast, 1),
                         "max_abs_diff": float((fast_codes - reference_codes).abs().max())})
    table = markdown_table(["D", "image", "batch", "full passes ms", "incremental ms", "speed-up",
                            "max abs difference of the codes"],
                           [[r["latent_dim"], r["shape"], r["batch"], r["reference_ms"], r["incremental_ms"],
                             f"{r['speedup']}x", f"{r['max_abs_diff']:.1e}"] for r in rows])
    emit(table, {"benchmark": "lde_sampling", "machine": machine, "rows": rows,
                 "settings": {"shapes": args.shapes, "batch_sizes": args.batch_sizes, "warmup": args.warmup,
                              "repeats": args.repeats, "quick": args.quick}}, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
