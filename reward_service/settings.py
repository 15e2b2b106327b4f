"""Everything the service can be configured with: one object, built by the CLI, passed to create_app."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from shared_schemas.answers import AnswerMode
from shared_schemas.models import MAX_BATCH_GROUPS, MAX_GROUP_SIZE, MAX_TEXT_CHARS, ScoringWeights

MIN_TOKEN_CHARS = 16
DEFAULT_ANSWER_BUDGET_S = 5.0  # LaTeX answer evaluation per request; a request's answers take milliseconds
DEFAULT_MAX_TEXT_CHARS = 32_000  # ~8k tokens of reasoning, what DeepSeek-R1-Distill writes at length
# the closed service's scorers (reward_service/regime_w.py describes each; GET /v1/scorers lists them)
ScorerName = Literal["regime_w_v1", "regime_w_v2", "random_tiebreak"]
DEFAULT_SCORER: ScorerName = "regime_w_v1"


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr | None = Field(None, description="Bearer token clients must send; never logged.")
    require_auth: bool = Field(True, description="False only when started with --insecure-no-auth.")
    stub: bool = Field(False, description="Serve the public stub scorer (correctness only, generic arms).")
    scorer: ScorerName = Field(DEFAULT_SCORER, description="The closed service's scorer (ignored with stub).")
    path_mode: Literal["lexical", "embedding"] = "lexical"
    embedding_model: str | None = Field(
        None, description="Local sentence-transformers dir or hub id; None picks the installed MiniLM package."
    )
    embedding_device: str = "cpu"
    embedding_batch_size: int = Field(64, ge=1, le=4096)
    answer_mode: AnswerMode = "strict"
    answer_budget_s: float = Field(
        DEFAULT_ANSWER_BUDGET_S,
        gt=0.0,
        le=60.0,
        description="LaTeX answer evaluation time one request may spend over all its answers; past it an answer "
        "reads as none and its trajectory says answer_timeout: true.",
    )
    weights: ScoringWeights = ScoringWeights()
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_group_size: int = Field(64, ge=1, le=MAX_GROUP_SIZE, description="More trajectories get 422.")
    max_batch_groups: int = Field(128, ge=1, le=MAX_BATCH_GROUPS, description="More groups in a batch get 422.")
    max_text_chars: int = Field(
        DEFAULT_MAX_TEXT_CHARS,
        ge=64,
        le=MAX_TEXT_CHARS,
        description="Longer trajectory texts get 422 on the contract routes; the training routes (OpenRLHF, "
        "/v1/score/batch?overlong=truncate) score them bounded and flag them truncated.",
    )
    allow_label_free_singletons: bool = Field(
        False,
        description="Score an OpenRLHF sample with no label and no other sample of its prompt (its own answer "
        "would be its pseudo-label: always 'correct'); refused with 422 unless set.",
    )

    @model_validator(mode="after")
    def _token_when_closed(self) -> ServiceSettings:
        if self.stub and self.scorer != DEFAULT_SCORER:
            raise ValueError(f"the stub scores correctness only; --scorer {self.scorer} needs the closed service")
        if self.require_auth:
            if self.token is None:
                raise ValueError(
                    "the service requires a bearer token: set LOOPER_SERVICE_TOKEN, pass --token-file, "
                    "or start it open with --insecure-no-auth"
                )
            if len(self.token.get_secret_value()) < MIN_TOKEN_CHARS:
                raise ValueError(f"the token must have at least {MIN_TOKEN_CHARS} characters")
        return self
