"""Settings are typed and checked once, when the app is made (app/core/settings.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import default_config
from app.core.settings import settings, settings_model
from tests.service.conftest import base_config

REPO = Path(__file__).resolve().parents[2]


def test_every_setting_has_a_type():
    model = settings_model(default_config("instance"))
    assert set(model.model_fields) == set(default_config("instance"))


@pytest.mark.parametrize("bad, named", [
    ({"TASK_TIME_LIMIT": "abc"}, "TASK_TIME_LIMIT must be int, got 'abc'"),
    ({"DB_POOL_SIZE": 2.5}, "DB_POOL_SIZE must be int"),
    ({"RATELIMIT_ENABLED": "yes"}, "RATELIMIT_ENABLED must be bool"),
    ({"LEASE_TIMEOUT": "4"}, "LEASE_TIMEOUT must be float"),
    ({"DEFAULT_MODEL": 3}, "DEFAULT_MODEL must be"),
    ({"TRAINING_EVAL_CLASSIFIER_STEPS": "many"}, "TRAINING_EVAL_CLASSIFIER_STEPS must be"),
])
def test_a_bad_setting_stops_the_app_naming_it(tmp_path, bad, named):
    from app import create_app

    with pytest.raises(ValueError, match=re.escape(named)):
        create_app(base_config(tmp_path, **bad))


def test_values_are_stored_as_their_type_and_kept_as_one_object(tmp_path):
    from app import create_app

    app = create_app(base_config(tmp_path, LEASE_TIMEOUT=3, TRAINING_EVAL_CLASSIFIER_STEPS=5))
    assert app.config["LEASE_TIMEOUT"] == 3.0 and isinstance(app.config["LEASE_TIMEOUT"], float)
    typed = settings(app)
    assert typed.LEASE_TIMEOUT == 3.0 and typed.TRAINING_EVAL_CLASSIFIER_STEPS == 5
    with pytest.raises(ValidationError):  # frozen: one reading for the app's life
        typed.LEASE_TIMEOUT = 1.0


CAST = re.compile(r"\b(int|float|bool)\((cfg|config|current_app\.config|app\.config)\[[\"'][A-Z_0-9]+[\"']\]\)")


def test_the_code_reads_settings_without_casting_them_again():
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for package in ("app", "workers") for path in sorted((REPO / package).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if CAST.search(line)]
    assert not found, "a setting is already its type (app/core/settings.py):\n" + "\n".join(found)
