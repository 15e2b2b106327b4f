"""`looper pipeline`: data -> sft -> rollouts -> prefs -> dpo -> rl -> eval (every model) -> compare.

Each stage writes under `work_dir/<stage>/` and, when it is done, a `stage_manifest.json` holding the
stage's resolved config, the hashes of its inputs (the upstream stages' hashes) and a hash of both.
A rerun SKIPS a stage whose manifest hash matches and RERUNS it (from scratch) when the hash differs; a
stage killed half-way (no manifest, a `stage_pending.json` with the same hash) continues from its own
checkpoints / resumable output. Evals are one unit per (eval set, model): `work_dir/eval/<set>/<model>/`;
those of a set that run share one engine where they can (one base, LoRA adapters over it, not merged).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from looper_common.config import help_text, scalar_type
from looper_common.isolation import run_isolated
from looper_common.jsonl import write_json

log = logging.getLogger("looper.pipeline")

STAGES = ("data", "sft", "rollouts", "prefs", "dpo", "rl", "eval", "compare")
STAGE_SETTINGS = ("data", "sft", "rollouts", "prefs", "dpo", "rl", "eval", "compare")
MANIFEST = "stage_manifest.json"
PENDING = "stage_pending.json"
MODELS = ("base", "sft", "dpo", "rl")
# per-run values (a started service gets a new port and token each time): not part of any hash
UNHASHED = ("service_url", "token_file", "engines_per_gpu")  # the last: scheduling only, same records

# the named presets: YAML files shipped with the package (trainer/presets/NAME.yaml), comments and all
PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


@dataclass
class PipelineConfig:
    model: str = field(default="", metadata=help_text("base model: hub id, local dir or .gguf file"))
    work_dir: str = field(default="runs/pipeline", metadata=help_text("every stage writes under work_dir/<stage>/"))
    gsm8k: str | None = field(default=None, metadata=help_text("GSM8K hub id or local path (train/dev)"))
    platinum: str | None = field(default=None, metadata=help_text("GSM8K-Platinum hub id or local path (eval set)"))
    generated: int = field(default=0, metadata=help_text("N generated training problems"))
    generated_eval: int = field(default=0, metadata=help_text("M held-out generated problems (eval set)"))
    generated_min_steps: int = field(default=1, metadata=help_text("generated problems take at least K steps"))
    generated_max_steps: int = field(default=6, metadata=help_text("generated problems take at most K steps (1-6)"))
    dev_fraction: float = 0.2
    seed: int = 0
    service_url: str = field(default="http://127.0.0.1:8000", metadata=help_text("reward service (if not started)"))
    token_file: str | None = field(
        default=None, metadata=help_text("bearer token file (default: $LOOPER_SERVICE_TOKEN)")
    )
    start_service: bool = field(
        default=False, metadata=help_text("start `looper serve` on 127.0.0.1 and stop it after")
    )
    stub_service: bool = field(default=False, metadata=help_text("with start_service: the public stub scorer"))
    scorer: str | None = field(
        default=None,
        metadata=help_text("with start_service: the service's scorer (looper serve --scorer); rl.scorer may differ"),
    )
    answer_mode: Literal["strict", "flexible"] = field(
        default="strict",
        metadata=help_text("with start_service: how the service reads a final answer (looper serve --answer-mode); "
                           "flexible for a model that never writes an explicit one, e.g. random weights"),
    )  # fmt: skip
    engine: Literal["auto", "vllm", "hf"] = field(
        default="auto",
        metadata=help_text("every stage that generates: rollouts, eval, and GRPO (vllm: TRL's colocate mode)"),
    )
    quantization: Literal["none", "4bit", "8bit"] = field(
        default="none",
        metadata=help_text("the SFT and DPO trainers' base (QLoRA); GRPO trains on bf16, since TRL's colocate "
                           "sync pushes merged weights into vLLM, which a 4-bit base cannot give"),
    )  # fmt: skip
    isolate: bool | None = field(
        default=None,
        metadata=help_text("run each GPU stage in a fresh process, so its engine starts with the GPU's memory free "
                           "(None: when engine is vllm)"),
    )  # fmt: skip
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata=help_text("stages to run"))
    data: dict = field(default_factory=dict)
    sft: dict = field(default_factory=dict)
    rollouts: dict = field(default_factory=dict)
    prefs: dict = field(default_factory=dict)
    dpo: dict = field(default_factory=dict)
    rl: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        if not self.model:
            raise ValueError("model is required (--model)")
        if not (self.gsm8k or self.generated):
            raise ValueError("no training data: give gsm8k or generated N")
        if not (self.platinum or self.generated_eval or self.gsm8k):
            raise ValueError("no eval set: give platinum, generated_eval M or gsm8k (its dev split)")
        if not 1 <= self.generated_min_steps <= self.generated_max_steps:
            raise ValueError(
                f"generated steps {self.generated_min_steps}-{self.generated_max_steps}: need 1 <= min <= max"
            )


def merge(base: dict, override: dict) -> dict:
    """Override's keys win; nested dicts (the per-stage settings) merge key by key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_preset(name: str) -> dict:
    """A named preset (one of PRESETS) or a YAML file of the same shape."""
    path = PRESET_DIR / f"{name}.yaml" if name in PRESETS else Path(name)
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(PRESETS)} or a YAML file")
    return yaml.safe_load(path.read_text()) or {}


def build_config(preset: str | None = None, values: dict | None = None) -> PipelineConfig:
    merged = merge(load_preset(preset) if preset else {}, values or {})
    names = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = set(merged) - names
    if unknown:
        raise ValueError(f"unknown pipeline field(s) {', '.join(sorted(unknown))}")
    return PipelineConfig(**merged)


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def stage_config(cls, defaults: dict, overrides: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    overrides = dict(overrides)
    for key, value in overrides.items():
        kind = scalar_type(hints[key])
        if isinstance(value, str) and kind in (int, float):
            overrides[key] = kind(value)  # YAML reads 2e-3 as a string
        elif isinstance(value, str) and kind is list:
            overrides[key] = [v.strip() for v in value.split(",") if v.strip()]
    return cls(**{**{k: v for k, v in defaults.items() if k in names}, **overrides})


def hashed(config) -> dict:
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: v for k, v in values.items() if k not in UNHASHED}


@dataclass
class Unit:
    """One resumable step: a directory, a config, the units it reads, and how to run it."""

    name: str
    stage: str
    dir: Path
    config: object
    inputs: list[str]
    run: typing.Callable[[], object]
    outputs: list[Path] = field(default_factory=list)
    # what scores its generations (the service the pipeline starts): part of its hash, so another scorer or
    # answer reading reruns it
    scored_by: dict | None = None
    # units with the same group that run together run as one call (the evals of one set: one engine)
    group: str | None = None


class Pipeline:
    def __init__(self, config: PipelineConfig):
        self.config = config
        self.work = Path(config.work_dir)
        self.hashes: dict[str, str] = {}
        self.summary: dict = {"ran": [], "skipped": [], "stages": {}}
        self._services: dict[str | None, object] = {}
        self._stack = contextlib.ExitStack()

    # ---- the service, started only when a stage that needs it actually runs (one per scorer asked for)
    def service(self, scorer: str | None = None) -> tuple[str, str | None]:
        c = self.config
        scorer = scorer or c.scorer
        if not c.start_service:
            return c.service_url, c.token_file
        folder = self.work / ("service" if scorer in (None, c.scorer) else f"service-{scorer}")
        if scorer not in self._services:
            from looper_common.local_service import local_service

            folder.mkdir(parents=True, exist_ok=True)
            service = self._stack.enter_context(
                local_service(
                    stub=c.stub_service,
                    scorer=scorer,
                    extra_args=["--answer-mode", c.answer_mode],
                    log_path=folder / "service.log",
                    ready_timeout_s=120.0,
                )
            )
            self._services[scorer] = service
            token_file = folder / "token"
            token_file.touch(mode=0o600)
            token_file.write_text(service.token)
            log.info("started looper serve (scorer %s) at %s", scorer or "default", service.url)
        return self._services[scorer].url, str(folder / "token")

    # ---- the units
    def data_files(self) -> dict[str, Path]:
        c, d = self.config, self.work / "data"
        train = d / ("train.jsonl" if c.gsm8k else "generated_train.jsonl")
        evals = {}
        if c.generated_eval:
            evals["generated_eval"] = d / "generated_eval.jsonl"
        if c.platinum:
            evals["platinum"] = d / "platinum.jsonl"
        if not evals and c.gsm8k:
            evals["dev"] = d / "dev.jsonl"
        return {"train": train, **{f"eval:{k}": v for k, v in evals.items()}}

    def units(self) -> list[Unit]:
        from trainer.evaluate import EvalConfig

        c, w = self.config, self.work
        files = self.data_files()
        train = str(files["train"])
        sft_dir, dpo_dir, rl_dir = w / "sft", w / "dpo", w / "rl"
        rollouts_file = w / "rollouts" / "rollouts.jsonl"
        pairs_file = w / "prefs" / "pairs.jsonl"
        common = {"engine": c.engine, "quantization": c.quantization, "seed": c.seed}
        units: list[Unit] = []

        data = {
            "gsm8k": c.gsm8k,
            "platinum": c.platinum,
            "generated": c.generated,
            "generated_eval": c.generated_eval,
            "generated_min_steps": c.generated_min_steps,
            "generated_max_steps": c.generated_max_steps,
            "dev_fraction": c.dev_fraction,
            "seed": c.seed,
            **c.data,
        }
        units.append(Unit("data", "data", w / "data", data, [], lambda: self._data(data), list(files.values())))

        model = {**common, "model": str(sft_dir)}  # the stages after SFT start from its adapter
        units += [
            self.sft_unit("sft", {**common, "model": c.model, "train_file": train, "output_dir": str(sft_dir)}, c.sft,
                          ["data"]),
            self.rollouts_unit("rollouts", {**model, "questions_file": train, "output_file": str(rollouts_file)},
                               c.rollouts, ["data", "sft"]),
            self.prefs_unit("prefs", {**model, "rollouts_file": str(rollouts_file), "output_file": str(pairs_file)},
                            c.prefs, ["sft", "rollouts"]),
            self.dpo_unit("dpo", {**model, "pairs_file": str(pairs_file), "output_dir": str(dpo_dir)}, c.dpo,
                          ["sft", "prefs"]),
            self.rl_unit("rl", {**model, "train_file": train, "output_dir": str(rl_dir), "use_vllm": c.engine == "vllm"},
                         c.rl, ["data", "sft"]),
        ]  # fmt: skip

        models = {
            "base": (c.model, []),
            "sft": (str(sft_dir), ["sft"]),
            "dpo": (str(dpo_dir), ["dpo"]),
            "rl": (str(rl_dir), ["rl"]),
        }
        for key, path in files.items():
            if not key.startswith("eval:"):
                continue
            set_name = key.split(":", 1)[1]
            evals = []
            for name, (model, upstream) in models.items():
                out = w / "eval" / set_name / name
                ev = stage_config(
                    EvalConfig,
                    {**common, "model": model, "data_file": str(path), "output_dir": str(out), "name": name},
                    c.eval,
                )
                units.append(
                    Unit(
                        f"eval:{set_name}:{name}",
                        "eval",
                        out,
                        ev,
                        ["data", *upstream],
                        (lambda ev=ev: self.call(run_eval_stage, ev)),
                        [out / "summary.json"],
                        group=f"eval:{set_name}",
                    )
                )
                evals.append((name, out))
            compare = {"mode": "strict", "n_resamples": 10_000, "seed": c.seed, "alpha": 0.05, **c.compare}
            compare["runs"] = [str(o) for _, o in evals]
            compare["names"] = [n for n, _ in evals]
            after = [f"eval:{set_name}:{n}" for n, _ in evals]
            units.append(self.compare_unit(f"compare:{set_name}", compare, w / "compare" / set_name, after))
        return units

    # ---- one builder per stage after the data: its config (defaults, then the user's overrides), the function
    # that runs it and its outputs. `looper pipeline` and the experiments wire their units through these.

    def call(self, func, config):
        """Run a GPU stage's function: in a fresh process when isolating (vLLM, or `isolate: true`), else here.

        In one process, memory an earlier stage's engine held (TRL's colocate vLLM above all) is not all given
        back, and the next vLLM engine refuses to start for want of it."""
        isolate = self.config.isolate
        if isolate is None:
            isolate = self.config.engine == "vllm"
        return run_isolated(func, config) if isolate else func(config)

    def _unit(self, stage: str, cls, run, name: str, defaults: dict, overrides: dict, after: list[str]) -> Unit:
        """A stage's unit: its config, how it runs, and what it leaves (an adapter dir, or one output file).

        The unit's folder (which a rerun may delete) comes from the wiring in `defaults`, never from the user's
        overrides: `--set prefs.output_file=pairs.jsonl` must not make the current directory a unit's folder."""
        config = stage_config(cls, defaults, overrides)
        if "output_dir" in defaults:
            folder = Path(defaults["output_dir"])
            outputs = [folder / "adapter_config.json"]
        else:
            outputs = [Path(defaults["output_file"])]
            folder = outputs[0].parent
        return Unit(name, stage, folder, config, after, lambda: run(config), outputs)

    def sft_unit(self, *args) -> Unit:
        """sft_unit(name, defaults, overrides, after), and so on for each stage below."""
        from trainer.sft import SFTStageConfig

        return self._unit("sft", SFTStageConfig, lambda c: self.call(run_sft_stage, c), *args)

    def rollouts_unit(self, *args) -> Unit:
        from rollout_worker.worker import RolloutConfig

        unit = self._unit("rollouts", RolloutConfig, self._rollouts, *args)
        unit.scored_by = self.scoring_service(None)
        return unit

    def prefs_unit(self, *args) -> Unit:
        from trainer.prefs import PrefsConfig

        return self._unit("prefs", PrefsConfig, run_prefs_stage, *args)

    def dpo_unit(self, *args) -> Unit:
        from trainer.dpo import DPOStageConfig

        return self._unit("dpo", DPOStageConfig, lambda c: self.call(run_dpo_stage, c), *args)

    def rl_unit(self, *args) -> Unit:
        from trainer.rl import RLStageConfig

        unit = self._unit("rl", RLStageConfig, self._rl, *args)
        unit.scored_by = self.scoring_service(unit.config.scorer)
        return unit

    def compare_unit(self, name: str, values: dict, out: Path, after: list[str]) -> Unit:
        return Unit(name, "compare", out, values, after, lambda: run_compare_stage(values, out), [out / "report.md"])

    def _data(self, values: dict):
        from trainer.data import prepare_data

        return prepare_data(self.work / "data", **values)

    def _rollouts(self, config):
        from rollout_worker.worker import run_rollouts

        config.service_url, config.token_file = self.service()
        return self.call(run_rollouts, config)

    def _rl(self, config):
        from trainer.rl import run_rl

        config.service_url, config.token_file = self.service(config.scorer)
        return str(self.call(run_rl, config))

    def scoring_service(self, scorer: str | None) -> dict | None:
        """The service that scores a stage calling `self.service(scorer)`, where the pipeline starts it; None for
        a service started elsewhere (its settings are not known here)."""
        c = self.config
        if not c.start_service:
            return None
        return {"stub": c.stub_service, "scorer": scorer or c.scorer, "answer_mode": c.answer_mode}

    # ---- skipping, resuming, rerunning
    def run_unit(self, unit: Unit) -> None:
        record = self.begin(unit)
        if record is not None:
            self.run_begun(unit, record)

    def run_begun(self, unit: Unit, record: dict) -> None:
        start = time.monotonic()
        result = unit.run()
        self.finish(unit, record, round(time.monotonic() - start, 2), result)

    def run_together(self, units: list[Unit]) -> None:
        """Evals of one set: those to run share one engine where they can (one engine start, not one per model;
        at 8B a start is a minute), each still its own unit with its own hash, manifest and resume."""
        from trainer.evaluate import can_share_an_engine, eval_many

        todo = [(unit, record) for unit in units if (record := self.begin(unit)) is not None]
        if len(todo) < 2 or not can_share_an_engine([unit.config for unit, _ in todo]):
            for unit, record in todo:
                self.run_begun(unit, record)
            return
        names = [unit.name for unit, _ in todo]
        log.info("%s: one engine for %s", todo[0][0].group, ", ".join(names))
        summaries = self.call(eval_many, [unit.config for unit, _ in todo])
        for (unit, record), summary in zip(todo, summaries, strict=True):
            start, end = summary.pop("window")
            self.finish(unit, record, round(end - start, 2), summary, finished=end, shared_engine=names)

    def begin(self, unit: Unit) -> dict | None:
        """Check a unit against its manifest: None where it is finished (skipped), else the record to finish it
        with, its folder made ready (an interrupted run's kept to continue, anything else emptied)."""
        inputs = {name: self.hashes.get(name) for name in unit.inputs}
        missing = [name for name, h in inputs.items() if h is None]
        if missing:
            raise RuntimeError(f"{unit.name} needs {', '.join(missing)}: run those stages first")
        resolved = hashed(unit.config)
        scored_by = {"service": unit.scored_by} if unit.scored_by else {}
        h = digest({"config": resolved, "inputs": inputs, **scored_by})
        manifest_path, pending_path = unit.dir / MANIFEST, unit.dir / PENDING
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("hash") == h and all(p.exists() for p in unit.outputs):
                log.info("%s: skipped (manifest hash matches)", unit.name)
                self.hashes[unit.name] = h
                self.summary["skipped"].append(unit.name)
                self.summary["stages"][unit.name] = {"status": "skipped", "dir": str(unit.dir), "hash": h}
                return None
            log.info("%s: config or inputs changed, rerunning from scratch", unit.name)
            shutil.rmtree(unit.dir)
        elif pending_path.is_file() and json.loads(pending_path.read_text()).get("hash") == h:
            log.info("%s: continuing an interrupted run", unit.name)
        elif unit.dir.exists():
            shutil.rmtree(unit.dir)
        unit.dir.mkdir(parents=True, exist_ok=True)
        pending_path.write_text(json.dumps({"hash": h}) + "\n")
        return {"hash": h, "config": resolved, "inputs": inputs, **scored_by}

    def finish(self, unit: Unit, record: dict, seconds: float, result, finished: float | None = None,
               **extra) -> None:  # fmt: skip
        """Write a unit's manifest (`finished`: when it ended, unix seconds; now if not given)."""
        manifest = {
            "stage": unit.stage,
            "unit": unit.name,
            **record,
            "outputs": [str(p) for p in unit.outputs],
            "seconds": seconds,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
            **extra,
        }
        write_json(unit.dir / MANIFEST, manifest, default=str)
        (unit.dir / PENDING).unlink(missing_ok=True)
        self.hashes[unit.name] = record["hash"]
        self.summary["ran"].append(unit.name)
        self.summary["stages"][unit.name] = {"status": "ran", "dir": str(unit.dir), "hash": record["hash"],
                                             "seconds": seconds, **extra}  # fmt: skip
        if unit.stage == "compare":
            self.summary.setdefault("compare", {})[unit.name.split(":", 1)[1]] = result

    def adopt(self, unit: Unit) -> None:
        """A stage left out of `stages`: its finished output (manifest) still feeds the stages after it."""
        manifest_path = unit.dir / MANIFEST
        if manifest_path.is_file():
            self.hashes[unit.name] = json.loads(manifest_path.read_text())["hash"]

    def run(self) -> dict:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "pipeline_config.json").write_text(
            json.dumps(dataclasses.asdict(self.config), indent=2, default=str) + "\n"
        )
        with self._stack:
            for _, grouped in itertools.groupby(self.units(), key=lambda unit: unit.group or unit.name):
                chosen = []
                for unit in grouped:
                    if unit.stage in self.config.stages:
                        chosen.append(unit)
                    else:
                        self.adopt(unit)
                if len(chosen) > 1:
                    self.run_together(chosen)
                elif chosen:
                    self.run_unit(chosen[0])
        reports = {}
        for unit_name, info in self.summary["stages"].items():
            if unit_name.startswith("compare:"):
                reports[unit_name.split(":", 1)[1]] = str(Path(info["dir"]) / "report.md")
        self.summary["reports"] = reports
        (self.work / "pipeline_summary.json").write_text(
            json.dumps({k: v for k, v in self.summary.items() if k != "compare"}, indent=2, default=str) + "\n"
        )
        return self.summary


def run_sft_stage(config):
    from trainer.sft import run_sft

    return str(run_sft(config))


def run_prefs_stage(config):
    from trainer.prefs import run_prefs

    return run_prefs(config)


def run_dpo_stage(config):
    from trainer.dpo import run_dpo

    return str(run_dpo(config))


def run_eval_stage(config):
    from trainer.evaluate import run_eval

    return run_eval(config)


def run_compare_stage(values: dict, out: Path) -> dict:
    from trainer.compare import run_compare

    return run_compare(
        values["runs"],
        out,
        names=values["names"],
        mode=values["mode"],
        n_resamples=values["n_resamples"],
        seed=values["seed"],
        alpha=values["alpha"],
    )


def run_pipeline(config: PipelineConfig) -> dict:
    return Pipeline(config).run()


# ---- the command line
def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"{', '.join(PRESETS)} or a YAML file; the config file and flags override it")
    parser.add_argument("--config", help="YAML file with any PipelineConfig field (per-stage settings as mappings)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.FIELD=VALUE",
        help="a per-stage setting, e.g. --set dpo.learning_rate=1e-5 (value parsed as YAML); repeatable",
    )
    hints = typing.get_type_hints(PipelineConfig)
    for f in dataclasses.fields(PipelineConfig):
        if f.name in STAGE_SETTINGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        doc = f.metadata.get("help", "")
        if scalar_type(tp) is bool:  # bool, or bool | None (isolate: None decides by the engine)
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=doc)
        elif f.name == "stages":
            parser.add_argument(flag, dest=f.name, default=None, help=f"{doc} (comma-separated; default: all)")
        elif typing.get_origin(tp) is Literal:
            parser.add_argument(flag, dest=f.name, choices=typing.get_args(tp), default=None, help=doc)
        else:
            kind = int if tp is int else float if tp is float else str
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=doc)


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    values: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise SystemExit(f"looper: config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
    for f in dataclasses.fields(PipelineConfig):
        value = getattr(args, f.name, None)
        if value is None or f.name in STAGE_SETTINGS:
            continue
        if f.name == "stages":
            value = [v.strip() for v in value.split(",") if v.strip()]
        values[f.name] = value
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        stage, dot, name = key.partition(".")
        if not (sep and dot and stage in STAGE_SETTINGS and name):
            raise SystemExit(
                f"looper pipeline: --set {item!r}: expected STAGE.FIELD=VALUE, STAGE one of {STAGE_SETTINGS}"
            )
        values = merge(values, {stage: {name: yaml.safe_load(raw)}})
    try:
        return build_config(args.preset, values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"looper pipeline: {exc}") from None


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"ran: {', '.join(summary['ran']) or '-'}", soft_wrap=True)
    console.print(f"skipped: {', '.join(summary['skipped']) or '-'}", soft_wrap=True)
    for set_name, report in summary.get("reports", {}).items():
        result = summary.get("compare", {}).get(set_name)
        if result is None:
            path = Path(report).with_name("comparison.json")
            result = json.loads(path.read_text()) if path.is_file() else None
        if result:
            mode = result.get("mode", "strict")
            table = Table(title=f"{set_name}: {result.get('questions')} questions ({mode})")
            for column in ("model", "strict", "95% CI", "flexible"):
                table.add_column(column)
            for m in result["models"]:
                ci = m["strict"].get("ci95") or [None, None]
                table.add_row(
                    m["name"],
                    _pct(m["strict"]["accuracy"]),
                    f"[{_pct(ci[0])}, {_pct(ci[1])}]",
                    _pct(m["flexible"]["accuracy"]),
                )
            console.print(table)
            for p in result.get("pairs", []):
                console.print(f"  {p['a']} - {p['b']}: {p['diff_points']:+.2f} pts -> {p['verdict']}")
        console.print(f"report: {report}", soft_wrap=True, highlight=False)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
