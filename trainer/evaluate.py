"""`looper eval`: one greedy answer per question over a JSONL set, scored strict and flexible, deterministic.

Every question of the file is evaluated (never a sample, unless `max_questions` asks for the first N).
Prompts are the project's one format (shared_schemas.prompts), answers are parsed by the parser the reward
service uses (shared_schemas.answers), generation goes through the rollout engines (vLLM or HF).

Determinism: batched greedy decoding still depends on which prompts share a batch (padding, kernel
choice), so the batch composition is fixed for a given data set: all prompts are sorted by length once,
cut into chunks, and a chunk is always generated whole, also when a resumed run needs only part of it.
Deterministic torch kernels where torch has them, no TF32, no cuDNN attention (not deterministic, and silent
about it) and fixed seeds are switched on for the run (and restored after); an op with no deterministic kernel
only warns, and the summary names each such op (`nondeterministic_ops`, empty when the claim holds). cuBLAS's
reproducible workspace is set when `looper` starts, before any stage uses the GPU. On vLLM, batch invariance
(`VLLM_BATCH_INVARIANT`) stands in for torch's switches. A resumed eval must match the settings, the GPU model
and the library versions it was started with. `repeat: 2` runs the whole eval again and records how many
answers differ: the measured noise floor.

Output dir: `predictions.jsonl` (one line per question, appended chunk by chunk, so an interrupted eval
resumes), `predictions.repeat-K.jsonl` for repeats, `metrics.jsonl` (per chunk timing), `summary.json`.

`eval_many` evaluates several models over one base (the base itself and LoRA adapters over it) in one
engine: on vLLM one `LLM` with LoRA enabled, each model's chunks generated through its own LoRA request
(the base through none), one model after the other, so every model's batches are the ones a run of its
own would generate; each model's output dir gets exactly what `run_eval` writes, its summary a
`shared_engine` record. `looper eval --model A --model B ...` is its command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from looper_common.config import help_text
from looper_common.jsonl import append_lines, read_complete_lines, rewrite_lines, write_json
from rollout_worker.engines import (
    DEFAULT_MAX_NUM_SEQS,
    Engine,
    GenerationRequest,
    adapter_rank,
    engine_preemptions,
    make_engine,
    resolve_engine_kind,
    same_model,
)
from shared_schemas.answers import extract_answer, parse_gold
from shared_schemas.prompts import build_prompt
from trainer.data import PLATINUM_USABLE, DataError, read_jsonl

log = logging.getLogger("looper.eval")

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
SETTINGS = "eval_settings.json"
# settings that change the answers: a resumed eval must match them
RESUME_KEYS = ("model", "base", "data_sha256", "max_questions", "engine", "dtype", "max_new_tokens", "chunk_size")
RESUME_KEYS += ("max_batch_size", "static_cache", "torch_compile", "seed", "deterministic")
# other kernels, batching, GPU or library
RESUME_KEYS += ("vllm_batch_invariant", "merge_lora", "max_num_seqs", "device", "versions")
# settings every model evaluated in one shared engine must have alike: they build the engine or the run around it
SHARED_KEYS = ("engine", "dtype", "seed", "deterministic", "vllm_batch_invariant", "tensor_parallel_size")
SHARED_KEYS += ("data_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager")
SHARED_KEYS += ("max_batch_size", "static_cache", "torch_compile", "merge_lora", "max_num_seqs")


@dataclass
class EvalConfig:
    model: str = field(
        default="",
        metadata=help_text(
            "hub id, local dir, .gguf, LoRA adapter dir or merged dir; repeat --model [NAME=]PATH to evaluate "
            "a base and LoRA adapters over it in one engine, each into OUTPUT_DIR/NAME"
        ),
    )
    data_file: str = field(default="", metadata=help_text("JSONL of {question, answer[, id, cleaning_status]}"))
    output_dir: str = field(default="runs/eval", metadata=help_text("predictions.jsonl, summary.json, metrics.jsonl"))
    name: str | None = field(default=None, metadata=help_text("label in comparisons (default: the output dir's name)"))
    base: str | None = field(default=None, metadata=help_text("base model of an adapter (default: its recorded base)"))
    engine: Literal["auto", "vllm", "hf"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata=help_text("auto: bf16 on GPUs, fp32 on CPU; float32 for bit-stable answers")
    )
    max_new_tokens: int = field(default=1024, metadata=help_text("per answer; truncated answers are counted"))
    max_questions: int | None = field(default=None, metadata=help_text("only the first N rows (default: all)"))
    chunk_size: int = field(default=256, metadata=help_text("questions per engine call and per write (resume unit)"))
    max_batch_size: int = field(default=64, metadata=help_text("HF engine: rows per generate call"))
    static_cache: bool = field(
        default=False, metadata=help_text("HF engine: static KV cache and bucketed batch shapes (where no vLLM)")
    )
    torch_compile: bool = field(
        default=False, metadata=help_text("HF engine: decode step compiled into CUDA graphs (needs static_cache)")
    )
    repeat: int = field(default=1, metadata=help_text("run the eval N times and report how many answers differ"))
    seed: int = 0
    deterministic: bool = field(
        default=True, metadata=help_text("deterministic torch kernels, no TF32, no cuDNN attention, fixed seeds")
    )
    vllm_batch_invariant: bool = field(
        default=True, metadata=help_text("vLLM: VLLM_BATCH_INVARIANT=1 (answers independent of batching; H100+)")
    )
    tensor_parallel_size: int = 1
    data_parallel_size: int = field(
        default=1, metadata=help_text("1 only (vLLM's offline engine is one replica per process): one eval per GPU")
    )
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    enforce_eager: bool = field(default=False, metadata=help_text("vLLM: no CUDA graphs"))
    max_num_seqs: int | None = field(
        default=DEFAULT_MAX_NUM_SEQS,
        metadata=help_text("vLLM: sequences decoded at once, CUDA graphs captured up to as many"),
    )
    merge_lora: bool = field(
        default=False,
        metadata=help_text(
            "vLLM: serve a LoRA adapter folded into its base, without LoRA kernels (one model per engine)"
        ),
    )

    def __post_init__(self):
        if not self.model or not self.data_file:
            raise ValueError("model and data_file are required")
        for name in ("max_new_tokens", "chunk_size", "max_batch_size", "repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_questions is not None and self.max_questions < 1:
            raise ValueError(f"max_questions must be >= 1, got {self.max_questions}")
        if self.data_parallel_size != 1:
            # vLLM's offline LLM refuses data_parallel_size > 1 in one process (rollout_worker.engines.VLLMEngine)
            raise ValueError(
                f"data_parallel_size {self.data_parallel_size}: eval runs one engine in one process; to use several "
                "GPUs run one `looper eval` per GPU (CUDA_VISIBLE_DEVICES=K), e.g. one per model or data file"
            )


# --- data ---------------------------------------------------------------------------------------------


def load_questions(path: str | Path, max_questions: int | None = None) -> tuple[list[dict], dict]:
    """Rows with ids and parsed gold answers; Platinum rows the set marks unusable are dropped.

    Rows without an id get a stable one from their row number: `platinum-NNNN` for rows that carry a
    cleaning_status (the ids `looper data` gives Platinum), else `row-NNNNN`.
    """
    rows = read_jsonl(path)
    records, skipped = [], Counter()
    for i, row in enumerate(rows):
        status = row.get("cleaning_status")
        if status is not None and status not in PLATINUM_USABLE:
            skipped[status] += 1
            continue
        record_id = row.get("id") or (f"platinum-{i:04d}" if status is not None else f"row-{i:05d}")
        record = {"id": str(record_id), "question": row["question"], "gold": parse_gold(row["answer"])}
        if status is not None:
            record["cleaning_status"] = status
        records.append(record)
    duplicates = [k for k, n in Counter(r["id"] for r in records).items() if n > 1]
    if duplicates:
        raise DataError(f"{path}: {len(duplicates)} duplicate id(s), e.g. {duplicates[:3]}")
    no_gold = [r["id"] for r in records if r["gold"] is None]
    if no_gold:
        raise DataError(f"{path}: {len(no_gold)} row(s) have no parseable gold answer ('#### N'), e.g. {no_gold[:5]}")
    if max_questions is not None:
        records = records[:max_questions]
    info = {
        "data_file": str(path),
        "data_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        "rows_in_file": len(rows),
        "skipped_rows": dict(skipped),
    }
    return records, info


def chunk_plan(prompts: list[str], chunk_size: int) -> list[list[int]]:
    """Indices sorted by prompt length (the engine's own order), cut into chunks: a fixed batch composition."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    return [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]


def score_row(record: dict, prompt: str, output: str, completion_tokens: int, max_new_tokens: int) -> dict:
    strict = extract_answer(output, mode="strict")
    flexible = extract_answer(output, mode="flexible")
    row = {
        "id": record["id"],
        "question": record["question"],
        "prompt": prompt,
        "output": output,
        "parsed_strict": strict,
        "parsed_flexible": flexible,
        "gold": record["gold"],
        "correct_strict": strict is not None and strict == record["gold"],
        "correct_flexible": flexible is not None and flexible == record["gold"],
        "completion_tokens": completion_tokens,
        "truncated": completion_tokens >= max_new_tokens,
    }
    if "cleaning_status" in record:
        row["cleaning_status"] = record["cleaning_status"]
    return row


# --- determinism --------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic_torch(seed: int, enabled: bool = True):
    """Deterministic kernels (warn where none exists), no TF32, fixed seeds; the previous state restored."""
    import torch

    if not enabled:
        yield
        return
    # cuBLAS reads this once, at its first use: `looper` sets it when it starts (looper/cli.py), since in a
    # pipeline SFT has used cuBLAS long before the eval; set here too late, it would change nothing
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            log.warning(
                "CUBLAS_WORKSPACE_CONFIG was not set before CUDA started in this process, so cuBLAS reductions "
                "may not be reproducible: set CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting it"
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.cudnn_sdp_enabled(),
    )
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # cuDNN attention (what SDPA picks for bf16 on H100/H200) is not deterministic and does not warn: on an
    # H200, bf16 greedy reruns differed in 64 of 128 rows with it and in 0 with flash/efficient/math attention
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[4], saved[5]
        torch.backends.cuda.enable_cudnn_sdp(saved[6])


# --- summaries ----------------------------------------------------------------------------------------


def answers_sha256(rows: list[dict]) -> str:
    """sha256 of (id, strict answer, flexible answer) over all questions, by id: equal runs, equal hash."""
    lines = sorted(f"{r['id']}\t{r['parsed_strict']}\t{r['parsed_flexible']}\n" for r in rows)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def outputs_sha256(rows: list[dict]) -> str:
    lines = sorted(f"{r['id']}\t{json.dumps(r['output'])}\n" for r in rows)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _ratio(k: int, n: int) -> float | None:
    return round(k / n, 6) if n else None


def accuracy_block(rows: list[dict]) -> dict:
    n = len(rows)
    strict = sum(r["correct_strict"] for r in rows)
    flexible = sum(r["correct_flexible"] for r in rows)
    return {
        "questions": n,
        "correct_strict": strict,
        "correct_flexible": flexible,
        "accuracy_strict": _ratio(strict, n),
        "accuracy_flexible": _ratio(flexible, n),
    }


def repeat_report(runs: list[list[dict]], max_ids: int = 50) -> dict:
    """How much identical runs disagree: answers, outputs and correctness per question, and accuracy."""
    first = {r["id"]: r for r in runs[0]}
    differing: dict[str, set[str]] = {"outputs": set(), "strict": set(), "flexible": set()}
    flips: dict[str, set[str]] = {"strict": set(), "flexible": set()}
    for run in runs[1:]:
        for r in run:
            a = first[r["id"]]
            if r["output"] != a["output"]:
                differing["outputs"].add(r["id"])
            for mode in ("strict", "flexible"):
                if r[f"parsed_{mode}"] != a[f"parsed_{mode}"]:
                    differing[mode].add(r["id"])
                if r[f"correct_{mode}"] != a[f"correct_{mode}"]:
                    flips[mode].add(r["id"])
    report: dict = {"runs": len(runs), "questions": len(first)}
    report["outputs_differ"] = len(differing["outputs"])
    for mode in ("strict", "flexible"):
        accuracies = [sum(r[f"correct_{mode}"] for r in run) / len(run) for run in runs]
        report[mode] = {
            "answers_differ": len(differing[mode]),
            "correct_flips": len(flips[mode]),
            "accuracy_runs": [round(a, 6) for a in accuracies],
            # the largest accuracy change between identical runs, in points: the noise floor
            "noise_floor_points": round(100 * (max(accuracies) - min(accuracies)), 4),
        }
    report["answers_sha256_runs"] = [answers_sha256(run) for run in runs]
    report["differing_ids"] = sorted(differing["outputs"])[:max_ids]
    return report


def build_summary(config: EvalConfig, info: dict, runs: list[list[dict]], metrics: list[dict], meta: dict) -> dict:
    rows = runs[0]
    tokens = [r["completion_tokens"] for r in rows]
    seconds = sum(m["seconds"] for m in metrics if m["run"] == 1)
    generated = sum(m["questions"] for m in metrics if m["run"] == 1)
    gen_tokens = sum(m["completion_tokens"] for m in metrics if m["run"] == 1)
    statuses = sorted({r["cleaning_status"] for r in rows if "cleaning_status" in r})
    summary = {
        "name": config.name or Path(config.output_dir).name,
        **meta,
        **info,
        "max_questions": config.max_questions,
        **accuracy_block(rows),
        "no_answer_strict": sum(r["parsed_strict"] is None for r in rows),
        "no_answer_flexible": sum(r["parsed_flexible"] is None for r in rows),
        "truncated": sum(r["truncated"] for r in rows),
        "by_cleaning_status": {s: accuracy_block([r for r in rows if r.get("cleaning_status") == s]) for s in statuses},
        "completion_tokens": {
            "total": sum(tokens),
            "mean": round(sum(tokens) / len(tokens), 2) if tokens else 0,
            "max": max(tokens, default=0),
        },
        "seconds": round(seconds, 3),
        "questions_per_second": round(generated / seconds, 3) if seconds else None,
        "tokens_per_second": round(gen_tokens / seconds, 1) if seconds else None,
        "answers_sha256": answers_sha256(rows),
        "outputs_sha256": outputs_sha256(rows),
        "repeat": repeat_report(runs) if len(runs) > 1 else None,
    }
    return summary


# --- the run ------------------------------------------------------------------------------------------


def _versions() -> dict:
    import importlib.metadata as md

    found = {}
    for package in ("torch", "transformers", "vllm"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[package] = md.version(package)
    return found


def _engine_dtype(engine: Engine, requested: str) -> str:
    model = getattr(engine, "model", None)
    if model is not None and hasattr(model, "dtype"):
        return str(model.dtype).removeprefix("torch.")
    with contextlib.suppress(Exception):
        return str(engine.llm.llm_engine.model_config.dtype).removeprefix("torch.")
    return requested


def _device(engine: Engine) -> str:
    import torch

    if getattr(engine, "device", "cuda") == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name()


def predictions_path(out: Path, run: int) -> Path:
    return out / (PREDICTIONS if run == 1 else f"predictions.repeat-{run}.jsonl")


def _check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS
    if path.is_file():
        # a setting added after that eval was started had its default there
        before = {f.name: f.default for f in dataclasses.fields(EvalConfig)} | json.loads(path.read_text())
        changed = [
            f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in RESUME_KEYS if before.get(k) != settings.get(k)
        ]
        if changed:
            raise DataError(
                f"{out} holds an eval with other settings ({'; '.join(changed)}); "
                "use another --output-dir, or delete it to start over"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def run_once(
    engine: Engine,
    config: EvalConfig,
    records: list[dict],
    prompts: list[str],
    plan: list[list[int]],
    path: Path,
    metrics_path: Path,
    run: int,
) -> list[dict]:
    """One full pass (resumed where `path` has lines); returns the rows in data order."""
    from tqdm import tqdm

    done = {r["id"]: r for r in read_complete_lines(path)}
    ids = {r["id"] for r in records}
    stray = set(done) - ids
    if stray:
        raise DataError(f"{path}: {len(stray)} id(s) not in the data set, e.g. {sorted(stray)[:3]}")
    todo = [chunk for chunk in plan if any(records[i]["id"] not in done for i in chunk)]
    desc = "eval" if config.repeat == 1 else f"eval run {run}/{config.repeat}"
    bar = tqdm(total=len(records), initial=len(done), desc=desc, unit="q", dynamic_ncols=True)
    started, generated = time.monotonic(), 0
    for chunk in todo:
        requests = [GenerationRequest(prompts[i], 0.0, 1.0, config.seed, config.max_new_tokens) for i in chunk]
        t0 = time.monotonic()
        generations = engine.generate(requests)  # the whole chunk, always: a fixed batch composition
        seconds = time.monotonic() - t0
        new_rows = [
            score_row(records[i], prompts[i], g.text, g.completion_tokens, config.max_new_tokens)
            for i, g in zip(chunk, generations, strict=True)
            if records[i]["id"] not in done
        ]
        append_lines(path, [json.dumps(r, ensure_ascii=False) for r in new_rows])
        done.update((r["id"], r) for r in new_rows)
        tokens = sum(g.completion_tokens for g in generations)
        append_lines(
            metrics_path,
            [
                json.dumps(
                    {
                        "run": run,
                        "questions": len(chunk),
                        "written": len(new_rows),
                        "completion_tokens": tokens,
                        "seconds": round(seconds, 4),
                    }
                )
            ],
        )
        generated += len(new_rows)
        bar.update(len(new_rows))
        elapsed = time.monotonic() - started
        bar.set_postfix(q_per_s=f"{generated / elapsed:.2f}", tok_per_s=f"{tokens / max(seconds, 1e-9):.0f}")
    bar.close()
    rows = [done[r["id"]] for r in records]
    if todo:  # written chunk by chunk in length order; leave the finished file in data order
        rewrite_lines(path, [json.dumps(r, ensure_ascii=False) for r in rows])
    return rows


def run_eval(config: EvalConfig, engine: Engine | None = None, *, shared_engine: dict | None = None) -> dict:
    """Evaluate (or resume), `config.repeat` times; write and return the summary.

    `shared_engine` (set by `eval_many`): how the engine given is shared, recorded in the summary."""
    started = time.monotonic()
    records, info = load_questions(config.data_file, config.max_questions)
    if not records:
        raise DataError(f"{config.data_file}: no questions to evaluate")
    out = Path(config.output_dir)
    kind = engine.name if engine is not None else resolve_engine_kind(config.engine)
    engine_start_s = None  # an engine given was started elsewhere
    # vLLM's engine process inherits torch's deterministic mode, in which its Inductor compile refuses to run;
    # its answers are made batch-independent by VLLM_BATCH_INVARIANT instead
    torch_deterministic = config.deterministic and kind != "vllm"
    if engine is None:
        if config.vllm_batch_invariant and kind == "vllm":
            os.environ.setdefault("VLLM_BATCH_INVARIANT", "1")
        options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("model", "engine")}
        t0 = time.monotonic()
        with deterministic_torch(config.seed, torch_deterministic):
            engine = make_engine(kind, config.model, **options)
        engine_start_s = round(time.monotonic() - t0, 2)
    meta = {
        "model": config.model,
        "base": config.base,
        "engine": engine.name,
        "dtype": _engine_dtype(engine, config.dtype),
        "device": _device(engine),
        "max_batch_size": config.max_batch_size,
        "chunk_size": config.chunk_size,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "deterministic": torch_deterministic,
        "vllm_batch_invariant": engine.name == "vllm" and os.environ.get("VLLM_BATCH_INVARIANT") == "1",
        "merge_lora": getattr(engine, "merged_from", None) is not None,  # what the engine did, not the setting
        "versions": _versions(),
    }
    if shared_engine is not None:
        meta["shared_engine"] = shared_engine
    _check_settings(out, {**meta, **info, **dataclasses.asdict(config)})
    prompts = [build_prompt(r["question"], engine.tokenizer) for r in records]
    plan = chunk_plan(prompts, config.chunk_size)
    log.info(
        "%d questions from %s, %s engine, %s, %d chunk(s) of <= %d",
        len(records),
        config.data_file,
        meta["engine"],
        meta["dtype"],
        len(plan),
        config.chunk_size,
    )
    runs, preempted_before = [], engine_preemptions(engine)
    # deterministic mode only warns where an op has no deterministic kernel: those warnings are recorded, so
    # the summary says which ops (if any) made the answers depend on more than the settings
    with deterministic_torch(config.seed, torch_deterministic), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for run in range(1, config.repeat + 1):
            runs.append(
                run_once(engine, config, records, prompts, plan, predictions_path(out, run), out / METRICS, run)
            )
    meta["nondeterministic_ops"] = sorted(
        {str(w.message).split("\n")[0] for w in caught if "deterministic" in str(w.message)}
    )
    for message in meta["nondeterministic_ops"]:
        log.warning("not deterministic in this eval: %s", message)
    summary = build_summary(config, info, runs, read_complete_lines(out / METRICS), meta)
    # where this process's time went: the engine's start (a merge included), then generation ("seconds"), the
    # rest is scoring and writing; vLLM's preemptions say whether the batch outgrew the KV cache
    summary["engine_start_s"] = engine_start_s
    if engine_start_s is not None and getattr(engine, "start_s", None):
        summary["engine_start_parts_s"] = engine.start_s  # vLLM: its import, a merge, LLM()
    summary["run_s"] = round(time.monotonic() - started, 2)
    preempted = engine_preemptions(engine)
    summary["preemptions"] = None if preempted is None else preempted - preempted_before
    write_json(out / SUMMARY, summary)
    if summary["truncated"] > 0.05 * summary["questions"]:
        log.warning(
            "%d of %d answers hit max_new_tokens=%d: raise --max-new-tokens",
            summary["truncated"],
            summary["questions"],
            config.max_new_tokens,
        )
    return summary


# --- several models, one engine -----------------------------------------------------------------------


def shared_engine_plan(configs: list[EvalConfig]) -> dict:
    """Check that `configs` can share one engine and say how: their one base and every adapter's LoRA rank.

    One engine serves one base model: every model must be that base (the same hub id or directory) or a LoRA
    adapter over it (its recorded base, or the config's `base`), with the same engine settings (SHARED_KEYS).
    Anything else (an adapter over another base, a merged model, a .gguf) is refused: evaluate it alone.
    """
    from looper_common.modeling import resolve_source

    if not configs:
        raise ValueError("no models to evaluate")
    differ = [k for k in SHARED_KEYS if len({json.dumps(getattr(c, k)) for c in configs}) > 1]
    if differ:
        raise ValueError(f"models evaluated in one engine need the same {', '.join(differ)}")
    outs = Counter(str(Path(c.output_dir).resolve()) for c in configs)
    twice = [o for o, n in outs.items() if n > 1]
    if twice:
        raise ValueError(f"two evaluations write to the same output dir {twice[0]}")
    bases, ranks = [], {}
    for c in configs:
        source = resolve_source(c.model, c.base)
        if source.kind == "gguf":
            raise ValueError(f"{c.model}: a .gguf model cannot share an engine with LoRA adapters; evaluate it alone")
        if source.kind == "adapter":
            bases.append((c.model, source.base, True))
            ranks[c.model] = adapter_rank(source.path)
        else:
            bases.append((c.model, source.path, False))
    # the base's own spec names it where it is evaluated too, else the adapters' recorded base
    base = next((b for _, b, adapter in bases if not adapter), bases[0][1])
    for model, b, adapter in bases:
        if not same_model(b, base):
            what = f"a LoRA adapter over {b}" if adapter else "another model"
            raise ValueError(
                f"{model} is {what}, not the shared base {base} (or a LoRA adapter over it): one engine serves "
                "one base and LoRA adapters over it; evaluate it in a run of its own"
            )
    return {"base": base, "ranks": ranks}


def merged_apart(configs: list[EvalConfig]) -> bool:
    """vLLM with `merge_lora`: every model is merged in an engine of its own, so no engine is shared."""
    return configs[0].merge_lora and resolve_engine_kind(configs[0].engine) == "vllm"


def eval_many(configs: list[EvalConfig]) -> list[dict]:
    """Evaluate several models over one base in one engine; returns their summaries in the order given.

    Each config is one model on one data set (several data sets per model are fine) and its output dir gets
    what `run_eval(config)` writes: the same chunks, resume, settings check and summary, plus a
    `shared_engine` record in the summary. vLLM: one engine on the base with LoRA enabled up to the largest
    adapter's rank; the models run one after the other (all of a model's data sets together, so each
    adapter is loaded once), each through its own LoRA request, the base through none. HF: every model in an
    engine of its own, loaded in turn (the same as separate runs). vLLM with `merge_lora`: every model merged
    in an engine of its own, each in a fresh process (the GPU memory a vLLM engine held is not all given back
    in its process), whatever their bases.

    Beyond what is written, each summary returned carries `window`: when its evaluation ran (unix seconds), the
    first one's from the shared engine's start.
    """
    if merged_apart(configs):
        from looper_common.isolation import run_isolated

        return [run_isolated(run_eval, c) for c in configs]
    plan = shared_engine_plan(configs)
    first = configs[0]
    started = time.time()
    if resolve_engine_kind(first.engine) != "vllm":
        order, evaluate = range(len(configs)), run_eval
    else:
        if first.vllm_batch_invariant:
            os.environ.setdefault("VLLM_BATCH_INVARIANT", "1")
        options = {k: v for k, v in dataclasses.asdict(first).items() if k not in ("model", "engine", "base")}
        rank = max(plan["ranks"].values(), default=None)
        engine = make_engine("vllm", plan["base"], max_lora_rank=rank, **options)
        models = list(dict.fromkeys(c.model for c in configs))
        log.info("one vLLM engine on %s for %d model(s): %s", plan["base"], len(models), ", ".join(models))
        order = sorted(range(len(configs)), key=lambda i: models.index(configs[i].model))

        def evaluate(config: EvalConfig) -> dict:
            view = engine.for_model(config.model, config.base)
            shared = {"base": plan["base"], "models": models, "max_lora_rank": engine.max_lora_rank,
                      "lora_adapter": view.lora is not None}  # fmt: skip
            return run_eval(config, engine=view, shared_engine=shared)

    summaries: list[dict | None] = [None] * len(configs)
    for i in order:
        summaries[i] = evaluate(configs[i])
        ended = time.time()
        summaries[i]["window"], started = [started, ended], ended
    return summaries  # type: ignore[return-value]


def can_share_an_engine(configs: list[EvalConfig]) -> bool:
    """Whether `eval_many` takes these models together: not merged apart, and one base (vLLM then serves them
    all from one engine)."""
    if merged_apart(configs):
        return False
    try:
        shared_engine_plan(configs)
    except ValueError as err:
        log.info("evaluating each model in an engine of its own: %s", err)
        return False
    return True


def split_model_spec(spec: str) -> tuple[str, str]:
    """`NAME=PATH` -> (NAME, PATH); a bare PATH is named after its last component."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and path:
        return name, path
    return Path(spec.rstrip("/")).name, spec


def configs_from_args(args) -> list[EvalConfig]:
    """`looper eval`'s configs: one for a single --model (as ever), one per model for repeated --model."""
    import argparse

    from looper_common.config import config_from_args

    models = args.model if isinstance(args.model, list) else [args.model] if args.model else []
    if len(models) <= 1:
        return [config_from_args(EvalConfig, argparse.Namespace(**{**vars(args), "model": (models or [None])[0]}))]
    if args.name:
        raise SystemExit("looper eval: --name names one model; with several, use --model NAME=PATH")
    named = [split_model_spec(m) for m in models]
    twice = [n for n, k in Counter(n for n, _ in named).items() if k > 1]
    if twice:
        raise SystemExit(f"looper eval: two models are named {twice[0]!r}; use --model NAME=PATH")
    configs = []
    for name, path in named:
        config = config_from_args(EvalConfig, argparse.Namespace(**{**vars(args), "model": path, "name": name}))
        config.output_dir = str(Path(config.output_dir) / name)
        configs.append(config)
    return configs


def main(args) -> None:
    """`looper eval`: one model into --output-dir, or several (--model repeated) into --output-dir/NAME."""
    configs = configs_from_args(args)
    if len(configs) == 1:
        summary = run_eval(configs[0])
        print(format_summary(summary))
        print(f"summary: {Path(configs[0].output_dir) / SUMMARY}")
        return
    try:
        if not merged_apart(configs):  # merged: an engine per model, whatever their bases
            shared_engine_plan(configs)
    except ValueError as exc:
        raise SystemExit(f"looper eval: {exc}") from None
    summaries = eval_many(configs)
    for config, summary in zip(configs, summaries, strict=True):
        print(format_summary(summary))
        print(f"summary: {Path(config.output_dir) / SUMMARY}")


def format_summary(summary: dict) -> str:
    """A few human lines for the terminal."""
    lines = [
        f"{summary['name']}: {summary['questions']} questions, {summary['engine']} {summary['dtype']}",
        f"  accuracy strict {summary['accuracy_strict']:.4f} ({summary['correct_strict']})"
        f"  flexible {summary['accuracy_flexible']:.4f} ({summary['correct_flexible']})",
    ]
    for status, block in summary["by_cleaning_status"].items():
        lines.append(
            f"  {status:>10}: {block['questions']:>5} q  strict {block['accuracy_strict']:.4f}"
            f"  flexible {block['accuracy_flexible']:.4f}"
        )
    if summary["questions_per_second"]:
        lines.append(f"  {summary['seconds']:.1f} s, {summary['questions_per_second']:.2f} q/s")
    if summary["repeat"]:
        rep = summary["repeat"]
        lines.append(
            f"  repeat x{rep['runs']}: {rep['outputs_differ']} outputs and {rep['strict']['answers_differ']} strict "
            f"answers differ, noise floor {rep['strict']['noise_floor_points']:.2f} pts"
        )
    return "\n".join(lines)
