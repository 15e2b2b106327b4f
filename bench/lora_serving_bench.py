"""Serving a LoRA adapter on vLLM: through LoRA kernels, or merged into its base. One run, three evals.

    python bench/lora_serving_bench.py --model DIR --data-file runs/data/platinum.jsonl \\
        [--adapter DIR] [--work-dir runs/lora-serving] [--figures bench/figures.json]

Each eval is `looper eval` with the pipeline's eval settings (every question, greedy, `--max-new-tokens`),
in a fresh process, timed as a pipeline eval unit is (process, vLLM start, answers, scoring):
1. the base model (`platinum_eval_wall_s`);
2. the adapter through vLLM's LoRA kernels (`merge_lora` off), the baseline;
3. the adapter merged into its base (`merge_lora` on).

Without --adapter, one of the SFT stage's shape is made (r 64 on all seven projections, PEFT's initialisation,
so B = 0 and its answers are the base's): LoRA's per-token cost does not depend on the weights' values, and
equal answers make the three evals the same work. Writes bench/results/lora_serving_bench.json; with --figures,
records `platinum_eval_wall_s` and `merged_lora_eval_speedup`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import record_from_results, save_results, stamp, stamp_of  # noqa: E402


def sft_shaped_adapter(model: str, out: Path) -> Path:
    """A LoRA adapter over `model` of the SFT stage's default shape, as PEFT initialises it (B = 0)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.sft import SFTStageConfig, lora_config

    config = SFTStageConfig(model=model, train_file="unused")
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora_config(config)).save_pretrained(out)
    return out


def timed_eval(config, env: dict[str, str] | None = None) -> dict:
    """One eval (an EvalConfig) in a fresh process, into an emptied output dir: its wall time and summary.
    `env`: variables for that process only."""
    from looper_common.isolation import run_isolated
    from trainer.pipeline import run_eval_stage

    out = Path(config.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    run_isolated(run_eval_stage, config, env=env)
    wall = round(time.perf_counter() - started, 2)
    summary = json.loads((out / "summary.json").read_text())
    row = {
        "name": config.name,
        "wall_s": wall,
        "generate_s": summary["seconds"],
        "engine_start_s": summary["engine_start_s"],
        "engine_start_parts_s": summary.get("engine_start_parts_s"),  # vLLM: its import, a merge, LLM()
        "preemptions": summary["preemptions"],
        "tokens_per_second": summary["tokens_per_second"],
        "completion_tokens": summary["completion_tokens"]["total"],
        "questions": summary["questions"],
        "correct_strict": summary["correct_strict"],
        "outputs_sha256": summary["outputs_sha256"],
    }
    print(json.dumps(row), flush=True)
    return row


def speedup_figure(lora_generate_s: float, merged_generate_s: float, setting: dict, shared: dict) -> dict:
    """`merged_lora_eval_speedup`: generation seconds through LoRA kernels over generation seconds merged."""
    return {
        "name": "merged_lora_eval_speedup",
        "value": round(lora_generate_s / merged_generate_s, 2),
        "unit": "x",
        "baseline": {
            "what": "generation seconds of the same eval through vLLM's LoRA kernels, same run",
            "value": lora_generate_s,
        },
        "setting": setting,
        **shared,
    }


def figures_from(result: dict) -> list[dict]:
    """`platinum_eval_wall_s` (the base model's eval, wall) and `merged_lora_eval_speedup`: generation time
    through LoRA kernels over generation time merged. Generation, not wall: the evals run one after the other
    on one machine, and vLLM's torch.compile cache, cold for the first, warm for later starts of the same
    architecture, moves engine start-up by tens of seconds (both walls are in the entry's setting)."""
    base, lora, merged = result["runs"]
    shared = stamp_of(result)
    return [
        {
            "name": "platinum_eval_wall_s",
            "value": base["wall_s"],
            "unit": "s",
            "baseline": {
                "what": "the same eval of an SFT-shaped adapter through LoRA kernels, same run",
                "value": lora["wall_s"],
            },
            "setting": {
                "questions": base["questions"],
                "greedy": True,
                "max_new_tokens": result["max_new_tokens"],
                "generate_s": base["generate_s"],
                "engine_start": "the machine's first (cold compile cache)",
            },
            **shared,
        },
        speedup_figure(
            lora["generate_s"],
            merged["generate_s"],
            {"lora": lora, "merged": merged, "order": "base, lora, merged"},
            shared,
        ),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="base model dir")
    parser.add_argument("--data-file", required=True, help="eval JSONL (looper data's platinum.jsonl)")
    parser.add_argument("--adapter", help="a LoRA adapter over --model (default: one of the SFT stage's shape)")
    parser.add_argument("--work-dir", default="runs/lora-serving")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-questions", type=int, default=None)
    parser.add_argument("--engine", default="vllm", help="vllm (hf only to try the script on a CPU)")
    parser.add_argument("--out", default="bench/results/lora_serving_bench.json")
    parser.add_argument("--figures", help="record the figures in this file (e.g. bench/figures.json)")
    parser.add_argument("--from-results", help="run nothing: record the figures of this earlier results JSON")
    args = parser.parse_args(argv)
    if args.from_results:
        return record_from_results(args.from_results, args.figures, figures_from)
    command = "python " + shlex.join(["bench/lora_serving_bench.py", *(argv if argv is not None else sys.argv[1:])])
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    adapter = args.adapter or str(sft_shaped_adapter(args.model, work / "adapter"))
    from trainer.evaluate import EvalConfig

    settings = {"engine": args.engine, "max_new_tokens": args.max_new_tokens, "max_questions": args.max_questions}
    runs = [
        timed_eval(
            EvalConfig(
                model=model,
                data_file=args.data_file,
                output_dir=str(work / name),
                name=name,
                merge_lora=merge,
                **settings,
            )
        )  # fmt: skip
        for name, model, merge in (("base", args.model, False), ("lora", adapter, False), ("merged", adapter, True))
    ]
    result = {
        **stamp(command),
        "max_new_tokens": args.max_new_tokens,
        "adapter": "given" if args.adapter else "SFT-shaped, B = 0",
        "runs": runs,
    }
    save_results(result, args.out, args.figures, figures_from)
    lora = runs[1]
    print(f"{'eval':>8} {'wall s':>8} {'gen s':>7} {'tok/s':>9} {'gen vs lora':>12}")
    for r in runs:
        print(f"{r['name']:>8} {r['wall_s']:>8.1f} {r['generate_s']:>7.1f} {r['tokens_per_second']:>9,.0f} "
              f"{lora['generate_s'] / r['generate_s']:>11.2f}x")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
