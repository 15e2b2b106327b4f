"""Preference pairs from scored rollouts: types, threshold, caps, duplicates, reasons, the prompt format."""

import json
import random

import pytest
from helpers import record, traj

from looper.cli import main
from looper_common.modeling import load_tokenizer
from shared_schemas.models import PreferencePair, RolloutRecord
from shared_schemas.prompts import build_prompt
from trainer.prefs import (
    ALL_CORRECT_CORRECTNESS_ONLY,
    ALL_CORRECT_NO_GAP,
    ALL_WRONG,
    DUPLICATES_ONLY,
    TOO_FEW,
    PrefsConfig,
    build_pairs,
    pairs_for_record,
    read_rollouts,
    run_prefs,
    stats_path,
)


def config(**overrides) -> PrefsConfig:
    return PrefsConfig(rollouts_file="unused.jsonl", tokenizer="unused", **overrides)


def mixed() -> RolloutRecord:
    """3 correct (gaps 0.02, 0.015 built; 0.005 not) and 2 wrong: 6 correctness + 2 coherence candidates."""
    return record(
        "mixed",
        [
            traj("wolfram_0", "3 x 4 = 12\nAnswer: 12", True, 1.10),
            traj("wolfram_1", "Three bags of four: 12\nAnswer: 12", True, 1.12),
            traj("maudlin_0", "4 + 4 + 4 = 12\nAnswer: 12", True, 1.105),
            traj("maudlin_1", "3 + 4 = 7, then 13\nAnswer: 13", False, -0.40),
            traj("maudlin_cf1", "12 + 1 = 13\nAnswer: 13", False, -0.45),
        ],
    )


def prompt_of(question: str) -> str:
    return f"PROMPT[{question}]"


def test_a_mixed_group_gives_correctness_pairs_then_coherence_pairs_above_the_threshold():
    pairs, info = pairs_for_record(mixed(), "p", config())
    types = [p.pair_type for p in pairs]
    assert types == ["correctness"] * 6 + ["coherence"] * 2  # correctness first
    for p in pairs:
        assert p.chosen_reward > p.rejected_reward and p.chosen != p.rejected and p.question_id == "mixed"
    coherence = {(p.chosen_arm, p.rejected_arm) for p in pairs if p.pair_type == "coherence"}
    # 1.12 vs 1.10 (0.02) and 1.12 vs 1.105 (0.015) are built; 1.105 vs 1.10 (0.005) is not
    assert coherence == {("wolfram_1", "wolfram_0"), ("wolfram_1", "maudlin_0")}
    assert all(p.chosen_arm in {"wolfram_0", "wolfram_1", "maudlin_0"} for p in pairs)
    assert info["reason"] is None and info["candidates"] == {"correctness": 6, "coherence": 2}


@pytest.mark.parametrize(("gap", "built"), [(0.005, False), (0.02, True), (0.01, False)])
def test_the_coherence_threshold_is_strict(gap, built):
    rec = record("q", [traj("a", "x\nAnswer: 12", True, 1.04 + gap), traj("b", "y\nAnswer: 12", True, 1.04)])
    pairs, info = pairs_for_record(rec, "p", config(coherence_threshold=0.01))
    assert len(pairs) == int(built)
    assert info["reason"] == (None if built else ALL_CORRECT_NO_GAP)


def test_caps_keep_the_largest_reward_gaps():
    pairs, _ = pairs_for_record(mixed(), "p", config(max_correctness_pairs=2, max_coherence_pairs=1))
    assert [(p.chosen_reward, p.rejected_reward) for p in pairs] == [(1.12, -0.45), (1.105, -0.45), (1.12, 1.10)]


def test_equal_gaps_are_broken_by_the_seed_deterministically():
    correct = [traj(f"c{i}", f"right {i}\nAnswer: 12", True, 1.1) for i in range(4)]
    rec = record("ties", [*correct, traj("w0", "wrong\nAnswer: 13", False, -0.4)])
    choose = {}
    for seed in range(6):
        runs = [pairs_for_record(rec, "p", config(max_correctness_pairs=1, seed=seed))[0] for _ in range(2)]
        assert runs[0] == runs[1]  # same seed, same pick
        choose[seed] = runs[0][0].chosen_arm
    assert len(set(choose.values())) > 1  # the seed, not the input order, decides among equal gaps


def test_no_duplicate_pairs_and_no_pair_of_equal_texts():
    same = "3 x 4 = 12\nAnswer: 12"
    rec = record(
        "dups",
        [
            traj("a", same, True, 1.15),
            traj("b", same, True, 1.10),  # equal text, different reward: no coherence pair with "a"
            traj("c", "wrong\nAnswer: 13", False, -0.4),
            traj("d", "wrong\nAnswer: 13", False, -0.4),  # same text as "c"
        ],
    )
    pairs, info = pairs_for_record(rec, "p", config())
    keys = [(p.prompt, p.chosen, p.rejected) for p in pairs]
    assert len(keys) == len(set(keys)) == 1 and pairs[0].pair_type == "correctness"
    assert info["duplicates"] == {"correctness": 3, "coherence": 1}
    only_dups = record("only", [traj("a", same, True, 1.15), traj("b", same, True, 1.10)])
    assert pairs_for_record(only_dups, "p", config())[1]["reason"] == DUPLICATES_ONLY


def test_all_correct_gives_only_coherence_pairs_all_wrong_none():
    all_correct = record("ok", [traj(f"c{i}", f"way {i}\nAnswer: 12", True, 1.0 + 0.03 * i) for i in range(4)])
    pairs, info = pairs_for_record(all_correct, "p", config(max_coherence_pairs=10))
    assert len(pairs) == 6 and {p.pair_type for p in pairs} == {"coherence"} and info["reason"] is None
    all_wrong = record("bad", [traj(f"w{i}", f"no {i}\nAnswer: 13", False, -0.5 + 0.05 * i) for i in range(4)])
    pairs, info = pairs_for_record(all_wrong, "p", config())
    assert pairs == [] and info["reason"] == ALL_WRONG


def test_empty_texts_are_skipped_and_too_few_is_recorded():
    rec = record("empty", [traj("a", "  \n", True, 1.1), traj("b", "wrong\nAnswer: 13", False, -0.4)])
    pairs, info = pairs_for_record(rec, "p", config())
    assert pairs == [] and info["reason"] == TOO_FEW and info["empty_skipped"] == 1
    rec = record("some", [traj("a", "", False, -0.5), traj("b", "ok\nAnswer: 12", True, 1.1), mixed().trajectories[3]])
    pairs, _ = pairs_for_record(rec, "p", config())
    assert len(pairs) == 1 and pairs[0].rejected_arm == "maudlin_1"


def test_correctness_only_mode_is_the_ablation_baseline():
    all_correct = record("ok", [traj(f"c{i}", f"way {i}\nAnswer: 12", True, 1.0 + 0.03 * i) for i in range(3)])
    pairs, stats = build_pairs([mixed(), all_correct], prompt_of, config(pair_types=["correctness"]))
    assert len(pairs) == 6 and {p.pair_type for p in pairs} == {"correctness"}
    assert stats["pairs_by_type"] == {"correctness": 6}
    assert stats["questions_without_pairs"] == {ALL_CORRECT_CORRECTNESS_ONLY: 1}
    with pytest.raises(ValueError, match="pair_types"):
        config(pair_types=["style"])


def test_stats_count_pairs_by_type_and_questions_without_pairs_by_reason():
    all_wrong = record("bad", [traj(f"w{i}", f"no {i}\nAnswer: 13", False, -0.5) for i in range(3)])
    flat = record("flat", [traj(f"c{i}", f"way {i}\nAnswer: 12", True, 1.1) for i in range(3)])
    lonely = record("one", [traj("c", "only\nAnswer: 12", True, 1.1)])
    pairs, stats = build_pairs([mixed(), all_wrong, flat, lonely, mixed()], prompt_of, config())
    assert stats["pairs"] == len(pairs) == 8
    assert stats["pairs_by_type"] == {"correctness": 6, "coherence": 2} and stats["correctness_share"] == 0.75
    assert stats["questions"] == 4 and stats["questions_with_pairs"] == 1 and stats["repeated_records_skipped"] == 1
    assert stats["questions_without_pairs"] == {ALL_WRONG: 1, ALL_CORRECT_NO_GAP: 1, TOO_FEW: 1}
    assert stats["min_reward_gap"]["coherence"] == pytest.approx(0.015)


def test_default_caps_give_the_spec_volume_on_500_questions_of_11_arms():
    """SPEC 4: ~3,000-5,000 pairs from 500 questions, 70-80% correctness, for a ~75%-accurate SFT model."""
    rng = random.Random(0)
    records = []
    for q in range(500):
        accuracy = rng.betavariate(3, 1)  # per-question difficulty, mean 0.75
        trajectories = []
        for arm in range(11):
            correct = rng.random() < accuracy
            reward = (1.0 if correct else -0.5) + rng.uniform(0, 0.2)
            trajectories.append(
                traj(f"arm_{arm}", f"solution {q}.{arm}\nAnswer: {12 if correct else 13}", correct, reward)
            )
        records.append(record(f"q{q}", trajectories))
    pairs, stats = build_pairs(records, prompt_of, config())
    assert 3000 <= len(pairs) <= 5000, stats
    assert 0.70 <= stats["correctness_share"] <= 0.80, stats


def test_run_prefs_renders_the_sft_prompt_and_writes_pairs_and_stats(tiny_model, tmp_path, capsys):
    rollouts = tmp_path / "rollouts.jsonl"
    all_correct = record("ok", [traj(f"c{i}", f"way {i}\nAnswer: 12", True, 1.0 + 0.03 * i) for i in range(3)])
    rollouts.write_text("".join(r.model_dump_json() + "\n" for r in [mixed(), all_correct]))
    out = tmp_path / "prefs" / "pairs.jsonl"
    main(["prefs", "--rollouts-file", str(rollouts), "--model", str(tiny_model), "--output-file", str(out)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pairs = [PreferencePair.model_validate_json(line) for line in out.read_text().splitlines()]
    tokenizer = load_tokenizer(str(tiny_model))
    questions = {r.question_id: r.question for r in read_rollouts(rollouts)}
    assert pairs and all(p.prompt == build_prompt(questions[p.question_id], tokenizer) for p in pairs)
    assert pairs[0].prompt.startswith("<|im_start|>system")  # the chat template, as SFT and eval render it
    stats = json.loads(stats_path(out).read_text())
    assert stats_path(out) == tmp_path / "prefs" / "pairs.stats.json"
    assert stats["pairs_by_type"] == printed["pairs_by_type"] == {"correctness": 6, "coherence": 4}
    assert len(stats["rollouts_sha256"]) == 64 and stats["config"]["coherence_threshold"] == 0.01
    # deterministic: a rerun writes the same bytes
    first = out.read_bytes()
    run_prefs(PrefsConfig(rollouts_file=str(rollouts), model=str(tiny_model), output_file=str(out)))
    assert out.read_bytes() == first
