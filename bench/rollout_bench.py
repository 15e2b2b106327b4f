"""Rollout generation speed: the batched engine vs one sample at a time, same model, same prompts.

    python bench/rollout_bench.py --model PATH [--engine hf|vllm] [--questions 8] [--max-new-tokens 64]

Without --model a tiny random-weight model is built (taught the answer format briefly), so the bench
runs anywhere; on a GPU pass a real model dir. Every arm of every question is one request, as in a
rollout. Prints a table and writes bench/results/rollout_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rollout_worker.engines import GenerationRequest, make_engine
from shared_schemas.prompts import build_prompt
from trainer.data import generated_records

ARMS = [(0.2 + 0.1 * (k % 4), 0.95, 42 + k) for k in range(11)]  # (temperature, top_p, seed) per arm


def requests_for(tokenizer, n_questions: int, max_new_tokens: int) -> list[GenerationRequest]:
    questions = generated_records(n_questions, seed=123)
    return [
        GenerationRequest(build_prompt(q["question"], tokenizer), t, p, s, max_new_tokens)
        for q in questions
        for t, p, s in ARMS
    ]


def timed(fn) -> tuple[float, list]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model dir / hub id / adapter; default: a tiny model built here")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--sequential-limit", type=int, default=22, help="requests timed one at a time")
    parser.add_argument("--out", default="bench/results/rollout_bench.json")
    args = parser.parse_args()

    model = args.model
    if model is None:
        from looper.tiny_model import build_tiny_model, teach_format

        model = str(teach_format(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"), steps=60))
    engine = make_engine(args.engine, model, max_batch_size=args.max_batch_size)
    requests = requests_for(engine.tokenizer, args.questions, args.max_new_tokens)

    engine.generate(requests[:2])  # warm-up: kernels, caches, allocator
    batched_s, batched = timed(lambda: engine.generate(requests))
    subset = requests[: args.sequential_limit]
    sequential_s, sequential = timed(lambda: [engine.generate([r])[0] for r in subset])

    batched_tps = sum(g.completion_tokens for g in batched) / batched_s
    sequential_tps = sum(g.completion_tokens for g in sequential) / sequential_s
    rows = [
        {"mode": "one at a time", "requests": len(subset), "seconds": sequential_s, "tokens_per_s": sequential_tps},
        {"mode": "batched (one call)", "requests": len(requests), "seconds": batched_s, "tokens_per_s": batched_tps},
    ]
    table = Table(title=f"rollout generation, engine={engine.name}, {args.max_new_tokens} new tokens max")
    for col in ("mode", "requests", "seconds", "tokens/s", "vs one at a time"):
        table.add_column(col, justify="right")
    for row in rows:
        ratio = row["tokens_per_s"] / sequential_tps
        table.add_row(
            row["mode"], str(row["requests"]), f"{row['seconds']:.2f}", f"{row['tokens_per_s']:.0f}", f"{ratio:.1f}x"
        )
    Console().print(table)
    result = {
        "engine": engine.name,
        "model": args.model or "tiny (built by the bench)",
        "machine": platform.machine(),
        "questions": args.questions,
        "max_new_tokens": args.max_new_tokens,
        "rows": rows,
        "speedup": batched_tps / sequential_tps,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
