"""Hypothesis tests of the parsers every request goes through: labels, integers typed as text,
prompts, ids and JSON bodies. Whatever the input (Unicode digits, NUL, numbers of thousands of digits, deep
nesting), the answer is a value or a clean refusal, never another exception."""

from __future__ import annotations

import io
import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from priorforge_spec.conditions import ConditionError, resolve_label
from tests.fuzz.conftest import examples

CLASSES = [str(i) for i in range(10)]
FAST = settings(max_examples=max(50, 10 * examples()), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
UNICODE_DIGITS = st.characters(categories=["Nd", "No"]).filter(lambda c: not "0" <= c <= "9")
NASTY = st.one_of(st.text(), st.text(alphabet=UNICODE_DIGITS, min_size=1),
                  st.integers(min_value=1, max_value=6000).map(lambda k: "7" * k),
                  st.text().map(lambda t: t + "\x00"), st.from_regex(r"-?[0-9]{1,30}", fullmatch=True))


@FAST
@given(NASTY)
def test_a_label_is_a_class_or_a_clean_refusal(label):
    try:
        index = resolve_label(label, CLASSES)
    except ConditionError:
        return
    assert 0 <= index < len(CLASSES)
    text = label.strip()
    assert text.isascii() and (text.lstrip("-").isdigit() or text.lower() in CLASSES)


@FAST
@given(st.text(alphabet=UNICODE_DIGITS, min_size=1, max_size=3))
def test_unicode_digits_are_never_an_index(label):
    with pytest.raises(ConditionError):
        resolve_label(label, CLASSES)


@FAST
@given(st.integers())
def test_integer_labels_of_any_size(label):
    try:
        assert resolve_label(label, CLASSES) == label
    except ConditionError:
        assert not 0 <= label < 10


@FAST
@given(NASTY)
def test_integers_typed_as_text(text):
    from app.services.jobs import parse_int_text

    value = parse_int_text(text)  # never raises, whatever the text
    if value is not None:  # only short ASCII decimals get through ("٣" and "1_000" are not numbers here)
        assert text.isascii() and "_" not in text and len(text.lstrip("+-")) <= 20 and value == int(text)


@pytest.fixture(scope="module")
def client(tmp_path_factory, checkpoints):
    from tests.fuzz.conftest import FUZZ_CONFIG, _service, base_config

    app, _ = _service(base_config(tmp_path_factory.mktemp("parsing"), **FUZZ_CONFIG), checkpoints)
    return app.test_client()


def _ok(status: int) -> bool:
    return status < 500 and status != 0


@FAST
@given(label=NASTY, n=st.one_of(st.integers(), NASTY), prompt=NASTY)
def test_job_requests_never_fail_the_server(client, label, n, prompt):
    for body in ({"model": "tiny", "label": label, "n": n}, {"model": "captions", "prompt": prompt}):
        assert _ok(client.post("/api/v1/jobs", json=body).status_code)
    form = {"model": "tiny", "label": label, "n": n if isinstance(n, str) else str(n)}
    assert _ok(client.post("/", data=form).status_code)
    csv = "model,label,n\n" + ",".join(json.dumps(v) for v in ("tiny", label, str(n))) + "\n"
    resp = client.post("/api/v1/batches", data={"file": (io.BytesIO(csv.encode("utf-8", "surrogatepass")),
                                                         "b.csv")}, content_type="multipart/form-data")
    assert _ok(resp.status_code)


@FAST
@given(st.text(min_size=1).filter(lambda t: "/" not in t and "?" not in t and "#" not in t))
def test_ids_never_fail_the_server(client, job_id):
    from urllib.parse import quote

    quoted = quote(job_id, safe="")
    for url in (f"/api/v1/jobs/{quoted}", f"/api/v1/batches/{quoted}", f"/api/v1/images/{quoted}",
                f"/jobs/{quoted}", f"/images/{quoted}", f"/models/{quoted}/samples.png"):
        assert client.get(url).status_code in (400, 404), url
    assert client.post(f"/api/v1/jobs/{quoted}/cancel").status_code in (400, 404)


@FAST
@given(depth=st.integers(min_value=1, max_value=20_000), opener=st.sampled_from(["[", '{"a":']))
def test_nesting_of_any_depth(client, depth, opener):
    closer = "]" if opener == "[" else "}"
    body = opener * depth + "1" + closer * depth
    for url in ("/api/v1/jobs", "/api/v1/batches"):
        assert client.post(url, data=body, content_type="application/json").status_code in (400, 413, 422)


def test_the_categories_tested_hold_the_issue_s_examples():
    assert unicodedata.category("³") == "No" and unicodedata.category("٣") == "Nd"
