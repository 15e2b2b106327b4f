"""Hand-made scored rollouts for the tests of the stages that read them (prefs, RFT)."""

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
