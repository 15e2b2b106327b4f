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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # its parts beside it, also when loaded from a file (tests, regime_w_v2.py)

from ablation_design import DPO_ARMS, EVAL_SETS, HEAD_TO_HEAD, MODELS, PREFS_OF, RL_ARMS  # noqa: E402
from ablation_estimate import plan, print_plan  # noqa: E402
from ablation_report import README, write_readme, write_results  # noqa: E402

from trainer.pipeline import (  # noqa: E402
    Pipeline,
    Unit,
    hashed,
    merge,
    stage_config,
)

log = logging.getLogger("looper.ablation")

DEFAULT_CONFIG = HERE / "regime_w_ablation.yaml"

STAGES = ("data", "sft", "rollouts", "prefs", "dpo", "rl", "eval", "compare", "results")
BLOCKS = ("sft", "rollouts", "prefs", "dpo", "rl", "eval", "compare")
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
    answer_mode: Literal["strict", "flexible"] = "strict"  # the service's reading of a final answer
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


# ---- the units


class Ablation(Pipeline):
    """`looper pipeline`'s machinery (units, manifests, skip/resume, the service) over the ablation's units."""

    config: AblationConfig

    def _data(self, values: dict):
        from trainer.data import prepare_data

        return prepare_data(self.work / "data", **values)

    def eval_files(self) -> dict[str, Path]:
        return {name: self.work / "data" / f"{name}.jsonl" for name in self.config.eval_sets}

    def seed_dir(self, seed: int) -> Path:
        return self.work / f"seed-{seed}"

    def model_dirs(self, seed: int) -> dict[str, str]:
        d = self.seed_dir(seed)
        return {"base": self.config.model, "sft": str(d / "sft"), **{m: str(d / m) for m in (*DPO_ARMS, *RL_ARMS)}}

    def units(self) -> list[Unit]:
        from trainer.evaluate import EvalConfig, eval_many

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
            model = {**common, "model": str(sft_dir)}  # the stages after SFT start from its adapter
            units.append(self.sft_unit(f"{p}sft", {**common, "model": c.model, "train_file": train,
                                                   "output_dir": str(sft_dir)}, c.sft, ["data"]))  # fmt: skip
            units.append(self.rollouts_unit(f"{p}rollouts", {**model, "questions_file": train,
                                                             "output_file": str(rollouts_file)},
                                            c.rollouts, ["data", f"{p}sft"]))  # fmt: skip
            for arm, pair_types in DPO_ARMS.items():
                name = PREFS_OF[arm]
                pairs_file = d / name / "pairs.jsonl"
                units.append(self.prefs_unit(f"{p}{name}", {**model, "rollouts_file": str(rollouts_file),
                                                            "output_file": str(pairs_file)},
                                             {**c.prefs, "pair_types": pair_types}, [f"{p}sft", f"{p}rollouts"]))  # fmt: skip
                units.append(self.dpo_unit(f"{p}{arm}", {**model, "pairs_file": str(pairs_file), "output_dir": dirs[arm]},
                                           c.dpo, [f"{p}sft", f"{p}{name}"]))  # fmt: skip
            for arm, reward in RL_ARMS.items():
                units.append(self.rl_unit(f"{p}{arm}", {**model, "train_file": train, "output_dir": dirs[arm]},
                                          {**c.rl, "reward": reward}, ["data", f"{p}sft"]))  # fmt: skip
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
                compares.append(self.compare_unit(f"{p}compare:{set_name}", compare, out, [f"{p}eval"]))
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
