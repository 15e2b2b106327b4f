"""Rollout throughput of K engines sharing one GPU, against one engine, in the same run.

    python bench/rollout_engines_bench.py --model DIR --questions FILE [--engines 1,2,3,4] [--max-questions 1000]
        [--max-num-seqs vllm,512] [--max-new-tokens 512] [--batch-size 64] [--engine vllm] [--stub]
        [--figures bench/figures.json]

Each K runs `looper rollouts` as a user would (`run_rollouts`: every arm of every question, scored by a local
`looper serve`) with `data_parallel_size=K, engines_per_gpu=K`: K worker processes on the one GPU this process
sees, each with gpu_memory_utilization / K and a shard of the questions, for each `--max-num-seqs` (each engine's
running-batch cap, CUDA graphs captured up to it; `vllm`: vLLM's own default, 1,024 sequences with graphs up to
512 on a large GPU). Every arm gets the same questions, arms, batch size and token budget, into a fresh output,
in a process of its own. The first cap at K = 1 is the baseline.

Two rates per K:
- generation tok/s: completion tokens over the span from the first batch's start to the last batch's end,
  across all engines (from the runs' metrics; engine start-up and the final scoring are outside it);
- wall tok/s: completion tokens over the whole run, engine start-ups (one after another on a GPU) included.

Prints a table, writes bench/results/rollout_engines_bench.json and, with --figures, records `rollouts_tok_s`
(the best arm's median generation rate over its repeats) and `rollouts_vs_single_engine` (that over the first
arm's median) in that file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from looper_common.isolation import run_isolated
from looper_common.jsonl import read_complete_lines, write_json
from looper_common.local_service import local_service
from rollout_worker.worker import RolloutConfig, run_rollouts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import gpu_name, record_figures, stamp  # noqa: E402


def generation_span(metrics: list[dict]) -> float:
    """Seconds from the first batch's start to the last batch's end, over every engine's batches."""
    starts = [m["finished_at"] - m["generate_seconds"] for m in metrics]
    return max(m["finished_at"] for m in metrics) - min(starts)


def parse_caps(text: str) -> list[int | None]:
    """`vllm,512` -> [None, 512]: `vllm` is vLLM's own default cap."""
    return [None if cap.strip() == "vllm" else int(cap) for cap in text.split(",")]


def run_one(args, arm: int, k: int, cap: int | None, workdir: Path, url: str, token_file: Path) -> dict:
    output = workdir / f"arm-{arm}-engines-{k}-seqs-{cap or 'vllm'}" / "rollouts.jsonl"
    config = RolloutConfig(
        questions_file=args.questions, output_file=str(output), model=args.model, engine=args.engine,
        service_url=url, token_file=str(token_file), max_questions=args.max_questions, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, data_parallel_size=k, engines_per_gpu=k,
        gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager, max_num_seqs=cap,
    )  # fmt: skip
    started = time.perf_counter()
    summary = run_isolated(run_rollouts, config)  # a fresh process: no GPU memory left over from the last arm
    wall = time.perf_counter() - started
    metrics = read_complete_lines(output.with_name(output.name + ".metrics.jsonl"))
    tokens = summary["completion_tokens"]
    span = generation_span(metrics)
    preempted = [m["preemptions"] for m in metrics if m.get("preemptions") is not None]
    return {
        "engines": k,
        "max_num_seqs": cap or "vllm",
        "preemptions": sum(preempted) if preempted else None,  # every batch's, every engine's
        "questions": summary["records"],
        "completion_tokens": tokens,
        "generation_span_s": round(span, 2),
        "generation_tok_s": round(tokens / span, 1),
        "wall_s": round(wall, 2),
        "wall_tok_s": round(tokens / wall, 1),
    }


def arm_medians(rows: list[dict]) -> dict[tuple, float]:
    """Each arm's (engines, cap) median generation tok/s over its repeats, in the order the arms first ran."""
    arms: dict[tuple, list[float]] = {}
    for r in rows:
        arms.setdefault((r["engines"], r["max_num_seqs"]), []).append(r["generation_tok_s"])
    return {arm: round(statistics.median(rates), 1) for arm, rates in arms.items()}


def figures_from(rows: list[dict], command: str) -> list[dict]:
    """The best arm's median rate, and its ratio to the first arm's (one engine, the first cap)."""
    medians = arm_medians(rows)
    first = next(iter(medians))
    best = max(medians, key=medians.get)
    repeats = sum(1 for r in rows if (r["engines"], r["max_num_seqs"]) == best)
    shared = {
        "baseline": {"engines": first[0], "max_num_seqs": first[1], "value": medians[first]},
        "setting": {"engines_per_gpu": best[0], "max_num_seqs": best[1], "median_of": repeats},
        **stamp(command),
    }
    return [
        {"name": "rollouts_tok_s", "value": medians[best], "unit": "completion tokens/s", **shared},
        {"name": "rollouts_vs_single_engine", "value": round(medians[best] / medians[first], 2), "unit": "x", **shared},
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model dir")
    parser.add_argument("--questions", required=True, help="JSONL of {id, question, answer} (`looper data`)")
    parser.add_argument("--engines", default="1,2,3,4", help="engine counts to compare; 1 is the baseline")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--max-questions", type=int, default=1000)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument(
        "--max-num-seqs",
        default="512",
        help="each engine's running-batch caps to compare, `vllm` for vLLM's default; repeat a cap to run it again "
        "(the figures take each arm's median)",
    )
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
    caps = parse_caps(args.max_num_seqs)

    command = "python bench/rollout_engines_bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="engines-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    with local_service(stub=args.stub, log_path=workdir / "service.log") as service:
        token_file = workdir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(service.token)
        for k in engines:
            for cap in caps:
                rows.append(run_one(args, len(rows), k, cap, workdir, service.url, token_file))
                print(json.dumps(rows[-1]), flush=True)

    base = rows[0]["generation_tok_s"]
    table = Table(title=f"rollouts, {rows[0]['questions']} questions x 11 arms, <= {args.max_new_tokens} tokens")
    for column in ("engines", "max seqs", "preempted", "tokens", "gen tok/s", "vs first", "wall s", "wall tok/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["engines"]), str(r["max_num_seqs"]), str(r["preemptions"]), str(r["completion_tokens"]),
            f"{r['generation_tok_s']:,.0f}",
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
