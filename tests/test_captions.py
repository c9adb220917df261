"""Captioned data sets (jsonl, text_c10), the built-in caption phrasings, attribute extraction, and the
text-alignment summary."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from training import attributes as A
from training import captions as C
from training.data import DatasetError, ImageData
from training.text_eval import _summarise, alignment_prompts, text_alignment_metrics
from tests.conftest import build_tiny


# -- attributes on synthetic images -------------------------------------------------------------------
def square(rgb: tuple[int, int, int], background=(255, 255, 255), size: int = 32) -> torch.Tensor:
    """A centred square of colour ``rgb`` covering the middle half of a ``background`` image."""
    img = torch.tensor(background, dtype=torch.uint8)[:, None, None].repeat(1, size, size)
    q = size // 4
    img[:, q:size - q, q:size - q] = torch.tensor(rgb, dtype=torch.uint8)[:, None, None]
    return img


@pytest.mark.parametrize("rgb, name", [
    ((255, 0, 0), "red"), ((255, 140, 0), "orange"), ((250, 230, 30), "yellow"), ((30, 180, 40), "green"),
    ((20, 60, 220), "blue"), ((120, 30, 200), "purple"), ((255, 170, 190), "pink"), ((120, 65, 20), "brown"),
    ((245, 245, 245), "white"), ((128, 128, 128), "grey"), ((10, 10, 10), "black"),
])
def test_a_pure_square_reads_as_its_colour(rgb, name):
    images = torch.stack([square(rgb), square(rgb, background=(30, 120, 30))])  # white and green backgrounds
    assert [A.COLOR_NAMES[i] for i in A.dominant_colors(images)] == [name, name]


def test_colour_is_centre_weighted():
    img = square((0, 0, 255), background=(255, 0, 0), size=32)  # blue centre, red border (more red pixels)
    img[:, 10:22, 10:22] = torch.tensor([0, 0, 255], dtype=torch.uint8)[:, None, None]
    assert int((img[2] == 255).sum()) < int((img[0] == 255).sum())
    assert A.COLOR_NAMES[int(A.dominant_colors(img[None])[0])] == "blue"


def blob(rows: slice, cols: slice, value: int) -> torch.Tensor:
    img = torch.zeros(1, 28, 28, dtype=torch.uint8)
    img[0, rows, cols] = value
    return img


def test_a_dark_wide_blob_reads_as_dark_and_wide():
    dark_wide = blob(slice(10, 18), slice(2, 26), 100)  # 24 wide, 8 high
    light_narrow = blob(slice(2, 26), slice(11, 17), 230)
    images = torch.stack([dark_wide, light_narrow])
    assert [A.TONE_NAMES[i] for i in A.garment_tone(images)] == ["dark", "light"]
    assert [A.SHAPE_NAMES[i] for i in A.garment_shape(images)] == ["wide", "narrow"]
    assert torch.allclose(A.garment_aspect(images), torch.tensor([3.0, 0.25]))


def test_shape_threshold_depends_on_the_class():
    square_blob = blob(slice(4, 24), slice(4, 24), 200)[None]  # aspect 1.0
    assert A.garment_shape(square_blob, ["Trouser"]).item() == 1  # wide for trousers
    assert A.garment_shape(square_blob, ["Sneaker"]).item() == 0  # narrow for sneakers
    with pytest.raises(ValueError, match="class names"):
        A.garment_shape(square_blob, ["Trouser", "Bag"])


def test_stray_pixels_do_not_stretch_the_box():
    img = blob(slice(4, 24), slice(10, 18), 200)
    img[0, 0, 0] = 255  # one noisy pixel in a corner
    assert A.garment_aspect(img[None]).item() == pytest.approx(8 / 20)


# -- phrasings -----------------------------------------------------------------------------------------
def training_caption_sample(name: str) -> set[str]:
    """The caption pools that training draws from, for every class and attribute combination (pool seeds 0-2
    of each: build_captions numbers its pools in the order the images bring them)."""
    ph = C.PHRASINGS[name]
    values = {v for a in ph.attributes for v in ph.values[a]}
    classes = [k for k in ph.train_synonyms if k not in values]
    out = set()
    for cls in classes:
        for combo in itertools.product(*(ph.values[a] for a in ph.attributes)):
            for pool_seed in range(3):
                out.update(C.caption_pool(ph, cls, dict(zip(ph.attributes, combo)), C.CAPTIONS_PER_COMBINATION,
                                          np.random.default_rng([0, pool_seed])))
    return out


def contains_word(text: str, word: str) -> bool:
    """``word`` as a whole word or phrase of ``text`` ("jet" is not in "jet-black"'s neighbour "jetty", and a
    hyphenated word counts as one)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("name", sorted(C.PHRASINGS))
def test_heldout_prompts_never_occur_in_training_captions(name):
    ph = C.PHRASINGS[name]
    assert not set(ph.heldout_templates) & set(ph.train_templates)
    train_words = {w for ws in ph.train_synonyms.values() for w in ws}
    literals = [re.sub(r"\{\w+\}", "§", t) for t in ph.train_templates]
    heldout_words = [w for ws in ph.heldout_synonyms.values() for w in ws]
    assert all(ph.heldout_synonyms.values()), "every class and value has a held-out word"
    for word in heldout_words:
        # a caption is a template with words in its slots: a held-out word is in neither
        assert word not in train_words, word
        assert not any(contains_word(t, word) for t in [*train_words, *literals]), word
    sample = training_caption_sample(name)
    for kind in ("heldout", "heldout-synonyms"):
        prompts = [p for p, _, _ in alignment_prompts(name, kind)]
        assert prompts and not set(prompts) & sample
    corpus = "\n".join(sorted(sample))
    for word in heldout_words:  # nor across a slot's edge in the captions training really draws
        assert not contains_word(corpus, word), word


def test_words_people_type_reach_training():
    """Everyday words that users were seen typing are training words of the right class."""
    expect = {"fashion-mnist-captions": {"Dress": "frock", "Pullover": "jumper", "Sneaker": "trainers",
                                         "Bag": "purse"},
              "cifar10-captions": {"truck": "lorry", "dog": "puppy", "airplane": "jet", "cat": "kitten"}}
    for name, words in expect.items():
        for cls, word in words.items():
            assert word in C.PHRASINGS[name].train_synonyms[cls], (name, word)


def test_vocabulary_rule_keeps_canonical_and_contained_words_in_training():
    from training.vocabulary import keep_heldout_unseen, split_words

    split = split_words("frog", "frog", ["frog", "toad", "bullfrog", "tree frog", "froggy", "tadpole"], [])
    assert split["train"][0] == "frog" and "frog" not in split["heldout"]
    assert set(split["train"]) | set(split["heldout"]) == {"frog", "toad", "bullfrog", "tree frog", "froggy",
                                                           "tadpole"}
    moved = keep_heldout_unseen({"frog": {"train": ["frog", "tree toad"], "heldout": ["toad", "tadpole"]}})
    assert moved["frog"] == {"train": ["frog", "toad", "tree toad"], "heldout": ["tadpole"]}


@pytest.mark.parametrize("name", sorted(C.PHRASINGS))
def test_training_wording_is_wide(name):
    """Many templates (some naming only part of the attributes) and several words per class and value, so a
    model learns the meaning rather than a handful of sentences."""
    ph = C.PHRASINGS[name]
    assert len(ph.train_templates) >= 30
    assert all(len(words) >= 3 for words in ph.train_synonyms.values())
    partial = [t for t in ph.train_templates if not all("{" + a + "}" in t for a in ph.attributes)]
    assert 3 <= len(partial) <= len(ph.train_templates) // 3


def test_built_captions_name_the_class_and_attributes_and_are_deterministic():
    labels = torch.tensor([1, 7])  # Trouser, Sneaker
    values = {"tone": torch.tensor([0, 1]), "shape": torch.tensor([1, 0])}  # (dark, wide), (light, narrow)
    caps = C.build_captions(C.FASHION_PHRASING, C.FASHION_CLASSES, labels, values, per_image=10, seed=0)
    assert caps == C.build_captions(C.FASHION_PHRASING, C.FASHION_CLASSES, labels, values, per_image=10, seed=0)
    assert len(caps[0]) == 10 and len(set(caps[0])) == 10
    words = C.FASHION_PHRASING.train_synonyms

    def names(caption: str, key: str) -> bool:
        return any(re.search(rf"\b{re.escape(w)}\b", caption) for w in words[key])

    for image_caps, cls, tone, shape, wrong_tone, wrong_shape in (
            (caps[0], "Trouser", "dark", "wide", "light", "narrow"),
            (caps[1], "Sneaker", "light", "narrow", "dark", "wide")):
        assert all(names(c, cls) for c in image_caps)
        assert not any(names(c, wrong_tone) or names(c, wrong_shape) for c in image_caps)
        assert sum(names(c, tone) for c in image_caps) >= 5 and sum(names(c, shape) for c in image_caps) >= 5
    assert C.fix_articles("a orange car and a blue one") == "an orange car and a blue one"


# -- the generic jsonl format --------------------------------------------------------------------------
def write_image(path, rgb=(200, 30, 30), size=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), rgb, dtype=np.uint8)).save(path)


def test_jsonl_problems_are_all_reported_with_line_numbers(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    lines = [
        json.dumps({"file": "a.png", "captions": ["a red square"]}),  # 1: fine
        "{not json",  # 2
        json.dumps({"file": "missing.png", "caption": "a thing"}),  # 3
        json.dumps({"file": "b.png", "captions": []}),  # 4
        json.dumps({"file": "b.png", "caption": "x", "colour": "red"}),  # 5
        "",  # blank lines are skipped
        json.dumps({"file": "a.png", "caption": "again"}),  # 7: duplicate
        json.dumps({"file": "b.png", "caption": "x", "captions": ["y"]}),  # 8
        json.dumps(["a list"]),  # 9
        json.dumps({"file": "b.png", "caption": "  ", "split": "val"}),  # 10
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        C.parse_captions_jsonl(tmp_path)
    message = str(err.value)
    for number, words in [(2, "not valid JSON"), (3, "file 'missing.png' does not exist"), (4, "empty caption"),
                          (5, "unknown key"), (7, "file 'a.png' is already listed on line 1"), (8, "exactly one"),
                          (9, "JSON object"), (10, "split must be")]:
        lines_of = [line.strip() for line in message.splitlines() if line.strip().startswith(f"line {number}:")]
        assert any(words in line for line in lines_of), (number, message)
    assert "line 1:" not in message and "line 6:" not in message


def test_missing_captions_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="captions.jsonl"):
        C.load_captioned_dataset(f"captions:{tmp_path}", None)
    with pytest.raises(DatasetError, match="cifar10-captions.*captions:<folder"):
        C.load_captioned_dataset("flickr8k", None)


def test_jsonl_folder_loads_with_raw_caption_embeddings(tmp_path):
    rows = []
    for i in range(12):
        write_image(tmp_path / "img" / f"{i}.png", rgb=(20 * i, 10, 200))
        caps = [f"picture number {i}"] + [f"variant {j} of picture {i}" for j in range(i % 3)]
        rows.append({"file": f"img/{i}.png", "captions": caps, "label": "even" if i % 2 == 0 else "odd"})
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    train = C.load_captioned_dataset(f"captions:{tmp_path}", None, "train", image_size=16)
    test = C.load_captioned_dataset(f"captions:{tmp_path}", None, "test", image_size=16)
    assert len(train) + len(test) == 12 and len(test) == 1
    assert train.images.shape == (11, 3, 16, 16) and train.class_names == ["even", "odd"]
    assert train.text_embeddings.shape == (11, 3, 384)
    assert train.caption_counts.tolist() == [1 + i % 3 for i in range(12) if i != 9]
    assert bool((train.text_embeddings[0, 1:] == 0).all())  # image 0 has one caption: the rest is padding
    assert torch.allclose(train.text_embeddings[1, :2].norm(dim=1), torch.ones(2), atol=1e-5)


# -- Reed et al.'s text_c10 layout ---------------------------------------------------------------------
def make_text_c10(root, with_split_files: bool):
    image_id = 0
    for cls, n_images in (("class_00001", 3), ("class_00002", 2)):
        for _ in range(n_images):
            image_id += 1
            stem = f"image_{image_id:05d}"
            write_image(root / "jpg" / f"{stem}.jpg", rgb=(image_id * 40, 100, 50), size=24)
            lines = [f"this flower number {image_id} has petals, caption {k}" for k in range(2 + image_id)]
            (root / "text_c10" / cls).mkdir(parents=True, exist_ok=True)
            (root / "text_c10" / cls / f"{stem}.txt").write_text("\n".join(lines) + "\n\n")
    if with_split_files:
        (root / "trainvalclasses.txt").write_text("class_00001\n")
        (root / "testclasses.txt").write_text("class_00002\n")


def test_text_c10_loader_reads_images_and_caption_files(tmp_path):
    make_text_c10(tmp_path / "flowers", with_split_files=True)
    train = C.load_captioned_dataset("oxford102-flowers", tmp_path, "train", image_size=16)  # finds flowers/
    test = C.load_captioned_dataset("oxford102-flowers", tmp_path / "flowers", "test", image_size=16)
    assert train.class_names == ["class_00001", "class_00002"]
    assert train.labels.tolist() == [0, 0, 0] and test.labels.tolist() == [1, 1]
    assert train.caption_counts.tolist() == [3, 4, 5] and test.caption_counts.tolist() == [6, 7]
    assert train.text_embeddings.shape == (3, 5, 384) and train.images.shape == (3, 3, 16, 16)


def test_text_c10_errors_name_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="text_c10"):
        C.load_captioned_dataset("oxford102-flowers", tmp_path, "train")
    make_text_c10(tmp_path, with_split_files=False)
    (tmp_path / "jpg" / "image_00002.jpg").unlink()
    with pytest.raises(DatasetError, match="image_00002.jpg is missing"):
        C.load_captioned_dataset("oxford102-flowers", tmp_path, "train")


# -- projection for training ---------------------------------------------------------------------------
def test_prepare_text_conditioning_fits_the_buffers_and_projects_the_captions():
    gen = torch.Generator().manual_seed(0)
    raw = torch.nn.functional.normalize(torch.randn(40, 3, 384, generator=gen), dim=-1)
    counts = torch.randint(1, 4, (40,), generator=gen)
    raw[torch.arange(3)[None, :] >= counts[:, None]] = 0
    data = ImageData("t", torch.zeros(40, 1, 16, 16, dtype=torch.uint8), torch.zeros(40, dtype=torch.long), ["x"],
                     raw.clone(), counts)
    model = build_tiny("aae-cg", condition="text", image_shape=(1, 16, 16), text_dim=8, noise_dim=4)
    extra = C.prepare_text_conditioning(model, data)
    assert extra["text_encoder"] == "all-MiniLM-L6-v2" and extra["text_projection"]["rank"] == 8
    assert data.text_embeddings.shape == (40, 3, 8)
    assert torch.allclose(data.text_embeddings[0, 0], model.project_text(raw[0, :1])[0], atol=1e-5)
    padding = torch.arange(3)[None, :] >= counts[:, None]
    assert bool((data.text_embeddings[padding] == 0).all())
    no_captions = ImageData("digits", data.images, data.labels, ["x"])
    with pytest.raises(DatasetError, match="captioned"):
        C.prepare_text_conditioning(model, no_captions)


# -- text-alignment metrics ----------------------------------------------------------------------------
def test_alignment_summary_counts_class_and_attribute_matches():
    prompts = [("p0", "Trouser", {"tone": "dark", "shape": "wide"}), ("p1", "Bag", {"tone": "light", "shape": "wide"})]
    class_ok = torch.tensor([True, True, False, True])  # 2 samples per prompt
    found = {"tone": torch.tensor([0, 1, 1, 1]), "shape": torch.tensor([1, 1, 0, 1])}
    out = _summarise("fashion-mnist-captions", prompts, 2, class_ok, found, "heldout")
    assert out["text_class_accuracy"] == 0.75
    assert out["text_attribute_accuracy_per_attribute"] == {"tone": 0.75, "shape": 0.75}
    assert out["text_attribute_accuracy"] == 0.5  # samples 0 and 3 match both
    assert out["text_alignment"] == 0.5
    assert out["text_attribute_table"]["tone"]["dark"] == {"dark": 0.5, "light": 0.5}
    assert out["text_attribute_table"]["tone"]["all_prompts"] == {"dark": 0.25, "light": 0.75}


class ConstantClassifier(torch.nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((x.shape[0],), self.k), 10).float()


def test_text_alignment_metrics_run_on_a_tiny_model():
    from generation.text_encoder import fit_text_projection, set_text_projection, encode_texts

    model = build_tiny("aae-cg", condition="text", image_shape=(1, 28, 28), text_dim=8, noise_dim=4).eval()
    mean, matrix, _ = fit_text_projection(encode_texts([p for p, _, _ in alignment_prompts(
        "fashion-mnist-captions", "train")]), 8)
    set_text_projection(model, mean, matrix)
    out = text_alignment_metrics(model, dataset="fashion-mnist", data_root=None, device="cpu", n_per_prompt=1,
                                 classifier=ConstantClassifier(1))
    assert out["text_prompts"] == 40 and out["text_phrasing"] == "heldout"
    assert out["text_class_accuracy"] == pytest.approx(0.1)  # always "Trouser": right for 4 of 40 prompts
    assert set(out["text_attribute_table"]) == {"tone", "shape"}
    assert 0 <= out["text_alignment"] <= out["text_class_accuracy"]
    note = text_alignment_metrics(model, dataset="oxford102-flowers", data_root=None, device="cpu")
    assert "no attribute extractor" in note["text_alignment_note"]


class FeatureClassifier:
    """features = the images' mean brightness repeated: enough to tell varied from identical samples."""
    class_names = list(C.FASHION_CLASSES)

    def features_and_logits(self, images):
        f = images.flatten(1).mean(1, keepdim=True).double().repeat(1, 4)
        return f, torch.zeros(len(images), 10, dtype=torch.float64)


def test_sample_diversity_is_one_for_real_like_spread_and_zero_for_copies(monkeypatch):
    from training import data as D
    from training.text_eval import mean_pairwise_distance, sample_diversity

    assert mean_pairwise_distance(torch.tensor([[0.0], [3.0], [6.0]])) == pytest.approx(4.0)
    levels = torch.tensor([0, 60, 120, 180], dtype=torch.uint8)
    real = ImageData("fashion-mnist", levels.repeat(10)[:, None, None, None].expand(-1, 1, 28, 28).clone(),
                     torch.arange(10).repeat_interleave(4), list(C.FASHION_CLASSES))
    monkeypatch.setattr(D, "load_dataset", lambda *a, **k: real)
    features, _ = FeatureClassifier().features_and_logits(
        (levels.float() / 127.5 - 1)[:, None, None, None].expand(-1, 1, 28, 28))
    varied = sample_diversity(torch.cat([features, features[:1].repeat(4, 1)]), ["Bag"] * 4 + ["Coat"] * 4, 4,
                              FeatureClassifier(), "fashion-mnist-captions", "unused", prompts=["a bag", "a coat"])
    assert varied["text_diversity_per_class"] == {"Bag": pytest.approx(1.0), "Coat": 0.0}
    assert varied["text_diversity_lowest"] == [["a coat", 0.0], ["a bag", pytest.approx(1.0)]]  # least varied first
    assert varied["text_diversity"] == pytest.approx(0.5)
