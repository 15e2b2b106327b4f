"""Durable JSONL files: what a resumable run writes and reads back (rollouts, their spool, evals, shards).

One policy for a torn last line: a writer appends whole lines and fsyncs (`append_lines`), so a line without
its newline at the end of a file can only be a write that a kill cut short.
- The run that owns the file, resuming (`complete_lines`), cuts it off the file and redoes that row.
- A later stage reading the file (`read_rows`: rollouts, preference pairs, eval predictions, metrics) skips it
  with a warning and leaves the file as it is: it belongs to the run that will resume.
- Any other invalid line is an error naming the file and the line, never skipped.
Every rewrite is atomic (`atomic_write_text`: a temporary file, fsynced, renamed over the old one).

Input files (questions, data sets: `read_jsonl`) are the user's: an invalid line there is an error naming the
file and the line, never skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

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
    # split on "\n" alone: str.splitlines also breaks at U+2028 and friends, which model text written with
    # ensure_ascii=False may hold inside a JSON string
    return [line for line in data[:end].decode("utf-8").split("\n") if line.strip()]


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


def atomic_write_text(path: str | Path, chunks: Iterable[str]) -> str:
    """Replace the file by the concatenated `chunks`, atomically: a temporary file, fsynced, renamed over it, so
    a kill leaves the old file or the new one, never a mix. Returns the new file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    digest = hashlib.sha256()
    with tmp.open("w", encoding="utf-8") as f:
        for chunk in chunks:
            digest.update(chunk.encode())
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return digest.hexdigest()


def rewrite_lines(path: str | Path, rows: Iterable[str]) -> str:
    """Replace the file by `rows` (one JSON document each), atomically; returns the new file's sha256."""
    return atomic_write_text(path, (row + "\n" for row in rows))


def write_json(path: str | Path, data, **dumps) -> str:
    """One JSON document (a manifest, a summary), indented, written atomically; returns its sha256."""
    return atomic_write_text(path, [json.dumps(data, indent=2, **dumps) + "\n"])


class DataError(ValueError):
    """Missing files, malformed JSONL or an unreachable hub: the message says what to do."""


Row = TypeVar("Row")


def read_rows(path: str | Path, parse: Callable[[str], Row] = json.loads, kind: str = "JSON object") -> list[Row]:
    """The rows of a JSONL file an earlier stage wrote, each through `parse` (json.loads, a pydantic model's
    model_validate_json, ...). A torn last line (no newline after it, and not even JSON) is skipped with a
    warning; a missing file or any other line that `parse` refuses (a whole last line of the wrong shape
    included) is a DataError naming the file, the line and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lines = path.read_text(encoding="utf-8").split("\n")
    last = len(lines)  # the text after the last newline: empty, or a line a kill may have cut short
    rows = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(parse(line))
        except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
            if line_no == last and not _is_json(line):
                log.warning("%s: skipping a torn last line of %d bytes (a killed writer)", path, len(line.encode()))
                continue
            raise DataError(f"{path}, line {line_no}: not a {kind} ({_first_error(exc)})") from None
    return rows


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)  # pydantic: the first field that failed
    if callable(errors) and errors():
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'value'}: {first['msg']}"
    return getattr(exc, "msg", None) or str(exc)


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
