"""Service sub-commands: ``serve``, ``worker``, ``db upgrade|downgrade|current``, ``register-model``, ``register-shipped``,
``create-admin``, ``reset-password``.

All of them build the app with ``create_app()``, so they read the same configuration (``PRIORFORGE_*``,
``DATABASE_URL``, ``REDIS_URL`` / ``CELERY_BROKER_URL``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the web service (gunicorn, or Flask's dev server with --dev)")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--dev", action="store_true", help="Flask's development server (auto-reload, debugger off)")
    p.set_defaults(func=run_serve)

    p = subparsers.add_parser("worker", help="run a Celery worker (queues generate,bulk,train)")
    p.add_argument("--queues", default="generate,bulk,train")
    p.add_argument("--concurrency", type=int, default=None, help="pool processes (default: WORKER_CONCURRENCY)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=run_worker)

    p = subparsers.add_parser("db", help="database migrations (Alembic)")
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="migrate to the newest schema (or --revision)")
    up.add_argument("--revision", default="head")
    up.set_defaults(func=run_db_upgrade)
    down = db_sub.add_parser("downgrade", help="migrate down (default: one step; 'base' drops everything)")
    down.add_argument("--revision", default="-1")
    down.set_defaults(func=run_db_downgrade)
    cur = db_sub.add_parser("current", help="print the current revision")
    cur.set_defaults(func=run_db_current)

    p = subparsers.add_parser("register-model", help="register a checkpoint folder as a new model version")
    p.add_argument("--name", required=True, help="model name clients ask for (e.g. digits)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--serve", action="store_true", help="make this version the serving one")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when this folder is already registered under --name")
    p.set_defaults(func=run_register)

    p = subparsers.add_parser(
        "register-shipped", help="register (or update) every shipped model in models/ under its card's name",
        description="Register every folder of --models-dir that has a card.json (the shipped models) under the "
                    "name its card gives. A rebuilt model becomes a new version; one an admin replaced by "
                    "promoting another version stays as it is.")
    p.add_argument("--models-dir", default="models", help="folder of the shipped models")
    p.set_defaults(func=run_register_shipped)

    p = subparsers.add_parser("create-admin", help="create an admin account (and/or an API token for it)")
    p.add_argument("--username", required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin instead of prompting")
    p.add_argument("--token", action="store_true",
                   help="also print a new API token (for an existing admin: only that, no password needed)")
    p.add_argument("--token-name", default="cli")
    p.set_defaults(func=run_create_admin)

    p = subparsers.add_parser(
        "reset-password", help="set a new password for an account (signs out all its sessions)",
        description="Set a new password for an existing account, on the server (a forgotten password, or one "
                    "that may have leaked). Every session of the account is signed out and its failed sign-ins "
                    "are forgotten; its API tokens stay valid (revoke them on the admin page).")
    p.add_argument("--username", required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin instead of prompting")
    p.set_defaults(func=run_reset_password)


def _app():
    from app import create_app

    return create_app()


def run_serve(args: argparse.Namespace) -> int:
    if args.dev:
        _app().run(host=args.host, port=args.port, debug=False, use_reloader=False)
        return 0
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{args.host}:{args.port}", "--workers", str(args.workers),
            "--access-logfile", "-", "app.wsgi:app"]
    conf = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"  # graceful reloads, no shared control socket
    if conf.is_file():
        argv[3:3] = ["--config", str(conf)]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def run_worker(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", args.queues,
            "--loglevel", args.loglevel, "--without-mingle", "--without-gossip"]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def run_db_upgrade(args: argparse.Namespace) -> int:
    from app.core.migrate import current, upgrade

    app = _app()
    upgrade(app, args.revision)
    print(f"database at revision {current(app)}")
    return 0


def run_db_downgrade(args: argparse.Namespace) -> int:
    from app.core.migrate import current, downgrade

    app = _app()
    downgrade(app, args.revision)
    print(f"database at revision {current(app)}")
    return 0


def run_db_current(args: argparse.Namespace) -> int:
    from app.core.migrate import current

    print(current(_app()))
    return 0


def run_register(args: argparse.Namespace) -> int:
    from app.services.model_versions import register_model

    app = _app()
    with app.app_context():
        version, created = register_model(args.name, args.checkpoint, serve=args.serve, if_missing=args.if_missing)
        state = "registered" if created else "already registered"
        print(f"{state}: {version.name} version {version.version} ({version.backend}, condition "
              f"{version.condition}){' [serving]' if version.serving else ''}")
    return 0


def run_register_shipped(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.services.model_versions import register_shipped
    from priorforge.cli import CLIError

    if not Path(args.models_dir).is_dir():
        raise CLIError(f"--models-dir: {args.models_dir} is not a folder")
    app = _app()
    with app.app_context():
        for version, what in register_shipped(args.models_dir):
            print(f"{what}: {version.name} version {version.version} ({version.backend}, condition "
                  f"{version.condition}){' [serving]' if version.serving else ''}")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise SystemExit("error: the passwords differ")
    return first


def run_create_admin(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from app.core.errors import ApiError
    from app.core.extensions import db
    from app.core.tables import User
    from app.services.accounts import create_user, issue_token

    app = _app()
    with app.app_context():
        user = db.session.scalars(select(User).where(User.username == args.username.strip())).first()
        if user is not None and not args.token:
            print(f"error: user {user.username!r} already exists (add --token to issue a token)", file=sys.stderr)
            return 1
        if user is not None and not user.is_admin:
            print(f"error: user {user.username!r} is not an admin", file=sys.stderr)
            return 1
        if user is None:
            try:
                user = create_user(args.username, _read_password(args.password_stdin), is_admin=True)
            except ApiError as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
            print(f"created admin {user.username!r}")
        if args.token:
            issued = issue_token(user, args.token_name)
            print(f"token (shown once; send it as 'Authorization: Bearer <token>'): {issued.token}")
    return 0


def run_reset_password(args: argparse.Namespace) -> int:
    from sqlalchemy import delete, select

    from app.core.errors import ApiError
    from app.core.extensions import db
    from app.core.tables import LoginFailure, User
    from app.services.accounts import set_password

    app = _app()
    with app.app_context():
        user = db.session.scalars(select(User).where(User.username == args.username.strip())).first()
        if user is None:
            print(f"error: no user {args.username.strip()!r} (create one with priorforge create-admin)", file=sys.stderr)
            return 1
        try:
            set_password(user, _read_password(args.password_stdin))
        except ApiError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        db.session.execute(delete(LoginFailure).where(LoginFailure.username == user.username))
        db.session.commit()
        print(f"new password set for {user.username!r}; every session of it is signed out")
    return 0
