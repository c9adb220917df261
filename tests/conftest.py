"""Shared fixtures: tiny model configs, an isolated cache folder, the digits data set."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# width-like config fields shrunk to keep every test model tiny (only those a backend has are set)
TINY_FIELDS = {
    "base_channels": 8,
    "hidden_dim": 32,
    "disc_hidden": 32,
    "code_disc_hidden": (32,),
    "coupling_hidden": 16,
    "flow_hidden": 16,
    "lde_channels": 8,
    "num_mixtures": 5,
    "max_channels": 32,
}


def tiny_config_values(backend: str, **overrides):
    """Config values for a tiny model of ``backend`` (widths shrunk where the config has them)."""
    from generation.registry import get_model_class

    cls = get_model_class(backend)
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    values = {k: v for k, v in TINY_FIELDS.items() if k in names}
    if "latent_dim" in names and "latent_dim" not in overrides:
        values["latent_dim"] = 8
    values.update(overrides)
    return values


def build_tiny(backend: str, **overrides):
    from generation.registry import build_model

    torch.manual_seed(0)
    return build_model(backend, **tiny_config_values(backend, **overrides))


REPO = Path(__file__).resolve().parents[1]


def _traces() -> dict[str, set[str]]:
    """What a test run must not add: entries of the checkout's ``git status --porcelain`` (untracked files
    included; instance/ and runs/ are git-ignored, so they are listed on their own), and the project's own
    entries in the system's temporary folder (``priorforge*``)."""
    found: dict[str, set[str]] = {"checkout": set(), "instance": set(), "tmp": set()}
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        if status.returncode == 0:
            found["checkout"] = {line for line in status.stdout.splitlines() if line.strip()}
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (an unpacked archive): nothing to compare
    for folder in ("instance", "runs"):
        root = REPO / folder
        if root.is_dir():  # two levels: instance/trainings/<run>, instance/datasets/<name>, ...
            found["instance"] |= {str(p.relative_to(REPO)) for p in root.glob("*")}
            found["instance"] |= {str(p.relative_to(REPO)) for p in root.glob("*/*")}
    tmp = Path(tempfile.gettempdir())
    found["tmp"] = {p.name for p in tmp.glob("priorforge*")}
    return found


_TRACES = pytest.StashKey[dict]()  # what the run's start found


def _checks_traces(config: pytest.Config) -> bool:
    """The run's own process checks (with pytest-xdist the controller, once every worker is done: a worker
    would see the others' files of tests still running)."""
    return os.environ.get("PRIORFORGE_TEST_TRACE_CHECK", "1") != "0" and not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A test run leaves the checkout and the temporary folder as it found them: tests write under tmp_path.
    The run fails (at its end) naming what appeared. The check compares before and after, so anything else
    that writes into a shared checkout meanwhile shows too: PRIORFORGE_TEST_TRACE_CHECK=0 turns it off."""
    if _checks_traces(session.config):
        session.config.stash[_TRACES] = _traces()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_TRACES, None)
    if before is None:
        return
    after = _traces()
    doorbells = {name for name in after["tmp"] if name.startswith("priorforge-") and len(name) == 27}
    gained = {kind: sorted(after[kind] - before[kind] - (doorbells if kind == "tmp" else set())) for kind in after}
    gained = {kind: entries for kind, entries in gained.items() if entries}
    if gained:
        message = f"\nthe test run left files behind (write under tmp_path instead): {gained}"
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True, bold=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# what isolated_cache points into the test's own folders; a subprocess environment keeps them (else the process
# writes instance/secret_key and instance/images into the checkout)
ISOLATION_KEYS = ("PRIORFORGE_CACHE", "PRIORFORGE_SECRET_KEY_FILE", "PRIORFORGE_STORAGE_ROOT", "PROMETHEUS_MULTIPROC_DIR",
                  "PRIORFORGE_MODEL_CACHE_DIR", "PRIORFORGE_DATASET_ROOT", "PRIORFORGE_TRAINING_ROOT")


def subprocess_env() -> dict[str, str]:
    """This environment without the service's settings (PRIORFORGE_*, DATABASE_URL, REDIS_URL,
    CELERY_BROKER_URL), apart from the test's isolation folders (:data:`ISOLATION_KEYS`)."""
    dropped = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    env = {k: v for k, v in os.environ.items() if not (k.startswith("PRIORFORGE_") or k in dropped)}
    env.update({k: os.environ[k] for k in ISOLATION_KEYS if k in os.environ})
    return env


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own PRIORFORGE_CACHE unless it sets one itself, and its own Prometheus counter
    folder: an app built without METRICS_DIR would write its counters (and every process it starts, theirs)
    into the checkout's instance/metrics."""
    if "PRIORFORGE_CACHE" not in os.environ or os.environ.get("PRIORFORGE_KEEP_CACHE") != "1":
        monkeypatch.setenv("PRIORFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path_factory.mktemp("metrics")))
    # likewise the generated secret key of an app (or a command) that configures none
    monkeypatch.setenv("PRIORFORGE_SECRET_KEY_FILE", str(tmp_path_factory.mktemp("secret") / "secret_key"))
    # and the image store of an app (or a process it starts) that names none (the default is instance/images)
    monkeypatch.setenv("PRIORFORGE_STORAGE_ROOT", str(tmp_path_factory.mktemp("images")))
    # and the other folders that default to the instance folder: an app whose every path lies elsewhere does
    # not create it (app/core/factory.py), so no test leaves an empty instance/ in the checkout
    for key, name in (("MODEL_CACHE_DIR", "model-cache"), ("DATASET_ROOT", "datasets"), ("TRAINING_ROOT", "trainings")):
        monkeypatch.setenv(f"PRIORFORGE_{key}", str(tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="session")
def digits_train():
    from training.data import load_dataset

    return load_dataset("digits", None, "train")
