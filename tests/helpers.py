"""Shared test pieces: hand-made scored rollouts (prefs, RFT) and the loss SFT-style stages optimise."""

import torch

from shared_schemas.models import RolloutRecord, RolloutTrajectory, ScoringWeights


def traj(arm: str, text: str, correct: bool, reward: float) -> RolloutTrajectory:
    return RolloutTrajectory(
        arm_name=arm,
        text=text,
        answer="12" if correct else "13",
        correct=correct,
        reward=reward,
        quality=0.5,
        coherence=0.5,
    )


def record(qid: str, trajectories: list[RolloutTrajectory], question: str | None = None) -> RolloutRecord:
    return RolloutRecord(
        question_id=qid,
        question=question or f"Tom has 3 bags of 4 apples ({qid}). How many apples?",
        gold_answer="#### 12",
        trajectories=trajectories,
        s_end=0.5,
        s_path=0.5,
        s_cf=0.5,
        s_wm=0.5,
        group_reward=1.2,
        label_source="gold",
        scorer_version="test",
        weights=ScoringWeights(),
        model="tiny",
        engine="hf",
    )


def completion_loss(model, tokenizer, rows) -> float:
    """Mean cross-entropy on the completion tokens only of {prompt, completion} rows."""
    losses = []
    for r in rows:
        prompt = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        target = tokenizer(r["completion"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        labels = torch.tensor([[-100] * len(prompt) + target])
        with torch.no_grad():
            losses.append(model(input_ids=torch.tensor([prompt + target]), labels=labels).loss.item())
    return sum(losses) / len(losses)
