"""How much of the class a model's codes carry: a linear probe (logistic regression) fitted on the encoder's
codes of training images and scored on test images.

A text-to-image model whose decoder does not read the condition can follow a prompt's class only through the
codes its prior draws: when the autoencoder's codes hardly separate the classes, the prior has little to work
with, however well it is conditioned. Run on a checkpoint with an encoder (the GLF text models keep theirs)::

    python bench/code_class_probe.py --checkpoint models/cifar10-text-glf --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import emit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--train", type=int, default=10000, help="training images the probe is fitted on")
    p.add_argument("--test", type=int, default=2000, help="test images it is scored on")
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from generation.checkpoint import load_checkpoint
    from priorforge_spec.datasets import image_dataset_name
    from training.data import load_dataset

    torch.set_num_threads(1)
    model, info = load_checkpoint(args.checkpoint)
    dataset = image_dataset_name(info.dataset)

    def codes(split: str, count: int):
        data = load_dataset(dataset, args.data_root, split)
        generator = torch.Generator().manual_seed(0)
        rows = torch.randperm(len(data), generator=generator)[:count]
        batch = data.batch(rows)
        with torch.inference_mode():
            z = torch.cat([model.encode(batch.images[i:i + 500]).latents for i in range(0, count, 500)])
        return z.float().numpy(), batch.labels.numpy()

    z_train, y_train = codes("train", args.train)
    z_test, y_test = codes("test", args.test)
    scaler = StandardScaler().fit(z_train)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(z_train), y_train)
    accuracy = float(probe.score(scaler.transform(z_test), y_test))
    table = (f"{args.checkpoint}: a linear probe reads the class from the codes of {accuracy:.1%} of "
             f"{args.test} test images ({len(set(y_train))} classes, code size {z_train.shape[1]})")
    emit(table, {"benchmark": "code_class_probe", "checkpoint": args.checkpoint, "dataset": dataset,
          "probe_test_accuracy": round(accuracy, 4), "train_images": args.train, "test_images": args.test,
          "code_dim": int(z_train.shape[1])}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
