"""The public stub scorer: the service's API with trivial, public scoring (correctness only).

An open-source release ships this instead of Regime W. It imports nothing private (no arms, no
scoring module), so the service's app factory and this file run without them.
"""

from __future__ import annotations

from collections import Counter

from reward_service.scorer import reference_answer
from reward_service.settings import ServiceSettings
from shared_schemas.answers import answer_agreement, read_answer, warm_up
from shared_schemas.models import (
    ArmSet,
    ArmSpec,
    PromptQuestion,
    PromptsResponse,
    QuestionPrompts,
    RenderedArmPrompt,
    ScoreRequest,
    ScoreResponse,
    ScorerInfo,
    ScorersResponse,
    TrajectoryScore,
)
from shared_schemas.prompts import TUTOR_SYSTEM, USER_TEMPLATE

STUB_VERSION = "stub-correctness/1.0.0"

STUB_ARMS = tuple(
    ArmSpec(
        name=f"sample_{k}",
        role="sample",
        temperature=round(0.2 + 0.05 * k, 2),
        top_p=0.95,
        seed=k,
        system_prompt=TUTOR_SYSTEM,
        user_template=USER_TEMPLATE,
    )
    for k in range(11)
)


def score_correctness(request: ScoreRequest, settings: ServiceSettings) -> ScoreResponse:
    """Reward = correct_base / incorrect_base per trajectory; no coherence terms (they stay 0)."""
    w = settings.weights
    readings = [read_answer(t.text, settings.answer_mode) for t in request.trajectories]
    answers = [r.answer for r in readings]
    reference, label_source = reference_answer(request, answers)
    correct = [a is not None and a == reference for a in answers]
    words = [len(t.text.split()) for t in request.trajectories]
    counts = Counter(a for a in answers if a is not None)
    n = len(answers)
    trajectories = [
        TrajectoryScore(
            arm_name=t.arm_name,
            answer=r.answer,
            answer_timeout=r.timed_out,
            correct=c,
            words=wc,
            s_end=((counts[r.answer] - 1) / (n - 1) if n > 1 else 1.0) if r.answer is not None else 0.0,
            s_path=0.0,
            s_cf=0.0,
            coherence=0.0,
            quality=0.0,
            length_penalty=0.0,
            reward=w.correct_base if c else w.incorrect_base,
        )
        for t, r, c, wc in zip(request.trajectories, readings, correct, words, strict=True)
    ]
    return ScoreResponse(
        question_id=request.question_id,
        s_end=answer_agreement(answers),
        s_path=0.0,
        s_cf=0.0,
        s_wm=0.0,
        group_reward=w.correct_base if any(correct) else w.incorrect_base,
        mean_words=sum(words) / n,
        any_correct=any(correct),
        label_source=label_source,
        reference_answer=reference,
        path_mode="none",
        scorer="stub",
        scorer_version=STUB_VERSION,
        weights=w,
        trajectories=trajectories,
    )


class StubScorer:
    name = "stub"
    version = STUB_VERSION
    path_mode = "none"

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.arms = STUB_ARMS

    def load(self) -> None:
        warm_up()

    def arm_set(self) -> ArmSet:
        return ArmSet(scorer_version=self.version, arms=list(self.arms))

    def scorers(self) -> ScorersResponse:
        w = self.settings.weights
        info = ScorerInfo(
            name=self.name,
            version=self.version,
            description="Public stub: correctness only (correct_base / incorrect_base), generic sampling arms.",
            weights={"correct_base": w.correct_base, "incorrect_base": w.incorrect_base},
        )
        return ScorersResponse(active=self.name, scorers=[info])

    def prompts(self, questions: list[PromptQuestion]) -> PromptsResponse:
        return PromptsResponse(
            scorer_version=self.version,
            questions=[
                QuestionPrompts(
                    question_id=q.question_id,
                    prompts=[
                        RenderedArmPrompt(
                            arm_name=a.name, system=a.system_prompt, user=a.user_template.format(question=q.question)
                        )
                        for a in self.arms
                    ],
                )
                for q in questions
            ],
        )

    def score(self, groups: list[ScoreRequest]) -> list[ScoreResponse]:
        return [score_correctness(g, self.settings) for g in groups]
