"""DPO and GRPO step time and peak memory: the project's stages against bare TRL on the same configuration.

    python bench/train_bench.py [--model PATH] [--stages dpo,grpo] [--max-steps 8] [--timing-warmup 2]
        [--per-device-train-batch-size 4] [--max-length 256] [--max-completion-length 64] [--num-generations 4]
        [--use-vllm] [--dtype auto] [--pairs-file pairs.jsonl] [--train-file prompts.jsonl]

For every stage, two runs of --max-steps optimizer steps, each in a fresh child process (so peak memory and
warm caches of one run never leak into the other):

- project: the library functions behind `looper dpo` / `looper rl` (`trainer.dpo.run_dpo(DPOStageConfig)`,
  `trainer.rl.run_rl(RLStageConfig)`) with their guards, metrics files, adapter checks and saving. GRPO scores
  completions with the real reward service, `looper serve` started on 127.0.0.1 for the run (--project-reward:
  regime_w, the stage's default, or correctness), over HTTP.
- bare: a minimal TRL script, `trl.DPOTrainer` / `trl.GRPOTrainer` with the same model, LoRA (r, alpha, dropout,
  targets), batch sizes, lengths, learning rate and schedule, seed and data, all read from the same stage config
  object. Its GRPO reward is an in-process Python function: correctness (1.0 / -0.5, the service's weights)
  with the project's answer parser (`shared_schemas.answers`).
  Both sides get the stage's activation-checkpointing setting (TRL turns it on by default, the stages off).

Timing: a TrainerCallback takes wall time from on_step_begin to on_step_end (one optimizer step, gradient
accumulation included; CUDA synchronised at both ends); the first --timing-warmup steps are left out and the
median of the rest is reported. For GRPO the step is split by timing TRL's own methods (the same on both sides):
`_generate` (generation), `_calculate_rewards` (reward function: HTTP service or in-process) and the rest of
`_generate_and_score_completions` (old/ref log-probs, advantages); "optimise" is the step minus all of that.
Memory: on CUDA torch.cuda.max_memory_allocated / max_memory_reserved of the run (model loading included); on
CPU the child's peak RSS (ru_maxrss; the reward service is another process and not counted).

The effective training arguments of both sides are captured at on_train_begin and compared: every field that
differs (other than output paths and saving) is printed and written to the JSON, so "same config" is checked,
not assumed. Without --model a tiny random-weight model is built, so the bench runs anywhere in about a minute
on a CPU. Prints a table and writes bench/results/train_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from transformers import TrainerCallback

from shared_schemas.answers import extract_answer, parse_gold
from shared_schemas.models import RolloutRecord, RolloutTrajectory, ScoringWeights
from shared_schemas.prompts import build_prompt, solution_target
from trainer.data import generated_records, write_jsonl
from trainer.dpo import DPOStageConfig, dpo_training_args, read_pairs
from trainer.rl import RLStageConfig, rl_training_args
from trainer.sft import lora_config

STAGES = ("dpo", "grpo")
SIDES = ("project", "bare")
# training-argument fields allowed to differ between the two sides: where things are written, not how training runs
BOOKKEEPING = {"output_dir", "logging_dir", "run_name", "save_strategy", "save_steps", "save_total_limit"}


# --- timing -------------------------------------------------------------------------------------------


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, and the run's effective training arguments and LoRA settings."""

    def __init__(self, clock=time.perf_counter, sync=_sync):
        self.clock, self.sync = clock, sync
        self.steps: list[tuple[float, float]] = []  # (start, end) of each optimizer step
        self.train_args: dict = {}
        self.lora: dict = {}
        self._start = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.train_args = args.to_dict()
        peft_config = getattr(model, "peft_config", {}).get("default")
        if peft_config is not None:
            self.lora = lora_fields(peft_config)

    def on_step_begin(self, args, state, control, **kwargs):
        self.sync()
        self._start = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        self.steps.append((self._start, self.clock()))

    def durations(self, warmup: int) -> list[float]:
        return [end - start for start, end in self.steps[warmup:]]


class MethodTimer:
    """Wall time of calls to some methods of a class (patched for the whole process, both sides alike)."""

    def __init__(self, cls, names, sync=_sync):
        self.calls: list[tuple[str, float, float]] = []  # (name, start, end)
        for name in names:
            if hasattr(cls, name):
                setattr(cls, name, self._wrap(name, getattr(cls, name), sync))

    def _wrap(self, name, method, sync):
        def timed(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                sync()
                self.calls.append((name, start, time.perf_counter()))

        return timed


def split_steps(steps: list[tuple[float, float]], calls: list[tuple[str, float, float]]) -> list[dict[str, float]]:
    """Per step: its total time and the time of each timed method call that started inside it."""
    rows = []
    for start, end in steps:
        row = {"step": end - start}
        for name, c_start, c_end in calls:
            if start <= c_start < end:
                row[name] = row.get(name, 0.0) + (c_end - c_start)
        rows.append(row)
    return rows


def grpo_phases(rows: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds per step of generation, reward, the rest of scoring, and optimisation (the remainder)."""
    phases = []
    for r in rows:
        generate, reward = r.get("_generate", 0.0), r.get("_calculate_rewards", 0.0)
        scoring = r.get("_generate_and_score_completions", 0.0)
        phases.append(
            {
                "generate_s": generate,
                "reward_s": reward,
                "scoring_other_s": max(0.0, scoring - generate - reward),
                "optimise_s": r["step"] - scoring,
            }
        )
    return {k: statistics.median(p[k] for p in phases) for k in phases[0]} if phases else {}


def lora_fields(peft_config) -> dict:
    targets = peft_config.target_modules
    return {
        "r": peft_config.r,
        "lora_alpha": peft_config.lora_alpha,
        "lora_dropout": peft_config.lora_dropout,
        "target_modules": sorted(targets) if not isinstance(targets, str) else targets,
    }


def config_differences(project: dict, bare: dict, ignore=BOOKKEEPING) -> dict:
    """{field: [project value, bare value]} for every training-argument field the two runs do not share."""
    keys = (set(project) | set(bare)) - set(ignore)
    return {k: [project.get(k), bare.get(k)] for k in sorted(keys) if project.get(k) != bare.get(k)}


def peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


# --- data -----------------------------------------------------------------------------------------------


def _rollout(record: dict) -> RolloutRecord:
    """Four trajectories for one generated problem: two correct solutions, two with a wrong final number."""
    solution = solution_target(record["answer"])
    right = solution.rsplit("Answer: ", 1)[1]
    wrong = str(int(float(right)) + 7)
    first_line = solution.split("\n")[0]

    def traj(arm, text, correct, reward):
        return RolloutTrajectory(
            arm_name=arm, text=text, answer=right if correct else wrong, correct=correct, reward=reward,
            quality=0.5, coherence=0.5,
        )  # fmt: skip

    return RolloutRecord(
        question_id=record["id"],
        question=record["question"],
        gold_answer=record["answer"],
        trajectories=[
            traj("wolfram_0", solution, True, 1.15),
            traj("maudlin_0", f"{first_line}\nSo the result is {right}.\nAnswer: {right}", True, 1.05),
            traj("wolfram_1", solution.rsplit("Answer: ", 1)[0] + f"Answer: {wrong}", False, -0.40),
            traj("maudlin_cf1", f"{first_line}\nAnswer: {wrong}", False, -0.45),
        ],
        s_end=0.5, s_path=0.5, s_cf=0.5, s_wm=0.5, group_reward=1.0, label_source="gold",
        scorer_version="bench", weights=ScoringWeights(), model="bench", engine="hf",
    )  # fmt: skip


def make_pairs_file(model: str, path: Path, questions: int, seed: int = 7) -> Path:
    """Preference pairs from the project's prefs stage (`trainer.prefs.build_pairs`) over generated problems."""
    from looper_common.modeling import load_tokenizer
    from trainer.data import write_jsonl
    from trainer.prefs import PrefsConfig, build_pairs

    tokenizer = load_tokenizer(model)
    records = [_rollout(r) for r in generated_records(questions, seed=seed)]
    pairs, _ = build_pairs(records, lambda q: build_prompt(q, tokenizer), PrefsConfig("unused", model=model))
    write_jsonl(path, [p.model_dump(mode="json") for p in pairs])
    return path


# --- the stage configs (one object drives both sides) ----------------------------------------------------


def stage_config(stage: str, args, out_dir: str):
    """The project's config for the run; the bare side reads its values from the same object."""
    common = dict(
        model=args.model,
        output_dir=out_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        logging_steps=1,
        save_steps=10_000,  # no checkpoint inside the timed steps
    )
    if args.learning_rate is not None:
        common["learning_rate"] = args.learning_rate
    if stage == "dpo":
        return DPOStageConfig(pairs_file=args.pairs_file, max_length=args.max_length, **common)
    return RLStageConfig(
        train_file=args.train_file,
        reward=args.project_reward,
        num_generations=args.num_generations,
        steps_per_generation=args.steps_per_generation,
        max_completion_length=args.max_completion_length,
        use_vllm=args.use_vllm,
        service_retries=1,
        **common,
    )


def bare_dpo_args(cfg: DPOStageConfig, output_dir: str):
    """The stage's own training arguments, saving and reporting off: bare TRL trains with the same settings."""
    return dpo_training_args(cfg, output_dir, save_strategy="no", report_to="none")


def bare_grpo_args(cfg: RLStageConfig, output_dir: str):
    return rl_training_args(cfg, output_dir, save_strategy="no", report_to="none")


def correctness_reward(completions, gold_answer, **kwargs) -> list[float]:
    """The bare side's reward: correct_base / incorrect_base, parsed as the reward service parses answers."""
    w = ScoringWeights()
    return [
        w.correct_base if (a := extract_answer(c)) is not None and a == parse_gold(g) else w.incorrect_base
        for c, g in zip(completions, gold_answer, strict=True)
    ]


# --- one run (in a child process) --------------------------------------------------------------------------


def run_bare(stage: str, cfg, dtype, timer: StepTimer, out_dir: str) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import read_jsonl

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype)
    if stage == "dpo":
        from trl import DPOTrainer

        pairs = [p for p in read_pairs(cfg.pairs_file) if p.pair_type in cfg.pair_types][: cfg.max_pairs]
        data = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
        trainer = DPOTrainer(
            model=model, args=bare_dpo_args(cfg, out_dir), train_dataset=data, processing_class=tokenizer,
            peft_config=lora_config(cfg), callbacks=[timer],
        )  # fmt: skip
    else:
        from trl import GRPOTrainer

        tokenizer.padding_side = "left"
        records = read_jsonl(cfg.train_file, required=("id", "question", "answer"))[: cfg.max_prompts]
        data = Dataset.from_list(
            [{"prompt": build_prompt(r["question"], tokenizer), "gold_answer": r["answer"]} for r in records]
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=[correctness_reward], args=bare_grpo_args(cfg, out_dir), train_dataset=data,
            processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=[timer],
        )  # fmt: skip
    trainer.train()


def run_project(stage: str, cfg, timer: StepTimer) -> None:
    if stage == "dpo":
        from trainer.dpo import run_dpo

        run_dpo(cfg, callbacks=[timer])
        return
    from looper_common.local_service import local_service
    from looper_common.token import TOKEN_ENV
    from trainer.rl import run_rl

    with local_service(log_path=Path(cfg.output_dir) / "service.log") as service:
        os.environ[TOKEN_ENV] = service.token
        cfg.service_url = service.url
        run_rl(cfg, callbacks=[timer])


def run_one(stage: str, side: str, args) -> dict:
    """One timed run; returns its row (timings, memory, effective training arguments)."""
    import torch

    import looper_common.modeling

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    looper_common.modeling.default_dtype = lambda: dtype  # the project loads its models in this dtype too
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    out_dir = tempfile.mkdtemp(prefix=f"train_bench_{stage}_{side}_")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    cfg = stage_config(stage, args, out_dir)
    timer = StepTimer()
    methods = None
    if stage == "grpo":
        from trl import GRPOTrainer

        methods = MethodTimer(GRPOTrainer, ["_generate", "_calculate_rewards", "_generate_and_score_completions"])
    start = time.perf_counter()
    if side == "project":
        run_project(stage, cfg, timer)
    else:
        run_bare(stage, cfg, dtype, timer, out_dir)
    durations = timer.durations(args.timing_warmup)
    if not durations:
        raise RuntimeError(f"{stage}/{side}: {len(timer.steps)} steps, none after {args.timing_warmup} warm-up")
    row = {
        "stage": stage,
        "side": side,
        "reward": reward_label(stage, side, args),
        "steps": len(timer.steps),
        "timed_steps": len(durations),
        "step_s_median": statistics.median(durations),
        "step_s_min": min(durations),
        "step_s_all": [end - s for s, end in timer.steps],
        "run_s": time.perf_counter() - start,
        **peak_memory(),
        "lora": timer.lora,
        "train_args": timer.train_args,
    }
    if methods is not None:
        row["phases"] = grpo_phases(split_steps(timer.steps[args.timing_warmup :], methods.calls))
    return row


def reward_label(stage: str, side: str, args) -> str:
    if stage != "grpo":
        return "-"
    if side == "project":
        return f"service {args.project_reward} (HTTP, 127.0.0.1)"
    return "in-process correctness"


def resolve_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


# --- main -------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model dir / hub id / adapter; default: a tiny random model built here")
    parser.add_argument("--stages", default="dpo,grpo", help="comma-separated, of: dpo, grpo")
    parser.add_argument("--max-steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--timing-warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--per-device-train-batch-size", type=int, default=4, help="DPO: pairs; GRPO: completions")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, help="default: each stage's own default")
    parser.add_argument("--max-length", type=int, default=256, help="DPO: prompt + completion tokens")
    parser.add_argument("--max-completion-length", type=int, default=64, help="GRPO: new tokens per completion")
    parser.add_argument("--num-generations", type=int, default=4, help="GRPO: completions per prompt (one group)")
    parser.add_argument("--steps-per-generation", type=int, default=1, help="GRPO: optimizer steps per generation")
    parser.add_argument("--use-vllm", action="store_true", help="GRPO: generate with vLLM (colocate), both sides")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--project-reward", default="regime_w", choices=["regime_w", "correctness"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--pairs-file", help="DPO pairs JSONL (`looper prefs`); default: built from generated problems")
    parser.add_argument("--train-file", help="GRPO prompts JSONL {id, question, answer}; default: generated problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench/results/train_bench.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # STAGE:SIDE: run one side here, write its row
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if set(args.stages) - set(STAGES) or not args.stages:
        parser.error(f"--stages takes {', '.join(STAGES)}")
    if args.max_steps <= args.timing_warmup:
        parser.error("--max-steps must be larger than --timing-warmup")
    return args


def run_child(stage: str, side: str, argv: list[str], extra: list[str]) -> dict:
    """Run one side in a fresh Python process (its own peak memory, caches and CUDA context)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    command = [sys.executable, __file__, *argv, *extra, "--worker", f"{stage}:{side}", "--worker-out", str(result)]
    Console().print(f"[bold]{stage} / {side}[/bold] ...")
    subprocess.run(command, check=True)
    row = json.loads(result.read_text())
    result.unlink()
    return row


def versions() -> dict:
    import importlib.metadata

    packages = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "vllm")
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(argv=None) -> None:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:  # a child: one run, its row to --worker-out
        stage, side = args.worker.split(":")
        row = run_one(stage, side, args)
        Path(args.worker_out).write_text(json.dumps(row))
        return

    work = Path(tempfile.mkdtemp(prefix="train_bench_"))
    extra = []
    if args.model is None:
        from looper.tiny_model import build_tiny_model

        args.model = str(build_tiny_model(work / "tiny"))
        extra += ["--model", args.model]
        if not args.threads and not torch.cuda.is_available():
            extra += ["--threads", "1"]  # a tiny model gains nothing from threads on a shared CPU
    if "dpo" in args.stages and not args.pairs_file:
        args.pairs_file = str(make_pairs_file(args.model, work / "pairs.jsonl", questions=32))
        extra += ["--pairs-file", args.pairs_file]
    if "grpo" in args.stages and not args.train_file:
        args.train_file = str(work / "prompts.jsonl")
        write_jsonl(args.train_file, generated_records(64, seed=31))
        extra += ["--train-file", args.train_file]

    rows, differences = [], {}
    for stage in args.stages:
        pair = {side: run_child(stage, side, argv, extra) for side in SIDES}
        differences[stage] = config_differences(pair["project"]["train_args"], pair["bare"]["train_args"])
        if pair["project"]["lora"] != pair["bare"]["lora"]:
            differences[stage]["lora"] = [pair["project"]["lora"], pair["bare"]["lora"]]
        for side in SIDES:
            row = pair[side]
            row["vs_bare"] = row["step_s_median"] / pair["bare"]["step_s_median"]
            memory_key = "peak_allocated_gib" if "peak_allocated_gib" in row else "peak_rss_gib"
            row["memory_vs_bare"] = row[memory_key] / pair["bare"][memory_key]
            rows.append(row)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    console = Console(width=160)
    table = Table(title=f"training steps: project stage vs bare TRL, {device}, {dtype}, median of steps "
                        f"{args.timing_warmup + 1}..{args.max_steps}")  # fmt: skip
    on_cuda = torch.cuda.is_available()
    columns = ["stage", "side", "reward", "step s", "project/bare", "generate s", "reward s", "optimise s"]
    columns += ["peak alloc GiB", "peak reserved GiB"] if on_cuda else ["peak RSS GiB"]
    columns += ["memory project/bare"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        phases = r.get("phases", {})
        memory = (
            [f"{r['peak_allocated_gib']:.2f}", f"{r['peak_reserved_gib']:.2f}"]
            if on_cuda
            else [f"{r['peak_rss_gib']:.2f}"]
        )
        table.add_row(
            r["stage"], r["side"], r["reward"], f"{r['step_s_median']:.3f}", f"{r['vs_bare']:.2f}x",
            *(f"{phases[k]:.3f}" if k in phases else "-" for k in ("generate_s", "reward_s", "optimise_s")),
            *memory, f"{r['memory_vs_bare']:.2f}x",
        )  # fmt: skip
    console.print(table)
    for stage, diff in differences.items():
        if diff:
            console.print(f"[yellow]{stage}: training arguments that differ (project, bare):[/yellow]")
            for key, (ours, theirs) in diff.items():
                console.print(f"  {key}: {ours!r} vs {theirs!r}")
        else:
            console.print(f"{stage}: identical training arguments and LoRA on both sides (bookkeeping aside)")

    result = {
        "model": args.model if "--model" not in extra else "tiny (built by the bench)",
        "device": device,
        "dtype": dtype,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "worker_out", "model")},
        "versions": {"python": sys.version.split()[0], **versions()},
        "config_differences": differences,
        "rows": [{k: v for k, v in r.items() if k != "train_args"} for r in rows],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
