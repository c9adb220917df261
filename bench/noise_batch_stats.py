"""Does the code generator use its noise as much when served as when trained? A code-generator AAE's diversity
term is computed in training mode, where the code generator's BatchNorm layers normalise by the statistics of
the batch (mixed prompts); a served model uses their running statistics. This decodes the same pairs of noise
draws for a batch of prompts both ways and prints, per prompt, the diversity term's own ratio: mean per-pixel
distance of two samples over the mean distance of their noise draws (the term's cap is what training asks for).

    python -m bench.noise_batch_stats --checkpoint models/cifar10-text [--rows 16]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

PROMPTS = ("a red car", "a green frog", "a brown horse", "a white ship", "a blue airplane", "a yellow truck")


@torch.no_grad()
def measure(checkpoint: str, prompts: list[str], rows: int, seed: int = 0) -> dict:
    from generation.checkpoint import load_checkpoint
    from generation.text_encoder import encode_prompt_for_checkpoint

    model, info = load_checkpoint(checkpoint)
    model = model.float()
    if model.config.condition != "text" or not hasattr(model, "code_generator"):
        raise SystemExit(f"{checkpoint}: a code-generator AAE with a text condition is needed")
    conditions = torch.cat([encode_prompt_for_checkpoint(model, info, p).reshape(1, -1).float().repeat(rows, 1)
                            for p in prompts])
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(len(conditions), model.config.noise_dim, generator=generator)
    second = torch.randn(len(conditions), model.config.noise_dim, generator=generator)
    out: dict = {"checkpoint": checkpoint, "rows_per_prompt": rows, "prompts": prompts}
    for name, batch_statistics in (("served", False), ("as_trained", True)):
        model.eval()
        model.code_generator.train(batch_statistics)  # BatchNorm: the batch's statistics, as in training
        images = model.decoder(model.code_generator(torch.cat([first, second]), torch.cat([conditions, conditions])))
        n = len(conditions)
        ratio = (images[:n] - images[n:]).abs().flatten(1).mean(1) / (first - second).abs().mean(1)
        out[name] = [round(v, 4) for v in ratio.reshape(len(prompts), rows).mean(1).tolist()]
    model.eval()
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    out["diversity_cap"] = config.get("training", {}).get("hparams", {}).get("diversity_cap")
    out["served_over_as_trained"] = round(sum(out["served"]) / sum(out["as_trained"]), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a text code-generator AAE (folder)")
    parser.add_argument("--rows", type=int, default=16, help="samples per prompt in the batch")
    parser.add_argument("--prompt", action="append", help="repeatable; default: six example prompts")
    args = parser.parse_args(argv)
    if args.rows < 2:
        parser.error("--rows must be at least 2")
    torch.set_num_threads(1)
    print(json.dumps(measure(args.checkpoint, args.prompt or list(PROMPTS), args.rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
