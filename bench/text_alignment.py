"""Text-alignment table of a text-conditional checkpoint, for each kind of prompt phrasing.

    OMP_NUM_THREADS=1 python bench/text_alignment.py --checkpoint runs/text-fashion --data-root ../shared/data

Prints one JSON object: phrasing ("train", "heldout", "heldout-synonyms") -> the metrics of
``training.text_eval.text_alignment_metrics`` (class / attribute agreement and per-attribute tables).
"""

from __future__ import annotations

import argparse
import json

import torch

from generation.checkpoint import load_checkpoint
from training.text_eval import text_alignment_metrics

PHRASINGS = ("train", "heldout", "heldout-synonyms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--n-per-prompt", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = load_checkpoint(args.checkpoint)
    if model.config.condition != "text":
        parser.error(f"--checkpoint: {args.checkpoint} is a {model.config.condition!r} model, not a text model")
    out = {phrasing: text_alignment_metrics(model, dataset=info.dataset, data_root=args.data_root, device="cpu",
                                            seed=args.seed, n_per_prompt=args.n_per_prompt, phrasing=phrasing)
           for phrasing in PHRASINGS}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
