"""The HTML pages on the Flask test client: rendering, the job form's validation (through the service's
``validate_job``), gallery filters and pagination, the image page and its download, batches."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from tests.web.conftest import add_finished_job, add_model

FIELD_TAGS = {"input", "select", "textarea"}
SKIP_INPUT_TYPES = {"hidden", "submit", "button"}


class PageParser(HTMLParser):
    """Collects form controls, label targets, and every tag's attributes."""

    def __init__(self):
        super().__init__()
        self.controls: list[dict] = []
        self.label_for: set[str] = set()
        self.tags: list[tuple[str, dict]] = []
        self._in_fieldset_disabled = 0

    def handle_starttag(self, tag, attrs):
        attrs = {k: (v if v is not None else "") for k, v in attrs}
        self.tags.append((tag, attrs))
        if tag == "label" and "for" in attrs:
            self.label_for.add(attrs["for"])
        if tag in FIELD_TAGS and attrs.get("type") not in SKIP_INPUT_TYPES:
            self.controls.append({"tag": tag, **attrs})

    def find(self, tag, **want):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in want.items())]


def parse(response) -> PageParser:
    parser = PageParser()
    parser.feed(response.get_data(as_text=True))
    return parser


def assert_every_field_labelled(page: PageParser):
    assert page.controls, "the page has no form fields"
    for control in page.controls:
        assert control.get("id"), f"{control} has no id"
        assert control["id"] in page.label_for, f"field {control['id']!r} has no <label for>"


def job_count(app) -> int:
    from app.core.extensions import db
    from app.core.tables import Job

    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Job))


def text_of(response) -> str:
    return response.get_data(as_text=True)


# -- the job form -----------------------------------------------------------------------------------
def test_form_renders_serving_models_and_labels(client):
    response = client.get("/")
    assert response.status_code == 200
    page = parse(response)
    assert_every_field_labelled(page)
    assert [o["value"] for o in page.find("option") if o.get("value") == "digits"] == ["digits"]
    label_select = page.find("select", name="label")
    assert len(label_select) == 1 and "required" in label_select[0]
    labels = [o["value"] for o in page.find("option") if re.fullmatch(r"\d", o.get("value", ""))]
    assert labels == [str(i) for i in range(10)]
    n_input = page.find("input", name="n")[0]
    assert (n_input["min"], n_input["max"]) == ("1", "64")
    assert page.find("input", name="seed")
    assert page.find("form", method="post")


def test_form_shows_the_fields_of_the_selected_model(web_app, client):
    add_model(web_app, "captions", "text")
    add_model(web_app, "blobs", "cluster", num_classes=5)
    page = parse(client.get("/?model=captions"))
    assert_every_field_labelled(page)
    fieldsets = {f["data-model"]: f for f in page.find("fieldset")}
    assert set(fieldsets) == {"blobs", "captions", "digits"}
    # only the selected model's condition field is enabled (a disabled fieldset is not submitted)
    assert "disabled" not in fieldsets["captions"]
    assert "disabled" in fieldsets["digits"] and "disabled" in fieldsets["blobs"]
    assert page.find("textarea", name="prompt")[0]["maxlength"] == "500"
    body = text_of(client.get("/?model=blobs"))
    assert "Any cluster (random)" in body and "Cluster 4" in body and "Cluster 5" not in body


def test_submit_creates_the_job_and_redirects_to_its_page(web_app, client):
    response = client.post("/", data={"model": "digits", "label": "7", "n": "3", "seed": "1234"})
    assert response.status_code == 303
    job_url = response.headers["Location"]
    assert re.fullmatch(r"/jobs/[0-9a-f-]{36}", job_url)
    from app.core.extensions import db
    from app.core.tables import Job

    with web_app.app_context():
        job = db.session.get(Job, job_url.rsplit("/", 1)[1])
        assert (job.status, job.label, job.label_index, job.n, job.seed) == ("queued", "7", 7, 3, 1234)
    page = client.get(job_url)
    assert page.status_code == 200
    body = text_of(page)
    assert "label 7" in body and "1234" in body and 'data-status="queued"' in body
    assert f'data-api-url="/api/v1/jobs/{job.id}"' in body
    assert "Refresh to see the latest status" in body  # the no-JS fallback
    assert "http-equiv" not in body


@pytest.mark.parametrize("form, message, kept, invalid", [
    ({"model": "digits", "label": "12", "n": "4"}, "unknown label &#39;12&#39;",
     '<option value="12" selected>12 (not a label of this model)</option>', "label"),
    ({"model": "digits", "label": "7", "n": "0"}, "n must be an integer from 1 to 64, got 0", 'value="0"', "n"),
    ({"model": "digits", "label": "7", "n": "65"}, "n must be an integer from 1 to 64, got 65", 'value="65"', "n"),
    ({"model": "digits", "label": "7", "n": "four"}, "n must be an integer from 1 to 64, got &#39;four&#39;",
     'value="four"', "n"),
    ({"model": "digits", "label": "7", "n": "2", "seed": "-5"}, "seed must be an integer from 0 to", 'value="-5"',
     "seed"),
    ({"model": "digits", "label": "", "n": "2"}, "model &#39;digits&#39; needs a label", 'value="2"', "label"),
    ({"model": "nosuch", "label": "3", "n": "2"}, "unknown model &#39;nosuch&#39;; available: digits", 'value="2"',
     "model"),
    # a hand-made POST: the form has no prompt field for a class model, so no field is marked
    ({"model": "digits", "prompt": "a seven", "n": "2"}, "it does not take a prompt", 'value="2"', None),
])
def test_bad_input_is_shown_on_the_form_and_stores_nothing(web_app, client, form, message, kept, invalid):
    response = client.post("/", data=form)
    assert response.status_code == 422
    body = text_of(response)
    assert 'role="alert"' in body and message in body
    assert kept in body  # the entered value is still in the form
    marked = [c["name"] for c in parse(response).controls if c.get("aria-invalid") == "true"]
    assert marked == ([invalid] if invalid else [])
    assert job_count(web_app) == 0


def test_the_form_and_the_api_share_one_rule_set(web_app, client):
    """The same bad request gives the same message on the form and from the JSON API."""
    api = client.post("/api/v1/jobs", json={"model": "digits", "label": "7", "n": 100})
    form = client.post("/", data={"model": "digits", "label": "7", "n": "100"})
    assert api.status_code == form.status_code == 422
    assert api.get_json()["error"] in text_of(form)
    assert job_count(web_app) == 0


def test_text_model_keeps_the_prompt_on_error(web_app, client):
    add_model(web_app, "captions", "text")
    long_prompt = "x" * 501
    response = client.post("/", data={"model": "captions", "prompt": long_prompt, "n": "1"})
    assert response.status_code == 422
    body = text_of(response)
    assert "prompt is 501 characters long; the limit is 500" in body
    assert long_prompt in body
    assert job_count(web_app) == 0
    response = client.post("/", data={"model": "captions", "prompt": "a red <b>bird</b>", "n": "1"})
    assert response.status_code == 303
    assert "a red &lt;b&gt;bird&lt;/b&gt;" in text_of(client.get(response.headers["Location"]))


def test_form_posts_ignore_unknown_fields(web_app, client):
    """A CSRF token (Flask-WTF, later) or a button name must not break the form."""
    response = client.post("/", data={"model": "digits", "label": "1", "n": "1", "csrf_token": "abc",
                                      "submit": "Generate"})
    assert response.status_code == 303
    assert job_count(web_app) == 1


def test_job_page_of_a_finished_job_shows_its_images(web_app, client):
    job_id, image_ids = add_finished_job(web_app, label="3", n=3, seed=40)
    body = text_of(client.get(f"/jobs/{job_id}"))
    for image_id in image_ids:
        assert f'href="/images/{image_id}"' in body
        assert f'src="/api/v1/images/{image_id}.png"' in body
    assert "Refresh to see the latest status" not in body and "Cancel job" not in body


def test_cancel_from_the_job_page(web_app, client):
    job_url = client.post("/", data={"model": "digits", "label": "2", "n": "1"}).headers["Location"]
    response = client.post(f"{job_url}/cancel")
    assert response.status_code == 303 and response.headers["Location"] == job_url
    assert 'data-status="canceled"' in text_of(client.get(job_url))
    assert client.post(f"{job_url}/cancel").status_code == 303  # already canceled: no error page


def test_unknown_job_and_image_are_html_404s(client):
    for url in ("/jobs/00000000-0000-0000-0000-000000000000", "/images/nope", "/batches/nope"):
        response = client.get(url)
        assert response.status_code == 404
        assert response.mimetype == "text/html"
        assert "Not found" in text_of(response)


# -- gallery ----------------------------------------------------------------------------------------
def gallery_image_ids(response) -> list[str]:
    return re.findall(r'<a href="/images/([0-9a-f-]{36})">', text_of(response))


def test_gallery_is_newest_first_and_paginated(web_app, client):
    jobs = [add_finished_job(web_app, label=str(i % 10), n=3, seed=10 * i, age_s=100 - i) for i in range(10)]
    newest_first = [image_id for _, ids in reversed(jobs) for image_id in ids]
    first = client.get("/gallery")
    assert first.status_code == 200
    assert gallery_image_ids(first) == newest_first[:24]
    body = text_of(first)
    assert "Images 1–24 of 30" in body and "Page 1 of 2" in body
    assert 'rel="next" href="/gallery?page=2"' in body and 'rel="prev"' not in body
    second = client.get("/gallery?page=2")
    assert gallery_image_ids(second) == newest_first[24:]
    assert "Images 25–30 of 30" in text_of(second)
    small = client.get("/gallery?per_page=7&page=3")
    assert gallery_image_ids(small) == newest_first[14:21]
    assert 'href="/gallery?page=4&amp;per_page=7"' in text_of(small)


@pytest.mark.parametrize("query, status, message", [
    ("page=0", 400, "page must be a whole number of at least 1, got &#39;0&#39;"),
    ("page=two", 400, "page must be a whole number"),
    ("per_page=1000", 400, "per_page must be a whole number from 1 to 96"),
    ("page=9", 404, "page 9 does not exist; the last page is 1"),
    # digits that str.isdigit takes and int() refuses (these answered 500), and a number of 5,000 digits
    ("page=%C2%B2", 400, "page must be a whole number of at least 1, got &#39;²&#39;"),
    ("per_page=%E2%91%A0", 400, "per_page must be a whole number from 1 to 96"),
    ("page=%D9%A3", 400, "page must be a whole number"),
    ("page=" + "9" * 5000, 400, "page must be a whole number"),
])
def test_gallery_rejects_bad_page_parameters(web_app, client, query, status, message):
    add_finished_job(web_app, label="1", n=1)
    response = client.get(f"/gallery?{query}")
    assert response.status_code == status
    assert message in text_of(response)


def test_gallery_filters(web_app, client):
    add_model(web_app, "captions", "text")
    _, sevens = add_finished_job(web_app, label="7", n=2, age_s=30)
    _, threes = add_finished_job(web_app, label="3", n=1, age_s=20)
    _, birds = add_finished_job(web_app, model="captions", prompt="A red Bird at 100% zoom", n=2, age_s=10)
    _, cats = add_finished_job(web_app, model="captions", prompt="a cat_like shape", n=1, age_s=5)

    assert gallery_image_ids(client.get("/gallery?model=digits")) == threes + sevens
    assert gallery_image_ids(client.get("/gallery?model=captions")) == cats + birds
    assert gallery_image_ids(client.get("/gallery?label=7")) == sevens
    assert gallery_image_ids(client.get("/gallery?prompt=bird")) == birds  # case-insensitive substring
    assert gallery_image_ids(client.get("/gallery?prompt=100%25")) == birds  # % is literal, not a wildcard
    assert gallery_image_ids(client.get("/gallery?prompt=a_c")) == []  # _ is literal too ("a cat" would match)
    assert gallery_image_ids(client.get("/gallery?prompt=cat_l")) == cats
    assert gallery_image_ids(client.get("/gallery?model=digits&label=3")) == threes
    empty = client.get("/gallery?model=captions&label=7")
    assert empty.status_code == 200 and "No images match these filters." in text_of(empty)
    page = parse(client.get("/gallery?model=captions&prompt=bird"))
    assert_every_field_labelled(page)
    assert page.find("option", value="captions")[0].get("selected") == ""
    assert page.find("input", name="prompt")[0]["value"] == "bird"


def test_gallery_filters_are_kept_across_pages(web_app, client):
    for i in range(3):
        add_finished_job(web_app, label="5", n=10, seed=i * 100, age_s=50 - i)
    add_finished_job(web_app, label="6", n=10, age_s=1)
    first = client.get("/gallery?label=5")
    assert len(gallery_image_ids(first)) == 24
    assert 'href="/gallery?page=2&amp;label=5"' in text_of(first)
    assert len(gallery_image_ids(client.get("/gallery?page=2&label=5"))) == 6


def test_gallery_hides_unfinished_jobs(web_app, client):
    client.post("/", data={"model": "digits", "label": "1", "n": "1"})
    assert "No images yet." in text_of(client.get("/gallery"))


# -- the image page ---------------------------------------------------------------------------------
def test_image_page_shows_metadata_and_the_download_works(web_app, client):
    job_id, image_ids = add_finished_job(web_app, label="7", n=2, seed=777)
    response = client.get(f"/images/{image_ids[1]}")
    assert response.status_code == 200
    body = text_of(response)
    meta = re.search(r'<dl class="meta" id="image-meta">(.*?)</dl>', body, re.S).group(1)
    fields = {dt: re.sub(r"<[^>]+>|\s+", " ", dd).strip()
              for dt, dd in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", meta, re.S)}
    assert fields["Model"] == "digits"
    assert fields["Version"] == "1 (aae-cg, trained on digits)"
    assert fields["Condition"] == "label 7"
    assert fields["Seed"] == "778"
    assert fields["Job"] == f"{job_id[:8]} , image 2 of 2"
    assert fields["Size"] == "28 × 28 pixels"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", fields["Created"])
    assert f'href="/jobs/{job_id}"' in meta

    link = parse(response).find("a", id="download")[0]
    assert link["download"] == "priorforge-digits-778.png"
    from app.core.storage import image_key

    assert link["href"] == f"/images/{image_ids[1]}/download"
    with client.get(link["href"]) as png:
        assert png.status_code == 200 and png.mimetype == "image/png"
        assert png.headers["Content-Disposition"] == "attachment; filename=priorforge-digits-778.png"
        data = png.data
    assert data == web_app.extensions["priorforge_storage"].get(image_key(job_id, 1))
    with PILImage.open(io.BytesIO(data)) as picture:
        assert picture.size == (28, 28)


# -- batches ----------------------------------------------------------------------------------------
def test_batch_upload_creates_the_jobs_and_shows_them(web_app, client):
    page = client.get("/batches/new")
    assert page.status_code == 200
    assert_every_field_labelled(parse(page))
    csv_text = "model,label,n,seed\ndigits,7,2,1\ndigits,3,1,\n"
    response = client.post("/batches", data={"file": (io.BytesIO(csv_text.encode()), "prompts.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 303
    batch_url = response.headers["Location"]
    body = text_of(client.get(batch_url))
    assert "prompts.csv" in body and 'data-status="queued"' in body
    assert len(re.findall(r'<tr data-job-id="', body)) == 2
    assert "label 7" in body and "label 3" in body and "2 queued" in body
    assert job_count(web_app) == 2


@pytest.mark.parametrize("filename, content, status, message", [
    ("bad.csv", "model,label,n\ndigits,7,2\ndigits,11,1\n", 422, "line 3: unknown label &#39;11&#39;"),
    ("bad.jsonl", '{"label": "7"}\n{"label": \n', 422, "bad.jsonl line 2: invalid JSON"),
    ("prompts.txt", "label\n7\n", 415, "must be .csv or .jsonl"),
    ("empty.csv", "", 422, "empty CSV file"),
])
def test_bad_batch_files_are_rejected_whole(web_app, client, filename, content, status, message):
    response = client.post("/batches", data={"file": (io.BytesIO(content.encode()), filename)},
                           content_type="multipart/form-data")
    assert response.status_code == status
    body = text_of(response)
    assert message in body and "Nothing was stored." in body
    assert job_count(web_app) == 0


def page_examples(response) -> dict[str, str]:
    """The batch page's examples as printed (HTML-unescaped), by format."""
    import html

    body = text_of(response)
    return {kind: html.unescape(re.search(rf'<code id="{kind}-example">(.*?)</code>', body, re.S).group(1))
            for kind in ("csv", "jsonl")}


@pytest.mark.parametrize("extra", [
    [],  # the fixture's digits model alone
    [("captions", "text", {"examples": ["a dark, wide pullover", "a pair of \"light\" trousers"]}),
     ("grouped", "cluster", None), ("free", "none", None)],
])
def test_the_batch_pages_examples_are_accepted_as_printed(web_app, client, extra):
    """The JSONL example named a model ("digits") that was not served; the examples now come from the serving
    models, and each is uploaded exactly as the page prints it."""
    from app.core.extensions import db
    from app.core.tables import ModelVersion

    for name, condition, card in extra:
        version_id = add_model(web_app, name, condition, num_classes=4 if condition == "cluster" else 0)
        with web_app.app_context():
            db.session.get(ModelVersion, version_id).card = card
            db.session.commit()
    examples = page_examples(client.get("/batches/new"))
    names = {"digits"} | {name for name, _, _ in extra}
    assert all(f'"model": "{name}"' in examples["jsonl"] for name in names), examples
    for kind, text in examples.items():
        before = job_count(web_app)
        response = client.post("/batches", data={"file": (io.BytesIO(text.encode()), f"example.{kind}")},
                               content_type="multipart/form-data")
        assert response.status_code == 303, (kind, text, text_of(response))
        assert job_count(web_app) == before + len(text.strip().splitlines()) - (kind == "csv")


def test_the_batch_page_says_when_no_model_is_served(web_app, client):
    from sqlalchemy import update

    from app.core.extensions import db
    from app.core.tables import ModelVersion

    with web_app.app_context():
        db.session.execute(update(ModelVersion).values(serving=False))
        db.session.commit()
    body = text_of(client.get("/batches/new"))
    assert "No model is served yet" in body and "digits" not in body.split("File format")[1]


def test_batch_form_without_a_file(web_app, client):
    response = client.post("/batches", data={}, content_type="multipart/form-data")
    assert response.status_code == 422
    assert "choose a .csv or .jsonl file" in text_of(response)


def test_batch_file_over_the_size_limit(web_app, client):
    web_app.config["MAX_CONTENT_LENGTH"] = 1000
    big = "label\n" + "7\n" * 1000
    response = client.post("/batches", data={"file": (io.BytesIO(big.encode()), "big.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 413
    assert "too large" in text_of(response)
    assert job_count(web_app) == 0


# -- helpers ----------------------------------------------------------------------------------------
def test_form_values_become_the_api_request():
    from werkzeug.datastructures import MultiDict

    from app.web.forms import job_request_from_form

    form = MultiDict({"model": " digits ", "label": "7", "n": "12", "seed": "", "cluster": " 3 ", "prompt": "",
                      "csrf_token": "x"})
    assert job_request_from_form(form) == {"model": "digits", "label": "7", "n": 12, "cluster": 3, "prompt": ""}
    assert job_request_from_form(MultiDict({"n": "1.5", "seed": "1e3"})) == {"n": "1.5", "seed": "1e3"}


@pytest.mark.parametrize("message, field", [
    ("n must be an integer from 1 to 64, got 0", "n"),
    ("seed must be an integer from 0 to 9007199254740992, got -1", "seed"),
    ("model 'digits' needs a label, one of: 0, 1", "label"),
    ("unknown label 'n'; this model knows: 0, 1", "label"),
    ("unknown model 'x'; available: digits", "model"),
    ("model 'digits' is trained with condition 'class'; it does not take a prompt", "prompt"),
])
def test_errors_are_tied_to_their_field(message, field):
    from app.web.forms import field_of_error

    assert field_of_error(message) == field


def test_download_of_a_file_missing_from_storage_is_a_404_page(web_app, client):
    from app.core.storage import image_key

    job_id, image_ids = add_finished_job(web_app, label="1", n=1)
    web_app.extensions["priorforge_storage"].delete(image_key(job_id, 0))
    response = client.get(f"/images/{image_ids[0]}/download")
    assert response.status_code == 404
    assert "is missing from storage" in text_of(response)


# -- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, url, status, heading", [
    ("GET", "/no-such-page", 404, "Not found"),  # was Werkzeug's unstyled "Not Found"
    ("GET", "/images/no-such-image/extra/parts", 404, "Not found"),
    ("POST", "/gallery", 405, "Method not allowed"),
    ("DELETE", "/", 405, "Method not allowed"),
])
def test_html_errors_get_the_sites_error_page(client, method, url, status, heading):
    response = client.open(url, method=method)
    body = text_of(response)
    assert response.status_code == status and response.mimetype == "text/html"
    assert f"<h1>{heading}</h1>" in body and '<p class="error-message" role="alert">' in body
    assert 'href="/gallery"' in body  # the site's navigation: the styled base page
    assert "Content-Security-Policy" in response.headers
    if status == 405:
        assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("method, url, status", [
    ("GET", "/api/v1/no-such-route", 404), ("GET", "/api/v1/jobs/no-such-job", 404), ("PUT", "/api/v1/models", 405),
])
def test_errors_under_the_api_are_json(client, method, url, status):
    response = client.open(url, method=method)
    assert response.status_code == status and response.mimetype == "application/json"
    assert response.get_json()["error"]


def test_the_site_menu_links_the_admin_and_wraps_between_items(client):
    """The admin area had no link in the menu, and at 390 px the menu wrapped inside "Batch upload"."""
    from pathlib import Path

    nav = text_of(client.get("/")).split('<nav aria-label="Main">')[1].split("</nav>")[0]
    assert '<a href="/admin/">Admin</a>' in nav
    css = (Path(__file__).resolve().parents[2] / "app" / "static" / "style.css").read_text()
    assert re.search(r"\.site-header ul \{[^}]*flex-wrap: wrap", css)
    assert re.search(r"\.site-header li a \{[^}]*white-space: nowrap", css)


def test_the_api_reference_page_lists_every_operation_and_schema(client):
    """The menu's "API" opened raw JSON and /api/v1/docs was a 404: a readable reference, rendered on the server
    from the OpenAPI document, with no script (so the site's CSP holds)."""
    document = client.get("/api/v1/openapi.json").get_json()
    response = client.get("/api/v1/docs")
    body = text_of(response)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "<script" not in body and " style=" not in body
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    for path, item in document["paths"].items():
        for method in item:
            assert f"<code>{method.upper()} /api/v1{path}</code>" in body, (method, path)
    for name in document["components"]["schemas"]:
        assert f'id="schema-{name}"' in body
    assert "integer 1-64" in body  # bounds read from the schemas (n of a job)
    nav = body.split('<nav aria-label="Main">')[1].split("</nav>")[0]
    assert '<a href="/api/v1/docs" aria-current="page">API</a>' in nav
