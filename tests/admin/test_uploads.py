"""Data set uploads: good archives are stored with their statistics; bad ones are refused with a report and
leave nothing behind (data set root, temporary files, database)."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from tests.admin.conftest import ADMIN, csrf_token, make_zip, png, sign_in, token_for


@pytest.fixture
def upload(admin_app, client):
    headers = {"Authorization": f"Bearer {token_for(admin_app, ADMIN[0])}"}

    def send(data: bytes, name: str = "", filename: str = "set.zip"):
        form = {"file": (io.BytesIO(data), filename)}
        if name:
            form["name"] = name
        return client.post("/api/v1/admin/datasets", data=form, headers=headers, content_type="multipart/form-data")

    return send


def stored(app) -> tuple[list[str], int]:
    """(entries of the data set root, data set rows)."""
    from app.core.extensions import db
    from app.core.tables import Dataset

    root = Path(app.config["DATASET_ROOT"])
    entries = sorted(os.listdir(root)) if root.exists() else []
    with app.app_context():
        return entries, db.session.query(Dataset).count()


def test_a_class_folder_zip_is_stored_with_its_statistics(admin_app, upload, tmpdir_guard):
    members = {f"mydata/{cls}/{i}.png": png(8, 40 * i) for cls in ("cat", "dog") for i in range(3)}
    members["mydata/cat/extra.jpg"] = png(8)  # a PNG under .jpg: Pillow reads the content, not the name
    members["__MACOSX/mydata/._x"] = b"junk"
    response = upload(make_zip(members), name="pets")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["name"], body["layout"], body["images"], body["classes"], body["captions"]) == \
        ("pets", "classes", 7, 2, 0)
    assert body["class_names"] == ["cat", "dog"] and body["ignored"] == ["__MACOSX/mydata/._x"]
    root = Path(admin_app.config["DATASET_ROOT"])
    assert sorted(os.listdir(root)) == ["pets"]
    assert sorted(os.listdir(root / "pets")) == ["cat", "dog"] and len(os.listdir(root / "pets" / "cat")) == 4
    assert body["size_bytes"] == sum(len(v) for k, v in members.items() if "MACOSX" not in k)
    assert os.listdir(tmpdir_guard) == []
    assert upload(make_zip(members), name="pets").status_code == 409  # the name is taken


def test_a_captions_zip_is_stored_with_its_statistics(admin_app, upload):
    lines = [{"file": f"img/{i}.png", "captions": [f"a grey square number {i}", "a small square"], "label": "sq"}
             for i in range(3)]
    members = {f"img/{i}.png": png(16, 60 * i) for i in range(3)}
    members["captions.jsonl"] = "\n".join(json.dumps(line) for line in lines).encode()
    response = upload(make_zip(members), filename="Squares.zip")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["name"], body["layout"], body["images"], body["classes"], body["captions"]) == \
        ("squares", "captions", 3, 1, 6)
    assert (Path(admin_app.config["DATASET_ROOT"]) / "squares" / "captions.jsonl").is_file()


def bomb() -> bytes:
    return make_zip({"cls/a.png": png(), "cls/bomb.png": b"\0" * (8 * 1024 * 1024)})


def slip() -> bytes:
    return make_zip({"cls/a.png": png(), "../evil.png": png()})


@pytest.mark.parametrize("make, status, file, reason", [
    (slip, 422, "../evil.png", "path escapes"),
    (lambda: make_zip({"cls/a.png": png(), "/etc/evil.png": png()}), 422, "/etc/evil.png", "absolute path"),
    (bomb, 422, "cls/bomb.png", "zip bomb"),
    (lambda: make_zip({"cls/a.png": png(), "cls/notes.txt": b"hello"}), 422, "cls/notes.txt", "not an image file"),
    (lambda: make_zip({"cls/a.png": png(), "cls/fake.png": b"not a png at all" * 10}), 422, "cls/fake.png",
     "does not decode"),
    (lambda: make_zip({"cls/a.png": png(), "cls/huge.png": png(5000)}), 422, "cls/huge.png", "each side"),
    (lambda: make_zip({"a.png": png()}), 422, "a.png", "folder per class"),
    (lambda: make_zip({"img/a.png": png(), "captions.jsonl": b'{"file": "img/b.png", "caption": "x"}'}), 422,
     "captions.jsonl", "does not exist"),
])
def test_bad_archives_are_refused_and_leave_nothing(admin_app, upload, tmpdir_guard, make, status, file, reason):
    response = upload(make(), name="bad")
    body = response.get_json()
    assert response.status_code == status, body
    assert "nothing was stored" in body["error"] or body["rejected"]
    assert any(r["file"] == file and reason in r["reason"] for r in body["rejected"]), body
    assert stored(admin_app) == ([], 0)
    assert os.listdir(tmpdir_guard) == []


def captions_zip(captions: bytes, **more: bytes) -> bytes:
    return make_zip({"img/a.png": png(), "captions.jsonl": captions, **more})


# each of these answered 500: the archive's names or captions.jsonl broke the file system or the parser
@pytest.mark.parametrize("make, file, reason", [
    (lambda: captions_zip(b'{"file": "img/a.png", "caption": "caf\xe9 au lait"}\n'), "captions.jsonl",
     "not UTF-8 text (line 1"),
    (lambda: captions_zip(b'{"file": "img/a.png", "caption": "x", "label": ' + b"7" * 5000 + b"}\n"),
     "captions.jsonl", "line 1: not valid JSON here (a number too long"),
    (lambda: captions_zip(b'{"file": "img/a.png", "caption": "a \\udfff dress"}\n'), "captions.jsonl",
     "line 1: a string holds a lone UTF-16 surrogate"),
    (lambda: captions_zip(b'{"file": "img/' + b"x" * 300 + b'.png", "caption": "x"}\n'), "captions.jsonl",
     "does not exist"),
    (lambda: make_zip({"cls/a.png": png(), "x" * 300 + "/b.png": png()}), "x" * 300 + "/b.png",
     "longer than 255 bytes"),
    (lambda: make_zip({"cls/a.png": png(), "/".join(["d" * 200] * 6) + "/b.png": png()}),
     "/".join(["d" * 200] * 6) + "/b.png", "path longer than 1024 bytes"),
    (lambda: captions_zip(b'{"file": "img/a.png", "caption": "x"}\n', **{"img/b.png": png(), "img/b.png/c.png": png()}),
     "img/b.png", "a later member uses this file as a folder"),
])
def test_unusable_names_and_captions_are_refused_not_500(admin_app, upload, tmpdir_guard, make, file, reason):
    response = upload(make(), name="odd")
    body = response.get_json()
    assert response.status_code == 422, body
    assert any(r["file"] == file and reason in r["reason"] for r in body["rejected"]), body
    assert stored(admin_app) == ([], 0)
    assert os.listdir(tmpdir_guard) == []


@pytest.mark.parametrize("named", ["/etc/hostname.png", "../../../../../../usr/share/pixmaps/x.png",
                                   "img/../../x.png", "/no/such/file.png"])
def test_captions_cannot_probe_paths_outside_the_archive(admin_app, upload, named):
    """A path outside the archive got one answer when it existed on the server and another when it did not;
    now any such path gets the same refusal, before the file system is asked."""
    line = json.dumps({"file": named, "caption": "x"}).encode()
    response = upload(captions_zip(b'{"file": "img/a.png", "caption": "x"}\n' + line + b"\n"), name="probe")
    body = response.get_json()
    assert response.status_code == 422
    assert body["rejected"] == [{"file": "captions.jsonl", "reason": body["rejected"][0]["reason"]}]
    reason = body["rejected"][0]["reason"]
    assert "line 2: file" in reason and "must be a relative path inside the archive" in reason
    assert "exist" not in reason and "not an image of this archive" not in reason
    assert stored(admin_app) == ([], 0)


def test_a_symlink_member_is_refused(admin_app, upload):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("cls/a.png", png())
        link = zipfile.ZipInfo("cls/link.png")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    response = upload(buffer.getvalue(), name="links")
    assert response.status_code == 422
    assert response.get_json()["rejected"] == [{"file": "cls/link.png", "reason": "symbolic link"}]
    assert stored(admin_app) == ([], 0)


def test_a_too_large_archive_is_refused(admin_app, upload, tmpdir_guard):
    admin_app.config["DATASET_MAX_UPLOAD_BYTES"] = 4096
    data = make_zip({f"cls/{i}.png": os.urandom(2048) for i in range(8)}, compression=zipfile.ZIP_STORED)
    response = upload(data, name="big")
    assert response.status_code == 413
    assert "the limit is 4096 bytes" in response.get_json()["error"]
    assert stored(admin_app) == ([], 0)
    assert os.listdir(tmpdir_guard) == []


def test_too_many_unpacked_bytes_are_refused_before_extraction(admin_app, upload):
    admin_app.config["DATASET_MAX_UNCOMPRESSED_BYTES"] = 100
    response = upload(make_zip({"cls/a.png": png(64), "cls/b.png": png(64)}), name="many")
    assert response.status_code == 413 and "unpacks to" in response.get_json()["error"]
    assert stored(admin_app) == ([], 0)


def test_the_admin_page_upload_form(admin_app, client):
    sign_in(client, *ADMIN)
    token = csrf_token(client, "/admin/")
    good = make_zip({"a/x.png": png(), "b/y.png": png()})
    assert client.post("/admin/datasets", data={"file": (io.BytesIO(good), "g.zip")},
                       content_type="multipart/form-data").status_code == 400  # CSRF
    response = client.post("/admin/datasets", data={"file": (io.BytesIO(good), "g.zip"), "name": "two",
                                                    "csrf_token": token}, content_type="multipart/form-data")
    # POST, redirect, GET: the page after an upload is the admin index, and reloading it posts nothing again
    assert response.status_code == 303 and response.headers["Location"] == "/admin/?created=two#datasets-heading"
    assert "Stored data set <strong>two</strong>" in client.get(response.headers["Location"]).get_data(as_text=True)
    # the form's own address, reloaded or bookmarked, lands on the data set list instead of a bare 405
    back = client.get("/admin/datasets")
    assert back.status_code == 303 and back.headers["Location"] == "/admin/#datasets-heading"
    wrong_method = client.get("/admin/tokens")  # a POST-only page: the site's own error page, with Allow
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    assert '<p class="error-message" role="alert">' in wrong_method.get_data(as_text=True)
    response = client.post("/admin/datasets", data={"file": (io.BytesIO(slip()), "s.zip"), "name": "slip",
                                                    "csrf_token": token}, content_type="multipart/form-data")
    body = response.get_data(as_text=True)
    assert response.status_code == 422 and "<code>../evil.png</code>" in body and "path escapes" in body
    assert stored(admin_app) == (["two"], 1)
    assert ">two<" in client.get("/admin/").get_data(as_text=True)
