"""A model's card written by an admin: through the admin API (PATCH .../card, or with the promotion) and the
version page's form (saved alone or with the promotion), validated (lengths, the number of examples, prompts by
the rule of job prompts, labels among the model's labels, clusters among its clusters, none for an
unconditional model; a refused card changes nothing and promotes nothing), and shown by the public form (the
examples as links, the description) and the Models page."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from tests.admin.conftest import ADMIN, csrf_token, sign_in, token_for

DIGITS = Path(__file__).resolve().parents[1] / "fixtures" / "digits-aae-cg"


def _row(app, name: str, condition: str, *, serving: bool, version: int = 1, num_classes: int = 0,
         class_names=()) -> int:
    """A version row for validation and pages only (no worker loads it here)."""
    from app.core.extensions import db
    from app.core.tables import ModelVersion

    with app.app_context():
        row = ModelVersion(name=name, version=version, backend="aae-cg", checkpoint_path=f"/nonexistent/{name}",
                           condition=condition, num_classes=num_classes, class_names=list(class_names),
                           image_shape=[1, 16, 16], dataset="squares", metrics={}, serving=serving)
        db.session.add(row)
        db.session.commit()
        return row.id


@pytest.fixture
def versions(admin_app):
    """digits v1 (serving, from the fixture checkpoint) and v2 (not serving), a text model v1 (serving, no
    card) and v2 (not serving), a cluster model and an unconditional one."""
    from app.services.model_versions import register_model

    with admin_app.app_context():
        first, _ = register_model("digits", DIGITS)
        second, _ = register_model("digits", DIGITS)
        ids = {"digits1": first.id, "digits2": second.id}
    ids["text1"] = _row(admin_app, "squares-text", "text", serving=True)
    ids["text2"] = _row(admin_app, "squares-text", "text", serving=False, version=2)
    ids["clusters"] = _row(admin_app, "blobs", "cluster", serving=True, num_classes=3)
    ids["plain"] = _row(admin_app, "noise", "none", serving=True)
    return ids


@pytest.fixture
def api(admin_app, client):
    headers = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}

    def call(method: str, url: str, body=None):
        return client.open(url, method=method, headers=headers, **({"json": body} if body is not None else {}))

    return call


def _card(admin_app, version_id: int):
    from app.core.extensions import db
    from app.core.tables import ModelVersion

    with admin_app.app_context():
        version = db.session.get(ModelVersion, version_id)
        return version.card, version.serving


@pytest.mark.parametrize("key, body, message", [
    ("text1", {"colour": "red"}, "unknown card field(s): colour"),
    ("text1", {"title": "x" * 121}, "title is 121 characters long; the limit is 120"),
    ("text1", {"title": "two\nlines"}, "title must not hold control characters or line breaks"),
    ("text1", {"description": "d" * 1001}, "description is 1001 characters long; the limit is 1000"),
    ("text1", {"description": "a\x00b"}, "description must not hold control characters"),
    ("text1", {"description": 7}, "description must be a string"),
    ("text1", {"examples": "a red square"}, "examples must be a list of strings"),
    ("text1", {"examples": [f"prompt {i}" for i in range(13)]}, "13 examples; a card holds at most 12"),
    ("text1", {"examples": ["ok", "   "]}, "examples[1] (an example prompt) must be a non-empty string"),
    ("text1", {"examples": ["p" * 501]}, "examples[0] (an example prompt) is 501 characters long; the limit is 500"),
    ("text1", {"examples": ["a\x00b"]}, "must not hold control characters (such as NUL)"),
    ("text1", {"examples": [3]}, "examples[0] (an example prompt) must be a non-empty string"),
    ("digits1", {"examples": ["7", "seven"]}, "examples[1]: 'seven' is not a label of digits v1; its labels are 0, 1,"),
    ("digits1", {"examples": [7]}, "examples[0]: 7 is not a label of digits v1"),
    ("clusters", {"examples": ["3"]}, "examples[0] must be a cluster number from 0 to 2, got '3'"),
    ("plain", {"examples": ["anything"]}, "noise v1 is unconditional: it takes no prompt or label"),
    ("text1", [], "a card must be a JSON object"),
])
def test_a_card_that_does_not_validate_is_a_422_and_changes_nothing(admin_app, versions, api, key, body, message):
    before = _card(admin_app, versions[key])
    response = api("PATCH", f"/api/v1/admin/models/{versions[key]}/card", body)
    assert response.status_code == 422, response.get_json()
    assert message in response.get_json()["error"]
    assert _card(admin_app, versions[key]) == before


def test_the_api_writes_a_card_and_the_public_form_and_models_page_show_it(admin_app, versions, api, client):
    text = versions["text1"]
    assert client.get("/api/v1/models").get_json()  # the text model has no card yet
    response = api("PATCH", f"/api/v1/admin/models/{text}/card", {
        "title": "Grey squares from a sentence", "description": "  Ask for a dark or a light square.  ",
        "examples": ["a dark square ", "a light square", "A DARK SQUARE"]})
    assert response.status_code == 200, response.get_json()
    card = response.get_json()["card"]
    # trimmed, and a repeated example (in any case) kept once
    assert (card["title"], card["description"], card["examples"]) == (
        "Grey squares from a sentence", "Ask for a dark or a light square.", ["a dark square", "a light square"])

    # fields left out stay; null removes one
    response = api("PATCH", f"/api/v1/admin/models/{text}/card", {"title": None})
    assert response.get_json()["card"]["title"] is None
    assert response.get_json()["card"]["examples"] == ["a dark square", "a light square"]

    public = {m["name"]: m for m in client.get("/api/v1/models").get_json()["models"]}
    assert public["squares-text"]["card"]["description"] == "Ask for a dark or a light square."

    form = client.get("/?model=squares-text").get_data(as_text=True)
    assert "Ask for a dark or a light square." in form
    assert re.findall(r'class="example-prompt"\s+data-prompt="([^"]+)"', form) == ["a dark square", "a light square"]
    # every example the form offers is accepted as a job
    for prompt in ("a dark square", "a light square"):
        assert client.post("/api/v1/jobs", json={"model": "squares-text", "prompt": prompt}).status_code == 202

    page = client.get("/models").get_data(as_text=True)
    section = page[page.index('id="model-squares-text"'):]
    assert "Ask for a dark or a light square." in section and ">a dark square</a>" in section

    # example labels are stored as the model's own names and offered as links that choose the label
    response = api("PATCH", f"/api/v1/admin/models/{versions['digits1']}/card", {"examples": [" 7", "3"]})
    assert response.get_json()["card"]["examples"] == ["7", "3"]
    form = client.get("/?model=digits").get_data(as_text=True)
    assert re.findall(r'class="example-choice"\s+data-value="([^"]+)"', form) == ["7", "3"]
    assert html.escape("/?model=digits&label=7") in form
    clusters = api("PATCH", f"/api/v1/admin/models/{versions['clusters']}/card", {"examples": ["2", 0]})
    assert clusters.get_json()["card"]["examples"] == ["2", "0"]
    # a shipped card's other fields survive an edit
    card, _ = _card(admin_app, versions["digits1"])
    assert card is None or card["examples"] == ["7", "3"]


def test_the_api_promotes_with_a_card_or_refuses_both(admin_app, versions, api):
    text2 = versions["text2"]
    bad = api("POST", f"/api/v1/admin/models/{text2}/promote", {"card": {"examples": ["x" * 501]}})
    assert bad.status_code == 422
    assert _card(admin_app, text2) == (None, False)  # nothing promoted, no card
    assert api("POST", f"/api/v1/admin/models/{text2}/promote", {"other": 1}).status_code == 422
    good = api("POST", f"/api/v1/admin/models/{text2}/promote",
               {"card": {"description": "v2 of the squares", "examples": ["a light square"]}})
    assert good.status_code == 200, good.get_json()
    assert _card(admin_app, text2) == ({"description": "v2 of the squares", "examples": ["a light square"]}, True)
    # a promotion without a body keeps working (a rollback), and leaves the cards alone
    assert api("POST", f"/api/v1/admin/models/{versions['text1']}/promote").status_code == 200
    assert _card(admin_app, text2)[0]["description"] == "v2 of the squares"


def test_the_version_page_writes_the_card_alone_or_with_the_promotion(admin_app, versions, api, client):
    api("PATCH", f"/api/v1/admin/models/{versions['text1']}/card",
        {"title": "Squares", "description": "Dark or light squares.", "examples": ["a dark square"]})
    sign_in(client, *ADMIN)
    text2 = versions["text2"]
    url = f"/admin/models/{text2}"
    page = client.get(url).get_data(as_text=True)
    # a version without a card is offered the serving version's card to keep or change
    assert 'value="Squares"' in page and ">Dark or light squares.</textarea>" in page
    assert 'id="promote-button"' in page and "Promote v2" in page
    token = csrf_token(client, url)

    refused = client.post(f"{url}/card", data={"csrf_token": token, "title": "New", "description": "",
                                               "examples": "a dark square\n" + "z" * 501})
    assert refused.status_code == 422
    body = refused.get_data(as_text=True)
    assert "examples[1] (an example prompt) is 501 characters long" in body and 'value="New"' in body
    assert _card(admin_app, text2) == (None, False)
    assert client.post(f"{url}/card", data={"title": "New"}).status_code == 400  # no CSRF token

    saved = client.post(f"{url}/card", data={"csrf_token": token, "title": "Squares v2", "description": "Better.",
                                             "examples": "a dark square\n\n a light square \n"})
    assert saved.status_code == 303 and saved.headers["Location"].endswith(f"{url}?saved=card#card-heading")
    assert _card(admin_app, text2) == ({"title": "Squares v2", "description": "Better.",
                                        "examples": ["a dark square", "a light square"]}, False)
    assert 'id="card-saved"' in client.get(f"{url}?saved=card").get_data(as_text=True)

    refused = client.post(f"{url}/promote", data={"csrf_token": token, "title": "T", "description": "",
                                                  "examples": "\x00"})
    assert refused.status_code == 422 and _card(admin_app, text2)[1] is False
    promoted = client.post(f"{url}/promote", data={"csrf_token": token, "title": "Squares v2",
                                                   "description": "Promoted with its card.",
                                                   "examples": "a light square"})
    assert promoted.status_code == 303
    assert _card(admin_app, text2) == ({"title": "Squares v2", "description": "Promoted with its card.",
                                        "examples": ["a light square"]}, True)
    page = client.get(url).get_data(as_text=True)
    assert 'id="serving-badge"' in page and 'id="promote-button"' not in page and 'id="save-card"' in page
    assert "Promoted with its card." in client.get("/?model=squares-text").get_data(as_text=True)

    # a class model's page names its labels; an unconditional model's page has no examples field
    assert "each one of this model's labels: 0, 1, 2" in client.get(f"/admin/models/{versions['digits2']}").get_data(
        as_text=True)
    assert 'id="card-examples"' not in client.get(f"/admin/models/{versions['plain']}").get_data(as_text=True)
