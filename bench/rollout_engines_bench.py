"""Rollout throughput of K engines sharing one GPU, against one engine, in the same run.

    python bench/rollout_engines_bench.py --model DIR --questions FILE [--engines 1,2,3,4] [--max-questions 1000]
        [--max-new-tokens 512] [--batch-size 64] [--engine vllm] [--stub] [--figures bench/figures.json]

Each K runs `looper rollouts` as a user would (`run_rollouts`: every arm of every question, scored by a local
`looper serve`) with `data_parallel_size=K, engines_per_gpu=K`: K worker processes on the one GPU this process
sees, each with gpu_memory_utilization / K and a shard of the questions. Every K gets the same questions, arms,
batch size and token budget, into a fresh output.

Two rates per K:
- generation tok/s: completion tokens over the span from the first batch's start to the last batch's end,
  across all engines (from the runs' metrics; engine start-up and the final scoring are outside it);
- wall tok/s: completion tokens over the whole run, engine start-ups (one after another on a GPU) included.

Prints a table, writes bench/results/rollout_engines_bench.json and, with --figures, records `rollouts_tok_s`
(the best K's generation rate) and `rollouts_vs_single_engine` (that rate over K=1's) in that file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from looper_common.jsonl import read_complete_lines, write_json
from looper_common.local_service import local_service
from rollout_worker.worker import RolloutConfig, run_rollouts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import gpu_name, record_figures, version  # noqa: E402


def generation_span(metrics: list[dict]) -> float:
    """Seconds from the first batch's start to the last batch's end, over every engine's batches."""
    starts = [m["finished_at"] - m["generate_seconds"] for m in metrics]
    return max(m["finished_at"] for m in metrics) - min(starts)


def run_one(args, k: int, workdir: Path, url: str, token_file: Path) -> dict:
    output = workdir / f"engines-{k}" / "rollouts.jsonl"
    config = RolloutConfig(
        questions_file=args.questions, output_file=str(output), model=args.model, engine=args.engine,
        service_url=url, token_file=str(token_file), max_questions=args.max_questions, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, data_parallel_size=k, engines_per_gpu=k,
        gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
    )  # fmt: skip
    started = time.perf_counter()
    summary = run_rollouts(config)
    wall = time.perf_counter() - started
    metrics = read_complete_lines(output.with_name(output.name + ".metrics.jsonl"))
    tokens = summary["completion_tokens"]
    span = generation_span(metrics)
    return {
        "engines": k,
        "questions": summary["records"],
        "completion_tokens": tokens,
        "generation_span_s": round(span, 2),
        "generation_tok_s": round(tokens / span, 1),
        "wall_s": round(wall, 2),
        "wall_tok_s": round(tokens / wall, 1),
    }


def figures_from(rows: list[dict], command: str) -> list[dict]:
    one = next(r for r in rows if r["engines"] == 1)
    best = max(rows, key=lambda r: r["generation_tok_s"])
    shared = {
        "baseline": {"engines": 1, "value": one["generation_tok_s"]},
        "setting": {"engines_per_gpu": best["engines"]},
        "command": command,
        "gpu": gpu_name(),
        "date": datetime.date.today().isoformat(),
        "torch": version("torch"),
        "vllm": version("vllm"),
    }
    ratio = round(best["generation_tok_s"] / one["generation_tok_s"], 2)
    return [
        {"name": "rollouts_tok_s", "value": best["generation_tok_s"], "unit": "completion tokens/s", **shared},
        {"name": "rollouts_vs_single_engine", "value": ratio, "unit": "x", **shared},
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model dir")
    parser.add_argument("--questions", required=True, help="JSONL of {id, question, answer} (`looper data`)")
    parser.add_argument("--engines", default="1,2,3,4", help="engine counts to compare; 1 is the baseline")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--max-questions", type=int, default=1000)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="questions per engine call (x 11 arms)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="shared by the K engines")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--stub", action="store_true", help="score with the stub service (no scorer cost)")
    parser.add_argument("--workdir", help="where the rollouts go (default: a temporary folder)")
    parser.add_argument("--out", default="bench/results/rollout_engines_bench.json")
    parser.add_argument("--figures", help="record the headline figures in this file (e.g. bench/figures.json)")
    args = parser.parse_args(argv)
    engines = sorted({int(k) for k in args.engines.split(",")})
    if 1 not in engines:
        parser.error("--engines must include 1, the baseline")

    command = "python bench/rollout_engines_bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="engines-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    with local_service(stub=args.stub, log_path=workdir / "service.log") as service:
        token_file = workdir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(service.token)
        for k in engines:
            rows.append(run_one(args, k, workdir, service.url, token_file))
            print(json.dumps(rows[-1]), flush=True)

    base = rows[0]["generation_tok_s"]
    table = Table(title=f"rollouts, {rows[0]['questions']} questions x 11 arms, <= {args.max_new_tokens} tokens")
    for column in ("engines", "tokens", "gen tok/s", "vs 1", "wall s", "wall tok/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["engines"]), str(r["completion_tokens"]), f"{r['generation_tok_s']:,.0f}",
            f"{r['generation_tok_s'] / base:.2f}x", f"{r['wall_s']:.1f}", f"{r['wall_tok_s']:,.0f}",
        )  # fmt: skip
    Console().print(table)

    result = {"command": command, "gpu": gpu_name(), "args": vars(args), "rows": rows}
    write_json(args.out, result)
    if args.figures:
        record_figures(Path(args.figures), figures_from(rows, command))
    return result


if __name__ == "__main__":
    main()
