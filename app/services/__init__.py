"""The service layer: plain functions on the database that the web pages, the JSON API, the admin and the
workers share. They take ids and plain values, read the current app's configuration, and never read the HTTP
request or import model code (``generation/``, ``training/``); bad input raises
:class:`app.core.errors.ApiError` with the HTTP status a caller should answer with.

* :mod:`~app.services.jobs`: validating, creating, cancelling and reading generation jobs and batches.
* :mod:`~app.services.model_versions`: registering checkpoints as model versions, serving, comparing, promoting.
* :mod:`~app.services.trainings`: training runs; :mod:`~app.services.datasets` and
  :mod:`~app.services.uploads`: built-in and uploaded data sets.
* :mod:`~app.services.accounts`: users, passwords, API tokens, the sign-in throttle.
* :mod:`~app.services.gallery`: the gallery's queries.
* :mod:`~app.services.queue`: sending task messages by name; :mod:`~app.core.fastpath.job_events`: telling and
  waiting for the end of jobs; :mod:`~app.services.reconcile`: the repair of lost messages and dead workers;
  :mod:`~app.services.health`.
"""
