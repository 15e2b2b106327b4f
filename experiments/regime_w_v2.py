"""Does Regime W v2 beat the correctness reward? GRPO arms that differ only in their reward, over several seeds.

    data -> SFT (once per work dir, shared by every arm) -> questions: the first `questions` train rows
         -> [rollouts of the SFT model on them -> consensus labels | variants]   (only for designs D and B)
         -> eval-shared: base and SFT on Platinum and dev
         -> per seed, per arm: GRPO on the questions -> per seed: every arm's eval (one engine)
         -> records (small JSON, committed) -> results: per arm and seed, and pooled over seeds

The arms (`arms:` in regime_w_v2.yaml; each sets only the RL fields it is about):
- correctness: the correctness reward (1.0 / -0.5), the baseline;
- v2: design A, the service's regime_w_v2 reward (correctness + a gated, capped, length-neutral tie-break);
- v2_modulated: design C, correctness advantages modulated sign-preservingly by v2's robustness u;
- random_tiebreak: the control, v2's tie-break values shuffled among a group's correct answers;
- consensus: design D, the correctness reward against the arms' majority answer instead of gold;
- probe_variants: design B, the correctness reward, and a round's all-correct groups have their questions'
  paraphrases and counterfactual twins (`looper variants`, on the questions the SFT model's arms agree on)
  sampled in the next round in place of fresh questions (same steps and completions; fewer fresh questions).
Every arm trains on the same questions with the same settings (the `rl:` block: `scale_rewards`, `loss_type`,
steps, lengths, learning rate), the same step count and the same seed; `check_arms` refuses anything else.

**Across GPU leases.** A lease starts empty and holds ~20 minutes of work, less than the design. So a lease runs
some (seed, arm) units (`--seeds 0 --arms correctness,v2`), and `--stages ...,record` writes each finished eval as
a small record (per question: right or wrong) into `records_dir`, which is committed. Weights never cross
leases: every lease redoes the SFT unit (deterministic up to GPU numerics) and evaluates it; each record names
its lease, and an arm is compared with the SFT of its own lease. `--stages results` (any machine) pools the
records of every lease into `results_file`.

    python experiments/regime_w_v2.py --model models/qwen2.5-coder-0.5b-instruct --gsm8k runs/src/gsm8k \
        --platinum runs/src/platinum --seeds 0 --arms correctness,v2   # one lease's share
    python experiments/regime_w_v2.py --stages results                 # pool every committed record
    python experiments/regime_w_v2.py --smoke                          # every design on CPU, tiny model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from regime_w_ablation import SMOKE, Ablation, load_config_file, smoke_inputs  # noqa: E402

from looper_common.jsonl import read_rows  # noqa: E402
from trainer.pipeline import Unit, hashed, merge, stage_config  # noqa: E402

log = logging.getLogger("looper.regime_w_v2")

DEFAULT_CONFIG = HERE / "regime_w_v2.yaml"
STAGES = ("data", "sft", "questions", "rollouts", "consensus", "variants", "rl", "eval", "record", "results")
BLOCKS = ("sft", "rollouts", "variants", "rl", "eval", "compare")
EVAL_SETS = ("platinum", "dev")
# what an arm may set: its reward and nothing else (`labels` picks the answers its correctness reward checks,
# `variants: probes` lets its rounds sample the verifiable variants of all-correct groups)
ARM_FIELDS = {"reward", "scorer", "advantage_modulation", "labels", "variants"}
LABELS = ("gold", "consensus")
VARIANTS = ("none", "probes")
BASELINE = "correctness"
SHARED_MODELS = ("base", "sft")
SMOKE_V2 = {
    **{k: v for k, v in SMOKE.items() if k in ("engine", "dev_fraction", "data_seed", "isolate", "sft", "eval")},
    "work_dir": "runs/regime-w-v2-smoke",
    "seeds": [0, 1],
    "questions": 8,
    "records_dir": "runs/regime-w-v2-smoke/records",
    "results_file": "runs/regime-w-v2-smoke/regime_w_v2.json",
    "rollouts": {**SMOKE["rollouts"], "label_free": False},
    "variants": {"min_agreement": 0.0},  # the tiny model's arms rarely agree: every question gets variants
    "rl": {**SMOKE["rl"], "max_steps": 1, "save_steps": 1000},
    "compare": {"n_resamples": 200},
}


@dataclass
class V2Config:
    model: str = ""
    work_dir: str = "runs/regime-w-v2"
    gsm8k: str | None = None
    platinum: str | None = None
    dev_fraction: float = 0.2
    data_seed: int = 0  # the split, the questions, SFT, the rollouts, the evals and the bootstrap
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # GRPO's seed: one replicate of every arm each
    questions: int = 1200  # GRPO prompts, the same for every arm: max_steps x prompts per step
    eval_sets: list[str] = field(default_factory=lambda: list(EVAL_SETS))
    engine: str = "vllm"
    quantization: str = "none"
    start_service: bool = True  # one `looper serve` per scorer the arms name, on 127.0.0.1
    stub_service: bool = False
    scorer: str | None = "regime_w_v2"  # the rollouts' scorer
    answer_mode: str = "strict"  # the service's reading of a final answer (looper serve --answer-mode)
    service_url: str = "http://127.0.0.1:8000"
    token_file: str | None = None
    isolate: bool = True
    smoke: bool = False
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    run_arms: list[str] | None = None  # the arms this run trains and evaluates (None: all)
    records_dir: str = str(HERE / "results" / "regime_w_v2")
    results_file: str = str(HERE / "results" / "regime_w_v2.json")
    arms: dict = field(default_factory=dict)
    sft: dict = field(default_factory=dict)
    rollouts: dict = field(default_factory=dict)
    variants: dict = field(default_factory=dict)
    rl: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)

    def __post_init__(self):
        problems = []
        if "results" not in self.stages or set(self.stages) - {"results"}:
            if not self.model or not self.gsm8k:
                problems.append("model and gsm8k are required (--model, --gsm8k)")
            if "platinum" in self.eval_sets and not self.platinum:
                problems.append("platinum is required for the platinum eval set (--platinum)")
        if BASELINE not in self.arms:
            problems.append(f"the arms must include the baseline {BASELINE!r}")
        for name, arm in self.arms.items():
            extra = set(arm) - ARM_FIELDS
            if extra:
                problems.append(f"arm {name}: {', '.join(sorted(extra))} is not an arm's field "
                                f"(an arm sets only {', '.join(sorted(ARM_FIELDS))}; the rest goes in rl:)")  # fmt: skip
            if arm.get("labels", "gold") not in LABELS:
                problems.append(f"arm {name}: labels must be one of {', '.join(LABELS)}")
            if arm.get("variants", "none") not in VARIANTS:
                problems.append(f"arm {name}: variants must be one of {', '.join(VARIANTS)}")
        unknown_arms = sorted(set(self.run_arms or ()) - set(self.arms))
        if unknown_arms:
            problems.append(f"--arms {', '.join(unknown_arms)}: not an arm of the config ({', '.join(self.arms)})")
        script_set = ARM_FIELDS | {"model", "train_file", "output_dir", "seed", "service_url", "token_file",
                                   "variants_file"}  # fmt: skip
        taken = sorted(set(self.rl) & script_set)
        if taken:
            problems.append(f"rl: {', '.join(taken)} are set per arm or by the script, not in the shared block")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be distinct, got {self.seeds}")
        if self.questions < 1:
            problems.append("questions must be at least 1")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            problems.append(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def selected_arms(self) -> list[str]:
        return [a for a in self.arms if self.run_arms is None or a in self.run_arms]

    @property
    def needs_consensus(self) -> bool:
        return any(self.arms[a].get("labels") == "consensus" for a in self.selected_arms)

    @property
    def needs_variants(self) -> bool:
        return any(self.arms[a].get("variants", "none") == "probes" for a in self.selected_arms)


class V2Experiment(Ablation):
    config: V2Config

    def arm_dir(self, seed: int, arm: str) -> Path:
        return self.work / f"seed-{seed}" / arm

    def eval_dir(self, seed: int | None, set_name: str, model: str) -> Path:
        where = self.work / "eval-shared" if seed is None else self.work / f"seed-{seed}" / "eval"
        return where / set_name / model

    def variants_file(self) -> Path:
        return self.work / "variants" / "variants.jsonl"

    def labels_file(self, labels: str) -> Path:
        return self.work / "questions" / "gold.jsonl" if labels == "gold" else self.work / "consensus" / "labels.jsonl"

    def lease(self) -> str:
        """This work dir's lease id: when its SFT unit finished (each lease trains its own SFT)."""
        manifest = self.work / "sft" / "stage_manifest.json"
        finished = json.loads(manifest.read_text())["finished_at"] if manifest.is_file() else "unfinished"
        return finished.replace(":", "").replace("-", "")

    def rl_configs(self, seed: int) -> dict:
        from trainer.rl import RLStageConfig

        c = self.config
        out = {}
        for arm, settings in c.arms.items():
            arm_rl = {k: v for k, v in settings.items() if k not in ("labels", "variants")}
            if settings.get("variants", "none") == "probes":
                arm_rl["variants_file"] = str(self.variants_file())
            train = self.labels_file(settings.get("labels", "gold"))
            out[arm] = stage_config(RLStageConfig, {"engine": c.engine, "quantization": c.quantization, "seed": seed,
                                                    "model": str(self.work / "sft"), "train_file": str(train),
                                                    "output_dir": str(self.arm_dir(seed, arm))}, {**c.rl, **arm_rl})  # fmt: skip
        check_arms(out, c.arms)
        return out

    def units(self) -> list[Unit]:
        from trainer.evaluate import EvalConfig, eval_many

        c, w = self.config, self.work
        train = w / "data" / "train.jsonl"
        evals = self.eval_files()
        data = {"gsm8k": c.gsm8k, "platinum": c.platinum if "platinum" in c.eval_sets else None,
                "dev_fraction": c.dev_fraction, "seed": c.data_seed}  # fmt: skip
        units = [Unit("data", "data", w / "data", data, [], lambda: self._data(data), [train, *evals.values()])]
        common = {"engine": c.engine, "quantization": c.quantization, "seed": c.data_seed}
        sft_dir = w / "sft"
        units.append(self.sft_unit("sft", {**common, "model": c.model, "train_file": str(train),
                                           "output_dir": str(sft_dir)}, c.sft, ["data"]))  # fmt: skip
        gold = self.labels_file("gold")
        questions = {"train_file": str(train), "questions": c.questions, "out": str(gold)}
        units.append(Unit("questions", "questions", gold.parent, questions, ["data"],
                          lambda: first_questions(questions), [gold]))  # fmt: skip
        rl_inputs = ["sft", "questions"]
        rollouts_file = w / "rollouts" / "rollouts.jsonl"
        if c.needs_consensus or c.needs_variants:
            units.append(self.rollouts_unit("rollouts", {**common, "questions_file": str(gold), "model": str(sft_dir),
                                                         "output_file": str(rollouts_file),
                                                         "max_questions": c.questions},
                                            c.rollouts, ["sft", "questions"]))  # fmt: skip
        if c.needs_consensus:
            labels = {"rollouts_file": str(rollouts_file), "out": str(self.labels_file("consensus"))}
            units.append(Unit("consensus", "consensus", w / "consensus", labels, ["rollouts"],
                              lambda: write_consensus_labels(labels), [self.labels_file("consensus")]))  # fmt: skip
            rl_inputs.append("consensus")
        if c.needs_variants:
            from trainer.variants import VariantsConfig, write_variants

            variants = stage_config(VariantsConfig, {"train_file": str(gold), "rollouts_file": str(rollouts_file),
                                                     "output_file": str(self.variants_file())}, c.variants)  # fmt: skip
            units.append(Unit("variants", "variants", self.variants_file().parent, variants, ["questions", "rollouts"],
                              lambda: write_variants(variants), [self.variants_file()]))  # fmt: skip
            rl_inputs.append("variants")
        shared = [stage_config(EvalConfig, {"engine": c.engine, "seed": c.data_seed, "model": m_dir, "name": m,
                                            "data_file": str(evals[s]), "output_dir": str(self.eval_dir(None, s, m))},
                               c.eval) for s in evals for m, m_dir in (("base", c.model), ("sft", str(sft_dir)))]  # fmt: skip
        units.append(Unit("eval-shared", "eval", w / "eval-shared", {"evals": [dataclasses.asdict(e) for e in shared]},
                          ["data", "sft"], lambda: self.call(eval_many, shared),
                          [Path(e.output_dir) / "summary.json" for e in shared]))  # fmt: skip
        for seed in c.seeds:
            p, configs, evs = f"seed-{seed}/", self.rl_configs(seed), []
            for arm in c.selected_arms:
                rl, out = configs[arm], self.arm_dir(seed, arm)
                units.append(Unit(f"{p}{arm}", "rl", out, rl, rl_inputs, (lambda rl=rl: self._rl(rl)),
                                  [out / "adapter_config.json"], self.scoring_service(rl.scorer)))  # fmt: skip
                evs += [stage_config(EvalConfig, {"engine": c.engine, "seed": c.data_seed, "model": str(out),
                                                  "name": arm, "data_file": str(evals[s]),
                                                  "output_dir": str(self.eval_dir(seed, s, arm))}, c.eval)
                        for s in evals]  # fmt: skip
            # one engine evaluates every arm of the seed (one start-up), each through its own LoRA
            units.append(Unit(f"{p}eval", "eval", w / f"seed-{seed}" / "eval",
                              {"evals": [dataclasses.asdict(e) for e in evs]},
                              ["data", *(f"{p}{a}" for a in c.selected_arms)], (lambda evs=evs: self.call(eval_many, evs)),
                              [Path(e.output_dir) / "summary.json" for e in evs]))  # fmt: skip
        return units

    def run(self) -> dict:
        c = self.config
        summary = {"ran": [], "skipped": [], "stages": {}}
        if set(c.stages) - {"record", "results"}:
            summary = super().run()
        if "record" in c.stages:
            summary["records"] = write_records(self, Path(c.records_dir))
        if "results" in c.stages:
            summary["results"] = write_results(Path(c.records_dir), Path(c.results_file), c)
        return summary


def check_arms(configs: dict, arms: dict) -> None:
    """Every arm's RL config equals the baseline's except for the arm's own fields and its paths."""
    allowed = ARM_FIELDS | {"train_file", "output_dir", "variants_file"}
    base = hashed(configs[BASELINE])
    for arm, settings in arms.items():
        cfg = hashed(configs[arm])
        differ = {k for k in cfg.keys() | base.keys() if cfg.get(k) != base.get(k)} - allowed
        if differ:
            raise ValueError(f"arm {arm} differs from {BASELINE} in {sorted(differ)}, not only in its reward")
        if settings.get("labels", "gold") == "gold" and cfg["train_file"] != base["train_file"]:
            raise ValueError(f"arm {arm} trains on other questions than {BASELINE}")


# ---- the small units


def first_questions(values: dict) -> dict:
    """The GRPO prompts of every arm: the first `questions` rows of the train split (itself seeded-shuffled)."""
    from trainer.data import read_jsonl, write_jsonl

    rows = read_jsonl(values["train_file"], required=("id", "question", "answer"))[: values["questions"]]
    write_jsonl(values["out"], rows)
    return {"questions": len(rows)}


def write_consensus_labels(values: dict) -> dict:
    """Design D's training file: the rollout questions with the arms' majority answer (labels.stats.json: its
    accuracy against gold). A question none of whose arms gave an answer is dropped and counted."""
    from trainer.consensus import write_consensus

    return write_consensus(values["rollouts_file"], values["out"])


# ---- records: what a lease leaves behind (small, committed)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonl(path: Path) -> list[dict]:
    return read_rows(path) if path.is_file() else []


def training_stats(arm_dir: Path) -> dict:
    """From the GRPO run's logs: steps, the service's sample accuracy per reward call (the training curve), the
    share of groups without a correctness signal, and the mean completion length TRL logged."""
    manifest = _json(arm_dir / "looper_manifest.json") or {}
    rewards = _jsonl(arm_dir / "rewards.jsonl")
    lengths = [
        m["completions/mean_length"] for m in _jsonl(arm_dir / "metrics.jsonl") if "completions/mean_length" in m
    ]
    uniform = [r["groups_without_correctness_signal"] for r in rewards if "groups_without_correctness_signal" in r]
    tenth = max(1, len(rewards) // 10)
    accuracy = [r["accuracy"] for r in rewards if "accuracy" in r]
    return {
        "steps": manifest.get("global_step"),
        "train_accuracy_first_tenth": _mean(accuracy[:tenth]),
        "train_accuracy_last_tenth": _mean(accuracy[-tenth:]),
        "train_accuracy_curve": [round(a, 4) for a in accuracy],
        "groups_without_correctness_signal": _mean(uniform),
        "variants": manifest.get("variants"),  # design B: the dynamic sampler's totals (None: other arms)
        "mean_completion_tokens_train": _mean(lengths),
    }


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def eval_record(eval_dir: Path) -> dict | None:
    """An eval's summary and, per question in file order, right (1) or wrong (0), strict and flexible."""
    summary, rows = _json(eval_dir / "summary.json"), _jsonl(eval_dir / "predictions.jsonl")
    if summary is None or not rows:
        return None
    bits = lambda key: "".join("1" if r[key] else "0" for r in rows)  # noqa: E731
    return {"accuracy_strict": summary["accuracy_strict"], "correct_strict": summary["correct_strict"],
            "accuracy_flexible": summary["accuracy_flexible"], "questions": summary["questions"],
            "mean_tokens": summary["completion_tokens"]["mean"],
            "ids": [r["id"] for r in rows], "gold": [r["gold"] for r in rows],
            "strict": bits("correct_strict"), "flexible": bits("correct_flexible")}  # fmt: skip


def write_records(experiment: V2Experiment, records_dir: Path) -> list[str]:
    """One file per finished (seed, arm) and per shared model of this lease; a file already there is replaced
    only by the same unit's record (same seed, arm and lease)."""
    c, lease = experiment.config, experiment.lease()
    records_dir.mkdir(parents=True, exist_ok=True)
    written = []
    todo = [(None, m) for m in SHARED_MODELS] + [(s, a) for s in c.seeds for a in c.selected_arms]
    for seed, model in todo:
        evals = {s: eval_record(experiment.eval_dir(seed, s, model)) for s in c.eval_sets}
        if any(e is None for e in evals.values()):
            continue
        record = {"model": model, "seed": seed, "lease": lease, "smoke": c.smoke, "base_model": c.model,
                  "settings": c.arms.get(model), "eval": evals}  # fmt: skip
        if seed is not None:
            record["rl"] = {k: v for k, v in hashed(experiment.rl_configs(seed)[model]).items()
                            if k not in ("model", "train_file", "output_dir", "service_url", "token_file",
                                         "variants_file")}  # fmt: skip
            record["training"] = training_stats(experiment.arm_dir(seed, model))
        name = f"{lease}-{model}.json" if seed is None else f"seed-{seed}-{model}.json"
        path = records_dir / name
        old = _json(path)
        if old is not None and (old["lease"], old["seed"]) != (lease, seed):
            raise RuntimeError(f"{path} holds seed {old['seed']} of lease {old['lease']}; this lease ({lease}) "
                               f"ran it again: move one away (an arm and seed is trained once)")  # fmt: skip
        path.write_text(json.dumps(record, separators=(",", ":")) + "\n")
        written.append(str(path))
    labels = _json(experiment.work / "consensus" / "labels.stats.json")
    if labels is not None:
        path = records_dir / f"{lease}-consensus-labels.json"
        labels.pop("rollouts_file", None)  # a path of the machine that ran it
        path.write_text(json.dumps({"lease": lease, **labels}, indent=2) + "\n")
        written.append(str(path))
    variants = _json(experiment.variants_file().with_suffix(".stats.json"))
    if variants is not None:  # design B's twin yield
        path = records_dir / f"{lease}-variants-labels.json"
        variants = {k: v for k, v in variants.items() if k not in ("train_file", "rollouts_file")}  # machine paths
        path.write_text(json.dumps({"lease": lease, **variants}, indent=2) + "\n")
        written.append(str(path))
    return written


# ---- results: every lease's records, per arm and seed, and pooled over seeds


def load_records(records_dir: Path) -> list[dict]:
    if not records_dir.is_dir():
        raise SystemExit(f"regime_w_v2: no records in {records_dir} (run the GPU stages with `record` first)")
    return [
        json.loads(p.read_text()) for p in sorted(records_dir.glob("*.json")) if not p.name.endswith("-labels.json")
    ]


def _as_eval_dir(record: dict, set_name: str, root: Path) -> Path:
    """A record's per-question results as the eval dir `trainer.compare.load_run` reads."""
    e = record["eval"][set_name]
    out = root / f"{record['lease']}-{record['seed']}-{record['model']}" / set_name
    out.mkdir(parents=True)
    rows = [{"id": i, "gold": g, "correct_strict": s == "1", "correct_flexible": f == "1"}
            for i, g, s, f in zip(e["ids"], e["gold"], e["strict"], e["flexible"], strict=True)]  # fmt: skip
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def pooled(records: list[dict], eval_sets: list[str], n_resamples: int, seed: int) -> dict:
    """Per eval set, each arm against correctness (seed with seed) and against the SFT of its own lease."""
    from trainer.pooled import pooled_comparison

    arms = {(r["model"], r["seed"]): r for r in records if r["seed"] is not None}
    sft = {r["lease"]: r for r in records if r["model"] == "sft"}
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="regime-w-v2-") as tmp:
        root = Path(tmp)
        for s in eval_sets:
            out[s] = {}
            for arm in sorted({m for m, _ in arms}):
                seeds = sorted(seed for m, seed in arms if m == arm)
                pairs = {BASELINE: [x for x in seeds if (BASELINE, x) in arms] if arm != BASELINE else [],
                         "sft": [x for x in seeds if arms[(arm, x)]["lease"] in sft]}  # fmt: skip
                for baseline, common in pairs.items():
                    if not common:
                        continue
                    runs = {arm: [_as_eval_dir(arms[(arm, x)], s, root / arm / baseline) for x in common],
                            baseline: [_as_eval_dir(arms[(BASELINE, x)] if baseline == BASELINE
                                                    else sft[arms[(arm, x)]["lease"]], s, root / baseline / arm / str(x))
                                       for x in common]}  # fmt: skip
                    result = pooled_comparison(runs, baselines=[baseline], n_resamples=n_resamples, seed=seed)
                    for key, comparison in result["comparisons"].items():
                        for row in comparison["per_seed"]:  # paths of the temporary dirs
                            row.pop("a_run"), row.pop("b_run")
                        out[s][key] = {**comparison, "seeds": common}
    return out


def write_results(records_dir: Path, results_file: Path, config: V2Config) -> dict:
    records = load_records(records_dir)
    eval_sets = sorted({s for r in records for s in r["eval"]}, key=lambda s: (s != "platinum", s))
    strip = lambda e: {k: v for k, v in e.items() if k not in ("ids", "gold", "strict", "flexible")}  # noqa: E731
    results = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "smoke": any(r["smoke"] for r in records),
        "leases": sorted({r["lease"] for r in records}),
        "shared": {
            f"{r['model']}@{r['lease']}": {s: strip(e) for s, e in r["eval"].items()}
            for r in records
            if r["seed"] is None
        },  # fmt: skip
        "arms": {},
        "pooled": pooled(records, eval_sets, config.compare.get("n_resamples", 10_000), config.data_seed),
    }
    for r in sorted((r for r in records if r["seed"] is not None), key=lambda r: (r["model"], r["seed"])):
        arm = results["arms"].setdefault(r["model"], {"settings": r["settings"], "seeds": {}})
        arm["seeds"][str(r["seed"])] = {"lease": r["lease"], **r["training"],
                                        **{s: strip(e) for s, e in r["eval"].items()}}  # fmt: skip
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    return {"file": str(results_file), "arms": {a: sorted(v["seeds"]) for a, v in results["arms"].items()}}


# ---- the command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the experiment's YAML")
    p.add_argument("--smoke", action="store_true", help="every design on CPU with the tiny model (about a minute)")
    p.add_argument("--model", help="base model dir (smoke: the tiny model, built on first use)")
    p.add_argument("--gsm8k", help="GSM8K: a dir holding train.jsonl, a JSONL file or a hub id")
    p.add_argument("--platinum", help="GSM8K-Platinum: a dir holding test.jsonl, a JSONL file or a hub id")
    p.add_argument("--work-dir", help="every unit under here (default: the config's)")
    p.add_argument("--seeds", help="comma-separated GRPO seeds this run trains (default: the config's)")
    p.add_argument("--arms", help="comma-separated arms this run trains and evaluates (default: all)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--records-dir", help="where `record` writes and `results` reads (default: the config's)")
    p.add_argument("--results-file", help="where `results` writes (default: the config's)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="each GPU stage in a fresh process (default: the config's)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="BLOCK.FIELD=VALUE",
                   help=f"a per-stage setting, BLOCK one of {', '.join(BLOCKS)}; value parsed as YAML; repeatable")  # fmt: skip
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> V2Config:
    import yaml

    values = load_config_file(Path(args.config))
    if args.smoke:
        values = merge(values, {**SMOKE_V2, "smoke": True})
    flags = {"model": args.model, "gsm8k": args.gsm8k, "platinum": args.platinum, "work_dir": args.work_dir,
             "isolate": args.isolate, "records_dir": args.records_dir, "results_file": args.results_file}  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    for key, target in (("seeds", "seeds"), ("stages", "stages"), ("arms", "run_arms")):
        raw = getattr(args, key)
        if raw is not None:
            items = [x.strip() for x in raw.split(",") if x.strip()]
            try:
                values[target] = [int(x) for x in items] if key == "seeds" else items
            except ValueError:
                raise SystemExit(f"regime_w_v2: --seeds {raw!r}: expected comma-separated integers") from None
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        block, dot, name = key.partition(".")
        if not (sep and dot and block in BLOCKS and name):
            raise SystemExit(
                f"regime_w_v2: --set {item!r}: expected BLOCK.FIELD=VALUE, BLOCK one of {', '.join(BLOCKS)}"
            )
        values = merge(values, {block: {name: yaml.safe_load(raw)}})
    if args.smoke and set(values.get("stages", STAGES)) - {"results"}:
        values.update(smoke_inputs(Path(values["work_dir"]), args.model))
    names = {f.name for f in dataclasses.fields(V2Config)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SystemExit(f"regime_w_v2: unknown config field(s) {', '.join(unknown)}")
    try:
        return V2Config(**values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"regime_w_v2: {exc}") from None


def make_experiment(config: V2Config) -> V2Experiment:
    experiment = V2Experiment(config)  # type: ignore[arg-type]
    if set(config.stages) - {"record", "results"}:
        try:
            experiment.units()  # every unit's config is built and the arms checked before anything runs
        except ValueError as exc:
            raise SystemExit(f"regime_w_v2: {exc}") from None
    return experiment


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    experiment = make_experiment(config_from_args(parse_args(argv)))
    start = time.monotonic()
    summary = experiment.run()
    print(f"ran: {', '.join(summary['ran']) or '-'}; skipped: {', '.join(summary['skipped']) or '-'}; "
          f"{(time.monotonic() - start) / 60:.1f} min")  # fmt: skip
    for key in ("records", "results"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    return summary


if __name__ == "__main__":
    main()
