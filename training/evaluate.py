"""Evaluation of a trained generator against a data set's test split.

Metrics (all JSON-able; ``evaluate_model`` returns them in one dict):

- ``reconstruction_mse``: mean squared error per pixel (images in [-1, 1]) of ``decode(encode(x))`` on
  test images, for models with an encoder.
- ``feature_fid``: Fréchet distance between generated and test images in the project's own classifier's
  feature space (:mod:`training.classifier`, 128-D penultimate layer). NOT Inception FID: its values are
  not comparable with the papers' FIDs, only between models evaluated here on the same data set.
- ``precision`` / ``recall``: k-NN manifold estimate (Kynkäänniemi et al. 2019, "Improved precision and
  recall metric for assessing generative models"; k = 3) in the same feature space.
- ``class`` models: ``label_accuracy`` (and ``label_accuracy_per_class``), the fraction of samples asked
  for class c that the classifier assigns to class c.
- ``cluster`` models: per cluster, the classifier's class histogram of its samples, majority class and
  purity (``cluster_alignment``); with a Q head (``predict_condition``), the clustering of real test images
  against their labels: ``cluster_nmi`` and ``cluster_accuracy`` (best one-to-one matching, Hungarian).
- ``text`` models: one sample per held-out image, drawn for its first caption: ``caption_match_rate`` (is the
  sample nearer its own image than another image with a different caption? 0.5 = the prompt is ignored) and,
  for labelled images, ``caption_class_accuracy`` (the classifier puts the sample in its image's class); then
  whatever ``training.text_eval.text_alignment_metrics`` returns, when that module exists.
- held-out images without labels (an uploaded captioned set without ``label``s): no classifier can be trained,
  so :func:`evaluate_without_classifier` gives the reconstruction error and ``caption_match_rate`` in pixel
  space, with a note saying what is missing.

Sampling is seeded (:func:`generation.sampling.generate` with seeds derived from ``seed``), so evaluating
one checkpoint twice gives identical numbers on one device.

Progress: ``evaluate_model(..., progress=fn)`` calls ``fn(stage, done, total, unit)`` when a stage starts and
as it advances (the classifier's training steps, the images sampled...), so a training run's page can show
which stage runs and how far it is; :data:`STAGES` lists the stages' names and units.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor

from generation.base import Condition, GenerativeModel
from generation.sampling import generate, to_uint8
from training.classifier import TrainedClassifier, get_classifier, match_shape
from priorforge_spec.datasets import image_dataset_name
from training.data import ImageData, load_dataset, to_float
from training.fid import as_float64, frechet_distance

FEATURE_FID_NOTE = ("Fréchet distance in the project's own classifier's feature space, NOT Inception FID, "
                    "not comparable with papers")
BATCH_SIZE = 256
PR_NEIGHBOURS = 3
# the stages an evaluation reports, in order (a model runs those that apply to it), and what each counts
STAGES = {
    "test": ("loading the test split", "splits"),
    "classifier": ("evaluation classifier", "classifiers"),
    "classifier_training": ("training the evaluation classifier", "steps"),
    "real_features": ("features of the test images", "images"),
    "reconstruction": ("reconstruction error", "images"),
    "sampling": ("sampling", "images"),
    "scores": ("FID, precision/recall, accuracy", "images"),
    "clusters": ("cluster assignment", "images"),
    "text": ("text alignment", "stages"),
}
Progress = Callable[[str, int, int, str], None]


def report(progress: Progress | None, key: str, done: int, total: int) -> None:
    """``progress(<the stage's name>, done, total, <what it counts>)`` when there is a callback."""
    if progress is not None:
        progress(STAGES[key][0], done, total, STAGES[key][1])


# -- the metrics themselves ----------------------------------------------------------------------------
def knn_radii(features: Tensor, k: int = PR_NEIGHBOURS) -> Tensor:
    """Distance of each row to its k-th nearest other row ``(N,)`` (the radius of its k-NN ball)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} feature vectors, got {len(features)}")
    radii = []
    for start in range(0, len(features), 1024):
        d = torch.cdist(features[start:start + 1024], features)  # (b, N), the row itself at distance 0
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def manifold_coverage(queries: Tensor, support: Tensor, radii: Tensor) -> float:
    """Fraction of ``queries`` inside at least one k-NN ball of ``support``."""
    inside = []
    for start in range(0, len(queries), 1024):
        d = torch.cdist(queries[start:start + 1024], support)  # (b, M)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, k: int = PR_NEIGHBOURS) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = share of generated samples on
    the real manifold (union of real k-NN balls), recall = share of real samples on the generated one."""
    real_t, fake_t = torch.as_tensor(as_float64(real)), torch.as_tensor(as_float64(fake))
    return {"precision": manifold_coverage(fake_t, real_t, knn_radii(real_t, k)),
            "recall": manifold_coverage(real_t, fake_t, knn_radii(fake_t, k))}


def best_match_accuracy(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best one-to-one mapping clusters -> labels (Hungarian algorithm)."""
    k, c = int(clusters.max()) + 1, int(labels.max()) + 1
    counts = np.zeros((k, c), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


# -- sampling --------------------------------------------------------------------------------------
def derived_seed(seed: int, group: int, batch: int) -> int:
    """The seed of batch ``batch`` of group ``group`` (class, cluster or image index)."""
    return int(seed) * 1_000_003 + group * 65_537 + batch


def generate_batched(model: GenerativeModel, n: int, condition: Condition, seed: int, group: int = 0,
                     on_batch: Callable[[int], None] | None = None) -> Tensor:
    """``n`` images, in batches of :data:`BATCH_SIZE`, quantised to 8 bits as a saved PNG would be;
    ``on_batch(images)`` after each batch."""
    chunks = []
    for b, start in enumerate(range(0, n, BATCH_SIZE)):
        images = generate(model, min(BATCH_SIZE, n - start), condition, derived_seed(seed, group, b))
        chunks.append(to_float(to_uint8(images)))
        if on_batch is not None:
            on_batch(len(images))
    return torch.cat(chunks)  # (n, C, H, W)


def split_counts(n: int, groups: int) -> list[int]:
    """``n`` spread over ``groups`` as evenly as possible, at least 1 each."""
    return [max(1, n // groups + (1 if i < n % groups else 0)) for i in range(groups)]


# -- evaluate_model ------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_mse(model: GenerativeModel, data: ImageData, progress: Progress | None = None) -> float:
    """Mean squared pixel error of ``decode(encode(x))``; class models get each image's own label."""
    report(progress, "reconstruction", 0, len(data))
    device = model.device
    class_model = model.config.condition == "class"
    groups = data.labels.unique().tolist() if class_model else [None]
    total, count = 0.0, 0
    for label in groups:
        index = torch.arange(len(data)) if label is None else torch.nonzero(data.labels == label).squeeze(1)
        condition = Condition("class", index=int(label)) if label is not None and label >= 0 else None
        for start in range(0, len(index), BATCH_SIZE):
            x = data.batch(index[start:start + BATCH_SIZE]).images.to(device)
            recon = model.decode(model.encode(x, condition).latents, condition)
            total += float(((recon.float() - x) ** 2).sum())
            count += x.numel()
            report(progress, "reconstruction", count // max(1, x[0].numel()), len(data))
    return total / count


def evaluate_model(model: GenerativeModel, *, dataset: str, class_names: list[str], data_root: str | None,
                   device: Any, n_samples: int = 2000, seed: int = 0,
                   test_data: ImageData | None = None, train_data: ImageData | None = None,
                   progress: Progress | None = None, classifier_steps: int | None = None) -> dict[str, Any]:
    """All metrics of ``model`` on ``dataset``'s test split (see the module docstring).

    Args:
        model: the generator (left in eval mode on its device).
        dataset: data set name, as for :func:`training.data.load_dataset`.
        class_names: the model's class names (for ``class`` models, what each class index means).
        data_root: folder holding the data set.
        device: where the classifier runs.
        n_samples: generated images (and test images: ``min(n_samples, len(test))``).
        seed: seeds the samples and the choice of test images.
        test_data: the test split, when the caller has it.
        train_data: the training split, for training the data-set classifier when it is not cached.
        progress: called as ``progress(stage, done, total, unit)`` as the evaluation goes (module docstring).
        classifier_steps: the steps of a classifier that must be trained (None: its default settings).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    shape = model.config.image_shape
    image_dataset = image_dataset_name(dataset)
    if test_data is None:
        report(progress, "test", 0, 1)
        test_data = load_dataset(image_dataset, data_root, "test", image_size=int(shape[1]), channels=int(shape[0]))
    test_data = match_shape(test_data, shape)
    report(progress, "classifier", 0, 1)
    classifier = get_classifier(image_dataset, data_root, device, train_data=train_data, test_data=test_data,
                                image_shape=shape, max_steps=classifier_steps, quiet=progress is not None,
                                progress=lambda done, total: report(progress, "classifier_training", done, total))
    model.eval()
    n = min(n_samples, len(test_data))
    real = test_data.subset(n, seed=seed)
    real_images = to_float(real.images)
    report(progress, "real_features", 0, n)
    real_features, _ = classifier.features_and_logits(real_images)
    kind = model.config.condition
    metrics: dict[str, Any] = {
        "feature_fid_note": FEATURE_FID_NOTE, "n_real": n, "seed": seed, "condition": kind,
        "classifier": {"test_accuracy": classifier.test_accuracy, "path": str(classifier.path)},
    }
    if model.has_encoder:
        metrics["reconstruction_mse"] = reconstruction_mse(model, real, progress)
    fake = _samples(model, real, n, seed, metrics, progress)
    if fake is not None:
        fake_images, groups = fake
        report(progress, "scores", 0, len(fake_images))
        fake_features, fake_logits = classifier.features_and_logits(fake_images)
        metrics["n_generated"] = int(len(fake_images))
        metrics["feature_fid"] = _fid_or_none(real_features, fake_features, metrics)
        if min(len(real_features), len(fake_features)) > PR_NEIGHBOURS:
            metrics.update(precision_recall(real_features, fake_features))
        predictions = fake_logits.argmax(1)
        if kind == "class":
            metrics.update(label_accuracy(predictions, groups, class_names, classifier))
        elif kind == "cluster":
            metrics.update(cluster_alignment(predictions, groups, model.config.num_classes, classifier))
        elif kind == "text":
            metrics.update(caption_metrics(real, fake_features, real_features, predictions, class_names, classifier))
    if kind == "cluster" and hasattr(model, "predict_condition") and not model.inference_only:
        report(progress, "clusters", 0, len(real))
        metrics.update(cluster_assignment(model, real))
    if kind == "text":
        report(progress, "text", 0, 1)
        metrics.update(_text_metrics(model, dataset, data_root, device, seed))
    return metrics


def _sample_counter(progress: Progress | None, total: int) -> Callable[[int], None]:
    """An ``on_batch`` for :func:`generate_batched` that reports the images sampled so far out of ``total``."""
    done = [0]
    report(progress, "sampling", 0, total)

    def on_batch(count: int) -> None:
        done[0] += count
        report(progress, "sampling", done[0], total)

    return on_batch


def _samples(model: GenerativeModel, real: ImageData, n: int, seed: int, metrics: dict[str, Any],
             progress: Progress | None = None) -> tuple[Tensor, Tensor] | None:
    """Generated images and the class/cluster (or image) index each was asked for."""
    kind = model.config.condition
    if kind in ("class", "cluster"):
        counts = split_counts(n, model.config.num_classes)
        on_batch = _sample_counter(progress, sum(counts))
        images = [generate_batched(model, count, Condition(kind, index=k), seed, group=k, on_batch=on_batch)
                  for k, count in enumerate(counts)]
        groups = torch.cat([torch.full((count,), k) for k, count in enumerate(counts)])
        return torch.cat(images), groups
    if kind == "text":
        if real.text_embeddings is None:
            metrics["notes"] = ["no test captions: feature_fid and precision/recall skipped for this text model"]
            return None
        # one sample per test image, conditioned on its first caption
        on_batch = _sample_counter(progress, len(real))
        images = [generate_batched(model, 1, Condition("text", embedding=real.text_embeddings[i, 0]), seed, i,
                                   on_batch=on_batch) for i in range(len(real))]
        return torch.cat(images), torch.arange(len(real))
    return (generate_batched(model, n, Condition("none"), seed, on_batch=_sample_counter(progress, n)),
            torch.zeros(n, dtype=torch.long))


def _fid_or_none(real: Tensor, fake: Tensor, metrics: dict[str, Any]) -> float | None:
    if min(len(real), len(fake)) < 2:
        metrics.setdefault("notes", []).append("feature_fid needs at least 2 real and 2 generated images")
        return None
    return frechet_distance(real, fake)


def label_accuracy(predictions: Tensor, requested: Tensor, class_names: list[str],
                   classifier: TrainedClassifier) -> dict[str, Any]:
    """Share of samples of each requested class that the classifier puts in that class."""
    lookup = {name.lower(): i for i, name in enumerate(classifier.class_names)}
    missing = [name for name in class_names if name.lower() not in lookup]
    if missing:
        raise ValueError(f"the classifier's classes {classifier.class_names} lack the model's {missing}")
    target = torch.tensor([lookup[class_names[int(k)].lower()] for k in requested])
    correct = predictions == target
    per_class = {name: float(correct[requested == k].double().mean()) for k, name in enumerate(class_names)
                 if bool((requested == k).any())}
    return {"label_accuracy": float(correct.double().mean()), "label_accuracy_per_class": per_class}


def caption_match_rate(fake: Tensor, real: Tensor, captions: Tensor) -> float | None:
    """Does a sample drawn for a held-out image's caption look more like that image than like another one?

    ``fake[i]`` was drawn for ``captions[i]`` (the embedding of image ``i``'s first caption) and ``real[i]`` is
    that image (both as feature rows, or flattened pixels). Image ``i``'s partner is the next image whose
    caption differs; the score is the share of samples nearer their own image than their partner (ties
    count one half): 0.5 is what a model that ignores its prompt gets, 1 is every sample on its side. None
    when every caption is the same (no partner)."""
    n = len(fake)
    fake, real = fake.double().flatten(1), real.double().flatten(1)
    scores = []
    for i in range(n):
        partner = next((j % n for j in range(i + 1, i + n) if not torch.equal(captions[j % n], captions[i])), None)
        if partner is None:
            continue
        own, other = float((fake[i] - real[i]).norm()), float((fake[i] - real[partner]).norm())
        scores.append(1.0 if own < other else 0.5 if own == other else 0.0)
    return sum(scores) / len(scores) if scores else None


def caption_metrics(real: ImageData, fake_features: Tensor, real_features: Tensor, predictions: Tensor,
                    class_names: list[str], classifier: TrainedClassifier) -> dict[str, Any]:
    """Text models, one sample per held-out image drawn for its first caption: ``caption_match_rate`` in the
    classifier's feature space, and where the images have labels ``caption_class_accuracy``, the share of
    samples the classifier puts in their image's class."""
    out: dict[str, Any] = {}
    if real.text_embeddings is not None:
        rate = caption_match_rate(fake_features, real_features, real.text_embeddings[:, 0])
        if rate is not None:
            out["caption_match_rate"] = rate
    labelled = torch.nonzero(real.labels >= 0).squeeze(1)
    lookup = {name.lower(): i for i, name in enumerate(classifier.class_names)}
    if len(labelled) and all(name.lower() in lookup for name in class_names):
        target = torch.tensor([lookup[class_names[int(k)].lower()] for k in real.labels[labelled]])
        out["caption_class_accuracy"] = float((predictions[labelled] == target).double().mean())
        out["caption_class_images"] = int(len(labelled))
    return out


@torch.no_grad()
def evaluate_without_classifier(model: GenerativeModel, test_data: ImageData, *, n_samples: int = 1000,
                                seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """What can be measured on a held-out split without labels (no classifier can be trained): the
    reconstruction error, and for text models ``caption_match_rate`` in pixel space. ``notes`` says what is
    missing and why."""
    shape = model.config.image_shape
    from training.classifier import match_shape

    real = match_shape(test_data, shape).subset(min(n_samples, len(test_data)), seed=seed)
    model.eval()
    kind = model.config.condition
    metrics: dict[str, Any] = {"n_real": len(real), "seed": seed, "condition": kind, "notes": [
        "the held-out images have no labels, so no classifier could be trained: feature_fid, precision/recall "
        "and class accuracy need a 'label' on the lines of captions.jsonl (or class folders)"]}
    if model.has_encoder:
        metrics["reconstruction_mse"] = reconstruction_mse(model, real, progress)
    if kind == "text" and real.text_embeddings is not None:
        on_batch = _sample_counter(progress, len(real))
        fake = torch.cat([generate_batched(model, 1, Condition("text", embedding=real.text_embeddings[i, 0]), seed, i,
                                           on_batch=on_batch) for i in range(len(real))])
        metrics["n_generated"] = int(len(fake))
        rate = caption_match_rate(fake, to_float(real.images), real.text_embeddings[:, 0])
        if rate is not None:
            metrics["caption_match_rate"] = rate
    return metrics


def cluster_alignment(predictions: Tensor, clusters: Tensor, num_clusters: int,
                      classifier: TrainedClassifier) -> dict[str, Any]:
    """Per cluster: the classifier's class histogram of its samples, the majority class and its share."""
    names = classifier.class_names
    per_cluster: dict[str, Any] = {}
    majority_total = 0
    for k in range(num_clusters):
        hist = torch.bincount(predictions[clusters == k], minlength=len(names))
        top = int(hist.argmax())
        majority_total += int(hist[top])
        per_cluster[str(k)] = {"histogram": {name: int(c) for name, c in zip(names, hist.tolist())},
                               "majority_class": names[top], "purity": float(hist[top]) / max(1, int(hist.sum()))}
    majorities = {entry["majority_class"] for entry in per_cluster.values()}
    return {"cluster_alignment": per_cluster, "cluster_sample_purity": majority_total / max(1, len(predictions)),
            "cluster_classes_covered": len(majorities)}


@torch.no_grad()
def cluster_assignment(model: GenerativeModel, real: ImageData) -> dict[str, Any]:
    """Q's cluster of each labelled real image vs its label: NMI and best-matching accuracy."""
    keep = torch.nonzero(real.labels >= 0).squeeze(1)
    if len(keep) == 0:
        return {}
    assigned = []
    for start in range(0, len(keep), BATCH_SIZE):
        x = real.batch(keep[start:start + BATCH_SIZE]).images.to(model.device)
        # nn.Module.__getattr__ is typed Tensor | Module; the caller checked hasattr (the AAE's Q head)
        assigned.append(model.predict_condition(x).argmax(1).cpu())  # type: ignore[operator]
    clusters, labels = torch.cat(assigned).numpy(), real.labels[keep].numpy()
    return {"cluster_nmi": float(normalized_mutual_info_score(labels, clusters)),
            "cluster_accuracy": best_match_accuracy(clusters, labels)}


def _text_metrics(model: GenerativeModel, dataset: str, data_root: str | None, device: Any, seed: int) -> dict:
    try:
        from training.text_eval import text_alignment_metrics
    except ModuleNotFoundError as exc:
        if exc.name != "training.text_eval":
            raise
        return {}
    return dict(text_alignment_metrics(model, dataset=dataset, data_root=data_root, device=device, seed=seed))


__all__ = ["FEATURE_FID_NOTE", "STAGES", "best_match_accuracy", "caption_match_rate", "evaluate_model",
           "evaluate_without_classifier", "frechet_distance", "precision_recall",
           "reconstruction_mse"]
