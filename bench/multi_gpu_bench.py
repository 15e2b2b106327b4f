"""Two GPUs: DPO on 1 vs 2 ranks under `accelerate launch`, and rollouts with data parallel 1 vs 2.

    python bench/multi_gpu_bench.py dpo [--model PATH] [--pairs-file pairs.jsonl] [--max-steps 8]
        [--per-device-train-batch-size 2] [--gradient-accumulation-steps 1] [--learning-rate LR] [--ranks 1,2]
    python bench/multi_gpu_bench.py rollouts [--model PATH] [--questions-file train.jsonl] [--questions 64]
        [--engine auto] [--max-new-tokens 64] [--data-parallel 1,2] [--stub] [--vllm-batch-invariant]

dpo: `looper dpo` (the project's stage, guards and saving included) launched by `accelerate launch
--num_processes 1`, then `--multi_gpu --num_processes 2`, same model, pairs, steps, learning rate, LoRA and seed,
and the same global batch: 1 rank takes per-device B x accumulation 2A, 2 ranks B x A each (A =
--gradient-accumulation-steps). The Trainer's seedable sampler draws one permutation on every rank and accelerate
deals its micro-batches out in turn, so each optimizer step sees the same pairs on 1 and 2 ranks; LoRA dropout is
0 by default (each rank would draw other dropout masks). Each run sees only its ranks' GPUs (CUDA_VISIBLE_DEVICES):
one process seeing two GPUs would wrap the model in nn.DataParallel and double its batch. The loss of every step comes from the runs'
`metrics.jsonl`; reported: both curves, mean and max |difference|, the 1-rank curve's own step-to-step noise (the
standard deviation of its successive differences, which is what "within noise" is judged against), and samples/s
= steps x global batch / the Trainer's train_runtime (the training loop only: no model loading), with the ratio.
With no GPU the ranks run on the CPU (gloo): accelerate's `--cpu` launches one process only, so the bench uses
`--multi_gpu` with ACCELERATE_USE_CPU=true, which torchrun turns into 2 CPU ranks.

rollouts: `looper rollouts` over the same questions with --data-parallel-size 1, then 2 (one process per GPU,
each a shard of the questions; `rollout_worker/parallel.py`), scored by `looper serve` started on 127.0.0.1
(Regime W; --stub for the public stub). Reported: completion tokens, generation seconds (the slowest shard's sum
of engine calls) and wall seconds (model loading and scoring included), tokens/s of both and the ratio, and
whether the outputs match: the files byte for byte, and per question the trajectories' texts. vLLM's batched
bf16 kernels depend on the batch, so sampled texts can differ between 1 and 2 replicas unless
--vllm-batch-invariant (VLLM_BATCH_INVARIANT=1) is given; the HF engine in fp32 on a CPU matches exactly.

Without --model a tiny random-weight model is built, so both parts run on a CPU in about a minute each. Prints a
table and writes bench/results/multi_gpu_bench_<part>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from looper_common.jsonl import read_rows


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(_cuda_devices())]


def device_name(cpu: bool) -> str:
    import torch

    if cpu or not torch.cuda.is_available():
        return "cpu"
    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"


def run_logged(command: list[str], env: dict, log_path: Path, timeout: float | None = None) -> float:
    """Run a command with its output in a log file; its wall seconds; a failure shows the log's tail."""
    start = time.perf_counter()
    with log_path.open("w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {result.returncode}; log {log_path}:\n{tail}")
    return time.perf_counter() - start


def tiny_model(work: Path) -> str:
    from looper.tiny_model import build_tiny_model

    return str(build_tiny_model(work / "tiny"))


def write_json(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


# --- dpo: 1 rank vs 2 ranks ------------------------------------------------------------------------------------


def step_noise(losses: list[float]) -> float:
    """The curve's own step-to-step noise: the standard deviation of its successive differences."""
    steps = [b - a for a, b in zip(losses, losses[1:], strict=False)]
    return statistics.pstdev(steps) if len(steps) > 1 else 0.0


def read_dpo_metrics(path: Path) -> dict:
    """Per-step loss (and DPO margins) and the Trainer's closing speed figures from a run's metrics.jsonl."""
    rows = read_rows(path)
    steps = [r for r in rows if "loss" in r and "train_loss" not in r]
    final = next((r for r in reversed(rows) if "train_runtime" in r), {})
    return {
        "steps": [r["step"] for r in steps],
        "loss": [r["loss"] for r in steps],
        "margins": [r.get("rewards/margins") for r in steps],
        "train_runtime": final.get("train_runtime"),
        "trainer_samples_per_second": final.get("train_samples_per_second"),
        "train_loss": final.get("train_loss"),
    }


def compare_curves(one: dict, two: dict) -> dict:
    common = sorted(set(one["steps"]) & set(two["steps"]))
    a = dict(zip(one["steps"], one["loss"], strict=True))
    b = dict(zip(two["steps"], two["loss"], strict=True))
    diffs = [abs(a[s] - b[s]) for s in common]
    noise = step_noise([a[s] for s in common])
    mean_diff = statistics.fmean(diffs) if diffs else None
    return {
        "steps": common,
        "loss_1_rank": [a[s] for s in common],
        "loss_2_ranks": [b[s] for s in common],
        "abs_diff": diffs,
        "mean_abs_diff": mean_diff,
        "max_abs_diff": max(diffs, default=None),
        "noise_1_rank": noise,
        "within_noise": mean_diff is not None and mean_diff <= noise,
    }


def accumulation_steps(args, ranks: int) -> int:
    """The most ranks accumulate A micro-batches; r ranks A x most / r: one global batch for every run."""
    return args.gradient_accumulation_steps * max(args.ranks) // ranks


def dpo_command(args, ranks: int, out_dir: Path, port: int) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(ranks)]
    launch += ["--num_machines", "1", "--dynamo_backend", "no", "--main_process_port", str(port)]
    if ranks > 1:
        launch += ["--multi_gpu"]
    accumulation = accumulation_steps(args, ranks)
    dpo = ["-m", "looper.cli", "dpo", "--model", args.model, "--pairs-file", args.pairs_file]
    dpo += ["--output-dir", str(out_dir), "--max-steps", str(args.max_steps), "--seed", str(args.seed)]
    dpo += ["--per-device-train-batch-size", str(args.per_device_train_batch_size)]
    dpo += ["--gradient-accumulation-steps", str(accumulation), "--max-length", str(args.max_length)]
    dpo += [
        "--lora-r",
        str(args.lora_r),
        "--lora-alpha",
        str(args.lora_alpha),
        "--lora-dropout",
        str(args.lora_dropout),
    ]
    dpo += ["--logging-steps", "1", "--save-steps", "100000"]
    if args.learning_rate is not None:
        dpo += ["--learning-rate", str(args.learning_rate)]
    return launch + dpo


def work_dir(args, part: str) -> Path:
    """--work-dir (else a temp dir), and a tiny model built in it where --model is not given."""
    work = Path(args.work_dir or tempfile.mkdtemp(prefix=f"multi_gpu_bench_{part}_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        args.model = tiny_model(work)
    return work


def bench_dpo(args) -> dict:
    from looper_common.local_service import free_port

    work = work_dir(args, "dpo")
    if args.pairs_file is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from train_bench import make_pairs_file

        args.pairs_file = str(make_pairs_file(args.model, work / "pairs.jsonl", questions=args.pair_questions))
    pairs = sum(1 for line in Path(args.pairs_file).read_text().splitlines() if line.strip())
    cpu = args.cpu or _cuda_devices() == 0
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if cpu:
        env.update(ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="")
        env.setdefault("OMP_NUM_THREADS", "1")
    elif _cuda_devices() < max(args.ranks):
        raise SystemExit(f"{max(args.ranks)} ranks need {max(args.ranks)} GPUs; {_cuda_devices()} visible")

    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.ranks)
    runs = []
    for ranks in args.ranks:
        out_dir = work / f"dpo-{ranks}rank"
        shutil.rmtree(out_dir, ignore_errors=True)  # a rerun would resume its checkpoint and append its metrics
        Console().print(f"[bold]dpo, {ranks} rank(s)[/bold] ...")
        run_env = dict(env)
        if not cpu:  # one GPU per rank: a single process seeing 2 GPUs would wrap the model in nn.DataParallel
            run_env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_gpus()[:ranks])
        wall = run_logged(dpo_command(args, ranks, out_dir, free_port()), run_env, work / f"dpo-{ranks}rank.log")
        metrics = read_dpo_metrics(out_dir / "metrics.jsonl")
        steps = metrics["steps"][-1] if metrics["steps"] else 0
        runs.append(
            {
                "ranks": ranks,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": accumulation_steps(args, ranks),
                "global_batch": global_batch,
                "optimizer_steps": steps,
                "train_runtime_s": metrics["train_runtime"],
                "samples_per_s": steps * global_batch / metrics["train_runtime"] if metrics["train_runtime"] else None,
                "wall_s": wall,
                **metrics,
            }
        )
    result = {
        "part": "dpo",
        "device": device_name(cpu),
        "model": args.model,
        "pairs_file": args.pairs_file,
        "pairs": pairs,
        "epochs": args.max_steps * global_batch / pairs if pairs else None,
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "model", "pairs_file")},
        "runs": runs,
    }
    if len(runs) >= 2:
        result["comparison"] = compare_curves(runs[0], runs[1])
        r0, r1 = runs[0]["samples_per_s"], runs[1]["samples_per_s"]
        result["comparison"]["samples_per_s_ratio"] = r1 / r0 if r0 and r1 else None

    console = Console(width=140)
    table = Table(title=f"DPO on 1 vs 2 ranks, {result['device']}, global batch {global_batch}")
    for col in ("ranks", "batch x accum", "steps", "train runtime s", "samples/s", "wall s", "first loss", "last loss"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            str(r["ranks"]), f"{r['per_device_train_batch_size']} x {r['gradient_accumulation_steps']}",
            str(r["optimizer_steps"]), f"{r['train_runtime_s']:.2f}", f"{r['samples_per_s']:.2f}", f"{r['wall_s']:.1f}",
            f"{r['loss'][0]:.5f}", f"{r['loss'][-1]:.5f}",
        )  # fmt: skip
    console.print(table)
    if "comparison" in result:
        c = result["comparison"]
        curve = Table(title="loss per step")
        for col in ("step", "1 rank", "2 ranks", "|diff|"):
            curve.add_column(col, justify="right")
        for s, a, b, d in zip(c["steps"], c["loss_1_rank"], c["loss_2_ranks"], c["abs_diff"], strict=True):
            curve.add_row(str(s), f"{a:.6f}", f"{b:.6f}", f"{d:.2e}")
        console.print(curve)
        console.print(
            f"mean |diff| {c['mean_abs_diff']:.2e}, max {c['max_abs_diff']:.2e}; 1-rank step-to-step noise "
            f"{c['noise_1_rank']:.2e}: {'within' if c['within_noise'] else 'NOT within'} noise. "
            f"samples/s 2 ranks / 1 rank: {c['samples_per_s_ratio']:.2f}x"
        )
    return result


# --- rollouts: data parallel 1 vs 2 -------------------------------------------------------------------------------


def compare_outputs(a: Path, b: Path) -> dict:
    ra = {r["question_id"]: r for r in read_rows(a)}
    rb = {r["question_id"]: r for r in read_rows(b)}
    common = [q for q in ra if q in rb]
    arms = all([t["arm_name"] for t in ra[q]["trajectories"]] == [t["arm_name"] for t in rb[q]["trajectories"]] for q in common)  # fmt: skip
    same_q = [
        q for q in common if [t["text"] for t in ra[q]["trajectories"]] == [t["text"] for t in rb[q]["trajectories"]]
    ]
    pairs = [(x, y) for q in common for x, y in zip(ra[q]["trajectories"], rb[q]["trajectories"], strict=False)]
    return {
        "files_identical": a.read_bytes() == b.read_bytes(),
        "same_question_ids": list(ra) == list(rb),
        "same_arms": arms,
        "questions": len(common),
        "questions_with_identical_texts": len(same_q),
        "trajectories": len(pairs),
        "trajectories_identical": sum(x["text"] == y["text"] for x, y in pairs),
        "accuracy": [statistics.fmean(t["correct"] for r in rs.values() for t in r["trajectories"]) for rs in (ra, rb)],
    }


def metrics_generate_seconds(path: Path) -> float:
    """The slowest shard's generation time (sum of its engine calls) from `<output>.metrics.jsonl`."""
    by_shard: dict = {}
    for row in read_rows(path):
        by_shard[row.get("shard")] = by_shard.get(row.get("shard"), 0.0) + row["generate_seconds"]
    return max(by_shard.values(), default=0.0)


def bench_rollouts(args) -> dict:
    from looper_common.local_service import local_service
    from trainer.data import generated_records, write_jsonl

    work = work_dir(args, "rollouts")
    if args.questions_file is None:
        args.questions_file = str(work / "questions.jsonl")
        write_jsonl(args.questions_file, generated_records(args.questions, seed=5))
    cpu = _cuda_devices() == 0
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
    if args.vllm_batch_invariant:
        env["VLLM_BATCH_INVARIANT"] = "1"
    runs = []
    with local_service(stub=args.stub, log_path=work / "service.log") as service:
        env["LOOPER_SERVICE_TOKEN"] = service.token
        for n in args.data_parallel:
            output = work / f"rollouts-dp{n}.jsonl"
            for old in work.glob(f"{output.name}*"):
                if old.is_file():
                    old.unlink()  # a rerun would skip every finished question
            command = [sys.executable, "-m", "looper.cli", "rollouts", "--model", args.model]
            command += ["--questions-file", args.questions_file, "--output-file", str(output)]
            command += ["--service-url", service.url, "--engine", args.engine, "--dtype", args.dtype]
            command += ["--max-questions", str(args.questions), "--batch-size", str(args.batch_size)]
            command += ["--max-new-tokens", str(args.max_new_tokens), "--data-parallel-size", str(n)]
            command += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
            command += ["--max-batch-size", str(args.max_batch_size)]
            if args.max_model_len:
                command += ["--max-model-len", str(args.max_model_len)]
            if args.enforce_eager:
                command += ["--enforce-eager"]
            Console().print(f"[bold]rollouts, data parallel {n}[/bold] ...")
            log = work / f"rollouts-dp{n}.log"
            wall = run_logged(command, env, log)
            summary = json.loads(
                next(line for line in reversed(log.read_text().splitlines()) if line.startswith('{"records"'))
            )
            generate_s = metrics_generate_seconds(Path(f"{output}.metrics.jsonl"))
            tokens = summary["completion_tokens"]
            runs.append(
                {
                    "data_parallel_size": n,
                    "records": summary["records"],
                    "completion_tokens": tokens,
                    "generate_s": generate_s,
                    "wall_s": wall,
                    "generate_tokens_per_s": tokens / generate_s if generate_s else None,
                    "wall_tokens_per_s": tokens / wall,
                    "output": str(output),
                }
            )
    result = {
        "part": "rollouts",
        "device": device_name(False),
        "model": args.model,
        "questions_file": args.questions_file,
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "model", "questions_file")},
        "runs": runs,
    }
    if len(runs) >= 2:
        base, other = runs[0], runs[1]
        result["comparison"] = {
            "generate_tokens_per_s_ratio": other["generate_tokens_per_s"] / base["generate_tokens_per_s"]
            if base["generate_tokens_per_s"] and other["generate_tokens_per_s"]
            else None,
            "wall_tokens_per_s_ratio": other["wall_tokens_per_s"] / base["wall_tokens_per_s"],
            **compare_outputs(Path(base["output"]), Path(other["output"])),
        }

    console = Console(width=140)
    table = Table(
        title=f"rollouts, data parallel, {result['device']}, engine {args.engine}, {args.questions} questions"
    )
    for col in ("data parallel", "records", "tokens", "generate s", "tokens/s (generate)", "wall s", "tokens/s (wall)"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            str(r["data_parallel_size"]), str(r["records"]), str(r["completion_tokens"]), f"{r['generate_s']:.2f}",
            f"{r['generate_tokens_per_s']:.0f}", f"{r['wall_s']:.1f}", f"{r['wall_tokens_per_s']:.0f}",
        )  # fmt: skip
    console.print(table)
    if "comparison" in result:
        c = result["comparison"]
        console.print(
            f"tokens/s ratio: generate {c['generate_tokens_per_s_ratio']:.2f}x, wall {c['wall_tokens_per_s_ratio']:.2f}x; "
            f"files identical: {c['files_identical']}; questions with identical texts "
            f"{c['questions_with_identical_texts']}/{c['questions']}, trajectories {c['trajectories_identical']}/"
            f"{c['trajectories']}; same ids {c['same_question_ids']}, same arms {c['same_arms']}"
        )
    return result


# --- main ---------------------------------------------------------------------------------------------------------


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)

    dpo = sub.add_parser("dpo", help="looper dpo on 1 vs 2 ranks (accelerate launch): loss curves and samples/s")
    dpo.add_argument("--model", help="model dir / hub id / adapter; default: a tiny random model built here")
    dpo.add_argument("--pairs-file", help="pairs JSONL (`looper prefs`); default: built from generated problems")
    dpo.add_argument("--pair-questions", type=int, default=32, help="generated problems for the default pairs")
    dpo.add_argument("--max-steps", type=int, default=8, help="optimizer steps per run")
    dpo.add_argument("--per-device-train-batch-size", type=int, default=2, help="pairs per rank per micro-batch")
    dpo.add_argument(
        "--gradient-accumulation-steps", type=int, default=1, help="A: 2 ranks accumulate A each, 1 rank 2A"
    )
    dpo.add_argument("--learning-rate", type=float, help="default: the DPO stage's")
    dpo.add_argument("--max-length", type=int, default=512, help="prompt + completion tokens")
    dpo.add_argument("--lora-r", type=int, default=16)
    dpo.add_argument("--lora-alpha", type=int, default=32)
    dpo.add_argument("--lora-dropout", type=float, default=0.0, help="0: no per-rank dropout draws in the comparison")
    dpo.add_argument("--seed", type=int, default=0)
    dpo.add_argument("--ranks", type=_ints, default=[1, 2], help="comma-separated, the first is the reference")
    dpo.add_argument("--cpu", action="store_true", help="run the ranks on the CPU (gloo) even where GPUs are")
    dpo.add_argument("--work-dir", help="runs, logs and default pairs (default: a temp dir)")
    dpo.add_argument("--out", default="bench/results/multi_gpu_bench_dpo.json")
    dpo.set_defaults(func=bench_dpo)

    ro = sub.add_parser("rollouts", help="looper rollouts with data parallel 1 vs 2: tokens/s and output match")
    ro.add_argument("--model", help="model dir / hub id / adapter; default: a tiny random model built here")
    ro.add_argument("--questions-file", help="JSONL {id, question, answer}; default: generated problems")
    ro.add_argument("--questions", type=int, default=16, help="the first N questions (x every arm)")
    ro.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"])
    ro.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ro.add_argument("--batch-size", type=int, default=16, help="questions per engine call (x every arm)")
    ro.add_argument("--max-batch-size", type=int, default=64, help="HF engine: rows per generate call")
    ro.add_argument("--max-new-tokens", type=int, default=64)
    ro.add_argument("--data-parallel", type=_ints, default=[1, 2], help="comma-separated, the first is the reference")
    ro.add_argument("--stub", action="store_true", help="score with the public stub (correctness only)")
    ro.add_argument("--vllm-batch-invariant", action="store_true", help="VLLM_BATCH_INVARIANT=1 for both runs")
    ro.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ro.add_argument("--max-model-len", type=int)
    ro.add_argument("--enforce-eager", action="store_true")
    ro.add_argument(
        "--work-dir", help="outputs and logs (default: a temp dir); rollouts-dp1.jsonl feeds `looper prefs`"
    )
    ro.add_argument("--out", default="bench/results/multi_gpu_bench_rollouts.json")
    ro.set_defaults(func=bench_rollouts)
    args = parser.parse_args(argv)
    if args.part == "dpo" and any(max(args.ranks) % r for r in args.ranks):
        parser.error("--ranks: every count must divide the largest (one global batch for every run)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = args.func(args)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
