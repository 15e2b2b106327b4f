"""One `looper pipeline` run, timed stage by stage, with the GPU figures it yields.

    python bench/pipeline_bench.py --preset gpu-small --model DIR --gsm8k DIR --platinum DIR \\
        [--work-dir runs/pipeline-bench] [--config YAML] [--set STAGE.FIELD=VALUE ...] [--figures bench/figures.json]

Runs the pipeline as a user would (`python -m looper.cli pipeline ...`, the service started by the pipeline),
then reads what the run left: every unit's seconds (`pipeline_summary.json`), the eval summaries (accuracy,
completion tokens) and GRPO's per-step `step_time` (`rl/metrics.jsonl`). A GRPO step that starts a generation
round (every `steps_per_generation`-th step) holds the round's generation, scoring and one optimizer step; the
other steps are optimizer steps alone, the same-run baseline that shows what generation costs.

Writes bench/results/pipeline_bench.json and, with --figures, records `<preset>_pipeline_wall_s`,
`platinum_eval_wall_s` (the base model's Platinum eval unit: engine start, 1,209 greedy answers, scoring) and
`grpo_round_s` (the median generating step, the first round left out: it holds vLLM's start).
`--summarize WORK_DIR` skips the run and reads an earlier one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from looper_common.jsonl import read_rows, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import gpu_name, record_figures, version  # noqa: E402
from lora_serving_bench import speedup_figure, timed_eval  # noqa: E402


def grpo_rounds(work: Path) -> dict | None:
    """Generating vs optimizer-only GRPO steps, from TRL's `step_time` in the RL stage's metrics."""
    metrics_file, manifest_file = work / "rl" / "metrics.jsonl", work / "rl" / "stage_manifest.json"
    if not metrics_file.is_file() or not manifest_file.is_file():
        return None
    config = json.loads(manifest_file.read_text())["config"]
    every = config["steps_per_generation"]
    times = {r["step"]: r["step_time"] for r in read_rows(metrics_file, kind="RL metrics") if "step_time" in r}
    generating = [t for step, t in sorted(times.items()) if (step - 1) % every == 0]
    optimizer_only = [t for step, t in times.items() if (step - 1) % every != 0]
    if len(generating) < 2 or not optimizer_only:
        return None
    return {
        "rounds": len(generating),
        "prompts_per_round": config["per_device_train_batch_size"] * every // config["num_generations"],
        "num_generations": config["num_generations"],
        "max_completion_length": config["max_completion_length"],
        "use_vllm": config["use_vllm"],
        "first_round_s": round(generating[0], 2),
        "generating_step_median_s": round(statistics.median(generating[1:]), 3),
        "optimizer_step_median_s": round(statistics.median(optimizer_only), 3),
    }


def lora_baseline(work: Path, eval_set: str = "platinum", model: str = "sft") -> dict | None:
    """The same-run baseline for serving an adapter merged: `model`'s Platinum eval unit again, with every
    setting the same but `merge_lora` off (the adapter through vLLM's LoRA kernels), timed the same way (a
    fresh process: engine start, answers, scoring). None where the pipeline did not merge."""
    from trainer.evaluate import EvalConfig

    manifest_file = work / "eval" / eval_set / model / "stage_manifest.json"
    if not manifest_file.is_file():
        return None
    manifest = json.loads(manifest_file.read_text())
    if not manifest["config"].get("merge_lora"):
        return None
    out = work / "eval-lora" / eval_set / model
    lora = timed_eval(EvalConfig(**{**manifest["config"], "merge_lora": False, "output_dir": str(out)}))
    merged_rows = list(read_rows(manifest_file.parent / "predictions.jsonl", kind="predictions"))
    lora_rows = list(read_rows(out / "predictions.jsonl", kind="predictions"))
    merged = json.loads((manifest_file.parent / "summary.json").read_text())
    return {
        "eval_set": eval_set,
        "model": model,
        "merged_s": manifest["seconds"],
        "lora_s": lora["wall_s"],
        "merged_generate_s": merged["seconds"],
        "lora_generate_s": lora["generate_s"],
        "merged_tokens_per_second": merged["tokens_per_second"],
        "lora_tokens_per_second": lora["tokens_per_second"],
        "merged_correct_strict": merged["correct_strict"],
        "lora_correct_strict": lora["correct_strict"],
        "same_outputs": sum(a["output"] == b["output"] for a, b in zip(merged_rows, lora_rows, strict=True)),
        "questions": len(merged_rows),
    }


class GpuMemorySampler:
    """The GPU's used memory (NVML: every process on it, vLLM's engine cores included) once a second, appended
    to `path` as {"t": unix seconds, "used_mib"}. Appended, so a resumed run keeps what the first part saw.
    Samples nothing where NVML or a GPU is missing (CI)."""

    def __init__(self, path: Path, every_s: float = 1.0):
        self.path, self.every_s = path, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuMemorySampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # no NVML library, no driver or no GPU: nothing to sample
            print(f"GPU memory not sampled: {exc!r}")
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def sample():
            with self.path.open("a") as out:
                while not self._stop.is_set():
                    used = pynvml.nvmlDeviceGetMemoryInfo(handle).used // 2**20
                    out.write(json.dumps({"t": round(time.time(), 2), "used_mib": used}) + "\n")
                    out.flush()
                    self._stop.wait(self.every_s)

        self._thread = threading.Thread(target=sample, name="gpu-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def read_manifests(work: Path) -> list[dict]:
    """Every finished unit's stage_manifest.json."""
    return [json.loads(p.read_text()) for p in sorted(work.rglob("stage_manifest.json"))]


def unit_windows(manifests: list[dict]) -> dict[str, tuple[float, float]]:
    """Each finished unit's (start, end) in unix seconds, from its manifest (finished_at to the second, minus
    its seconds)."""
    windows = {}
    for m in manifests:
        if m.get("finished_at") and m.get("seconds") is not None:
            end = datetime.datetime.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%SZ")
            end_s = end.replace(tzinfo=datetime.UTC).timestamp()
            windows[m["unit"]] = (end_s - m["seconds"], end_s)
    return windows


def peak_memory_gib(samples: list[dict], windows: dict[str, tuple[float, float]]) -> dict[str, float | None]:
    """The most GPU memory used while each unit ran (GiB); a second's slack either side, as finished_at is
    rounded down to the second and samples come once a second. None where no sample fell in the window."""
    peaks = {}
    for unit, (start, end) in sorted(windows.items(), key=lambda kv: kv[1]):
        inside = [s["used_mib"] for s in samples if start - 1.0 <= s["t"] <= end + 1.0]
        peaks[unit] = round(max(inside) / 1024, 2) if inside else None
    return peaks


def generation_tok_s(work: Path, evals: dict[str, dict]) -> dict[str, float]:
    """Generated tokens per second of generating time, per unit that generates outside GRPO: the rollouts (their
    batches' metrics) and each eval (`evals`: its summary as `summarize` read it)."""
    rates = {}
    metrics = work / "rollouts" / "rollouts.jsonl.metrics.jsonl"
    if metrics.is_file():
        rows = list(read_rows(metrics, kind="rollout metrics"))
        seconds = sum(r["generate_seconds"] for r in rows)
        if seconds > 0:
            rates["rollouts"] = round(sum(r["completion_tokens"] for r in rows) / seconds, 1)
    return rates | {f"eval:{name}": e["tokens_per_second"] for name, e in evals.items()}


def summarize(work: Path) -> dict:
    """What a run left. A run that stopped early (no pipeline_summary.json) is read from its finished units'
    manifests: `finished` is False and no pipeline wall figure comes from it."""
    summary_file = work / "pipeline_summary.json"
    manifests = read_manifests(work)
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        units = {name: info.get("seconds") for name, info in summary["stages"].items()}
        skipped = summary["skipped"]
    else:
        units, skipped = {m["unit"]: m["seconds"] for m in manifests}, []
    # evals that ran in one engine: the first one's seconds hold the engine's start, the others' none
    shared = {m["unit"]: m["shared_engine"] for m in manifests if m.get("shared_engine")}
    evals = {}
    for path in sorted((work / "eval").glob("*/*/summary.json")):
        s = json.loads(path.read_text())
        evals[f"{path.parent.parent.name}:{path.parent.name}"] = {
            "questions": s["questions"],
            "accuracy_strict": s["accuracy_strict"],
            "correct_strict": s["correct_strict"],
            "mean_completion_tokens": s["completion_tokens"]["mean"],
            "truncated": s["truncated"],
            "tokens_per_second": s["tokens_per_second"],
        }
    memory_file = work / "gpu_memory.jsonl"
    samples = list(read_rows(memory_file, kind="GPU memory samples")) if memory_file.is_file() else []
    peaks = peak_memory_gib(samples, unit_windows(manifests)) if samples else {}
    return {"finished": summary_file.is_file(), "units_s": units, "skipped": skipped, "evals": evals,
            "shared_engine": shared, "grpo": grpo_rounds(work), "peak_gpu_memory_gib": peaks,
            "generation_tok_s": generation_tok_s(work, evals)}  # fmt: skip


GPU_SLOT = {"what": "a 30-minute GPU slot", "value": 1800}  # what a run's and a unit's seconds are held against
HEADLINE_PRESET = "gpu-small"  # its Platinum eval and GRPO round are the project's headline figures, unprefixed


def figures_from(result: dict, command: str) -> list[dict]:
    """The pipeline's wall, one entry per unit (seconds, peak GPU memory, generation rate), and the Platinum eval
    and GRPO round figures; every name but the headline preset's own two begins with the preset's name."""
    slug = result["preset"].replace("-", "_")
    prefix = "" if result["preset"] == HEADLINE_PRESET else f"{slug}_"
    shared = {
        "command": command,
        "gpu": result["gpu"],
        "date": result["date"],
        "torch": result["torch"],
        "vllm": result["vllm"],
    }
    units = result["units_s"]
    figures = []
    if result["finished"]:
        figures.append({
            "name": f"{slug}_pipeline_wall_s",
            "value": result["wall_s"] or result["units_s_sum"],  # summarized: the units' own seconds
            "unit": "s",
            "baseline": GPU_SLOT,
            "setting": {"units_s_sum": result["units_s_sum"]},
            **shared,
        })  # fmt: skip
    for unit, seconds in units.items():
        if seconds is None:  # skipped: ran in an earlier run
            continue
        figures.append({
            "name": f"{slug}_{unit.replace(':', '_')}_s",
            "value": seconds,
            "unit": "s",
            "baseline": GPU_SLOT,
            "setting": {
                "peak_gpu_memory_gib": result.get("peak_gpu_memory_gib", {}).get(unit),
                "generation_tok_s": result.get("generation_tok_s", {}).get(unit),
            },
            **shared,
        })  # fmt: skip
    lora = result.get("lora_baseline")
    if units.get("eval:platinum:base"):
        sft = units.get("eval:platinum:sft")
        served = "merged into its base" if lora else "through LoRA"
        if "eval:platinum:sft" in result.get("shared_engine", {}):
            served += ", in the engine the base's eval started"
        figures.append(
            {
                "name": f"{prefix}platinum_eval_wall_s",
                "value": units["eval:platinum:base"],
                "unit": "s",
                "baseline": {"what": f"the SFT adapter's Platinum eval in the same run ({served})", "value": sft},
                "setting": {"questions": result["evals"].get("platinum:base", {}).get("questions"), "greedy": True},
                **shared,
            }
        )
    if lora:
        # generation, as lora_serving_bench.py records it: the walls hold engine starts, and the LoRA one starts
        # last, with a compile cache the merged engines left cold for LoRA
        speedup = speedup_figure(lora["lora_generate_s"], lora["merged_generate_s"], lora, shared)
        figures.append({**speedup, "name": prefix + speedup["name"]})
    grpo = result.get("grpo")
    if grpo:
        figures.append(
            {
                "name": f"{prefix}grpo_round_s",
                "value": grpo["generating_step_median_s"],
                "unit": "s",
                "baseline": {"what": "an optimizer-only GRPO step, same run", "value": grpo["optimizer_step_median_s"]},
                "setting": {
                    k: grpo[k]
                    for k in ("prompts_per_round", "num_generations", "max_completion_length", "use_vllm", "rounds")
                },  # fmt: skip
                **shared,
            }
        )
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpu-small")
    parser.add_argument("--model", help="base model dir")
    parser.add_argument("--gsm8k", help="GSM8K dir (train/test JSONL)")
    parser.add_argument("--platinum", help="GSM8K-Platinum dir")
    parser.add_argument("--work-dir", default="runs/pipeline-bench")
    parser.add_argument("--config", help="a pipeline config YAML, passed through (looper pipeline --config)")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE", help="passed through")
    parser.add_argument("--summarize", action="store_true", help="read an earlier run in --work-dir; run nothing")
    parser.add_argument("--gpu", help="with --summarize, for a run made on another machine: its GPU's name")
    parser.add_argument("--vllm", help="with --summarize, for a run made on another machine: its vLLM version")
    parser.add_argument("--out", default="bench/results/pipeline_bench.json")
    parser.add_argument("--figures", help="record the headline figures in this file (e.g. bench/figures.json)")
    parser.add_argument(
        "--lora-baseline",
        action="store_true",
        help="after the run, evaluate the SFT adapter again through LoRA kernels (the baseline for merge_lora)",
    )
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    command = "python " + shlex.join(["bench/pipeline_bench.py", *(argv if argv is not None else sys.argv[1:])])

    wall = None
    if not args.summarize:
        if not (args.model and args.gsm8k and args.platinum):
            parser.error("--model, --gsm8k and --platinum are required to run (or pass --summarize)")
        cli = [sys.executable, "-m", "looper.cli", "pipeline", "--preset", args.preset, "--model", args.model,
               "--gsm8k", args.gsm8k, "--platinum", args.platinum, "--work-dir", str(work)]  # fmt: skip
        cli += ["--config", args.config] if args.config else []
        for item in args.set:
            cli += ["--set", item]
        started = time.perf_counter()
        with GpuMemorySampler(work / "gpu_memory.jsonl"):
            subprocess.run(cli, check=True)
        wall = round(time.perf_counter() - started, 1)
    result = {
        "preset": args.preset,
        "wall_s": wall,
        "gpu": args.gpu or gpu_name(),
        "date": datetime.date.today().isoformat(),
        "torch": version("torch"),
        "vllm": args.vllm or version("vllm"),
        "trl": version("trl"),
        **summarize(work),
    }
    ran_with = work / "rl" / "looper_manifest.json"  # a run made elsewhere: the versions it trained with
    if args.summarize and ran_with.is_file():
        result.update({k: v for k, v in json.loads(ran_with.read_text())["versions"].items() if k in ("torch", "trl")})
    result["units_s_sum"] = round(sum(v for v in result["units_s"].values() if v), 1)
    baseline_file = work / "lora_baseline.json"
    if args.lora_baseline and not args.summarize:
        write_json(baseline_file, lora_baseline(work))
    if baseline_file.is_file():
        result["lora_baseline"] = json.loads(baseline_file.read_text())
    write_json(Path(args.out), result)
    shown = ("finished", "wall_s", "units_s_sum", "units_s", "peak_gpu_memory_gib", "grpo")
    print(json.dumps({k: result[k] for k in shown}, indent=2))
    for name, e in result["evals"].items():
        print(f"{name:>20}: {e['correct_strict']}/{e['questions']} strict = {e['accuracy_strict']:.4f}")
    if args.figures:
        if args.summarize:  # the figures' command is the run's, rebuilt from the config it recorded
            ran = json.loads((work / "pipeline_config.json").read_text())
            command = "python " + shlex.join(["bench/pipeline_bench.py", "--preset", args.preset, "--model",
                                              ran["model"], "--gsm8k", ran["gsm8k"], "--platinum", ran["platinum"],
                                              "--work-dir", ran["work_dir"], "--figures", args.figures])  # fmt: skip
        record_figures(Path(args.figures), figures_from(result, command))
    return result


if __name__ == "__main__":
    main()
