"""The HTML pages: the job form, job and batch pages (live progress through the JSON API), gallery, images.

Every rule about what a valid job is lives in :func:`app.services.jobs.validate_job`; the form only turns the
posted strings into the same dict the JSON API receives (numbers parsed where they parse) and shows the
service's message on the form (HTTP 422) with the entered values kept.

The forms are plain POSTs. Each template renders ``form_guard()`` (``_macros.html``), which emits Flask-WTF's
``csrf_token`` hidden field as soon as ``CSRFProtect`` is initialised; the views ignore fields they do not
know, so adding CSRF protection needs no change here.
"""

from app.web import experiments, gallery, jobs, models  # noqa: F401  (register their routes on bp)
from app.web.blueprint import bp  # noqa: F401
