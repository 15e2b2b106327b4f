"""Data-parallel rollouts: N worker processes, one GPU each, each generating a disjoint shard of the questions.

vLLM's offline `LLM` runs one replica per process: `LLM(data_parallel_size=N)` raises in vLLM 0.26
("not supported for single-process usage and may hang"; vllm/entrypoints/llm.py), and a dense model needs no
coordination between replicas anyway. So the worker shards the questions itself:

- Question i of the run (file order, after `max_questions`) belongs to shard i % N: a fixed, disjoint split
  that does not depend on what is already done, so a rerun gives every question the same shard.
- Shard k is a child process (`python -m rollout_worker.shard`) running the ordinary single-process
  worker on its questions into `<output>.shard-K-of-N.jsonl`, with its own spool and metrics, so each shard
  resumes as a single run does. `CUDA_VISIBLE_DEVICES` gives it GPU k (tensor_parallel_size GPUs where > 1,
  taken from the GPUs this process sees); with no GPU (HF engine on CPU) it is left alone.
- `engines_per_gpu` K > 1 puts K shards on each GPU (shard k on GPU k // K), each with
  gpu_memory_utilization / K, for a small model whose engine is bound by host work per decode step (on an
  H100 with a 0.5B model it measured no gain over one engine: bench/README.md). vLLM sizes its KV cache from
  the free memory it sees while it profiles, so the engines of one GPU start one after another: a shard
  starts once the one before it on its GPU has built its engine (`<shard>.ready`) or exited; once any shard
  has failed, no more are started.
- With `merge_lora` on vLLM the parent folds the LoRA adapter into its base once, into a temporary checkpoint
  every shard's engine loads (removed when the shards are done), instead of each shard folding it again.
- A shard's log is `<output>.shard-K-of-N.log`; a lock file keeps a second writer off a shard.
- When every shard has finished, the output is rewritten (temp file, then rename) with the records it had
  and the shards' records in question order, the shards' metrics are appended to `<output>.metrics.jsonl`
  with a "shard" field, and the shard files are removed. With per-request seeds (vLLM, and the HF engine's
  per-row streams) a question's trajectories do not depend on its shard, so N shards write what one
  process writes, up to the engine's batch numerics.
- A killed run (parent or child) resumes on rerun with the same N: finished questions are not redone.
  Children die with the parent (PR_SET_PDEATHSIG) and take their own children (vLLM's engine process) along.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from looper_common.jsonl import append_lines, complete_lines, read_complete_lines, rewrite_lines

log = logging.getLogger("looper.rollouts")


class DataParallelError(RuntimeError):
    """A sharded run that cannot start (leftovers of another run, too few GPUs) or whose shards failed."""


SHARD_FILE = re.compile(r"\.shard-(\d+)-of-(\d+)\.jsonl(\.spool)?")
LOCK_WAIT_S = 60.0


def shard_path(output: Path, k: int, n: int) -> Path:
    return output.with_name(f"{output.name}.shard-{k}-of-{n}.jsonl")


def sidecar(path: Path, suffix: str) -> Path:
    """The worker's files beside an output: `.spool`, `.metrics.jsonl`, `.log`, `.summary.json`, `.lock`."""
    return path.with_name(path.name + suffix)


def shard_questions(questions: list[dict], k: int, n: int) -> list[dict]:
    return [q for i, q in enumerate(questions) if i % n == k]


def unfinished_shard_counts(output: Path) -> set[int]:
    """N of every sharded run whose shard outputs or spools are still beside `output` (not merged yet)."""
    if not output.parent.is_dir():
        return set()
    counts = set()
    for path in output.parent.iterdir():
        if path.name.startswith(output.name) and (m := SHARD_FILE.fullmatch(path.name[len(output.name) :])):
            counts.add(int(m.group(2)))
    return counts


def refuse_unfinished_shards(output: Path, n: int) -> None:
    """A run with another N would ignore those shards' work and write its questions twice."""
    other = sorted(unfinished_shard_counts(output) - {n})
    if other:
        raise DataParallelError(
            f"{output}: shard files of an unfinished run with data_parallel_size {other[0]} are beside it "
            f"({output.name}.shard-*-of-{other[0]}.jsonl): rerun with data_parallel_size {other[0]} to finish and "
            "merge them, or delete them to start over"
        )


def shard_devices(n: int, tensor_parallel_size: int = 1, environ=None, engines_per_gpu: int = 1) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each shard: `tensor_parallel_size` GPUs each, shared by `engines_per_gpu`
    consecutive shards, from the GPUs this process sees (its own CUDA_VISIBLE_DEVICES, else all); None for
    every shard where there is no GPU."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    if not ids:
        return [None] * n
    groups = -(-n // engines_per_gpu)  # GPU groups in use: ceil(n / engines_per_gpu)
    need = groups * tensor_parallel_size
    if len(ids) < need:
        per_gpu = f" at {engines_per_gpu} engines per GPU" if engines_per_gpu > 1 else ""
        raise DataParallelError(
            f"data_parallel_size {n} x tensor_parallel_size {tensor_parallel_size}{per_gpu} needs {need} GPUs; "
            f"{len(ids)} visible ({','.join(ids)})"
        )
    tp = tensor_parallel_size
    return [",".join(ids[(k // engines_per_gpu) * tp : (k // engines_per_gpu + 1) * tp]) for k in range(n)]


def raw_records(path: Path) -> list[tuple[str, str]]:
    """(question_id, line) of each complete line, the line as written (merging keeps the bytes)."""

    return [(json.loads(line)["question_id"], line) for line in complete_lines(path)]


def _line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# --- the parent --------------------------------------------------------------------------------------------


def run_data_parallel(config, questions: list[dict]) -> dict:

    n = config.data_parallel_size
    output = Path(config.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    refuse_unfinished_shards(output, n)
    if read_complete_lines(sidecar(output, ".spool")):
        raise DataParallelError(
            f"{sidecar(output, '.spool')} holds generated groups of an unfinished single-process run: "
            "rerun it with data_parallel_size 1 to score them first"
        )
    merged = raw_records(output)
    done = {qid for qid, _ in merged}
    per_gpu = config.engines_per_gpu
    devices = shard_devices(n, config.tensor_parallel_size, engines_per_gpu=per_gpu)
    started = time.monotonic()
    children: dict[int, subprocess.Popen] = {}
    stopped: set[int] = set()
    # the first engine of every GPU at once, then the second of every GPU once the first is built, ...
    to_start = [
        k
        for k in sorted(range(n), key=lambda k: (k % per_gpu, k // per_gpu))
        if has_work(k, n, output, questions, done)
    ]
    folded = fold_adapter_once(config) if to_start else None
    try:
        for k in to_start:
            if devices[k] is not None:
                _wait_until_built({j: children[j] for j in _earlier_on_gpu(k, per_gpu) if j in children}, output, n)
            if any(p.poll() not in (None, 0) for p in children.values()):
                break  # a shard failed: starting more engines would only delay the report below
            sidecar(shard_path(output, k, n), ".ready").unlink(missing_ok=True)
            children[k] = _start_shard(config, k, n, devices[k], folded.name if folded else None)
        _wait(children, output, n, len(questions) - len(done))
    finally:
        for k, process in children.items():
            if process.poll() is None:
                stopped.add(k)
                _stop(process)
        if folded is not None:
            folded.cleanup()
    failed = {k: p.returncode for k, p in children.items() if p.returncode != 0 and k not in stopped}
    if failed or stopped:
        details = "; ".join(
            f"shard {k} exited {code}, log {sidecar(shard_path(output, k, n), '.log')}:\n{_tail(k, output, n)}"
            for k, code in failed.items()
        )
        raise DataParallelError(
            f"{len(failed)} of {n} rollout shards failed and {len(stopped)} were stopped; what they finished is kept "
            f"and a rerun with data_parallel_size {n} resumes. {details}"
        )

    summaries = []
    for k in range(n):
        summary_file = sidecar(shard_path(output, k, n), ".summary.json")
        if k in children and summary_file.exists():
            summaries.append({"shard": k, **json.loads(summary_file.read_text())})

    # merge: the records the output had and every shard's, once each, in question order
    order = {q["id"]: i for i, q in enumerate(questions)}
    rows, seen = [], set()
    for records in [merged, *(raw_records(shard_path(output, k, n)) for k in range(n))]:
        for qid, line in records:
            if qid not in seen:  # a duplicate only after a kill between merging and cleaning up
                seen.add(qid)
                rows.append((order.get(qid, len(order)), len(rows), line))
    rows.sort()
    rewrite_lines(output, [line for _, _, line in rows])
    for k in range(n):
        path = shard_path(output, k, n)
        metrics = [{**m, "shard": k} for m in read_complete_lines(sidecar(path, ".metrics.jsonl"))]
        if metrics:
            append_lines(sidecar(output, ".metrics.jsonl"), [json.dumps(m) for m in metrics])
        for suffix in (".metrics.jsonl", ".summary.json", ".spool", ".lock", ".ready", ""):
            sidecar(path, suffix).unlink(missing_ok=True)

    return {
        "records": len(seen),
        "generated": sum(s["generated"] for s in summaries),
        "scored_from_earlier_spool": sum(s["scored_from_earlier_spool"] for s in summaries),
        "completion_tokens": sum(s["completion_tokens"] for s in summaries),
        # the shards generate side by side: the slowest one's generation time is the run's
        "generate_seconds": max((s.get("generate_seconds", 0.0) for s in summaries), default=0.0),
        "wall_seconds": round(time.monotonic() - started, 3),
        "data_parallel_size": n,
        "shards": summaries,
    }


def has_work(k: int, n: int, output: Path, questions: list[dict], done: set[str]) -> bool:
    """Whether shard k has questions to generate or generated groups to score; if not, its records (if any)
    only wait for the merge."""
    path = shard_path(output, k, n)
    skip = done | {qid for qid, _ in raw_records(path)}
    todo = [q for q in shard_questions(questions, k, n) if q["id"] not in skip]
    return bool(todo or read_complete_lines(sidecar(path, ".spool")))


def fold_adapter_once(config):
    """With `merge_lora` on vLLM and a LoRA adapter as the model: the adapter folded into its base, in a
    temporary dir for every shard's engine to load (the caller removes it). None where there is nothing to fold."""
    from looper_common.modeling import resolve_source
    from rollout_worker.engines import merged_checkpoint, resolve_engine_kind

    if not config.merge_lora or resolve_engine_kind(config.engine) != "vllm":
        return None
    source = resolve_source(config.model, config.base)
    if source.kind != "adapter":
        return None
    return merged_checkpoint(source.path, source.base, config.dtype)


def _earlier_on_gpu(k: int, per_gpu: int) -> range:
    """The shards that share shard k's GPU and start before it."""
    return range(k - k % per_gpu, k)


def _wait_until_built(shards: dict[int, subprocess.Popen], output: Path, n: int) -> None:
    """Until each of these shards has built its engine (its `.ready` file) or exited."""
    while True:
        waiting = [
            k for k, p in shards.items()
            if p.poll() is None and not sidecar(shard_path(output, k, n), ".ready").exists()
        ]  # fmt: skip
        if not waiting:
            return
        time.sleep(0.5)


def _start_shard(config, k: int, n: int, device: str | None, merged_dir: str | None) -> subprocess.Popen:
    path = shard_path(Path(config.output_file), k, n)
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    command = [sys.executable, "-m", "rollout_worker.shard", "--shard", str(k), "--shards", str(n)]
    command += ["--config", json.dumps(asdict(config))]
    if merged_dir is not None:
        command += ["--merged-dir", merged_dir]
    log_file = sidecar(path, ".log").open("ab")
    try:
        log.info("shard %d/%d on %s: log %s", k, n, f"GPU {device}" if device else "the CPU", sidecar(path, ".log"))
        # a session of its own, so that stopping it (killpg) takes vLLM's engine process along too
        return subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
    finally:
        log_file.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by SIGKILL (Linux; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait(children: dict[int, subprocess.Popen], output: Path, n: int, total: int) -> None:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"rollouts x{n}", unit="q")
    try:
        while any(p.poll() is None for p in children.values()):
            if any(p.returncode not in (None, 0) for p in children.values()):
                break  # one failed: the rest are stopped (their work is kept) and the run reports it
            _progress(bar, output, n, total)
            time.sleep(2.0)
        _progress(bar, output, n, total)
    finally:
        bar.close()


def _progress(bar, output: Path, n: int, total: int) -> None:
    bar.n = min(total, sum(_line_count(shard_path(output, k, n)) for k in range(n)))
    bar.refresh()


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _tail(k: int, output: Path, n: int, lines: int = 15) -> str:
    try:
        text = sidecar(shard_path(output, k, n), ".log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --- a shard (the child) --------------------------------------------------------------------------------------


def lock_shard(path: Path):
    """An exclusive lock on the shard, waiting a while for a dying writer of an earlier run to let go."""
    handle = sidecar(path, ".lock").open("a")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: another process is writing this shard") from None
            time.sleep(0.5)
