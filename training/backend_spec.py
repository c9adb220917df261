"""Writes ``priorforge_spec/backends.json``, the torch-free description of every backend, from the real
classes: ``python -m training.backend_spec`` after adding a backend, a config field or a hyper-parameter.

``tests/test_layers.py`` compares :func:`describe_backends` with the file and fails, naming this command,
when they differ.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from generation.registry import BACKENDS, get_model_class
from priorforge_spec.backends import SPEC_FILE
from training.registry import get_trainer_class


def _option(field: dataclasses.Field[Any]) -> dict[str, Any]:
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        raise TypeError(f"config field {field.name!r} has no default")
    if isinstance(default, list):
        raise TypeError(f"config field {field.name!r}: a list default reads back as a tuple; use a tuple")
    return {"type": str(field.type), "default": list(default) if isinstance(default, tuple) else default}


def describe_backends() -> dict[str, dict[str, Any]]:
    """What ``priorforge_spec.backends`` needs of each registered backend."""
    out = {}
    for name in sorted(BACKENDS):
        model_cls = get_model_class(name)
        out[name] = {
            "supported_conditions": list(model_cls.supported_conditions),
            "model_options": {f.name: _option(f) for f in dataclasses.fields(model_cls.config_class)},
            "hparams": dict(get_trainer_class(name).hparam_defaults),
        }
    return out


def render() -> str:
    return json.dumps(describe_backends(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    SPEC_FILE.write_text(render())
    print(f"wrote {SPEC_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
