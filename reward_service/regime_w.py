"""The closed scorers: Regime W arms, prompts and scoring behind the service's scorer interface.

Every scorer is named (`looper serve --scorer NAME`) and versioned; each response says which one scored it, so a
stored reward can always be reproduced. v1 is the seeds' design, kept exactly as it was; v2 and its control are
in reward_service/scoring_v2.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reward_service.arms import REGIME_W_ARMS, render_prompts
from reward_service.scoring import SCORER_VERSION, score_group
from reward_service.scoring_v2 import RANDOM_TIEBREAK_VERSION, V2_VERSION, V2_WEIGHTS, score_group_v2
from reward_service.settings import ServiceSettings
from shared_schemas.answers import warm_up
from shared_schemas.models import (
    ArmSet,
    PromptQuestion,
    PromptsResponse,
    ScoreRequest,
    ScoreResponse,
    ScorerInfo,
    ScorersResponse,
    ScoringWeights,
)

V1_WEIGHTS = tuple(
    name
    for name in ScoringWeights.model_fields
    if name not in ("tie_break", "tie_break_max_share", "robustness_numbers", "robustness_scale")
)


@dataclass(frozen=True)
class ScorerSpec:
    version: str
    description: str
    weights: tuple[str, ...]
    score: Callable[..., ScoreResponse]


SCORERS: dict[str, ScorerSpec] = {
    "regime_w_v1": ScorerSpec(
        SCORER_VERSION,
        "The seeds' Regime W: correctness + 0.05 group s_wm + 0.1 own s_wm + 0.05 quality (conciseness and probe "
        "alignment) - a length penalty past 400 words. Rewards brevity; kept to reproduce stored rewards.",
        V1_WEIGHTS,
        score_group,
    ),
    "regime_w_v2": ScorerSpec(
        V2_VERSION,
        "Correctness + a tie-break for correct answers of mixed groups only: lambda x u, u = number and path "
        "agreement with the other correct answers, residualised on log length; capped at a 10% share of the "
        "group's advantage. No conciseness, no length penalty, nothing constant within a group.",
        V2_WEIGHTS,
        score_group_v2,
    ),
    "random_tiebreak": ScorerSpec(
        RANDOM_TIEBREAK_VERSION,
        "Control: regime_w_v2 with each group's u values shuffled among its correct answers (same variance, no "
        "information).",
        V2_WEIGHTS,
        lambda *args, **kwargs: score_group_v2(*args, **kwargs, random_tiebreak=True),
    ),
}


def catalogue(active: str, weights: ScoringWeights) -> ScorersResponse:
    values = weights.model_dump()
    return ScorersResponse(
        active=active,
        scorers=[
            ScorerInfo(name=name, version=spec.version, description=spec.description,
                       weights={k: float(values[k]) for k in spec.weights})
            for name, spec in SCORERS.items()
        ],
    )  # fmt: skip


class RegimeWScorer:
    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.name = settings.scorer
        self.spec = SCORERS[self.name]
        self.version = self.spec.version
        self.arms = REGIME_W_ARMS
        self.roles = {arm.name: arm.role for arm in self.arms}
        self.embedder = None

    @property
    def path_mode(self) -> str:
        return self.settings.path_mode

    def load(self) -> None:
        warm_up()
        if self.settings.path_mode == "embedding":
            from reward_service.embeddings import Embedder

            s = self.settings
            self.embedder = Embedder(s.embedding_model, s.embedding_device, s.embedding_batch_size)

    def arm_set(self) -> ArmSet:
        return ArmSet(scorer_version=self.version, arms=list(self.arms))

    def scorers(self) -> ScorersResponse:
        return catalogue(self.name, self.settings.weights)

    def prompts(self, questions: list[PromptQuestion]) -> PromptsResponse:
        rendered = [render_prompts(self.arms, q.question_id, q.question) for q in questions]
        return PromptsResponse(scorer_version=self.version, questions=rendered)

    def score(self, groups: list[ScoreRequest]) -> list[ScoreResponse]:
        if self.embedder is not None:
            similarities = self.embedder.similarity_matrices([[t.text for t in g.trajectories] for g in groups])
        else:
            similarities = [None] * len(groups)
        s = self.settings
        return [
            self.spec.score(g, self.roles, s.weights, path_mode=s.path_mode, similarity=sim, answer_mode=s.answer_mode)
            for g, sim in zip(groups, similarities, strict=True)
        ]
