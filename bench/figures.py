"""`bench/figures.json`, the headline GPU figures: what every bench that records one stamps on it and how an entry
is replaced. The benches import this beside themselves (`sys.path` holds their folder when run as scripts)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from pathlib import Path

from looper_common.jsonl import write_json


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def record_figures(path: Path, entries: list[dict]) -> None:
    """Replace these entries (by name) in the figures file, keeping every other one."""
    figures = json.loads(path.read_text()) if path.exists() else []
    names = {e["name"] for e in entries}
    write_json(path, sorted([f for f in figures if f["name"] not in names] + entries, key=lambda f: f["name"]))


STAMP = ("command", "gpu", "date", "torch", "vllm")


def stamp(command: str) -> dict:
    """What every result and figure says about its run: the command, GPU, date and library versions."""
    return {
        "command": command,
        "gpu": gpu_name(),
        "date": datetime.date.today().isoformat(),
        "torch": version("torch"),
        "vllm": version("vllm"),
    }


def stamp_of(result: dict) -> dict:
    """The stamp a bench's results carry (`stamp`'s keys), for the figures made from them."""
    return {k: result[k] for k in STAMP}


def save_results(result: dict, out: Path, figures: Path | None, figures_from) -> dict:
    """Write a bench's results to `out` and, when a figures file is given, record `figures_from(result)`."""
    write_json(Path(out), result)
    if figures:
        record_figures(Path(figures), figures_from(result))
    return result


def record_from_results(results: Path, figures: Path | None, figures_from) -> dict:
    """A bench's `--from-results`: run nothing, record `figures_from(results)` (when a figures file is given)
    and return the results."""
    result = json.loads(Path(results).read_text())
    if figures:
        record_figures(Path(figures), figures_from(result))
    return result
