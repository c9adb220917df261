"""The JSON API under ``/api/v1`` (documented by :mod:`app.api.openapi`, served at ``/api/v1/openapi.json``).
Each route module adds its routes to the one blueprint, :data:`bp`; every rule lives in the service layer."""

from app.api import experiments, images, jobs, reference, service  # noqa: F401  (register their routes on bp)
from app.api.blueprint import bp  # noqa: F401
