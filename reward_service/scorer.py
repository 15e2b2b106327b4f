"""What the app needs from a scorer (Regime W or the public stub), and what both share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared_schemas.answers import majority_answer, parse_gold
from shared_schemas.models import (
    ArmSet,
    ArmSpec,
    LabelSource,
    PromptQuestion,
    PromptsResponse,
    ScoreRequest,
    ScoreResponse,
    ScorersResponse,
)


class ScoringError(ValueError):
    """The request is well-formed but cannot be scored (e.g. a gold answer with no number in it)."""


class Scorer(Protocol):
    name: str
    version: str
    arms: tuple[ArmSpec, ...]

    @property
    def path_mode(self) -> str: ...

    def load(self) -> None: ...

    def arm_set(self) -> ArmSet: ...

    def scorers(self) -> ScorersResponse:
        """Every scorer this service can run (`looper serve --scorer`), which one is active, and their weights."""

    def prompts(self, questions: list[PromptQuestion]) -> PromptsResponse: ...

    def score(self, groups: list[ScoreRequest]) -> list[ScoreResponse]:
        """Called in a worker thread (never on the event loop), inside the request's LaTeX answer budget."""


def reference_answer(request: ScoreRequest, answers: Sequence[str | None]) -> tuple[str | None, LabelSource]:
    """The gold answer when given, else the majority answer as a pseudo-label (label-free scoring)."""
    if request.gold_answer is not None:
        reference = parse_gold(request.gold_answer)
        if reference is None:
            raise ScoringError(f"question {request.question_id!r}: gold_answer has no number in it")
        return reference, "gold"
    reference = majority_answer(answers)
    return reference, "majority" if reference is not None else "none"
