"""Data: GSM8K (hub id or local JSONL), the seeded train/dev split, GSM8K-Platinum, generated problems.

Every record the project writes is `{"id", "question", "answer"}` (answer: a full solution ending in
`#### N`), plus `cleaning_status` for Platinum rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from looper_common.jsonl import DataError, read_jsonl, write_jsonl  # noqa: F401 - re-exported for one release

PLATINUM_USABLE = ("consensus", "verified", "revised")


def _is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists() or source.endswith(".jsonl")


def _from_hub(source: str, config: str | None, split: str) -> list[dict]:
    try:
        from datasets import load_dataset

        return [dict(row) for row in load_dataset(source, config, split=split)]
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise DataError(
            f"could not load {source!r} ({split}) from the Hugging Face hub ({type(exc).__name__}). "
            f"If the hub is not reachable, pass a local JSONL file or a folder holding {split}.jsonl instead."
        ) from None


def load_split(source: str, split: str, config: str | None = None) -> list[dict]:
    """Rows of one split from a JSONL file, a folder with `<split>.jsonl`, or a hub dataset id."""
    if not _is_local(source):
        return _from_hub(source, config, split)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / f"{split}.jsonl"
    return read_jsonl(path)


def split_train_dev(rows: list[dict], dev_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded split of GSM8K train; ids name the source row, so they are stable across seeds."""
    if not 0.0 < dev_fraction < 1.0:
        raise DataError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    records = [
        {"id": f"gsm8k-train-{i:05d}", "question": r["question"], "answer": r["answer"]} for i, r in enumerate(rows)
    ]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_dev = round(len(records) * dev_fraction)
    dev = sorted(order[:n_dev])
    train = sorted(order[n_dev:])
    return [records[i] for i in train], [records[i] for i in dev]


def platinum_records(rows: list[dict], keep: Iterable[str] = PLATINUM_USABLE) -> list[dict]:
    """GSM8K-Platinum rows the set marks usable (others, e.g. 'bad', are dropped), with stable ids."""
    keep = set(keep)
    out = []
    for i, r in enumerate(rows):
        status = r.get("cleaning_status", "consensus")
        if status in keep:
            out.append(
                {"id": f"platinum-{i:04d}", "question": r["question"], "answer": r["answer"], "cleaning_status": status}
            )
    return out


def generated_records(n: int, seed: int, min_steps: int = 1, max_steps: int = 6) -> list[dict]:
    """n generated problems whose solutions take min_steps..max_steps reasoning steps (the generator's range)."""
    from trainer.problems import generate, to_record

    try:
        problems = generate(n, seed=seed, min_steps=min_steps, max_steps=max_steps)
    except ValueError as exc:  # e.g. no template makes that many steps: a data setting to fix, said as such
        raise DataError(f"generated problems: {exc}") from None
    return [to_record(p) for p in problems]


def prepare_data(
    out_dir: str | Path,
    *,
    gsm8k: str | None = None,
    platinum: str | None = None,
    generated: int = 0,
    generated_eval: int = 0,
    generated_min_steps: int = 1,
    generated_max_steps: int = 6,
    dev_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Write train/dev (GSM8K), platinum and generated splits as JSONL plus a manifest; return the manifest."""
    out = Path(out_dir)
    files: dict[str, dict] = {}

    def save(name: str, rows: list[dict]) -> None:
        files[name] = {"rows": len(rows), "sha256": write_jsonl(out / f"{name}.jsonl", rows)}

    if gsm8k:
        train, dev = split_train_dev(load_split(gsm8k, "train", config="main"), dev_fraction, seed)
        save("train", train)
        save("dev", dev)
    if platinum:
        save("platinum", platinum_records(load_split(platinum, "test", config="main")))
    steps = {"min_steps": generated_min_steps, "max_steps": generated_max_steps}
    generated_train = generated_records(generated, seed, **steps) if generated else []
    if generated_train:
        save("generated_train", generated_train)
    if generated_eval:
        # another seed stream, so held-out generated problems never repeat training ones
        train_questions = {r["question"] for r in generated_train}
        held_out = [
            r
            for r in generated_records(generated_eval * 2, seed + 10_000, **steps)
            if r["question"] not in train_questions
        ]
        save("generated_eval", held_out[:generated_eval])
    if not files:
        raise DataError("nothing to prepare: give --gsm8k, --platinum and/or --generated N")
    manifest = {
        "seed": seed,
        "dev_fraction": dev_fraction,
        "sources": {"gsm8k": gsm8k, "platinum": platinum},
        "generated_steps": [generated_min_steps, generated_max_steps],
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
