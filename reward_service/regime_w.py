"""The closed scorer: Regime W arms, prompts and scoring behind the service's scorer interface."""

from __future__ import annotations

from reward_service.arms import REGIME_W_ARMS, render_prompts
from reward_service.scoring import SCORER_VERSION, score_group
from reward_service.settings import ServiceSettings
from shared_schemas.answers import warm_up
from shared_schemas.models import ArmSet, PromptQuestion, PromptsResponse, ScoreRequest, ScoreResponse


class RegimeWScorer:
    version = SCORER_VERSION

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.arms = REGIME_W_ARMS
        self.roles = {arm.name: arm.role for arm in self.arms}
        self.embedder = None

    @property
    def path_mode(self) -> str:
        return self.settings.path_mode

    @property
    def blocking(self) -> bool:
        """Slow enough (a neural encoder) that it must run off the event loop."""
        return self.settings.path_mode == "embedding"

    def load(self) -> None:
        warm_up()
        if self.settings.path_mode == "embedding":
            from reward_service.embeddings import Embedder

            s = self.settings
            self.embedder = Embedder(s.embedding_model, s.embedding_device, s.embedding_batch_size)

    def arm_set(self) -> ArmSet:
        return ArmSet(scorer_version=self.version, arms=list(self.arms))

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
            score_group(g, self.roles, s.weights, path_mode=s.path_mode, similarity=sim, answer_mode=s.answer_mode)
            for g, sim in zip(groups, similarities, strict=True)
        ]
