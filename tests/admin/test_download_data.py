"""The built-in data sets the admin page lists as "not in the data root": the page says what the data root is and
how to fill it, ``priorforge download-data`` fetches them with torchvision's downloaders (never run here: every
download is replaced by a stand-in; tests download nothing), and scripts/run.sh passes the data root on."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

from priorforge.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def downloads(monkeypatch):
    """torchvision's data set classes replaced: each call is recorded; ``fail`` names those that raise as an
    offline machine does, the others write the folder a real download would."""
    from torchvision import datasets

    calls, fail = [], set()

    def fake(kind: str, folder: str):
        class Fake:
            def __init__(self, root, train=True, download=False):
                calls.append((kind, train, download))
                if kind in fail:
                    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
                (Path(root) / folder).mkdir(parents=True, exist_ok=True)
        return Fake

    monkeypatch.setattr(datasets, "MNIST", fake("mnist", "MNIST/raw"))
    monkeypatch.setattr(datasets, "FashionMNIST", fake("fashion-mnist", "FashionMNIST/raw"))
    monkeypatch.setattr(datasets, "CIFAR10", fake("cifar10", "cifar-10-batches-py"))
    return calls, fail


def test_arguments_are_checked_before_anything_is_fetched(tmp_path, capsys, monkeypatch, downloads):
    monkeypatch.delenv("PRIORFORGE_DATA_ROOT", raising=False)
    assert main(["download-data", "--data-root", str(tmp_path), "svhn"]) == 2
    assert "cannot download svhn; choose from mnist, fashion-mnist, cifar10" in capsys.readouterr().err
    assert main(["download-data", "mnist"]) == 2
    assert "--data-root is required (or set PRIORFORGE_DATA_ROOT" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["download-data", "--data-root", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert downloads[0] == []


def test_an_offline_machine_gets_a_clear_failure_and_the_others_still_come(tmp_path, capsys, monkeypatch, downloads):
    calls, fail = downloads
    fail.add("mnist")
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)  # already there: not fetched again
    monkeypatch.setenv("PRIORFORGE_DATA_ROOT", str(tmp_path))  # the service's setting is the default
    assert main(["download-data"]) == 1
    out, err = capsys.readouterr()
    assert "mnist: could not download: URLError" in err and "Is this machine online?" in err
    assert "download-data: 1 of 3 failed: mnist" in err
    assert "fashion-mnist: already in" in out and f"cifar10: done, in {tmp_path / 'cifar-10-batches-py'}" in out
    assert calls == [("mnist", True, True), ("cifar10", True, True), ("cifar10", False, True)]


def test_the_admin_page_says_where_the_data_root_is_and_how_to_fill_it(admin_app, client, tmp_path):
    from tests.admin.conftest import ADMIN, sign_in

    sign_in(client, *ADMIN)
    root = Path(admin_app.config["DATA_ROOT"])
    (root / "MNIST" / "raw").mkdir(parents=True)
    page = client.get("/admin/").get_data(as_text=True)
    hint = page.split('id="data-root-hint"')[1].split("</div>")[0]
    assert f"The data root is <code>{root}</code>; it does not hold fashion-mnist, cifar10" in hint
    assert "PRIORFORGE_DATA_ROOT" in hint and "scripts/run.sh" in hint
    assert f"priorforge download-data --data-root {root} fashion-mnist cifar10</code>" in hint
    admin_app.config["DATA_ROOT"] = None
    page = client.get("/admin/").get_data(as_text=True)
    assert "No data root is set, so only <code>digits</code> and uploads" in page
    assert "priorforge download-data --data-root /srv/data mnist fashion-mnist cifar10" in page


def test_run_sh_passes_the_data_root_on_to_the_procfile_processes(tmp_path):
    """The data-root lines of scripts/run.sh (a relative DATA_ROOT made absolute from where it was started),
    then honcho as run.sh starts it: the Procfile's processes see PRIORFORGE_DATA_ROOT."""
    script = (REPO / "scripts" / "run.sh").read_text()
    lines = script[script.index("data_root="):script.index('cd "$(dirname "$0")/.."')]
    (tmp_path / "Procfile").write_text("show: echo root=$PRIORFORGE_DATA_ROOT\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PRIORFORGE_DATA_ROOT", "DATA_ROOT")}
    out = subprocess.run(["bash", "-c", f"set -euo pipefail\n{lines}\nexec {sys.executable} "
                          f"{REPO / 'scripts' / 'start_procfile.py'} -f {tmp_path / 'Procfile'}"],
                         cwd=tmp_path, env={**env, "DATA_ROOT": "data"}, capture_output=True, text=True,
                         timeout=60).stdout
    assert f"root={tmp_path / 'data'}" in out, out
