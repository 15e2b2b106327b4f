"""The Platinum eval's wall time, engine start included, under the vLLM engine's batch settings. One run.

    python bench/eval_wall_bench.py --model DIR --data-file runs/data/platinum.jsonl \\
        [--max-new-tokens 512] [--warm-questions 32] [--work-dir runs/eval-wall] [--figures bench/figures.json]
    python bench/eval_wall_bench.py --model M --data-file F --from-results bench/eval_wall_h100.json \\
        --figures bench/figures.json   # re-record the figure of a run

Every arm is `looper eval` of the base model with the pipeline's eval settings (every question, greedy,
`--max-new-tokens`), in a fresh process, timed as a pipeline eval unit is (`timed_eval`):
1. `vllm-default`: vLLM's own running-batch cap (1,024 sequences on a large GPU, CUDA graphs only up to 512),
   256 questions per engine call: the engine as it first was, the baseline;
2. `cap-512-one-call`: at most 512 sequences at once, graphs captured up to 512 (the engine's default now),
   every question in one engine call (`chunk_size` = the question count), so the engine's batch stays full
   until the last answers instead of draining at every chunk's end;
3. `startup-plan`: the same with `VLLM_ENABLE_STARTUP_PLAN=1`: the warm-up's engine records the KV cache size
   its memory profiling found, and the timed engine applies it, skipping that profiling and the CUDA-graph
   memory estimate (a pipeline's evals start the same engine four times);
4. `in-process`: the same with `VLLM_ENABLE_V1_MULTIPROCESSING=0`: vLLM's engine core in the eval's own
   process, no second process and handshake, but detokenizing on the scheduling thread;
5. `plan-in-process`: both.

vLLM caches its compiled graphs by compilation settings, so the arms could find different caches: each arm
first runs a short eval (`--warm-questions`), whose engine start is reported (`cold_start_s`: cold only for
the first arm on a fresh machine, later arms may find the earlier arms' cache), then the timed eval. Each row splits its wall into engine start, generation and the rest (process start, imports,
scoring, writing), and gives vLLM's preemption count. Writes bench/results/eval_wall_bench.json; with
--figures, records `platinum_eval_wall_s` (the fastest arm, against the first arm in the same run).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from looper_common.jsonl import read_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import record_from_results, save_results, stamp, stamp_of  # noqa: E402
from lora_serving_bench import timed_eval  # noqa: E402

PLAN = {"VLLM_ENABLE_STARTUP_PLAN": "1"}
IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
ARMS = (  # name, max_num_seqs (None: vLLM's default), one engine call for every question, environment
    ("vllm-default", None, False, {}),
    ("cap-512-one-call", 512, True, {}),
    ("startup-plan", 512, True, PLAN),
    ("in-process", 512, True, IN_PROCESS),
    ("plan-in-process", 512, True, {**PLAN, **IN_PROCESS}),
)


def run_arm(args, name: str, cap: int | None, one_call: bool, env: dict[str, str], questions: int) -> dict:
    from trainer.evaluate import EvalConfig

    settings = {
        "model": args.model,
        "data_file": args.data_file,
        "engine": args.engine,
        "max_new_tokens": args.max_new_tokens,
        "max_num_seqs": cap,
        "chunk_size": questions if one_call else EvalConfig.chunk_size,
    }
    work = Path(args.work_dir)
    warm = timed_eval(
        EvalConfig(**settings, output_dir=str(work / name / "warm"), name=name, max_questions=args.warm_questions),
        env,
    )
    row = timed_eval(EvalConfig(**settings, output_dir=str(work / name / "timed"), name=name), env)
    return {
        **row,
        "env": env,
        "max_num_seqs": cap or "vllm",
        "chunk_size": settings["chunk_size"],
        "cold_start_s": warm["engine_start_s"],
    }


def figures_from(result: dict) -> list[dict]:
    rows = result["rows"]
    first, best = rows[0], min(rows, key=lambda r: r["wall_s"])
    return [
        {
            "name": "platinum_eval_wall_s",
            "value": best["wall_s"],
            "unit": "s",
            "baseline": {"what": f"the same eval as {first['name']}, same run", "value": first["wall_s"]},
            "setting": {
                "arm": best["name"],
                "questions": best["questions"],
                "greedy": True,
                "max_new_tokens": result["max_new_tokens"],
                "engine_start_s": best["engine_start_s"],
                # the first arm's warm-up is the machine's first vLLM start: no compile cache at all
                "first_start_on_machine_s": rows[0]["cold_start_s"],
                "generate_s": best["generate_s"],
                "engine_start": "warm compile cache (a short eval of the same settings ran first)",
            },
            **stamp_of(result),
        }
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model dir")
    parser.add_argument("--data-file", required=True, help="eval JSONL (looper data's platinum.jsonl)")
    parser.add_argument("--work-dir", default="runs/eval-wall")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--warm-questions", type=int, default=32, help="the short eval before each timed one")
    parser.add_argument("--engine", default="vllm", help="vllm (hf only to try the script on a CPU)")
    parser.add_argument(
        "--arms",
        default=",".join(a[0] for a in ARMS),
        help="the arms to run, in order; the first is the figure's baseline (default: all, %(default)s)",
    )
    parser.add_argument("--out", default="bench/results/eval_wall_bench.json")
    parser.add_argument("--figures", help="record the figure in this file (e.g. bench/figures.json)")
    parser.add_argument("--from-results", help="run nothing: record the figure of this earlier results JSON")
    args = parser.parse_args(argv)
    if args.from_results:
        return record_from_results(args.from_results, args.figures, figures_from)
    command = "python " + shlex.join(["bench/eval_wall_bench.py", *(argv if argv is not None else sys.argv[1:])])
    questions = sum(1 for _ in read_rows(Path(args.data_file), kind="eval questions"))
    known = {a[0]: a for a in ARMS}
    chosen = [name.strip() for name in args.arms.split(",") if name.strip()]
    if not chosen or any(name not in known for name in chosen):
        parser.error(f"--arms {args.arms!r}: name arms among {', '.join(known)}")
    rows = [run_arm(args, *known[name], questions) for name in chosen]
    result = {
        **stamp(command),
        "max_new_tokens": args.max_new_tokens,
        "rows": rows,
    }
    save_results(result, args.out, args.figures, figures_from)
    base = rows[0]["wall_s"]
    print(f"{'arm':>17} {'wall s':>7} {'vs first':>8} {'cold start':>10} {'start':>6} {'gen s':>6} {'rest':>6} "
          f"{'tok/s':>8} {'preempted':>9}")  # fmt: skip
    for r in rows:
        rest = r["wall_s"] - r["engine_start_s"] - r["generate_s"]
        print(f"{r['name']:>17} {r['wall_s']:>7.1f} {base / r['wall_s']:>7.2f}x {r['cold_start_s']:>10.1f} "
              f"{r['engine_start_s']:>6.1f} {r['generate_s']:>6.1f} {rest:>6.1f} {r['tokens_per_second']:>8,.0f} "
              f"{r['preemptions']!s:>9}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
