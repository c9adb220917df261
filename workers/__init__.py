"""The Celery workers: the ``generate`` queue's task (:mod:`workers.tasks`, with micro-batching in
:mod:`workers.batching`) and the ``train`` queue's (:mod:`workers.training_tasks`), the periodic reconciliation
(:mod:`workers.bootsteps`), and ``celery -A workers.celery_app worker``'s entry point (:mod:`workers.celery_app`).

Workers use the service layer (:mod:`app.services`) and the model code (``generation/``, ``training/``), never
the web's blueprints. The web sends them messages by task name (:mod:`app.core.queue`).
"""
