"""Durable JSONL files: what a resumable run writes and reads back (rollouts, their spool, evals, shards).

One policy for a torn last line: a writer appends whole lines and fsyncs (`append_lines`), so a line without
its newline at the end of a file can only be a write that a kill cut short; readers of such files
(`complete_lines`) cut it off the file and go on, and the run redoes that row. A rewrite is atomic
(`rewrite_lines`: a temporary file renamed over the old one).

Input files (questions, data sets: `read_jsonl`) are the user's: an invalid line there is an error naming the
file and the line, never skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("looper.jsonl")


def complete_lines(path: Path) -> list[str]:
    """The lines of a JSONL file written by `append_lines`, as written; a torn last line (killed mid-write) is
    cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropping a torn last line of %d bytes", path, len(data) - end)
        with path.open("r+b") as f:
            f.truncate(end)
    return [line for line in data[:end].decode("utf-8").splitlines() if line.strip()]


def read_complete_lines(path: Path) -> list[dict]:
    """Rows of a JSONL file written by `append_lines` (`complete_lines`, parsed)."""
    return [json.loads(line) for line in complete_lines(path)]


def append_lines(path: Path, rows: list[str]) -> None:
    """Append rows (one JSON document each) and fsync: once this returns, they survive a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(row + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def rewrite_lines(path: str | Path, rows: Iterable[str]) -> str:
    """Replace the file by `rows` (one JSON document each), atomically: a temporary file, fsynced, renamed over
    it, so a kill leaves the old file or the new one, never a mix. Returns the new file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    digest = hashlib.sha256()
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            line = row + "\n"
            digest.update(line.encode())
            f.write(line)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return digest.hexdigest()


class DataError(ValueError):
    """Missing files, malformed JSONL or an unreachable hub: the message says what to do."""


def read_jsonl(path: str | Path, required: Iterable[str] = ("question", "answer")) -> list[dict]:
    """The rows of an input JSONL file, each an object with the `required` string fields; DataError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    required = tuple(required)
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object")
            missing = [k for k in required if not isinstance(row.get(k), str)]
            if missing:
                raise DataError(f"{path}, line {line_no}: missing or non-string field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> str:
    """Write rows as JSONL, atomically (`rewrite_lines`); return the file's sha256."""
    return rewrite_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))
