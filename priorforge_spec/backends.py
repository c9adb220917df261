"""Each backend's conditions, model options and training hyper-parameters, and the checks of a training
request against them, without importing a model.

The description is ``backends.json`` beside this file. It is written from the real classes (each backend's
config dataclass, ``supported_conditions``, and its trainer's ``hparam_defaults``) by
``python -m training.backend_spec``, and ``tests/test_layers.py`` fails when the two disagree; so the classes
stay the one place where an option is defined. The admin's training form and API validate with it in the
web process, and ``priorforge train`` and the training worker with the same functions.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

SPEC_FILE = Path(__file__).with_name("backends.json")
# config fields the data set and condition decide; a request may not set them
DERIVED_FIELDS = ("image_shape", "condition", "num_classes", "text_encoder", "text_encoder_dim")
# Bounds of a requested value by its JSON type (the classes only give types): enough for any model a CPU or one
# GPU trains, and small enough that a request cannot ask for a layer of 10**9 units (memory) or a float that
# is not a number. The OpenAPI document states them (app/api/openapi.py).
MAX_INT_OPTION = 4096  # widths, channels, dims, blocks
MAX_SEED_OPTION = 2**31 - 1  # options named *seed
MAX_INT_HPARAM = 10_000_000  # counts of steps, codes, epochs
MAX_FLOAT = 10_000.0  # weights, rates, temperatures: finite, from -MAX_FLOAT to MAX_FLOAT
MAX_STRING = 64  # a name of a variant, an upsampling mode...
MAX_LIST = 16  # hidden layer widths


# What each option and hyper-parameter ACCEPTS, beyond its JSON type: the ranges and choices the model and
# trainer classes check when they are built (or would fail on with an IndexError deep inside a layer). A
# request outside them is refused before a run is queued; ``tests/admin/test_option_ranges.py`` checks that
# every choice list matches the classes and that every value on a range's edge builds. Keyed by name, or by
# (backend, name) where one backend differs. A rule: ("int", low, high), ("number", low, high, open_low,
# open_high) (an open end excludes the bound), ("choice", values) or ("numbers", count, low, high, open_high).
_POSITIVE = ("int", 1, MAX_INT_OPTION)
_WEIGHT = ("number", 0.0, MAX_FLOAT, False, False)
_RATE = ("number", 0.0, 10.0, True, False)
_SHARE = ("number", 0.0, 1.0, False, False)
_OPEN_SHARE = ("number", 0.0, 1.0, False, True)
OPTION_RULES: dict[Any, tuple] = {
    "base_channels": _POSITIVE, "hidden_dim": _POSITIVE, "disc_hidden": _POSITIVE, "latent_dim": _POSITIVE,
    "noise_dim": _POSITIVE, "text_dim": ("int", 1, 384), "coupling_hidden": _POSITIVE, "flow_blocks": _POSITIVE,
    "lde_channels": _POSITIVE, "lde_max_channels": _POSITIVE, "num_mixtures": _POSITIVE,
    "max_channels": _POSITIVE, "aux_classes": ("int", 0, 1000), "aux_attributes": ("int", 0, 1000), "permutation_seed": ("int", 0, 2**31 - 1),
    "scale_clamp": ("number", 0.0, 100.0, True, False), "temperature": ("number", 0.0, 100.0, True, False),
    "upsample": ("choice", ("transpose", "nearest")), "code_norm": ("choice", ("batch", "layer")),
    "class_prior": ("choice", ("gaussian", "flow", "standard")),
    ("lde", "variant"): ("choice", ("ae", "iae")), ("pga", "variant"): ("choice", ("lpga", "vpga")),
    ("glf", "latent_dim"): ("int", 2, MAX_INT_OPTION),
}
HPARAM_RULES: dict[Any, tuple] = {
    "beta1": _OPEN_SHARE, "momentum": _OPEN_SHARE, "flow_betas": ("numbers", 2, 0.0, 1.0, True),
    "lde_fraction": _OPEN_SHARE, "lde_holdout": _OPEN_SHARE, "iae_warmup_fraction": ("number", 0.0, 1.0, True, False),
    "warmup_fraction": _SHARE, "final_lr_fraction": _SHARE, "ema_decay": ("number", 0.0, 1.0, False, True),
    "flow_lr": _RATE, "lde_lr": _RATE, "prior_lr": _RATE, "radius_scale": ("number", 0.0, MAX_FLOAT, True, False),
    "lde_batch_size": ("int", 1, MAX_INT_HPARAM), "lde_max_codes": ("int", 1, MAX_INT_HPARAM),
    "iae_start_dims": ("int", 1, MAX_INT_OPTION), "lde_steps_per_step": ("int", 1, 1000),
    "lde_steps": ("int", 0, MAX_INT_HPARAM), "prior_codes": ("int", 2, MAX_INT_HPARAM),
    "warmup_steps": ("int", 0, MAX_INT_HPARAM), "lr_halve_epochs": ("int", 0, MAX_INT_HPARAM),
    "optimizer": ("choice", ("adam", "sgd")),
    # the weights of loss terms, noise levels and caps: 0 (off) or more
    **{name: _WEIGHT for name in (
        "aux_class_weight", "code_adv_weight", "info_weight", "real_q_weight", "rec_feature_weight",
        "rec_pixel_weight", "text_noise", "diversity_weight", "diversity_cap", "nll_weight", "flow_weight_decay",
        "alpha", "beta", "gamma", "vkld", "vrec", "kl_weight")},
}


def value_rule(backend: str, name: str, *, hparam: bool = False) -> tuple | None:
    """The range or choices of ``backend``'s option (or hyper-parameter) ``name``; None: only its JSON type."""
    rules = HPARAM_RULES if hparam else OPTION_RULES
    return rules.get((backend, name), rules.get(name))


def describe_rule(rule: tuple) -> str:
    """A rule in words, for the 422 and the docs: ``an integer from 1 to 4096``, ``one of 'a', 'b'``..."""
    kind = rule[0]
    if kind == "int":
        return f"an integer from {rule[1]} to {rule[2]}"
    if kind == "choice":
        return "one of " + ", ".join(repr(v) for v in rule[1])
    if kind == "numbers":
        return f"a list of {rule[1]} numbers, each from {rule[2]:g} to {rule[3]:g}" + \
            (f" (below {rule[3]:g})" if rule[4] else "")
    low, high, open_low, open_high = rule[1:]
    low_text = f"above {low:g}" if open_low else f"from {low:g}"
    high_text = f"below {high:g}" if open_high else f"at most {high:g}"
    return f"a number {low_text} and {high_text}"


def _in_rule(value: Any, rule: tuple) -> bool:
    kind = rule[0]
    if kind == "int":
        return _is_int(value) and rule[1] <= value <= rule[2]
    if kind == "choice":
        return isinstance(value, str) and value in rule[1]
    if kind == "numbers":
        return isinstance(value, (list, tuple)) and len(value) == rule[1] and all(
            _in_rule(v, ("number", rule[2], rule[3], False, rule[4])) for v in value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    low, high, open_low, open_high = rule[1:]
    return (low < value if open_low else low <= value) and (value < high if open_high else value <= high)


class SetupError(ValueError):
    """A training request that cannot work; ``field`` names what to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@functools.cache
def backends() -> dict[str, dict[str, Any]]:
    """Backend name -> ``{"supported_conditions", "model_options": {name: {"type", "default"}}, "hparams"}``."""
    return json.loads(SPEC_FILE.read_text())


def backend_names() -> list[str]:
    return sorted(backends())


def describe(backend: str) -> dict[str, Any]:
    """The description of ``backend``; SetupError("backend") listing the valid names otherwise."""
    try:
        return backends()[backend]
    except (KeyError, TypeError):
        raise SetupError("backend", f"unknown backend {backend!r}; valid backends: "
                                    f"{', '.join(backend_names())}") from None


def check_condition(backend: str, condition: str, supported: tuple[str, ...] | list[str] | None = None) -> None:
    """SetupError("condition") unless ``backend`` supports ``condition`` (``supported``: the model class's own
    ``supported_conditions`` when the caller has it in hand)."""
    supported = describe(backend)["supported_conditions"] if supported is None else supported
    if condition not in supported:
        raise SetupError("condition", f"backend {backend!r} supports the conditions "
                                      f"{', '.join(supported)}, not {condition!r}")


def option_default(option: dict[str, Any]) -> Any:
    """An option's default as the config class has it (JSON has no tuples: a list stands for one)."""
    default = option["default"]
    return tuple(default) if isinstance(default, list) else default


def int_bounds(name: str, *, hparam: bool = False) -> tuple[int, int]:
    """The range of an integer option or hyper-parameter."""
    if name.endswith("seed"):
        return 0, MAX_SEED_OPTION
    return 0, MAX_INT_HPARAM if hparam else MAX_INT_OPTION


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_problem(value: Any, default: Any, bounds: tuple[int, int] = (0, MAX_INT_OPTION)) -> str | None:
    """Why ``value`` cannot replace ``default`` (None when it can): its JSON type and bounds. JSON has no
    tuples: lists stand for them."""
    import math

    low, high = bounds
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if _is_int(value) and low <= value <= high else f"an integer from {low} to {high}"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and -MAX_FLOAT <= value <= MAX_FLOAT
        return None if ok else f"a number from {-MAX_FLOAT:g} to {MAX_FLOAT:g}"
    if isinstance(default, str):
        return None if isinstance(value, str) and len(value) <= MAX_STRING else \
            f"a string of at most {MAX_STRING} characters"
    if isinstance(default, (tuple, list)) and any(isinstance(v, float) for v in default):
        ok = isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_LIST and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_FLOAT
            for v in value)
        return None if ok else f"a list of 1 to {MAX_LIST} numbers"
    if isinstance(default, (tuple, list)):
        ok = isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_LIST and \
            all(_is_int(v) and 1 <= v <= MAX_INT_OPTION for v in value)
        return None if ok else f"a list of positive integers (1 to {MAX_LIST} of them, each at most {MAX_INT_OPTION})"
    if default is None:  # a hyper-parameter whose default is "derived" (null): null or a number
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value) and -MAX_INT_HPARAM <= value <= MAX_INT_HPARAM)
        return None if ok else "null or a number"
    return None


def _example_of(annotation: str) -> Any:
    """A value of the type an annotation such as ``int | None`` names (the configs use string annotations)."""
    first = annotation.replace("None", "").split("|")[0]
    if "tuple" in first or "list" in first:
        return (1,)
    for name, example in (("bool", False), ("int", 0), ("float", 0.0), ("str", "")):
        if name in first:
            return example
    return None


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a very long integer"
    return text if len(text) <= 80 else text[:80] + "..."


def check_model_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as config values of ``backend``: known, settable fields of the right JSON type."""
    fields = describe(backend)["model_options"]
    settable = sorted(set(fields) - set(DERIVED_FIELDS))
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in settable:
            raise SetupError(f"model_options.{key}", f"backend {backend!r} has no model option {key!r}; "
                                                     f"valid: {', '.join(settable)}")
        default = option_default(fields[key])
        if default is None:  # an optional field ("int | None"): null keeps the default, else check the type
            if value is None:
                continue
            default = _example_of(fields[key]["type"])
        problem = _type_problem(value, default, int_bounds(key))
        rule = value_rule(backend, key)
        if problem is None and rule is not None and not _in_rule(value, rule):
            problem = describe_rule(rule)
        if problem:
            raise SetupError(f"model_options.{key}", f"model option {key!r} of {backend} must be {problem}, got "
                                                     f"{_short(value)}")
        out[key] = tuple(value) if isinstance(default, tuple) else value
    return out


def check_hparams(backend: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` against the backend trainer's ``hparam_defaults`` (names and JSON types)."""
    defaults = describe(backend)["hparams"]
    for key, value in hparams.items():
        if key not in defaults:
            raise SetupError(f"hparams.{key}", f"backend {backend!r} has no hyper-parameter {key!r}; "
                                               f"valid: {', '.join(sorted(defaults))}")
        problem = _type_problem(value, defaults[key], int_bounds(key, hparam=True))
        rule = value_rule(backend, key, hparam=True)
        if problem is None and rule is not None and value is not None and not _in_rule(value, rule):
            problem = describe_rule(rule) + (" (or null: the default)" if defaults[key] is None else "")
        if problem:
            raise SetupError(f"hparams.{key}", f"hyper-parameter {key!r} must be {problem}, got {_short(value)}")
    return dict(hparams)
