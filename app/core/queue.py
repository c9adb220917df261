"""The task queue: a Celery app bound to the Flask app (Flask docs, "Background Tasks with Celery").

Every process builds it: the web process and the service layer only send messages, by task name
(:func:`app.services.queue.send_messages`), and never import ``workers/``; the worker process registers the
tasks (:mod:`workers.celery_app`). Tasks receive ids only; the database row is the source of truth. Results are
not stored (``task_ignore_result``): the database holds every state a client can see.
"""

from __future__ import annotations

from celery import Celery, Task
from flask import Flask
from kombu import Exchange, Queue

# generate: interactive jobs; bulk: batches and large jobs (the generation worker consumes both, in turn, so a
# large batch cannot starve a 1-image job: docs/security.md); train: training runs
QUEUES = ("generate", "bulk", "train")
# the names messages carry; the tasks are defined under these names in workers/
GENERATE_TASK = "workers.tasks.generate_images"
TRAIN_TASK = "workers.training_tasks.train_model"
RECONCILE_TASK = "workers.tasks.reconcile"


def celery_config(app: Flask) -> dict:
    config = app.config
    broker = config["CELERY_BROKER_URL"]
    transport_options: dict = {}
    if broker.startswith(("redis://", "rediss://")):
        # an unacknowledged message comes back after this; it must exceed the hard time limit, or a long
        # job would be delivered twice while it is still running
        transport_options["visibility_timeout"] = config["BROKER_VISIBILITY_TIMEOUT"]
        if config.get("BROKER_KEY_PREFIX"):
            transport_options["global_keyprefix"] = config["BROKER_KEY_PREFIX"]
    elif broker.startswith("sqla+"):
        # The embedded broker (app/core/fastpath/embedded_broker.py: kombu's SQLAlchemy transport with a doorbell) is a
        # table the worker polls; kombu's default interval (1 s) added a second to every job. That transport
        # hands every transport option to create_engine(), so the settings can't go there: set the
        # transport class's own attributes (one broker per process).
        from app.core.fastpath import embedded_broker

        local_wakeups = bool(config["LOCAL_WAKEUPS"] and config["FAST_PATHS"])
        embedded_broker.Transport.polling_interval = embedded_broker.polling_interval(
            broker, config["BROKER_POLLING_INTERVAL"], local_wakeups)
        embedded_broker.Transport.local_wakeups = local_wakeups
        embedded_broker.register()
        broker = embedded_broker.broker_url(broker)
    return {
        "broker_url": broker,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_backend": None,
        # plus the generation queues of the routing settings (generate.gpu, generate.cpu, ...)
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in dict.fromkeys(
            [*QUEUES, config["GENERATE_QUEUE"], *config["MODEL_QUEUES"].values()])],
        "task_default_queue": "generate",
        "task_routes": {GENERATE_TASK: {"queue": "generate"}, TRAIN_TASK: {"queue": "train"}},
        # a training runs for hours: its own limits, not the generation jobs'
        "task_annotations": {TRAIN_TASK: {
            "soft_time_limit": config["TRAINING_SOFT_TIME_LIMIT"],
            "time_limit": config["TRAINING_TIME_LIMIT"]}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A broker outage must not stop the jobs that are running: each keeps its claim and lease in the
        # database, finishes and commits; its message, unacknowledged, may come again after the reconnection
        # and is dropped by the claim. Celery 6 turns this on by default (cancel every running acks_late task
        # when the connection drops, to be run again from the start): off, as the recovery design relies on.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": config["TASK_SOFT_TIME_LIMIT"],
        "task_time_limit": config["TASK_TIME_LIMIT"],
        "worker_concurrency": config["WORKER_CONCURRENCY"],
        "task_serializer": "json",
        "accept_content": ["json"],
        "enable_utc": True,
    }


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_config(app))
    celery_app.set_default()
    celery_app.flask_app = app  # app.core.fastpath.strategy reads the database through it
    app.extensions["celery"] = celery_app
    return celery_app
