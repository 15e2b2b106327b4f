"""Rejection-sampling SFT: selection on hand-made rollouts, real training on the tiny model, and expert
iteration for two rounds against the real Regime W service."""

import json

import pytest
from helpers import completion_loss, record, traj

from looper.cli import main
from looper_common.modeling import load_model, load_tokenizer
from shared_schemas.models import RolloutRecord
from trainer.data import DataError, generated_records, write_jsonl
from trainer.rft import RFTStageConfig, expert_iteration, run_rft, select_rows, select_trajectories

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixed() -> RolloutRecord:
    return record(
        "mixed",
        [
            traj("wolfram_0", "3 x 4 = 12\nAnswer: 12", True, 1.10),
            traj("wolfram_1", "Three bags of four: 12\nAnswer: 12", True, 1.12),
            traj("wolfram_2", "  three BAGS of four:   12\n\nanswer: 12 ", True, 1.13),  # a duplicate once normalised
            traj("maudlin_0", "4 + 4 + 4 = 12\nAnswer: 12", True, 1.105),
            traj(
                "maudlin_1", "3 + 4 = 7, then 13\nAnswer: 13", False, 1.50
            ),  # wrong: never picked, whatever its reward
            traj("maudlin_2", "", True, 1.20),  # no text
        ],
    )


def test_regime_w_picks_the_highest_rewards_deduplicated_and_capped():
    kept, info = select_trajectories(mixed(), "regime_w", top_k=2)
    assert [t.arm_name for t in kept] == ["wolfram_2", "maudlin_0"]  # wolfram_1 repeats wolfram_2's text
    assert info == {"correct": 4, "duplicates": 1, "capped": 1}
    kept, _ = select_trajectories(mixed(), "regime_w", top_k=10)
    assert [t.arm_name for t in kept] == ["wolfram_2", "maudlin_0", "wolfram_0"]


def test_any_correct_is_a_seeded_random_correct_choice():
    picks = {
        seed: [t.arm_name for t in select_trajectories(mixed(), "any_correct", top_k=1, seed=seed)[0]]
        for seed in range(12)
    }
    assert all(len(p) == 1 and p[0] in {"wolfram_0", "wolfram_1", "wolfram_2", "maudlin_0"} for p in picks.values())
    assert len({p[0] for p in picks.values()}) > 1  # not always the top reward
    assert picks == {
        seed: [t.arm_name for t in select_trajectories(mixed(), "any_correct", top_k=1, seed=seed)[0]]
        for seed in range(12)
    }
    kept, info = select_trajectories(mixed(), "any_correct", top_k=10, seed=3)
    assert len(kept) == 3 and info["duplicates"] == 1


def test_questions_without_a_correct_trajectory_are_counted():
    wrong = record(
        "wrong", [traj("wolfram_0", "Answer: 13", False, -0.4), traj("maudlin_0", "Answer: 14", False, -0.5)]
    )
    rows, stats = select_rows([mixed(), wrong, mixed()], lambda q: f"PROMPT[{q}]")
    assert [(r["question_id"], r["arm_name"]) for r in rows] == [("mixed", "wolfram_2"), ("mixed", "maudlin_0")]
    assert rows[0]["prompt"] == f"PROMPT[{mixed().question}]" and rows[0]["completion"].startswith("three BAGS")
    assert stats["questions"] == 2 and stats["questions_without_correct"] == 1
    assert stats["questions_without_correct_ids"] == ["wrong"]
    assert stats["selected_per_question"] == {"mixed": 2, "wrong": 0}
    assert stats["selected_histogram"] == {"0": 1, "2": 1}
    assert stats["duplicates_dropped"] == 1 and stats["dropped_by_cap"] == 1 and stats["repeated_records_skipped"] == 1


def apples(i: int) -> RolloutRecord:
    a, b = 3 + i, 4 + 2 * i
    right = a * b
    return record(
        f"q{i}",
        [
            traj("wolfram_0", f"{a} bags of {b} apples: {a} x {b} = {right}.\nAnswer: {right}", True, 1.15),
            traj("maudlin_0", f"{b} + {b} ... {a} times is {right}.\nAnswer: {right}", True, 1.05),
            traj("maudlin_1", f"{a} + {b} = {a + b}\nAnswer: {a + b}", False, -0.40),
        ],
        question=f"Tom has {a} bags of {b} apples. How many apples?",
    )


def rft_config(model, out, **overrides) -> RFTStageConfig:
    values = dict(
        model=str(model),
        output_dir=str(out),
        learning_rate=1e-2,
        max_steps=8,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_length=256,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        warmup_steps=0,
        logging_steps=1,
        save_steps=1000,
    )
    values.update(overrides)
    return RFTStageConfig(**values)


def test_rft_lowers_the_loss_on_the_selected_completions(tiny_model, tmp_path):
    rollouts = tmp_path / "rollouts.jsonl"
    write_jsonl(rollouts, [apples(i).model_dump(mode="json") for i in range(4)])
    out = run_rft(rft_config(tiny_model, tmp_path / "rft", rollouts_file=str(rollouts), top_k=1))
    rows = [json.loads(line) for line in (out / "rft_train.jsonl").read_text().splitlines()]
    assert [r["arm_name"] for r in rows] == ["wolfram_0"] * 4
    tokenizer = load_tokenizer(str(tiny_model))
    before = completion_loss(load_model(str(tiny_model)), tokenizer, rows)
    after = completion_loss(load_model(str(out)), tokenizer, rows)
    assert after < before - 0.25, (before, after)
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["stage"] == "rft" and manifest["global_step"] == 8 and manifest["nonfinite_skipped"] == 0
    assert manifest["examples"] == 4 and len(manifest["rollouts_sha256"]) == 64
    assert manifest["selection"]["selected"] == 4 and manifest["selection"]["dropped_by_cap"] == 4
    stats = json.loads((out / "rft_train.stats.json").read_text())
    assert stats["selected_per_question"] == {f"q{i}": 1 for i in range(4)}


def test_rollouts_without_any_correct_trajectory_fail_clearly(tiny_model, tmp_path):
    rollouts = tmp_path / "rollouts.jsonl"
    write_jsonl(rollouts, [record("w", [traj("wolfram_0", "Answer: 13", False, -0.4)]).model_dump(mode="json")])
    with pytest.raises(DataError, match="no correct trajectory"):
        run_rft(rft_config(tiny_model, tmp_path / "rft", rollouts_file=str(rollouts)))
    stats = json.loads((tmp_path / "rft" / "rft_train.stats.json").read_text())
    assert stats["questions_without_correct"] == 1 and not (tmp_path / "rft" / "adapter_model.safetensors").exists()


def test_the_config_needs_questions_for_expert_iteration():
    with pytest.raises(ValueError, match="questions_file"):
        RFTStageConfig(model="m", rounds=2)
    assert not RFTStageConfig(model="m", rollouts_file="r.jsonl").expert_iteration
    assert RFTStageConfig(model="m", rollouts_file="r.jsonl", rounds=2, questions_file="q").expert_iteration


def test_expert_iteration_runs_two_rounds_against_the_service_and_resumes(
    format_model, regime_w_service, monkeypatch, tmp_path
):
    monkeypatch.setenv("LOOPER_SERVICE_TOKEN", regime_w_service.token)
    questions = tmp_path / "questions.jsonl"
    # questions on which the format model's answers agree: label-free, the majority answer counts as correct
    write_jsonl(questions, [generated_records(8, seed=11)[i] for i in (1, 5, 7)])
    config = rft_config(
        format_model,
        tmp_path / "ei",
        rounds=2,
        questions_file=str(questions),
        service_url=regime_w_service.url,
        engine="hf",
        max_questions=3,
        rollout_batch_size=3,
        max_new_tokens=96,  # the arms' prompts are not the tutor prompt the format model learnt: it needs room
        label_free=True,
        max_steps=2,
        learning_rate=1e-3,
    )
    adapters = expert_iteration(config)
    assert adapters == [tmp_path / "ei" / "round-1" / "adapter", tmp_path / "ei" / "round-2" / "adapter"]
    for k, adapter in enumerate(adapters, 1):
        assert (adapter / "adapter_model.safetensors").is_file()
        assert len((tmp_path / "ei" / f"round-{k}" / "rollouts.jsonl").read_text().splitlines()) == 3
    second = json.loads((adapters[1] / "looper_manifest.json").read_text())
    assert second["config"]["model"] == str(adapters[0]) and second["model_source"]["kind"] == "adapter"
    assert second["folded"]["rank"] == 16  # round 1's LoRA + round 2's, over the base
    rollouts_2 = json.loads((tmp_path / "ei" / "round-2" / "rollouts.jsonl").read_text().splitlines()[0])
    assert rollouts_2["model"] == str(adapters[0])
    stamp = (adapters[1] / "adapter_model.safetensors").stat().st_mtime_ns

    # a rerun (through the CLI) finds both adapters and trains nothing
    main(["rft", "--model", str(format_model), "--output-dir", str(tmp_path / "ei"), "--rounds", "2"]
         + ["--questions-file", str(questions), "--service-url", regime_w_service.url])  # fmt: skip
    summary = json.loads((tmp_path / "ei" / "expert_iteration.json").read_text())
    assert [r["skipped"] for r in summary["rounds"]] == [True, True]
    assert all(r["rollouts"]["questions"] == 3 for r in summary["rounds"])
    assert (adapters[1] / "adapter_model.safetensors").stat().st_mtime_ns == stamp
