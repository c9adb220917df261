"""What drawing a job's codes costs: one code-generator call per image against one per pass of 8 rows.

A service job's image *i* has its own generator seeded ``seed + i`` (so that it does not depend on the job
around it). The codes can then be drawn one image at a time (``GenerativeModel.sample_latents_per_seed``, the
default every backend has) or, for the code-generator AAE, with the seeds' noise drawn one by one and the code
generator run over passes of a fixed number of rows (its override). Both are timed here in CPU time, alternated
within each round, for a model and several job sizes; the JSON also holds the largest difference between the
two ways' codes (rounding of a bigger batch).

    python bench/job_codes.py                                  # tests/fixtures/digits-aae-cg
    python bench/job_codes.py --checkpoint models/cifar10-text --prompt "a red car"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import emit, machine_info, markdown_table  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="tests/fixtures/digits-aae-cg", help="relative to the checkout")
    p.add_argument("--label", default="3", help="class models: the label asked for")
    p.add_argument("--prompt", default=None, help="text models: the prompt")
    p.add_argument("--images", default="1,16,64", help="images per job, comma-separated")
    p.add_argument("--rounds", type=int, default=15, help="alternated rounds; the median is reported")
    p.add_argument("--json-out", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from generation.base import GenerativeModel
    from generation.checkpoint import load_checkpoint
    from generation.sampling import CODE_PASS_ROWS, condition_from_request

    model, info = load_checkpoint(REPO / args.checkpoint, device="cpu")
    model.eval()
    class_names = list(info.class_names)
    if model.config.condition == "text":
        from generation.text_encoder import encode_prompt_for_checkpoint

        prompt = args.prompt or "a red car"
        condition = condition_from_request(model, class_names, prompt=prompt,
                                           embedding=encode_prompt_for_checkpoint(model, info, prompt))
    elif model.config.condition == "class":
        condition = condition_from_request(model, class_names, label=args.label)
    else:
        condition = condition_from_request(model, class_names)
    ways = {
        "one call per image": lambda seeds: GenerativeModel.sample_latents_per_seed(model, seeds, condition, 1),
        f"passes of {CODE_PASS_ROWS}": lambda seeds: model.sample_latents_per_seed(seeds, condition, CODE_PASS_ROWS),
    }
    rows = []
    for n in [int(x) for x in args.images.split(",")]:
        seeds = range(1000, 1000 + n)
        times: dict[str, list[float]] = {name: [] for name in ways}
        with torch.inference_mode():
            codes = {name: way(seeds) for name, way in ways.items()}  # warm-up, and the codes compared
            for _ in range(args.rounds):
                for name, way in ways.items():
                    start = time.process_time()
                    way(seeds)
                    times[name].append((time.process_time() - start) * 1000)
        first, second = codes.values()
        medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
        rows.append({"images": n, "cpu_ms": medians,
                     "ratio": round(list(medians.values())[1] / list(medians.values())[0], 3),
                     "max_abs_difference": float((first - second).abs().max())})

    names = list(ways)
    table = markdown_table(
        ["images", *(f"{name} (CPU ms)" for name in names), "ratio", "largest code difference"],
        [[row["images"], *(row["cpu_ms"][name] for name in names), row["ratio"], f"{row['max_abs_difference']:.1e}"]
         for row in rows])
    emit(table, {"benchmark": "job_codes", "machine": machine_info(torch.device("cpu")), "rows": rows,
                 "settings": {**vars(args), "command": "job_codes.py " + " ".join(sys.argv[1:] if argv is None else argv)}},
         args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
