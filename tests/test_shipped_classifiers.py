"""The evaluation classifiers shipped in models/classifiers/: an evaluation on a fresh install loads one instead
of training it first (600 steps on digits took 7.5 of a 27-minute admin run's minutes on a CPU)."""

from __future__ import annotations

import json

from training.classifier import SHIPPED_DIR, get_classifier, shipped_classifier_path


def test_a_fresh_cache_loads_the_shipped_digits_classifier_and_other_settings_still_train():
    shipped = get_classifier("digits", None, "cpu", image_shape=(1, 28, 28))  # the test's own, empty cache
    assert not shipped.trained_now and shipped.path == SHIPPED_DIR / "digits-1x28x28.safetensors"
    info = json.loads(shipped.path.with_suffix(".json").read_text())
    assert shipped.test_accuracy == info["test_accuracy"] > 0.99 and info["built_by"]["weights"] == "float16"
    assert shipped_classifier_path("digits", (1, 32, 32)) is None  # another size: trained into the cache
    assert get_classifier("digits", None, "cpu", max_steps=2, quiet=True).trained_now  # other settings too


def test_every_shipped_classifier_is_listed_with_its_accuracy():
    readme = (SHIPPED_DIR / "README.md").read_text()
    for info_file in SHIPPED_DIR.glob("*.json"):
        info = json.loads(info_file.read_text())
        assert f"`{info_file.with_suffix('.safetensors').name}`" in readme
        assert f"{100 * info['test_accuracy']:.2f}%" in readme
