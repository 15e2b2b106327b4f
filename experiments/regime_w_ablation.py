"""The Regime W ablation: does Regime W (coherence) beat a correctness-only signal at the same budget?

    data -> SFT -> rollouts of the SFT model (scored by the service, Regime W)
         -> prefs x2 (Regime W pairs | correctness-only pairs, from the same rollouts) -> DPO x2
         -> GRPO x2 (--reward regime_w | --reward correctness)
         -> eval of base, sft and the four arms on every eval set (Platinum, dev), one vLLM engine -> compare
         -> results

Six models: base, sft, dpo_regime_w, dpo_correctness, grpo_regime_w, grpo_correctness. Each pair of arms
shares one settings block (`dpo:`, `rl:`, `prefs:`) and differs in exactly one field the script sets
(prefs.pair_types, rl.reward); `check_pairs` refuses to run if their resolved configs differ otherwise.

The stages are `looper pipeline`'s: the same stage functions, `Unit`s, manifests and skip/resume logic
(trainer/pipeline.py), only with more units. Every unit writes under work_dir and, once finished, a
`stage_manifest.json` with its resolved config and its inputs' hashes; a rerun skips finished units, continues
a killed one from its checkpoints, and reruns (with what reads it) a unit whose config changed. With
`isolate: true` (the GPU config) each GPU stage runs in a fresh process, so every stage starts with all of
the GPU's memory free (vLLM checks that at start-up).

    python experiments/regime_w_ablation.py --model models/qwen2.5-coder-0.5b-instruct \
        --gsm8k runs/src/gsm8k --platinum runs/src/platinum           # the GPU run (config: the YAML beside)
    python experiments/regime_w_ablation.py --smoke                    # the whole thing on CPU, tiny model
    python experiments/regime_w_ablation.py ... --plan                 # units, status, estimated GPU time
    python experiments/regime_w_ablation.py --config experiments/regime_w_ablation_one_lease.yaml ...
                                                                       # the same design in one GPU lease
    python experiments/regime_w_ablation.py ... --write-readme         # results into experiments/README.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from looper_common.jsonl import read_rows
from trainer.pipeline import (
    MANIFEST,
    Pipeline,
    Unit,
    hashed,
    merge,
    run_compare_stage,
    run_dpo_stage,
    run_prefs_stage,
    run_sft_stage,
    stage_config,
)

log = logging.getLogger("looper.ablation")

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "regime_w_ablation.yaml"
README = HERE / "README.md"
README_IMAGE = HERE / "results" / "regime_w_ablation.png"
RESULTS_START, RESULTS_END = "<!-- ablation-results:start -->", "<!-- ablation-results:end -->"

STAGES = ("data", "sft", "rollouts", "prefs", "dpo", "rl", "eval", "compare", "results")
BLOCKS = ("sft", "rollouts", "prefs", "dpo", "rl", "eval", "compare")
EVAL_SETS = ("platinum", "dev")
# the arms: each pair differs in the one field set here
DPO_ARMS = {"dpo_regime_w": ["correctness", "coherence"], "dpo_correctness": ["correctness"]}
RL_ARMS = {"grpo_regime_w": "regime_w", "grpo_correctness": "correctness"}
PREFS_OF = {"dpo_regime_w": "prefs_regime_w", "dpo_correctness": "prefs_correctness"}
MODELS = ("base", "sft", *DPO_ARMS, *RL_ARMS)
DESCRIPTION = {
    "base": "the base model as released",
    "sft": "LoRA SFT on GSM8K train",
    "dpo_regime_w": "SFT + DPO, Regime W pairs (correctness + coherence)",
    "dpo_correctness": "SFT + DPO, correctness-only pairs",
    "grpo_regime_w": "SFT + GRPO, Regime W reward",
    "grpo_correctness": "SFT + GRPO, correctness reward (1.0 / -0.5)",
}
HEAD_TO_HEAD = (
    ("dpo_regime_w", "dpo_correctness", "DPO: Regime W pairs − correctness-only pairs"),
    ("grpo_regime_w", "grpo_correctness", "GRPO: Regime W reward − correctness reward"),
)
# set by the script: the arms' own settings, the wiring between stages, the seeds
RESERVED = {
    "sft": ("model", "train_file", "output_dir", "seed"),
    "rollouts": ("model", "questions_file", "output_file", "service_url", "token_file", "seed"),
    "prefs": ("model", "rollouts_file", "output_file", "pair_types", "seed"),
    "dpo": ("model", "pairs_file", "output_dir", "seed"),
    "rl": ("model", "train_file", "output_dir", "reward", "service_url", "token_file", "seed"),
    "eval": ("model", "data_file", "output_dir", "name", "seed", "engine"),
    "compare": ("runs", "names", "seed"),
}

# --smoke: the whole ablation on CPU in a few minutes. A tiny model (looper/tiny_model.py, taught the answer
# format) solves no generated problem against its gold answer, so the smoke's rollouts are scored label-free
# (the majority answer counts as correct) to give both DPO arms pairs; it shows the plumbing, not a result.
SMOKE = {
    "work_dir": "runs/regime-w-ablation-smoke",
    "engine": "hf",
    "dev_fraction": 0.3,
    "data_seed": 0,
    "seeds": [0],
    "isolate": False,
    "sft": {"max_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
            "learning_rate": 1e-4, "lora_r": 4, "lora_alpha": 8, "max_length": 256, "warmup_steps": 0,
            "logging_steps": 1, "save_steps": 1000},
    "rollouts": {"max_questions": 8, "batch_size": 8, "max_new_tokens": 96, "dtype": "float32", "label_free": True},
    "dpo": {"max_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
            "learning_rate": 5e-3, "lora_r": 4, "lora_alpha": 8, "max_length": 256, "warmup_steps": 0,
            "zero_grad_steps": 0, "logging_steps": 1, "save_steps": 1000},
    "rl": {"max_steps": 2, "num_generations": 4, "per_device_train_batch_size": 4, "steps_per_generation": 1,
           "max_completion_length": 24, "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-3, "use_vllm": False,
           "save_steps": 1000, "service_retries": 1},
    "eval": {"max_new_tokens": 48, "dtype": "float32", "chunk_size": 8, "max_batch_size": 8},
    "compare": {"n_resamples": 200},
}  # fmt: skip
SMOKE_ROWS = {"gsm8k": 24, "platinum": 8}  # GSM8K train -> 17 train / 7 dev; Platinum: 7 usable + 1 "bad"
SMOKE_DATA_SEED = 11  # generated questions on which some of the tiny model's answers agree (see tests/test_rft)


@dataclass
class AblationConfig:
    model: str = ""
    work_dir: str = "runs/regime-w-ablation"
    gsm8k: str | None = None
    platinum: str | None = None
    dev_fraction: float = 0.2
    data_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_sets: list[str] = field(default_factory=lambda: list(EVAL_SETS))
    engine: Literal["auto", "vllm", "hf"] = "vllm"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    start_service: bool = True
    stub_service: bool = False
    # the ablation measured the service's default scorer (regime_w_v1); name another to rerun it on that
    scorer: str | None = None
    service_url: str = "http://127.0.0.1:8000"
    token_file: str | None = None
    isolate: bool = True
    smoke: bool = False
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    sft: dict = field(default_factory=dict)
    rollouts: dict = field(default_factory=dict)
    prefs: dict = field(default_factory=dict)
    dpo: dict = field(default_factory=dict)
    rl: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)

    def __post_init__(self):
        problems = []
        if not self.model:
            problems.append("model is required (--model)")
        if not self.gsm8k:
            problems.append("gsm8k is required (--gsm8k: a dir holding train.jsonl, a JSONL file or a hub id)")
        if "platinum" in self.eval_sets and not self.platinum:
            problems.append("platinum is required for the platinum eval set (--platinum)")
        if self.stub_service:
            problems.append("the ablation needs the Regime W service; the stub scores correctness only")
        unknown = [s for s in self.eval_sets if s not in EVAL_SETS]
        if unknown or not self.eval_sets:
            problems.append(f"eval_sets must be a non-empty subset of {', '.join(EVAL_SETS)}, got {self.eval_sets}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            problems.append(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be a non-empty list of distinct ints, got {self.seeds}")
        for block, names in RESERVED.items():
            taken = sorted(set(getattr(self, block)) & set(names))
            if taken:
                problems.append(f"{block}: {', '.join(taken)} set by the script (arms, wiring, seeds), not the config")
        if problems:
            raise ValueError("; ".join(problems))


def build_config(values: dict) -> AblationConfig:
    names = {f.name for f in dataclasses.fields(AblationConfig)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(sorted(unknown))}")
    values = dict(values)
    for key in ("seeds", "eval_sets", "stages"):
        if isinstance(values.get(key), str | int):
            values[key] = [v.strip() for v in str(values[key]).split(",") if v.strip()]
    if "seeds" in values:
        values["seeds"] = [int(s) for s in values["seeds"]]
    return AblationConfig(**values)


# ---- running a stage in a fresh process


# the child: unpickle (func, args, result path) from stdin, run, pickle ("ok", result) or ("error", text) back
CHILD = """
import logging, pickle, sys, traceback
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
func, args, out = pickle.load(sys.stdin.buffer)
try:
    result = ("ok", func(*args))
except BaseException as exc:
    result = ("error", f"{type(exc).__name__}: {exc}\\n{traceback.format_exc()}")
with open(out, "wb") as f:
    pickle.dump(result, f)
"""


def run_isolated(func, *args):
    """func(*args) in a fresh Python process; its result comes back, its failure is raised here.

    func must be importable by name (a module-level function of the project, pickled by reference). The child
    is an ordinary process (vLLM may start its own), its output goes to this one's; everything it held on
    the GPU is freed when it exits. An interrupt here kills it.
    """
    import pickle
    import subprocess
    import tempfile

    if getattr(func, "__module__", None) in (None, "__main__", __name__):
        raise ValueError(f"{func!r} must be importable by name in a fresh process (a function of the project)")
    with tempfile.TemporaryDirectory(prefix="ablation-stage-") as tmp:
        out = Path(tmp) / "result.pickle"
        proc = subprocess.run([sys.executable, "-c", CHILD], input=pickle.dumps((func, args, str(out))), check=False)
        status, value = pickle.loads(out.read_bytes()) if out.is_file() else ("error", "no result written")
    if status != "ok":
        name = getattr(func, "__name__", func)
        raise RuntimeError(f"{name} failed in its own process (exit {proc.returncode}): {value}")
    return value


# ---- the units


class Ablation(Pipeline):
    """`looper pipeline`'s machinery (units, manifests, skip/resume, the service) over the ablation's units."""

    config: AblationConfig

    def call(self, func, config):
        return run_isolated(func, config) if self.config.isolate else func(config)

    def _data(self, values: dict):
        from trainer.data import prepare_data

        return prepare_data(self.work / "data", **values)

    def _rollouts(self, config):
        from rollout_worker.worker import run_rollouts

        config.service_url, config.token_file = self.service()
        return self.call(run_rollouts, config)

    def _rl(self, config):
        from trainer.rl import run_rl

        config.service_url, config.token_file = self.service()
        return str(self.call(run_rl, config))

    def eval_files(self) -> dict[str, Path]:
        return {name: self.work / "data" / f"{name}.jsonl" for name in self.config.eval_sets}

    def seed_dir(self, seed: int) -> Path:
        return self.work / f"seed-{seed}"

    def model_dirs(self, seed: int) -> dict[str, str]:
        d = self.seed_dir(seed)
        return {"base": self.config.model, "sft": str(d / "sft"), **{m: str(d / m) for m in (*DPO_ARMS, *RL_ARMS)}}

    def units(self) -> list[Unit]:
        from rollout_worker.worker import RolloutConfig
        from trainer.dpo import DPOStageConfig
        from trainer.evaluate import EvalConfig, eval_many
        from trainer.prefs import PrefsConfig
        from trainer.rl import RLStageConfig
        from trainer.sft import SFTStageConfig

        c, w = self.config, self.work
        train = str(w / "data" / "train.jsonl")
        evals = self.eval_files()
        data = {"gsm8k": c.gsm8k, "platinum": c.platinum if "platinum" in c.eval_sets else None,
                "dev_fraction": c.dev_fraction, "seed": c.data_seed}  # fmt: skip
        units = [Unit("data", "data", w / "data", data, [], lambda: self._data(data), [Path(train), *evals.values()])]
        eval_units, compares = [], []
        for seed in c.seeds:
            d, p = self.seed_dir(seed), f"seed-{seed}/"
            common = {"engine": c.engine, "quantization": c.quantization, "seed": seed}
            dirs = self.model_dirs(seed)
            sft_dir, rollouts_file = Path(dirs["sft"]), d / "rollouts" / "rollouts.jsonl"
            sft = stage_config(SFTStageConfig, {**common, "model": c.model, "train_file": train,
                                                "output_dir": str(sft_dir)}, c.sft)  # fmt: skip
            units.append(Unit(f"{p}sft", "sft", sft_dir, sft, ["data"], (lambda sft=sft: self.call(run_sft_stage, sft)),
                              [sft_dir / "adapter_config.json"]))  # fmt: skip
            rollouts = stage_config(RolloutConfig, {**common, "questions_file": train, "output_file": str(rollouts_file),
                                                    "model": str(sft_dir)}, c.rollouts)  # fmt: skip
            units.append(Unit(f"{p}rollouts", "rollouts", rollouts_file.parent, rollouts, ["data", f"{p}sft"],
                              (lambda r=rollouts: self._rollouts(r)), [rollouts_file]))  # fmt: skip
            for arm, pair_types in DPO_ARMS.items():
                name = PREFS_OF[arm]
                pairs_file = d / name / "pairs.jsonl"
                prefs = stage_config(PrefsConfig, {**common, "rollouts_file": str(rollouts_file),
                                                   "output_file": str(pairs_file), "model": str(sft_dir)},
                                     {**c.prefs, "pair_types": pair_types})  # fmt: skip
                units.append(Unit(f"{p}{name}", "prefs", pairs_file.parent, prefs, [f"{p}sft", f"{p}rollouts"],
                                  (lambda prefs=prefs: run_prefs_stage(prefs)), [pairs_file]))  # fmt: skip
                out = Path(dirs[arm])
                dpo = stage_config(DPOStageConfig, {**common, "model": str(sft_dir), "pairs_file": str(pairs_file),
                                                    "output_dir": str(out)}, c.dpo)  # fmt: skip
                units.append(Unit(f"{p}{arm}", "dpo", out, dpo, [f"{p}sft", f"{p}{name}"],
                                  (lambda dpo=dpo: self.call(run_dpo_stage, dpo)), [out / "adapter_config.json"]))  # fmt: skip
            for arm, reward in RL_ARMS.items():
                out = Path(dirs[arm])
                rl = stage_config(RLStageConfig, {**common, "model": str(sft_dir), "train_file": train,
                                                  "output_dir": str(out)}, {**c.rl, "reward": reward})  # fmt: skip
                units.append(Unit(f"{p}{arm}", "rl", out, rl, ["data", f"{p}sft"], (lambda rl=rl: self._rl(rl)),
                                  [out / "adapter_config.json"]))  # fmt: skip
            # one unit evaluates all six models on every eval set in one engine (one vLLM start-up): the base and
            # the five LoRA adapters over it, each through its own LoRA; every (set, model) gets its own output dir
            evs = [stage_config(EvalConfig, {"engine": c.engine, "seed": c.data_seed, "model": dirs[m], "name": m,
                                             "data_file": str(evals[s]), "output_dir": self._eval_dir(seed, s, m)},
                                c.eval) for s in evals for m in MODELS]  # fmt: skip
            eval_dir = d / "eval"
            eval_units.append(
                Unit(f"{p}eval", "eval", eval_dir, {"evals": [dataclasses.asdict(ev) for ev in evs]},
                     ["data", *(f"{p}{m}" for m in MODELS[1:])], (lambda evs=evs: self.call(eval_many, evs)),
                     [Path(ev.output_dir) / "summary.json" for ev in evs])
            )  # fmt: skip
            for set_name in evals:
                out = d / "compare" / set_name
                compare = {"mode": "strict", "n_resamples": 10_000, "alpha": 0.05, **c.compare, "seed": c.data_seed,
                           "names": list(MODELS), "runs": [self._eval_dir(seed, set_name, m) for m in MODELS]}  # fmt: skip
                compares.append(
                    Unit(f"{p}compare:{set_name}", "compare", out, compare, [f"{p}eval"],
                         (lambda compare=compare, out=out: run_compare_stage(compare, out)), [out / "report.md"])
                )  # fmt: skip
        results = {"model": c.model, "seeds": c.seeds, "eval_sets": list(evals), "models": list(MODELS),
                   "smoke": c.smoke, "work_dir": str(w)}  # fmt: skip
        out = w / "results"
        units += eval_units + compares
        units.append(Unit("results", "results", out, results, [u.name for u in compares],
                          (lambda out=out: write_results(self, out)), [out / "ablation.md", out / "ablation.json"]))  # fmt: skip
        check_pairs(units)
        return units

    def _eval_dir(self, seed: int, set_name: str, model: str) -> str:
        return str(self.seed_dir(seed) / "eval" / set_name / model)

    def run(self) -> dict:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "ablation_config.json").write_text(
            json.dumps(dataclasses.asdict(self.config), indent=2, default=str) + "\n"
        )
        return super().run()


def check_pairs(units: list[Unit]) -> None:
    """Every pair of arms has the same resolved config except for the field the arm is about (and its paths)."""
    by_name = {u.name: u for u in units}
    allowed = {"prefs": {"pair_types", "output_file"}, "dpo": {"pairs_file", "output_dir"},
               "rl": {"reward", "output_dir"}, "eval": {"model", "output_dir", "name"}}  # fmt: skip
    seeds = sorted({u.name.split("/")[0] for u in units if u.name.startswith("seed-")})
    for seed in seeds:
        pairs = [(f"{seed}/{PREFS_OF[a]}", f"{seed}/{PREFS_OF[b]}") for a, b, _ in HEAD_TO_HEAD[:1]]
        pairs += [(f"{seed}/{a}", f"{seed}/{b}") for a, b, _ in HEAD_TO_HEAD]
        checks = [(a, b, by_name[a].stage, hashed(by_name[a].config), hashed(by_name[b].config)) for a, b in pairs]
        # the eval unit: on every eval set, each arm's eval (and the base's) against sft's
        evals = {(Path(e["data_file"]).stem, e["name"]): e for e in by_name[f"{seed}/eval"].config["evals"]}
        for s in sorted({k[0] for k in evals}):
            checks += [(f"{seed}/eval {s}:{m}", f"{seed}/eval {s}:sft", "eval", evals[s, m], evals[s, "sft"])
                       for m in MODELS if m != "sft"]  # fmt: skip
        for a, b, stage, ca, cb in checks:
            differ = {k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k)} - allowed[stage]
            if differ:
                raise ValueError(f"{a} and {b} must differ only in {sorted(allowed[stage])}; also in {sorted(differ)}")


# ---- results


def oriented(comparison: dict, a: str, b: str) -> dict:
    """The pair (a, b) from a comparison, as a − b whichever order compare wrote it in."""
    for p in comparison["pairs"]:
        if (p["a"], p["b"]) == (a, b):
            return dict(p)
        if (p["a"], p["b"]) == (b, a):
            low, high = p["bootstrap_ci95_points"]
            return {**p, "a": a, "b": b, "diff_points": -p["diff_points"], "bootstrap_ci95_points": [-high, -low],
                    "only_a_correct": p["only_b_correct"], "only_b_correct": p["only_a_correct"]}  # fmt: skip
    raise KeyError(f"no pair {a} / {b} in the comparison")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _rl_training(path: Path) -> dict | None:
    """Reward-service accuracy over the first and last tenth of the GRPO run's scored batches."""
    if not path.is_file():
        return None
    rows = read_rows(path)
    if not rows:
        return None
    k = max(1, len(rows) // 10)
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
    return {"batches": len(rows), "accuracy_first": mean(rows[:k], "accuracy"), "accuracy_last": mean(rows[-k:], "accuracy"),
            "groups_without_signal": mean(rows, "groups_without_signal")}  # fmt: skip


def collect_results(ablation: Ablation) -> dict:
    c, w = ablation.config, ablation.work
    out = {"model": c.model, "smoke": c.smoke, "seeds": {}, "eval_sets": list(c.eval_sets), "work_dir": str(w),
           "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    for seed in c.seeds:
        d = ablation.seed_dir(seed)
        training = {}
        for arm in DPO_ARMS:
            m = _read_json(d / arm / "looper_manifest.json") or {}
            stats = _read_json(d / PREFS_OF[arm] / "pairs.stats.json") or {}
            training[arm] = {"global_step": m.get("global_step"), "train_loss": m.get("train_loss"),
                             "pairs": stats.get("pairs"), "pairs_by_type": stats.get("pairs_by_type")}  # fmt: skip
        for arm in RL_ARMS:
            m = _read_json(d / arm / "looper_manifest.json") or {}
            training[arm] = {"global_step": m.get("global_step"), "train_loss": m.get("train_loss"),
                             "service": _rl_training(d / arm / "rewards.jsonl")}  # fmt: skip
        sets = {}
        for set_name in c.eval_sets:
            comparison = json.loads((d / "compare" / set_name / "comparison.json").read_text())
            models = {m["name"]: m for m in comparison["models"]}
            rows = []
            for name in MODELS:
                m = models[name]
                row = {"model": name, "strict": m["strict"], "flexible": m["flexible"], "noise": m["noise"]["strict"],
                       "mean_completion_tokens": m["mean_completion_tokens"]}  # fmt: skip
                if name != "sft":
                    row["vs_sft"] = oriented(comparison, name, "sft")
                if name != "base":
                    row["vs_base"] = oriented(comparison, name, "base")
                rows.append(row)
            sets[set_name] = {
                "questions": comparison["questions"],
                "mode": comparison["mode"],
                "models": rows,
                "head_to_head": [{**oriented(comparison, a, b), "label": label} for a, b, label in HEAD_TO_HEAD],
                "report": str(d / "compare" / set_name / "report.md"),
                "chart": str(d / "compare" / set_name / "accuracy.png"),
            }
        out["seeds"][str(seed)] = {"training": training, "sets": sets}
    out["budgets"] = budgets(ablation)
    return out


def budgets(ablation: Ablation) -> dict:
    """The resolved settings the paired arms share (from the units' configs)."""
    units = {u.name: u for u in ablation.units()}
    seed = f"seed-{ablation.config.seeds[0]}"
    sft, ro = units[f"{seed}/sft"].config, units[f"{seed}/rollouts"].config
    dpo, rl = units[f"{seed}/dpo_regime_w"].config, units[f"{seed}/grpo_regime_w"].config
    ev = units[f"{seed}/eval"].config["evals"][0]
    return {
        "sft": {"max_steps": sft.max_steps, "batch": sft.per_device_train_batch_size * sft.gradient_accumulation_steps,
                "learning_rate": sft.learning_rate, "lora_r": sft.lora_r},
        "rollouts": {"questions": ro.max_questions, "max_new_tokens": ro.max_new_tokens, "label_free": ro.label_free},
        "dpo": {"max_steps": dpo.max_steps, "pairs_per_step": dpo.per_device_train_batch_size * dpo.gradient_accumulation_steps,
                "learning_rate": dpo.learning_rate, "beta": dpo.beta, "lora_r": dpo.lora_r},
        "rl": {"algo": rl.algo, "max_steps": rl.max_steps, "num_generations": rl.num_generations,
               "completions_per_step": rl.per_device_train_batch_size * rl.gradient_accumulation_steps,
               "steps_per_generation": rl.steps_per_generation, "max_completion_length": rl.max_completion_length,
               "learning_rate": rl.learning_rate, "use_vllm": rl.use_vllm, "lora_r": rl.lora_r},
        "eval": {"engine": ev["engine"], "dtype": ev["dtype"], "max_new_tokens": ev["max_new_tokens"],
                 "repeat": ev["repeat"], "vllm_batch_invariant": ev["vllm_batch_invariant"]},
    }  # fmt: skip


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pts(x: float, digits: int = 1) -> str:
    return f"{x + 0.0:+.{digits}f}" if round(x, digits) else f"{0.0:+.{digits}f}"  # never "-0.0"


def _diff(p: dict | None) -> str:
    if p is None:
        return "–"
    low, high = p["bootstrap_ci95_points"]
    return f"{_pts(p['diff_points'])} [{_pts(low)}, {_pts(high)}], p={_p(p['mcnemar_p'])}"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def render_results(results: dict, image: str | None, heading: str = "#") -> str:
    h = heading
    b = results["budgets"]
    lines = [f"{h} Regime W ablation: results", ""]
    if results["smoke"]:
        lines += ["**SMOKE RUN** (tiny model, CPU, minuscule budgets, label-free rollouts): it shows that every "
                  "stage runs, not how the arms compare.", ""]  # fmt: skip
    s, r, d, g, e = b["sft"], b["rollouts"], b["dpo"], b["rl"], b["eval"]
    lines += [
        f"Model `{results['model']}`; training seed(s) {', '.join(results['seeds'])}; generated "
        f"{results['generated_at']} from `{results['work_dir']}`. Paired arms share every setting but the one "
        f"compared: SFT {s['max_steps']} steps x {s['batch']}; rollouts {r['questions']} questions x 11 arms; "
        f"DPO {d['max_steps']} steps x {d['pairs_per_step']} pairs (LR {d['learning_rate']}, beta {d['beta']}); "
        f"GRPO {g['max_steps']} steps x {g['completions_per_step']} completions ({g['num_generations']} per "
        f"prompt, <= {g['max_completion_length']} tokens, LR {g['learning_rate']}); eval greedy, {e['engine']}, "
        f"{e['dtype']}, <= {e['max_new_tokens']} tokens"
        f"{', VLLM_BATCH_INVARIANT=1' if e.get('vllm_batch_invariant') and e['engine'] == 'vllm' else ''}, "
        f"{e['repeat']} run(s) each{', all six models in one vLLM engine' if e['engine'] == 'vllm' else ''}.",
        "",
        "Accuracy is strict (an explicit final answer), in %, with Wilson 95% intervals. Differences are in "
        "points, A − B on the same questions, with a paired-bootstrap 95% interval and the exact McNemar p. "
        "p-values are not corrected for the number of comparisons (10 per eval set); the two head-to-head rows "
        "on Platinum are the primary comparisons, everything else is secondary.",
        "",
    ]
    if image:
        lines += [f"![accuracy and paired differences]({image})", ""]
    for seed, per_seed in results["seeds"].items():
        for set_name, s in per_seed["sets"].items():
            lines += [f"{h}# {set_name}, seed {seed}: {s['questions']} questions", ""]
            lines += ["| model | what | strict % | 95% CI | flexible % | noise floor | − sft: pts [95% CI], p "
                      "| − base: pts [95% CI], p |", "|---|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
            for row in s["models"]:
                ci = row["strict"]["ci95"]
                noise = "not measured" if row["noise"] is None else f"±{row['noise']['noise_floor_points']:.2f}"
                lines.append(
                    f"| {row['model']} | {DESCRIPTION[row['model']]} | {_pct(row['strict']['accuracy'])} "
                    f"| {_pct(ci[0])}–{_pct(ci[1])} | {_pct(row['flexible']['accuracy'])} | {noise} "
                    f"| {_diff(row.get('vs_sft'))} | {_diff(row.get('vs_base'))} |"
                )
            lines += ["", "| head to head (same budget) | A − B pts | 95% CI | only A right | only B right "
                      "| McNemar p | verdict |", "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
            for p in s["head_to_head"]:
                low, high = p["bootstrap_ci95_points"]
                lines.append(
                    f"| {p['label']} | {_pts(p['diff_points'], 2)} | {_pts(low, 2)} to {_pts(high, 2)} | {p['only_a_correct']} "
                    f"| {p['only_b_correct']} | {_p(p['mcnemar_p'])} | {p['verdict']} |"
                )
            lines += ["", f"Full report (every pair, per cleaning_status, settings): `{s['report']}`", ""]
        lines += [
            f"{h}# Training, seed {seed}",
            "",
            "| arm | optimizer steps | train loss | data |",
            "|---|---:|---:|---|",
        ]
        for arm, t in per_seed["training"].items():
            if arm in DPO_ARMS:
                data = f"{t['pairs']} pairs {t['pairs_by_type']}"
            else:
                sv = t.get("service")
                data = "–" if not sv else (
                    f"{sv['batches']} scored batches; sample accuracy {100 * sv['accuracy_first']:.1f}% (first 10%) -> "
                    f"{100 * sv['accuracy_last']:.1f}% (last 10%)"
                )  # fmt: skip
                if sv and arm == "grpo_regime_w":  # rewards.jsonl counts groups of equal *Regime W* rewards
                    data += f"; groups with all-equal rewards {100 * sv['groups_without_signal']:.1f}%"
            loss = "–" if t["train_loss"] is None else f"{t['train_loss']:.4f}"
            lines.append(f"| {arm} | {t['global_step']} | {loss} | {data} |")
        lines.append("")
    return "\n".join(lines)


def render_plot(results: dict, path: Path) -> Path:
    """Per seed and eval set: strict accuracy with Wilson CIs; each arm − sft and the two head-to-heads with
    their paired-bootstrap CIs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(seed, set_name, s) for seed, r in results["seeds"].items() for set_name, s in r["sets"].items()]
    fig = Figure(figsize=(14, 4.6 * len(panels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 2, squeeze=False, gridspec_kw={"width_ratios": [1.2, 1]})
    colors = {"base": "#8C8C8C", "sft": "#4C72B0", "dpo_regime_w": "#2A7F62", "dpo_correctness": "#9BC9B4",
              "grpo_regime_w": "#C44E52", "grpo_correctness": "#E8A3A5"}  # fmt: skip
    for row, (seed, set_name, s) in enumerate(panels):
        ax = axes[row][0]
        names = [m["model"] for m in s["models"]]
        acc = [100 * (m["strict"]["accuracy"] or 0) for m in s["models"]]
        err = [[a - 100 * m["strict"]["ci95"][0] for a, m in zip(acc, s["models"], strict=True)],
               [100 * m["strict"]["ci95"][1] - a for a, m in zip(acc, s["models"], strict=True)]]  # fmt: skip
        ax.bar(range(len(names)), acc, yerr=err, capsize=4, color=[colors[n] for n in names], ecolor="#333333")
        for x, (a, m) in enumerate(zip(acc, s["models"], strict=True)):
            ax.annotate(f"{a:.1f}", (x, 100 * m["strict"]["ci95"][1]), xytext=(0, 2), textcoords="offset points",
                        ha="center", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_ylabel("strict accuracy (%)")
        ax.set_ylim(0, min(108, max(a + e for a, e in zip(acc, err[1], strict=True)) + 12))
        ax.set_title(f"{set_name}, seed {seed}: {s['questions']} questions (95% Wilson CI)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

        ax = axes[row][1]
        rows = [(f"{m['model']} − sft", m["vs_sft"]) for m in s["models"] if m["model"] not in ("base", "sft")]
        rows += [(f"{p['a']} − {p['b']}", p) for p in s["head_to_head"]]
        for k, (_, p) in enumerate(rows):
            y = len(rows) - 1 - k
            low, high = p["bootstrap_ci95_points"]
            d = p["diff_points"]
            significant = p["verdict"].startswith("significant")
            color = ("#2A7F62" if d > 0 else "#C44E52") if significant else "#777777"  # green up, red down
            ax.errorbar(d, y, xerr=[[d - low], [high - d]], fmt="o", color=color, capsize=4, ms=6)
            ax.annotate(f"{_pts(d)}, p={_p(p['mcnemar_p'])}", (d, y), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=8)  # fmt: skip
        ax.axhline(len(s["head_to_head"]) - 0.5, color="#BBBBBB", lw=0.8, ls="--")
        ax.axvline(0, color="#333333", lw=0.8)
        ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlabel("difference, strict (points; 95% paired-bootstrap CI)")
        ax.set_title("arms vs SFT; below the line: Regime W vs correctness-only", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    if results["smoke"]:
        fig.suptitle("SMOKE RUN: tiny model, minuscule budgets (plumbing, not a result)", color="#C44E52")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_results(ablation: Ablation, out: Path) -> dict:
    results = collect_results(ablation)
    out.mkdir(parents=True, exist_ok=True)
    image = render_plot(results, out / "ablation.png").name
    (out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "ablation.md").write_text(render_results(results, image), encoding="utf-8")
    return {"markdown": str(out / "ablation.md"), "plot": str(out / image)}


def write_readme(results_dir: Path, readme: Path = README, image: Path = README_IMAGE) -> None:
    """Put the results (table + plot) between the markers of the experiment's README."""
    results = json.loads((results_dir / "ablation.json").read_text())
    if results["smoke"]:
        raise SystemExit("refusing to write a smoke run's numbers into the README")
    text = readme.read_text(encoding="utf-8")
    if RESULTS_START not in text or RESULTS_END not in text:
        raise SystemExit(f"{readme}: no {RESULTS_START} ... {RESULTS_END} section to fill")
    image.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results_dir / "ablation.png", image)
    body = render_results(results, os.path.relpath(image, readme.parent), heading="###")
    head, rest = text.split(RESULTS_START, 1)
    _, tail = rest.split(RESULTS_END, 1)
    readme.write_text(f"{head}{RESULTS_START}\n{body}\n{RESULTS_END}{tail}", encoding="utf-8")


# ---- the time budget (one H200), from measured anchors and stated assumptions

LEASE_MINUTES = 24  # one GPU lease on one H200, staging excluded: what the one-lease config must fit in

ANCHORS = {  # measured on one H200 with Qwen2.5-Coder-0.5B-Instruct (bench/README.md)
    "vllm_startup_s": 45.0,  # vLLM's start-up: load, compile, CUDA graphs
    "eval_platinum_s": 80.0,  # `looper eval` of all 1,209 Platinum questions, <= 512 tokens, chunks of 256, start-up incl.
    "eval_platinum_batch_invariant_s": 117.0,  # the same with VLLM_BATCH_INVARIANT=1
    "platinum_questions": 1209,
    "vllm_tokens_per_s": 25_000,  # vLLM generation at batch >= 256
    "mean_completion_tokens": 280,  # GRPO completions of that model measured 268-296 tokens
    "process_startup_s": 30.0,  # an isolated stage's fresh process: imports, model load (20-30 s)
    "sft_step_s": 0.27,  # at batch 32
    "dpo_step_s": 0.47,  # 8 pairs per step, max length 1024 (bench/train_bench.py)
    "grpo_step_s": 1.4,  # vLLM colocate: a generating step of 32 completions x <= 256 tokens (train_bench)
    "grpo_round_step_s": 3.6,  # vLLM colocate: the generating step of a round of 16 prompts x 8 x <= 384 tokens
    "grpo_optimizer_step_s": 0.25,  # a step that trains on completions generated by an earlier step
    "grpo_round_plain_generate_s": 23.7,  # a round of 16 x 8 x 384 with plain `generate` (21.5-24.4 s + 3 x 0.25 s)
}
ASSUMED = {  # not measured: the estimate's weak points
    "lora_generation_factor": 1.5,  # vLLM generating through a LoRA adapter vs the plain model
    "service_startup_s": 10.0,  # `looper serve` (lexical Regime W), started once, before the rollouts
    "gsm8k_train_rows": 7473,
    "cpu_stage_s": 10.0,  # data, prefs, compare, results: in the main process
}


def vllm_call_tail_s(max_new_tokens: int = 512) -> float:
    """What one engine call spends past its throughput-bound part (its longest answers finishing at a shrinking
    batch), from the Platinum eval anchor: 80 s = start-up + 1,209 x mean tokens at the measured rate + 5 calls'
    tails. Scaled by the token cap."""
    a = ANCHORS
    calls = -(-a["platinum_questions"] // 256)
    throughput = a["platinum_questions"] * a["mean_completion_tokens"] / a["vllm_tokens_per_s"]
    return (a["eval_platinum_s"] - a["vllm_startup_s"] - throughput) / calls * max_new_tokens / 512


def vllm_generation_s(requests: int, max_new_tokens: int, calls: int) -> float:
    """`requests` greedy answers of <= max_new_tokens in `calls` engine calls, through the plain model."""
    a = ANCHORS
    tokens = requests * min(max_new_tokens, a["mean_completion_tokens"])
    return tokens / a["vllm_tokens_per_s"] + calls * vllm_call_tail_s(max_new_tokens)


def batch_invariant_factor() -> float:
    """VLLM_BATCH_INVARIANT=1's generation cost: the two Platinum anchors less their start-up."""
    a = ANCHORS
    return (a["eval_platinum_batch_invariant_s"] - a["vllm_startup_s"]) / (a["eval_platinum_s"] - a["vllm_startup_s"])


def grpo_generating_step_s(completions: int, max_completion_length: int) -> float:
    """A generating step with vLLM colocate, linear in completion slots through the two measured points."""
    a = ANCHORS
    small, large = 32 * 256, 128 * 384
    per_slot = (a["grpo_round_step_s"] - a["grpo_step_s"]) / (large - small)
    return a["grpo_step_s"] + (completions * max_completion_length - small) * per_slot


def estimate_seconds(unit: Unit) -> tuple[float, str]:
    a, s, c = ANCHORS, ASSUMED, unit.config
    start, lora = a["process_startup_s"], s["lora_generation_factor"]
    if unit.stage == "sft":
        batch = c.per_device_train_batch_size * c.gradient_accumulation_steps
        steps = c.max_steps if c.max_steps > 0 else c.num_train_epochs * s["gsm8k_train_rows"] * 0.8 / batch
        return start + steps * a["sft_step_s"] * batch / 32, f"{steps:.0f} steps x {batch}"
    if unit.stage == "rollouts":
        requests, cap = c.max_questions * 11, c.max_new_tokens or 512
        generation = vllm_generation_s(requests, cap, -(-c.max_questions // c.batch_size)) * lora
        seconds = start + a["vllm_startup_s"] + s["service_startup_s"] + generation
        return seconds, f"{c.max_questions} questions x 11 arms <= {cap} tokens through the SFT LoRA"
    if unit.stage == "dpo":
        pairs = c.per_device_train_batch_size * c.gradient_accumulation_steps
        step = a["dpo_step_s"] * pairs / 8
        return start + c.max_steps * step, f"{c.max_steps} steps x {pairs} pairs, {step:.2f} s/step"
    if unit.stage == "rl":
        per_step = c.per_device_train_batch_size * c.gradient_accumulation_steps
        rounds = c.max_steps / c.steps_per_generation
        if c.use_vllm:
            generating = grpo_generating_step_s(per_step * c.steps_per_generation, c.max_completion_length)
            round_s = generating + (c.steps_per_generation - 1) * a["grpo_optimizer_step_s"]
            seconds = start + a["vllm_startup_s"] + rounds * round_s
        else:
            scale = per_step * c.steps_per_generation * c.max_completion_length / (128 * 384)
            round_s = a["grpo_round_plain_generate_s"] * scale
            seconds = start + rounds * round_s
        note = "vLLM colocate" if c.use_vllm else "plain generate"
        basis = f"{rounds:.0f} rounds x {per_step * c.steps_per_generation} completions, {round_s:.1f} s/round, {note}"
        return seconds, basis
    if unit.stage == "eval":
        evals = c["evals"]
        seconds = start + a["vllm_startup_s"]
        for ev in evals:
            n = questions_in(ev["data_file"])
            generation = vllm_generation_s(n, ev["max_new_tokens"], -(-n // ev["chunk_size"])) * ev["repeat"]
            if ev["vllm_batch_invariant"]:
                generation *= batch_invariant_factor()
            seconds += generation * (1.0 if ev["name"] == "base" else lora)  # every other model is a LoRA adapter
        first = evals[0]
        sets = sorted({Path(ev["data_file"]).stem for ev in evals})
        basis = (f"{len({ev['name'] for ev in evals})} models x {'+'.join(sets)} in one vLLM engine, "
                 f"{first['repeat']} run(s), chunks of {first['chunk_size']}"
                 f"{', batch invariant' if first['vllm_batch_invariant'] else ''}")  # fmt: skip
        return seconds, basis
    return s["cpu_stage_s"], "CPU"


def questions_in(data_file: str) -> int:
    path = Path(data_file)
    if path.is_file():
        return sum(1 for line in path.open() if line.strip())
    if path.stem == "platinum":
        return ANCHORS["platinum_questions"]
    return round(ASSUMED["gsm8k_train_rows"] * 0.2)


def plan(ablation: Ablation) -> list[dict]:
    rows = []
    for unit in ablation.units():
        seconds, basis = estimate_seconds(unit)
        done = (unit.dir / MANIFEST).is_file()
        rows.append({"unit": unit.name, "stage": unit.stage, "seconds": round(seconds), "basis": basis,
                     "status": "done" if done else "to run", "dir": str(unit.dir)})  # fmt: skip
    return rows


def print_plan(rows: list[dict]) -> None:
    by_stage: dict[str, float] = {}
    print(f"{'unit':<40} {'status':<7} {'est. s':>7}  basis")
    for r in rows:
        print(f"{r['unit']:<40} {r['status']:<7} {r['seconds']:>7}  {r['basis']}")
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + r["seconds"]
    print("\nper stage (one H200, estimated): " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in by_stage.items()))
    total, todo = sum(by_stage.values()) / 60, sum(r["seconds"] for r in rows if r["status"] != "done") / 60
    lease = "fits" if total <= LEASE_MINUTES else "more than"
    print(f"total {total:.1f} min ({lease} one lease of {LEASE_MINUTES} min); still to run {todo:.1f} min")


# ---- smoke inputs


def smoke_inputs(work: Path, model: str | None) -> dict:
    """GSM8K-shaped and Platinum-shaped source files from the problem generator (so the data stage runs as
    on the GPU box) and, unless given, the tiny model taught the answer format."""
    from looper.tiny_model import build_tiny_model, teach_format
    from trainer.data import generated_records, write_jsonl

    src = work / "smoke-sources"
    gsm8k, platinum = src / "gsm8k", src / "platinum"
    if not (gsm8k / "train.jsonl").is_file():
        rows = generated_records(SMOKE_ROWS["gsm8k"], seed=SMOKE_DATA_SEED)
        write_jsonl(gsm8k / "train.jsonl", [{"question": r["question"], "answer": r["answer"]} for r in rows])
        statuses = ["consensus", "verified", "revised", "bad"]
        rows = generated_records(SMOKE_ROWS["platinum"], seed=SMOKE_DATA_SEED + 1)
        write_jsonl(platinum / "test.jsonl", [{"question": r["question"], "answer": r["answer"],
                                               "cleaning_status": statuses[i % 4] if i < 4 else "consensus"}
                                              for i, r in enumerate(rows)])  # fmt: skip
    if model is None:
        target = work / "smoke-model"
        if not (target / "taught").is_file():
            shutil.rmtree(target, ignore_errors=True)
            teach_format(build_tiny_model(target))
            (target / "taught").write_text("looper.tiny_model.teach_format\n")
        model = str(target)
    return {"gsm8k": str(gsm8k), "platinum": str(platinum), "model": model}


# ---- the command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the experiment's YAML (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny model, minuscule budgets, HF engine, CPU (minutes)")
    p.add_argument("--model", help="base model dir (smoke: default the tiny model, built on first use)")
    p.add_argument("--gsm8k", help="GSM8K: a dir holding train.jsonl, a JSONL file or a hub id")
    p.add_argument("--platinum", help="GSM8K-Platinum: a dir holding test.jsonl, a JSONL file or a hub id")
    p.add_argument("--work-dir")
    p.add_argument("--seeds", help="training seeds, comma-separated (each a full replicate)")
    p.add_argument("--eval-sets", help="comma-separated: platinum,dev")
    p.add_argument("--engine", choices=("auto", "vllm", "hf"), help="rollouts and evals")
    p.add_argument("--use-vllm", action=argparse.BooleanOptionalAction, default=None, help="GRPO generation")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="each GPU stage in a fresh process")  # fmt: skip
    p.add_argument("--start-service", action=argparse.BooleanOptionalAction, default=None,
                   help="start `looper serve` on 127.0.0.1 (also $LOOPER_START_SERVICE=1/0)")  # fmt: skip
    p.add_argument("--service-url", help="a running service (with --no-start-service)")
    p.add_argument("--token-file", help="its bearer token (default: $LOOPER_SERVICE_TOKEN)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="BLOCK.FIELD=VALUE",
                   help="a per-stage setting, e.g. --set rl.max_steps=300 (value parsed as YAML); repeatable")  # fmt: skip
    p.add_argument(
        "--plan", action="store_true", help="print the units, their status and the estimated time; run nothing"
    )
    p.add_argument("--write-readme", nargs="?", const=str(README), metavar="README",
                   help="after the run, write the results table and plot into this README (default: %(const)s)")  # fmt: skip
    return p.parse_args(argv)


def load_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config YAML; `extends: OTHER.yaml` (relative to it) reads OTHER first and merges this one over it."""
    if not path.is_file():
        raise SystemExit(f"ablation: config file {path} does not exist")
    if path.resolve() in seen:
        raise SystemExit(f"ablation: {path} extends itself")
    values = yaml.safe_load(path.read_text()) or {}
    parent = values.pop("extends", None)
    if parent:
        values = merge(load_config_file(path.parent / parent, (*seen, path.resolve())), values)
    return values


def config_from_args(args: argparse.Namespace) -> AblationConfig:
    values = load_config_file(Path(args.config))
    if args.smoke:
        values = merge(values, {**SMOKE, "smoke": True})
    env = os.environ.get("LOOPER_START_SERVICE")
    if env is not None:
        values["start_service"] = env.strip().lower() in ("1", "true", "yes", "on")
    flags = {"model": args.model, "gsm8k": args.gsm8k, "platinum": args.platinum, "work_dir": args.work_dir,
             "seeds": args.seeds, "eval_sets": args.eval_sets, "engine": args.engine, "isolate": args.isolate,
             "start_service": args.start_service, "service_url": args.service_url, "token_file": args.token_file,
             "stages": args.stages}  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.use_vllm is not None:
        values = merge(values, {"rl": {"use_vllm": args.use_vllm}})
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        block, dot, name = key.partition(".")
        if not (sep and dot and block in BLOCKS and name):
            raise SystemExit(f"ablation: --set {item!r}: expected BLOCK.FIELD=VALUE, BLOCK one of {', '.join(BLOCKS)}")
        values = merge(values, {block: {name: yaml.safe_load(raw)}})
    if args.smoke:
        values.update(smoke_inputs(Path(values["work_dir"]), args.model))
    try:
        return build_config(values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"ablation: {exc}") from None


def make_ablation(config: AblationConfig) -> Ablation:
    ablation = Ablation(config)  # type: ignore[arg-type]
    ablation.units()  # builds every unit's config and checks the arms' pairs before anything runs
    return ablation


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    config = config_from_args(args)
    ablation = make_ablation(config)
    if args.plan:
        print_plan(plan(ablation))
        return {}
    start = time.monotonic()
    summary = ablation.run()
    minutes = (time.monotonic() - start) / 60
    results = ablation.work / "results" / "ablation.md"
    print(f"ran: {', '.join(summary['ran']) or '-'}")
    print(f"skipped: {', '.join(summary['skipped']) or '-'}")
    print(f"{minutes:.1f} min; results: {results if results.is_file() else 'not written (results stage not run)'}")
    if args.write_readme:
        write_readme(results.parent, Path(args.write_readme))
        print(f"wrote the results into {args.write_readme}")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
