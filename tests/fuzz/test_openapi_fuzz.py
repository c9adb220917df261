"""Schemathesis against the live app's own OpenAPI document: every operation, admin ones with an
admin's token, on the embedded default and on PostgreSQL + Redis. A case fails on any 5xx and on any response
the document does not describe (status code, content type, headers, body schema).

The default suite runs a few examples per operation and mode; ``PRIORFORGE_FUZZ_EXAMPLES=150`` runs the long one (see
docs/security.md for the command and its figures). ``PRIORFORGE_FUZZ_REPORT=<file>`` appends each run's counts.
"""

from __future__ import annotations

import atexit
import json
from collections import Counter

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from tests.fuzz.conftest import REPORT, examples

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
COUNTS: dict[str, Counter] = {}


def fuzz(service, setup: str) -> None:
    """Every operation of the app's own document, with schema-valid (positive) and schema-breaking (negative)
    requests, ``examples()`` of each per operation; the failures of all operations are reported together.

    Hypothesis is driven here rather than through ``schema.parametrize()``: Schemathesis' lazy pytest fixtures do
    not work with this project's pytest (9)."""
    app, token = service
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    counts = COUNTS.setdefault(setup, Counter(requests=0, server_errors=0, failures=0))
    failures: list[str] = []

    def run(case) -> None:
        # every operation gets the admin token: the admin ones need it; the public ones ignore it, or (health)
        # answer with details, which the document allows
        response = case.call(headers={"Authorization": f"Bearer {token}"})
        counts["requests"] += 1
        counts["server_errors"] += response.status_code >= 500
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception:
            counts["failures"] += 1
            raise

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19  # the whole document (tests/service/test_api.py matches it to the url_map)
    for operation in operations:
        for mode in GenerationMode:
            @settings(max_examples=examples(), deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def one(case):
                run(case)

            try:
                one()
            except Unsatisfiable:  # nothing to break (no parameters, or a string id any value of fits)
                continue
            except Exception as exc:  # noqa: BLE001  (collected: every operation is fuzzed)
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"[:3000])
    counts["operations"] = len(operations)
    assert not failures, "\n\n".join(failures)


def test_embedded_default(sqlite_service):
    fuzz(sqlite_service, "sqlite")


@pytest.mark.integration
def test_postgres_and_redis(postgres_service):
    fuzz(postgres_service, "postgres")


@atexit.register
def _report() -> None:
    if REPORT and COUNTS:
        with open(REPORT, "a") as handle:
            handle.write(json.dumps({"examples_per_operation_and_mode": examples(),
                                     **{k: dict(v) for k, v in COUNTS.items()}}) + "\n")
