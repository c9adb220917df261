"""Does a conditional model use its noise? Measured on a checkpoint, per prompt (or class):

- ``code_noise_share``: the variance of the latent codes over noise draws for one condition, over the
  variance of the codes over every condition and draw (1: the condition does not matter; 0: the noise does
  not matter, one code per prompt);
- ``pixel_spread``: the mean per-pixel distance between two samples of one condition, over the same for two
  real test images of that class (1 = as varied as real images; needs the data set).

    python -m bench.noise_use --checkpoint models/cifar10-text --data-root ../shared/data [--n 16]

Prompts: the text-alignment prompts (held-out templates, canonical words) of the model's captioned set, or
every class for a class model. Prints one JSON object (median, minimum and per-prompt figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def pairwise_l1(images: torch.Tensor) -> float:
    """Mean per-pixel L1 distance over every unordered pair of rows of ``images`` ``(N, ...)``."""
    flat = images.flatten(1).double()
    n = len(flat)
    return float(torch.cdist(flat, flat, p=1).sum() / (n * (n - 1)) / flat.shape[1])


@torch.no_grad()
def measure(checkpoint: str, data_root: str | None, n: int, seed: int = 0) -> dict:
    from generation.base import Condition
    from generation.checkpoint import load_checkpoint
    from generation.sampling import generate
    from priorforge_spec.datasets import image_dataset_name
    from training.data import load_dataset, to_float
    from training.text_eval import alignment_prompts, captioned_name

    model, info = load_checkpoint(checkpoint)
    kind = model.config.condition
    if kind == "text":
        from generation.text_encoder import encode_texts

        name = captioned_name(info.dataset)
        if name is None:
            raise SystemExit(f"--checkpoint: no prompts for data set {info.dataset!r}")
        prompts = alignment_prompts(name)
        vectors = model.project_text(encode_texts([p for p, _, _ in prompts])).cpu()
        conditions = [(p, cls, Condition("text", embedding=v, prompt=p)) for (p, cls, _), v in zip(prompts, vectors)]
    elif kind == "class":
        conditions = [(c, c, Condition("class", index=k)) for k, c in enumerate(info.class_names)]
    else:
        raise SystemExit(f"--checkpoint: a {kind!r} model; this measures class and text models")
    codes, spreads = [], []
    for i, (_, _, condition) in enumerate(conditions):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        codes.append(model.sample_latents(n, condition, g).float().cpu())  # (n, latent_dim)
        spreads.append(pairwise_l1(generate(model, n, condition, seed * 100_003 + i)))
    stacked = torch.stack(codes)  # (P, n, latent_dim)
    total = float(stacked.flatten(0, 1).var(0).sum())
    shares = [float(c.var(0).sum()) / max(total, 1e-12) for c in codes]
    real_spread = {}
    if data_root is not None:
        test = load_dataset(image_dataset_name(info.dataset), data_root, "test")
        names = list(test.class_names)
        for k, cls in enumerate(names):
            rows = torch.nonzero(test.labels == k).squeeze(1)[:200]
            real_spread[cls] = pairwise_l1(to_float(test.images[rows]))
    per_prompt = []
    for (prompt, cls, _), share, spread in zip(conditions, shares, spreads):
        entry = {"prompt": prompt, "code_noise_share": round(share, 4), "pixel_distance": round(spread, 4)}
        if cls in real_spread:
            entry["pixel_spread"] = round(spread / real_spread[cls], 4)
        per_prompt.append(entry)
    out = {"checkpoint": checkpoint, "condition": kind, "samples_per_prompt": n, "prompts": len(per_prompt),
           "code_noise_share_median": round(statistics.median(shares), 4)}
    if real_spread:
        ratios = [e["pixel_spread"] for e in per_prompt]
        out |= {"pixel_spread_median": round(statistics.median(ratios), 4), "pixel_spread_min": round(min(ratios), 4),
                # what the diversity term's cap is set against: two real images of one class, per pixel
                "real_pixel_distance_mean": round(statistics.mean(real_spread.values()), 4)}
    return out | {"per_prompt": per_prompt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default=None, help="for the real images' spread (pixel_spread)")
    p.add_argument("--n", type=int, default=16, help="samples per prompt (at least 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n: at least 2 samples per prompt")
    torch.set_num_threads(1)
    json.dump(measure(args.checkpoint, args.data_root, args.n, args.seed), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
