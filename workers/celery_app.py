"""Entry point for ``celery -A workers.celery_app worker``: the service core with the tasks registered.

The Flask app here is :func:`app.core.factory.create_base_app`'s (configuration, database, storage, queue),
without the web's pages: a worker never imports them.
"""

import workers.tasks  # noqa: F401  (shared tasks: bound to the Celery app made below)
import workers.training_tasks  # noqa: F401
from app.core.factory import create_base_app
from workers.bootsteps import install

flask_app = create_base_app()
if "priorforge_storage_error" in flask_app.extensions:
    # a worker can neither fetch a model nor store an image: refuse to start (the jobs wait in the queue)
    raise SystemExit(f"priorforge worker: cannot start, the object store is not usable: "
                     f"{flask_app.extensions['priorforge_storage_error']}")
celery_app = flask_app.extensions["celery"]
install(celery_app, flask_app)
