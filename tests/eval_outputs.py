"""Hand-made eval output dirs (predictions.jsonl + summary.json) in the format `looper eval` writes."""

import json
from pathlib import Path


def write_eval(directory: Path, correct: list[bool], statuses: list[str], name: str, noise: float | None = None):
    directory.mkdir(parents=True)
    rows = [
        {
            "id": f"q{i}",
            "question": f"question {i}",
            "output": "...",
            "parsed_strict": "1" if ok else "2",
            "parsed_flexible": "1" if ok else "2",
            "gold": "1",
            "correct_strict": ok,
            "correct_flexible": ok,
            "completion_tokens": 10,
            "cleaning_status": status,
        }
        for i, (ok, status) in enumerate(zip(correct, statuses, strict=True))
    ]
    (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"name": name, "model": f"models/{name}", "engine": "hf", "dtype": "bfloat16", "repeat": None}
    if noise is not None:
        block = {"answers_differ": 3, "correct_flips": 2, "noise_floor_points": noise}
        summary["repeat"] = {"runs": 2, "strict": block, "flexible": block}
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory
