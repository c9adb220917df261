"""The layout's rules (docs/architecture.md): imports only go down, nothing imports itself in a circle, the web
process never imports torch or the model code, and the torch-free backend description matches the classes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp

from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers", "priorforge", "priorforge_spec", "generation", "training")
MODEL_CODE = ("torch", "torchvision", "generation", "training", "workers")


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a group of modules that
    import each other in a circle, directly or not; imports inside functions count too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_in_a_circle():
    cycles = import_cycles(grimp.build_graph(*PACKAGES))
    assert not cycles, "modules that import each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_package_imports_another_that_imports_it_back():
    """At package level the imports form layers: the CLI over the workers, over the web app and the model code,
    over the torch-free spec (a package-level circle makes any module of either package import the other)."""
    graph = grimp.build_graph(*PACKAGES)
    edges: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            source, target = module.split(".")[0], imported.split(".")[0]
            if source != target and target in edges:
                edges[source].add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges[start])

    circles = sorted(f"{a} -> {b} -> ... -> {a}" for a in PACKAGES for b in edges[a] if reaches(b, a, {b}))
    assert not circles, "packages that import each other:\n" + "\n".join(circles)
    assert edges["priorforge_spec"] == set() and "priorforge" not in set().union(*(edges[p] for p in PACKAGES))


def test_import_contracts_hold():
    """The contracts in pyproject.toml ([tool.importlinter]): the layers, no model code in the web app, a
    torch-free priorforge_spec, models that never import trainers."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "lint-imports is missing: pip install -e '.[test]'"
    result = subprocess.run([lint, "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_the_web_app_runs_without_torch_or_model_code(tmp_path):
    """A web process that serves pages, validates a job for a class model and a training request for the admin
    has imported no module of torch, generation/, training/ or workers/."""
    result = run_python(f"""
        import json, sys
        from app import create_app
        from app.core.migrate import upgrade
        from app.core.extensions import db
        from app.services.accounts import create_user, issue_token
        from app.services.model_versions import register_model

        app = create_app({{"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite:///{tmp_path}/app.sqlite3",
                          "CELERY_BROKER_URL": "sqla+sqlite:///{tmp_path}/broker.sqlite3",
                          "STORAGE_ROOT": "{tmp_path}/images", "LOCAL_WAKEUPS": False}})
        upgrade(app)
        with app.app_context():
            register_model("digits", "{REPO}/tests/fixtures/digits-aae-cg")
            token = issue_token(create_user("admin", "a long password")).token
            db.session.remove()
        client = app.test_client()
        statuses = [client.get(path).status_code for path in ("/", "/gallery", "/batches/new", "/admin/login",
                                                               "/api/v1/models", "/api/v1/openapi.json")]
        job = client.post("/api/v1/jobs", json={{"model": "digits", "label": "7", "n": 2}})
        bad = client.post("/api/v1/jobs", json={{"model": "digits", "label": "eleven"}})
        run = client.post("/api/v1/admin/trainings", headers={{"Authorization": f"Bearer {{token}}"}},
                          json={{"backend": "glf", "dataset": "digits", "model_options": {{"latent_dim": 8}},
                                "hparams": {{"nll_weight": 0.5}}, "max_steps": 3}})
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({MODEL_CODE!r}))
        print(json.dumps({{"statuses": statuses, "job": job.status_code, "bad": bad.status_code,
                          "run": run.status_code, "loaded": loaded}}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["statuses"] == [200] * 6 and (out["job"], out["bad"], out["run"]) == (202, 422, 202), out
    assert out["loaded"] == [], f"the web process imported model code: {out['loaded']}"


def test_the_backend_description_matches_the_classes():
    """priorforge_spec/backends.json is what training.backend_spec writes from the real classes today."""
    from priorforge_spec.backends import SPEC_FILE, backends, option_default
    from training.backend_spec import describe_backends, render

    assert SPEC_FILE.read_text() == render(), \
        f"{SPEC_FILE} is out of date: run `python -m training.backend_spec` and commit it"
    import dataclasses

    from generation.registry import get_model_class

    for name, description in backends().items():
        config = get_model_class(name).config_class()
        for field in dataclasses.fields(config):
            # the defaults as the config class has them (tuples, not JSON lists), before __post_init__
            declared = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            assert option_default(description["model_options"][field.name]) == declared, (name, field.name)
    assert set(backends()) == set(describe_backends())


def test_cli_help_imports_no_torch(tmp_path):
    """``priorforge --help`` and every sub-command's ``--help`` (found in the parser, so a new command is
    covered too) answer without importing torch or the model code."""
    result = run_python(f"""
        import argparse, contextlib, io, json, sys
        from priorforge.cli import build_parser, main

        def commands(parser, prefix):
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        yield prefix + [name]
                        yield from commands(sub, prefix + [name])

        report = []
        for argv in [[]] + list(commands(build_parser(), [])) + [["--version"]]:
            argv = argv if argv == ["--version"] else argv + ["--help"]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                    code = None
                except SystemExit as exc:
                    code = exc.code
            loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({MODEL_CODE!r}))
            report.append({{"argv": argv, "code": code, "text": bool(out.getvalue().strip()), "loaded": loaded}})
        print(json.dumps(report))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report) > 10 and {"train", "sample", "serve", "create-admin"} <= {r["argv"][0] for r in report}
    for row in report:
        assert row["code"] == 0 and row["text"], row
        assert row["loaded"] == [], f"priorforge {' '.join(row['argv'])} imported {row['loaded']}"
