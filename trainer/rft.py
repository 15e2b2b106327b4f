"""Rejection-sampling fine-tuning (RFT) on scored rollouts, and expert iteration over it (SPEC 4 step 4b).

Per question (one rollouts JSONL record), the correct trajectories with text are ranked, deduplicated by
normalised text (lowercase, whitespace collapsed) and capped at `top_k`:

- `regime_w` (default): highest per-trajectory Regime W reward first (ties: file order);
- `any_correct`: a shuffle seeded with (seed, question id), the baseline that ignores the reward.

The kept trajectories become {prompt, completion} rows, the prompt being `build_prompt(question, tokenizer)`
as in SFT, and train a LoRA with the SFT stage's trainer (`trainer.sft.train_prompt_completion`). A policy
that is itself an adapter is merged in memory and the new LoRA saved folded over its base, as DPO does.
The rows go to `<output_dir>/rft_train.jsonl`, the selection stats (selected per question, duplicates,
questions without a correct trajectory) to `rft_train.stats.json` beside them and into the manifest.

`expert_iteration`: for N rounds, rollouts with the current model -> RFT -> the new adapter is the next
round's model; round K lives in `<output_dir>/round-K/` (rollouts.jsonl, adapter/). A round whose adapter
manifest exists is skipped, and `run_rollouts` resumes its own file, so a rerun picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from looper_common.config import help_text
from shared_schemas.models import RolloutRecord, RolloutTrajectory
from trainer.sft import LoRATraining, file_sha256

log = logging.getLogger("looper.rft")

SELECTIONS = ("regime_w", "any_correct")
MANIFEST = "looper_manifest.json"


@dataclass
class RFTStageConfig(LoRATraining):
    model: str = field(default="", metadata=help_text("policy: base model, SFT adapter or merged dir"))
    rollouts_file: str | None = field(
        default=None, metadata=help_text("scored rollouts JSONL (`looper rollouts`); without it: expert iteration")
    )
    output_dir: str = field(default="runs/rft", metadata=help_text("adapter, training rows, stats and manifest"))
    base: str | None = field(default=None, metadata=help_text("base model of an adapter (default: its recorded base)"))
    selection: Literal["regime_w", "any_correct"] = field(
        default="regime_w",
        metadata=help_text("regime_w: highest reward first; any_correct: seeded random correct ones"),
    )
    top_k: int = field(default=2, metadata=help_text("at most this many distinct correct trajectories per question"))
    # expert iteration: rollouts with the current model -> RFT, `rounds` times
    rounds: int = field(default=1, metadata=help_text("expert-iteration rounds (each in output_dir/round-K)"))
    questions_file: str | None = field(
        default=None, metadata=help_text("expert iteration: JSONL of {id, question, answer}")
    )
    service_url: str = field(
        default="http://127.0.0.1:8000", metadata=help_text("expert iteration: the reward service")
    )
    token_file: str | None = field(
        default=None, metadata=help_text("bearer token file (default: $LOOPER_SERVICE_TOKEN)")
    )
    engine: Literal["auto", "vllm", "hf"] = "auto"
    max_questions: int = field(default=500, metadata=help_text("expert iteration: questions rolled out per round"))
    rollout_batch_size: int = field(default=16, metadata=help_text("expert iteration: questions per engine call"))
    max_new_tokens: int | None = field(default=None, metadata=help_text("expert iteration: override the arms' limit"))
    label_free: bool = field(
        default=False,
        metadata=help_text("expert iteration: send no gold answers (correct = the majority pseudo-label)"),
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("model is required")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {self.selection}")
        if self.top_k < 1 or self.rounds < 1:
            raise ValueError("top_k and rounds must be >= 1")
        if self.expert_iteration and not self.questions_file:
            raise ValueError("expert iteration (rounds > 1 or no rollouts_file) needs questions_file")

    @property
    def expert_iteration(self) -> bool:
        return self.rounds > 1 or not self.rollouts_file


# --- selection ------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def select_trajectories(
    record: RolloutRecord, selection: str = "regime_w", top_k: int = 2, seed: int = 0
) -> tuple[list[RolloutTrajectory], dict]:
    """One question's training targets and what happened: {"correct", "duplicates", "capped"}."""
    correct = [t for t in record.trajectories if t.correct and t.text.strip()]
    if selection == "regime_w":
        order = sorted(correct, key=lambda t: t.reward, reverse=True)  # stable: file order breaks ties
    elif selection == "any_correct":
        order = list(correct)
        random.Random(f"{seed}:{record.question_id}").shuffle(order)
    else:
        raise ValueError(f"unknown selection {selection!r}")
    seen: set[str] = set()
    unique = []
    for t in order:
        key = normalise(t.text)
        if key not in seen:
            seen.add(key)
            unique.append(t)
    kept = unique[:top_k]
    return kept, {"correct": len(correct), "duplicates": len(correct) - len(unique), "capped": len(unique) - len(kept)}


def select_rows(
    records: list[RolloutRecord], render_prompt, selection: str = "regime_w", top_k: int = 2, seed: int = 0
) -> tuple[list[dict], dict]:
    """{prompt, completion, question_id, arm_name, reward} rows of every record, in file order, and the stats."""
    rows: list[dict] = []
    per_question: dict[str, int] = {}
    without: list[str] = []
    duplicates = capped = repeated = 0
    for record in records:
        if record.question_id in per_question:
            repeated += 1
            log.warning("question %s appears twice in the rollouts; keeping the first", record.question_id)
            continue
        kept, info = select_trajectories(record, selection, top_k, seed)
        per_question[record.question_id] = len(kept)
        duplicates += info["duplicates"]
        capped += info["capped"]
        if not kept:
            without.append(record.question_id)
            continue
        prompt = render_prompt(record.question)
        rows += [
            {
                "prompt": prompt,
                "completion": t.text.strip(),
                "question_id": record.question_id,
                "arm_name": t.arm_name,
                "reward": t.reward,
            }
            for t in kept
        ]
    rewards = [r["reward"] for r in rows]
    stats = {
        "selection": selection,
        "top_k": top_k,
        "questions": len(per_question),
        "questions_selected": len(per_question) - len(without),
        "questions_without_correct": len(without),
        "questions_without_correct_ids": without,
        "selected": len(rows),
        "selected_histogram": {str(n): c for n, c in sorted(Counter(per_question.values()).items())},
        "selected_per_question": per_question,
        "duplicates_dropped": duplicates,
        "dropped_by_cap": capped,
        "repeated_records_skipped": repeated,
        "mean_selected_reward": round(sum(rewards) / len(rewards), 6) if rewards else None,
    }
    return rows, stats


# --- one RFT stage --------------------------------------------------------------------------------


def run_rft(config: RFTStageConfig, callbacks=()) -> Path:
    """Select from `config.rollouts_file`, train with the SFT trainer; returns the adapter dir."""
    from looper_common.modeling import load_tokenizer
    from shared_schemas.prompts import build_prompt
    from trainer.adapters import load_policy
    from trainer.data import DataError, write_jsonl
    from trainer.prefs import read_rollouts
    from trainer.sft import train_prompt_completion

    if not config.rollouts_file:
        raise ValueError("run_rft needs rollouts_file (expert_iteration generates them)")
    out = Path(config.output_dir)
    records = read_rollouts(config.rollouts_file)
    tokenizer = load_tokenizer(config.model, config.base)
    rows, stats = select_rows(
        records, lambda q: build_prompt(q, tokenizer), config.selection, config.top_k, config.seed
    )
    rollouts_sha = file_sha256(config.rollouts_file)
    out.mkdir(parents=True, exist_ok=True)
    rows_sha = write_jsonl(out / "rft_train.jsonl", rows)
    stats = {"rollouts_file": str(config.rollouts_file), "rollouts_sha256": rollouts_sha, **stats}
    (out / "rft_train.stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info(
        "RFT (%s, top %d): %d rows from %d questions; %d without a correct trajectory, %d duplicates dropped",
        config.selection,
        config.top_k,
        len(rows),
        stats["questions"],
        stats["questions_without_correct"],
        stats["duplicates_dropped"],
    )
    if not rows:
        raise DataError(f"{config.rollouts_file}: no correct trajectory in any of {len(records)} questions")
    manifest = {
        "stage": "rft",
        "config": dataclasses.asdict(config),
        "rollouts_sha256": rollouts_sha,
        "train_rows_sha256": rows_sha,
        "examples": len(rows),
        "selection": {k: v for k, v in stats.items() if k not in ("selected_per_question", "rollouts_file")},
    }
    training_rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    policy = load_policy(config.model, config.base, config.quantization)
    return train_prompt_completion(config, tokenizer, training_rows, manifest, callbacks=callbacks, policy=policy)


# --- expert iteration -----------------------------------------------------------------------------


def _rollout_summary(path: Path) -> dict:
    from trainer.prefs import read_rollouts

    records = read_rollouts(path)
    trajectories = [t for r in records for t in r.trajectories]
    return {
        "questions": len(records),
        "trajectories": len(trajectories),
        "correct_share": round(sum(t.correct for t in trajectories) / len(trajectories), 4) if trajectories else None,
        "questions_with_correct": sum(any(t.correct for t in r.trajectories) for r in records),
    }


def expert_iteration(config: RFTStageConfig, engine_factory=None, callbacks=()) -> list[Path]:
    """`config.rounds` rounds of rollouts -> RFT, each round's adapter the next round's model; resumable.

    Round 1 uses `config.rollouts_file` when given (else it rolls out `config.model`). `engine_factory(model)`
    may supply the rollout engine (default: `config.engine`). Returns the adapters, round 1 first; a summary
    of every round (rollout accuracy, selection) goes to `<output_dir>/expert_iteration.json`.
    """
    from rollout_worker.worker import RolloutConfig, run_rollouts

    out = Path(config.output_dir)
    model, base = config.model, config.base
    adapters, rounds = [], []
    for k in range(1, config.rounds + 1):
        round_dir = out / f"round-{k}"
        adapter = round_dir / "adapter"
        rollouts = Path(config.rollouts_file) if k == 1 and config.rollouts_file else round_dir / "rollouts.jsonl"
        if (adapter / MANIFEST).is_file():
            log.info("round %d: %s exists; skipped", k, adapter / MANIFEST)
            skipped = True
        else:
            skipped = False
            if rollouts == round_dir / "rollouts.jsonl":
                rollout_config = RolloutConfig(
                    questions_file=str(config.questions_file),
                    output_file=str(rollouts),
                    model=model,
                    base=base,
                    engine=config.engine,
                    service_url=config.service_url,
                    token_file=config.token_file,
                    max_questions=config.max_questions,
                    batch_size=config.rollout_batch_size,
                    max_new_tokens=config.max_new_tokens,
                    label_free=config.label_free,
                )
                engine = engine_factory(model) if engine_factory else None
                log.info("round %d: rollouts of %s -> %s", k, model, rollouts)
                run_rollouts(rollout_config, engine)
            round_config = dataclasses.replace(
                config, model=model, base=base, rollouts_file=str(rollouts), output_dir=str(adapter), rounds=1
            )
            run_rft(round_config, callbacks=callbacks)
        manifest = json.loads((adapter / MANIFEST).read_text())
        rounds.append(
            {
                "round": k,
                "model": model,
                "adapter": str(adapter),
                "skipped": skipped,
                "rollouts": {"file": str(rollouts), **_rollout_summary(rollouts)},
                "selected": manifest["examples"],
                "questions_without_correct": manifest["selection"]["questions_without_correct"],
                "train_loss": manifest["train_loss"],
            }
        )
        adapters.append(adapter)
        model, base = str(adapter), None  # the folded adapter records its base
    summary = {"stage": "expert_iteration", "config": dataclasses.asdict(config), "rounds": rounds}
    (out / "expert_iteration.json").write_text(json.dumps(summary, indent=2) + "\n")
    return adapters
