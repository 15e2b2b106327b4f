"""Preference pairs for DPO from scored rollouts: correctness pairs first, then coherence pairs.

Per question (one rollouts JSONL record), trajectories with empty text are dropped, then:

- correctness pairs: every (correct, incorrect) combination of its trajectories;
- coherence pairs: correct trajectories whose per-trajectory Regime W rewards differ by more than
  `coherence_threshold` (default 0.01), the higher reward chosen.

Each type is capped per question; the kept pairs are those with the largest reward gaps, ties broken by a
shuffle seeded with (seed, question id), so a rerun gives the same file. Pairs whose chosen and rejected
texts are equal, or that repeat a (prompt, chosen, rejected) triple already kept, are skipped.

Default caps, sized so 500 questions x 11 arms give ~3,000-5,000 pairs, 70-80% of them correctness pairs
(SPEC 4): an SFT model near 75% per-sample accuracy leaves ~70% of questions mixed, ~25% all correct and
~5% all wrong. 350 mixed x 8 correctness pairs = 2,800; (350 mixed + 125 all-correct) x 2 coherence pairs
= 950; 3,750 pairs, 75% correctness. Stats of every run (pairs by type, questions without a pair and why)
go to `<output stem>.stats.json` beside the output, so a run that misses the target shows why.

The prompt is `shared_schemas.prompts.build_prompt(question, tokenizer)` with the policy model's tokenizer: the
very string SFT trained on and evaluation decodes from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from looper_common.config import help_text
from looper_common.jsonl import read_rows
from shared_schemas.models import PreferencePair, RolloutRecord, RolloutTrajectory

log = logging.getLogger("looper.prefs")

PAIR_TYPES = ("correctness", "coherence")

# Why a question gave no pair (keys of the stats' "questions_without_pairs").
TOO_FEW = "too_few_trajectories"  # fewer than 2 trajectories with text
ALL_WRONG = "all_wrong"  # no correct trajectory: nothing to prefer
ALL_CORRECT_NO_GAP = "all_correct_equal_rewards"  # all correct, no reward gap above the threshold
ALL_CORRECT_CORRECTNESS_ONLY = "all_correct_coherence_disabled"  # all correct, --pair-types correctness
DUPLICATES_ONLY = "duplicates_only"  # every candidate repeated a kept pair or had chosen == rejected text
CAPPED_TO_ZERO = "caps_are_zero"  # candidates existed but the caps keep none
NO_GAP = "no_reward_gap"  # --pair-types coherence: no two correct trajectories differ enough


@dataclass
class PrefsConfig:
    rollouts_file: str = field(default="", metadata=help_text("scored rollouts JSONL written by `looper rollouts`"))
    output_file: str = field(default="runs/prefs.jsonl", metadata=help_text("preference pairs JSONL (stats beside it)"))
    model: str = field(
        default="",
        metadata=help_text("policy model (base, adapter or merged dir, hub id) whose tokenizer renders prompts"),
    )
    tokenizer: str | None = field(default=None, metadata=help_text("tokenizer source; overrides --model"))
    base: str | None = field(default=None, metadata=help_text("base model of an adapter (default: its recorded base)"))
    pair_types: list[str] = field(
        default_factory=lambda: list(PAIR_TYPES),
        metadata=help_text("which pairs to build: correctness,coherence; 'correctness' alone is the ablation baseline"),
    )
    coherence_threshold: float = field(
        default=0.01, metadata=help_text("coherence pairs need a per-trajectory reward gap strictly above this")
    )
    max_correctness_pairs: int = field(default=8, metadata=help_text("cap of correctness pairs per question"))
    max_coherence_pairs: int = field(default=2, metadata=help_text("cap of coherence pairs per question"))
    seed: int = field(default=0, metadata=help_text("breaks ties between equal reward gaps when capping"))

    def __post_init__(self):
        if not self.rollouts_file:
            raise ValueError("rollouts_file is required")
        if not (self.model or self.tokenizer):
            raise ValueError("model or tokenizer is required (the prompt is rendered with the policy's tokenizer)")
        unknown = sorted(set(self.pair_types) - set(PAIR_TYPES))
        if unknown or not self.pair_types:
            raise ValueError(f"pair_types must be a non-empty subset of {', '.join(PAIR_TYPES)}; got {self.pair_types}")
        if self.coherence_threshold < 0:
            raise ValueError("coherence_threshold must be >= 0")
        if self.max_correctness_pairs < 0 or self.max_coherence_pairs < 0:
            raise ValueError("pair caps must be >= 0")


def stats_path(output_file: str | Path) -> Path:
    output = Path(output_file)
    return output.with_name(output.stem + ".stats.json")


def why_no_pairs(pairs_file: str | Path) -> str:
    """What the stats beside a pairs file say about its being empty; the fix where no arm of any question was
    right ("" without stats)."""
    path = stats_path(pairs_file)
    if not path.is_file():
        return ""
    stats = json.loads(path.read_text())
    without = stats.get("questions_without_pairs", {})
    why = f". {path}: questions without pairs {without}, label sources {stats.get('label_sources')}"
    if stats.get("questions_with_pairs") == 0 and set(without) == {ALL_WRONG}:
        why += (
            ". No arm of any question was correct. For a model that answers nothing right (random weights), score "
            "the rollouts label-free (rollouts label_free: a question's majority answer is its label) and read "
            "answers flexibly (looper serve --answer-mode flexible; looper pipeline answer_mode: flexible), so an "
            "arm's last number is its answer"
        )
    return why


def read_rollouts(path: str | Path) -> list[RolloutRecord]:
    """Validated records of a rollouts JSONL file (`read_rows`: a torn last line is skipped with a warning)."""
    return read_rows(path, RolloutRecord.model_validate_json, "rollout record")


@dataclass(frozen=True)
class _Candidate:
    pair_type: str
    chosen: RolloutTrajectory
    rejected: RolloutTrajectory

    @property
    def gap(self) -> float:
        return self.chosen.reward - self.rejected.reward


def _select(candidates: list[_Candidate], cap: int, rng: random.Random, prompt: str, seen: set) -> tuple[list, int]:
    """Up to `cap` candidates, largest reward gap first (ties: seeded order); returns (kept, duplicates skipped)."""
    order = list(candidates)
    rng.shuffle(order)
    order.sort(key=lambda c: c.gap, reverse=True)  # stable: the shuffle decides among equal gaps
    kept, duplicates = [], 0
    for c in order:
        if len(kept) >= cap:
            break
        key = (prompt, c.chosen.text, c.rejected.text)
        if c.chosen.text == c.rejected.text or key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(c)
    return kept, duplicates


def pairs_for_record(
    record: RolloutRecord, prompt: str, config: PrefsConfig, seen: set | None = None
) -> tuple[list[PreferencePair], dict]:
    """One question's pairs and what happened to it: {"candidates", "kept", "duplicates", "reason"}."""
    seen = set() if seen is None else seen
    trajectories = [t for t in record.trajectories if t.text.strip()]
    info = {
        "empty_skipped": len(record.trajectories) - len(trajectories),
        "candidates": Counter(),
        "kept": Counter(),
        "duplicates": Counter(),
        "reason": None,
    }
    correct = [t for t in trajectories if t.correct]
    wrong = [t for t in trajectories if not t.correct]
    if len(trajectories) < 2:
        info["reason"] = TOO_FEW
        return [], info
    if not correct:
        info["reason"] = ALL_WRONG
        return [], info

    rng = random.Random(f"{config.seed}:{record.question_id}")
    by_type: dict[str, list[_Candidate]] = {
        "correctness": [_Candidate("correctness", c, w) for c in correct for w in wrong],
        "coherence": [
            _Candidate("coherence", *((a, b) if a.reward > b.reward else (b, a)))
            for a, b in combinations(correct, 2)
            if round(abs(a.reward - b.reward), 9) > config.coherence_threshold  # 1.05 - 1.04 is not > 0.01
        ],
    }
    caps = {"correctness": config.max_correctness_pairs, "coherence": config.max_coherence_pairs}
    kept: list[_Candidate] = []
    for pair_type in PAIR_TYPES:  # correctness first
        if pair_type not in config.pair_types:
            continue
        info["candidates"][pair_type] = len(by_type[pair_type])
        selected, duplicates = _select(by_type[pair_type], caps[pair_type], rng, prompt, seen)
        info["kept"][pair_type] = len(selected)
        info["duplicates"][pair_type] = duplicates
        kept += selected

    if not kept:
        if sum(info["duplicates"].values()):
            info["reason"] = DUPLICATES_ONLY
        elif sum(info["candidates"].values()):
            info["reason"] = CAPPED_TO_ZERO
        elif wrong:  # coherence pairs only, and no reward gap among the correct ones
            info["reason"] = NO_GAP
        elif "coherence" in config.pair_types:
            info["reason"] = ALL_CORRECT_NO_GAP
        else:
            info["reason"] = ALL_CORRECT_CORRECTNESS_ONLY
    pairs = [
        PreferencePair(
            question_id=record.question_id,
            prompt=prompt,
            chosen=c.chosen.text,
            rejected=c.rejected.text,
            pair_type=c.pair_type,
            chosen_reward=c.chosen.reward,
            rejected_reward=c.rejected.reward,
            chosen_arm=c.chosen.arm_name,
            rejected_arm=c.rejected.arm_name,
        )
        for c in kept
    ]
    return pairs, info


def build_pairs(
    records: list[RolloutRecord], render_prompt: Callable[[str], str], config: PrefsConfig
) -> tuple[list[PreferencePair], dict]:
    """Every record's pairs, in file order (correctness before coherence within a question), and the stats."""
    pairs: list[PreferencePair] = []
    seen: set = set()
    question_ids: set[str] = set()
    without = Counter()
    candidates, kept, duplicates = Counter(), Counter(), Counter()
    empty = repeated_records = trajectories = 0
    labels = Counter()
    for record in records:
        if record.question_id in question_ids:
            repeated_records += 1
            log.warning("question %s appears twice in the rollouts; keeping the first", record.question_id)
            continue
        question_ids.add(record.question_id)
        labels[record.label_source] += 1
        trajectories += len(record.trajectories)
        record_pairs, info = pairs_for_record(record, render_prompt(record.question), config, seen)
        pairs += record_pairs
        candidates.update(info["candidates"])
        kept.update(info["kept"])
        duplicates.update(info["duplicates"])
        empty += info["empty_skipped"]
        if info["reason"]:
            without[info["reason"]] += 1

    gaps = {t: [p.chosen_reward - p.rejected_reward for p in pairs if p.pair_type == t] for t in config.pair_types}
    stats = {
        "pairs": len(pairs),
        "pairs_by_type": {t: kept[t] for t in config.pair_types},
        "correctness_share": round(kept["correctness"] / len(pairs), 4) if pairs else None,
        "questions": len(question_ids),
        "questions_with_pairs": len(question_ids) - sum(without.values()),
        "questions_without_pairs": dict(sorted(without.items())),
        "candidates_by_type": {t: candidates[t] for t in config.pair_types},
        "dropped_by_cap": {t: candidates[t] - kept[t] - duplicates[t] for t in config.pair_types},
        "duplicates_skipped": {t: duplicates[t] for t in config.pair_types},
        "trajectories": trajectories,
        "empty_trajectories_skipped": empty,
        "repeated_records_skipped": repeated_records,
        "label_sources": dict(labels),
        "mean_reward_gap": {t: round(sum(g) / len(g), 6) if g else None for t, g in gaps.items()},
        "min_reward_gap": {t: round(min(g), 6) if g else None for t, g in gaps.items()},
    }
    return pairs, stats


def run_prefs(config: PrefsConfig) -> dict:
    """Build the pairs file and its stats JSON; return the stats."""
    from looper_common.modeling import load_tokenizer
    from shared_schemas.prompts import build_prompt
    from trainer.data import write_jsonl

    records = read_rollouts(config.rollouts_file)
    tokenizer = load_tokenizer(config.tokenizer or config.model, config.base)
    pairs, stats = build_pairs(records, lambda q: build_prompt(q, tokenizer), config)
    sha = write_jsonl(config.output_file, [p.model_dump(mode="json") for p in pairs])
    stats = {
        "stage": "prefs",
        "output_file": str(config.output_file),
        "output_sha256": sha,
        "rollouts_sha256": hashlib.sha256(Path(config.rollouts_file).read_bytes()).hexdigest(),
        "config": dataclasses.asdict(config),
        **stats,
    }
    path = stats_path(config.output_file)
    path.write_text(json.dumps(stats, indent=2) + "\n")
    log.info("%d pairs (%s) from %d questions; stats in %s", len(pairs), stats["pairs_by_type"], len(records), path)
    return stats
