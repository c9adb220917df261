"""Shared pieces of the benchmark scripts: the machine record, timing, and the two output formats
(a markdown table for people, one ``BENCH_JSON {...}`` line for programs)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

JSON_PREFIX = "BENCH_JSON "

# config fields that shrink a model for --quick runs (each backend takes the ones its config has)
TINY_MODEL = {"base_channels": 8, "hidden_dim": 32, "disc_hidden": 32, "max_channels": 16, "coupling_hidden": 16,
              "num_mixtures": 4, "lde_max_channels": 16, "code_disc_hidden": [32, 32]}


def counts(text: str) -> list[int]:
    """An argparse ``type``: whole numbers >= 1, comma-separated (``"1,8,32"``); argparse names the flag."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1, comma-separated, got {text!r}")
    return values


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    return torch.device(name)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on (recorded at the start, before the load of the run itself)."""
    info: dict[str, Any] = {
        "cpu_cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Median wall and CPU seconds of one timed call (CPU: this process, all threads)."""

    wall: float
    cpu: float


def time_call(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; the medians of wall and CPU time."""
    for _ in range(warmup):
        fn()
    sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return Timing(statistics.median(walls), statistics.median(cpus))


def model_overrides(config_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``config_class``."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in values.items() if k in fields}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(table: str, payload: dict[str, Any], json_out: str | None = None) -> None:
    """Print the markdown table, then the JSON line; also write the JSON to ``json_out`` when given."""
    if json_out:
        Path(json_out).write_text(json.dumps(payload, indent=1))
    print(table, flush=True)
    print(JSON_PREFIX + json.dumps(payload, sort_keys=True), flush=True)


def parse_json_line(stdout: str) -> dict[str, Any]:
    """The payload of the last ``BENCH_JSON`` line of a script's output."""
    lines = [line for line in stdout.splitlines() if line.startswith(JSON_PREFIX)]
    if not lines:
        raise ValueError("no BENCH_JSON line in the output")
    return json.loads(lines[-1][len(JSON_PREFIX):])
