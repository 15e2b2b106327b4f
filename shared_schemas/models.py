"""The contract between the reward service, the rollout worker and the trainer.

Every model is strict: unknown fields are rejected and every string and list is bounded, so a
malformed or oversized request fails validation (HTTP 422) before any work is done.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Hard caps of the contract. A service may enforce tighter limits of its own (its settings).
MAX_ID_CHARS = 128
MAX_QUESTION_CHARS = 8_000
MAX_GOLD_CHARS = 8_000
MAX_TEXT_CHARS = 64_000  # the contract's cap; the service's own (max_text_chars, 32,000 by default) is lower
MAX_PROMPT_CHARS = 8_000
MAX_GROUP_SIZE = 256
MAX_BATCH_GROUPS = 256
MAX_ARMS = 64

ArmName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
QuestionId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
# A normalised number: optional minus, digits, optional fraction with no trailing zeros ("-15", "1234.5").
NormalisedAnswer = Annotated[str, Field(max_length=64, pattern=r"^-?\d+(\.\d*[1-9])?$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- arms ---------------------------------------------------------------------------------------

ArmRole = Literal["compute", "reflective", "probe_standard", "probe_rephrase", "probe_counterfactual", "sample"]


class ArmSpec(Strict):
    """One differently-prompted way of sampling a solution. Served by the service, never hard-coded in clients."""

    name: ArmName
    role: ArmRole = Field(description="What the arm contributes to Regime W; probes anchor s_cf and quality.")
    temperature: float = Field(ge=0.0, le=2.0)
    top_p: float = Field(gt=0.0, le=1.0)
    seed: int = Field(ge=0, le=2**31 - 1)
    max_new_tokens: int = Field(default=512, ge=1, le=8192)
    system_prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    user_template: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="Contains '{question}'. Probe arms whose question text is rewritten per question "
        "(the paraphrase) are rendered by POST /v1/prompts.",
    )


class ArmSet(Strict):
    scorer_version: str
    arms: list[ArmSpec] = Field(min_length=1, max_length=MAX_ARMS)


class PromptQuestion(Strict):
    question_id: QuestionId
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)


class PromptsRequest(Strict):
    questions: list[PromptQuestion] = Field(min_length=1, max_length=MAX_BATCH_GROUPS)


class RenderedArmPrompt(Strict):
    arm_name: ArmName
    system: str
    user: str


class QuestionPrompts(Strict):
    question_id: QuestionId
    prompts: list[RenderedArmPrompt]


class PromptsResponse(Strict):
    scorer_version: str
    questions: list[QuestionPrompts]


# --- scoring ------------------------------------------------------------------------------------


class Trajectory(Strict):
    """One generated solution: which arm produced it and the raw text. The service extracts the answer."""

    arm_name: ArmName
    text: str = Field(max_length=MAX_TEXT_CHARS)


# A gold answer given as a JSON number: an integer or a finite decimal, read as its decimal text
GoldNumber = (
    Annotated[int, Field(strict=True, ge=-(10**15), le=10**15)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e15, le=1e15)]
)


def bounded_text(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its start and its end (where the final answer is),
    `limit` characters in all, joined by a line with an ellipsis."""
    if len(text) <= limit:
        return text
    joint = "\n...\n"
    head = max(0, (limit - len(joint)) // 2)
    return text[:head] + joint + text[len(text) - (limit - len(joint) - head) :]


def gold_text(value: str | int | float | None) -> str | None:
    """A gold answer as text: a number in plain decimal notation (12, 12.5, never 1e+20), a string as it is."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return format(Decimal(repr(value)), "f")


class ScoreRequest(Strict):
    """One question's group of trajectories."""

    question_id: QuestionId
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    gold_answer: Annotated[str, Field(max_length=MAX_GOLD_CHARS)] | GoldNumber | None = Field(
        default=None,
        description="A full GSM8K solution ending in '#### N', a bare number as a string, or a JSON number "
        "(integer or finite decimal, read as its decimal text); null scores label-free.",
    )
    trajectories: list[Trajectory] = Field(min_length=1, max_length=MAX_GROUP_SIZE)

    @field_validator("gold_answer", mode="after")
    @classmethod
    def _gold_as_text(cls, value):
        return gold_text(value)


class BatchScoreRequest(Strict):
    groups: list[ScoreRequest] = Field(min_length=1, max_length=MAX_BATCH_GROUPS)


class ScoringWeights(Strict):
    """Every weight and threshold of the scorer; echoed in each response so a stored reward is reproducible."""

    s_end: float = 0.4
    s_path: float = 0.3
    s_cf: float = 0.3
    path_length: float = Field(0.4, description="Share of length coherence inside s_path.")
    path_similarity: float = Field(0.6, description="Share of mean pairwise similarity inside s_path.")
    correct_base: float = 1.0
    incorrect_base: float = -0.5
    group_coherence: float = Field(0.7, description="Multiplier of s_wm in the group reward.")
    length_penalty_per_word: float = 0.001
    length_free_words: int = 400
    trajectory_group_coherence: float = Field(0.05, description="Per-trajectory reward: weight of the group s_wm.")
    trajectory_coherence: float = Field(0.1, description="Per-trajectory reward: weight of its own s_wm_i.")
    trajectory_quality: float = Field(0.05, description="Per-trajectory reward: weight of its quality term.")
    quality_conciseness: float = 0.4
    quality_alignment: float = 0.6
    tie_break: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="v2: the largest tie-break a correct trajectory of a mixed group gets (lambda, times u in [-1, 1]).",
    )
    tie_break_max_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="v2: cap on the tie-break's share of a group's advantage, relative to correctness' "
        "(L2 norms of the group-centred terms); larger tie-breaks are scaled down to it.",
    )
    robustness_numbers: float = Field(
        0.5, ge=0.0, le=1.0, description="v2: share of number agreement in robustness; the rest is path similarity."
    )
    robustness_scale: float = Field(0.1, gt=0.0, description="v2: u = tanh(length-residualised robustness / scale).")


class TrajectoryScore(Strict):
    arm_name: ArmName
    answer: NormalisedAnswer | None = Field(description="Extracted final answer, normalised; null if none.")
    truncated: bool = Field(
        False,
        description="True when the text was longer than the service's max_text_chars and was scored bounded: its "
        "first and last max_text_chars/2 characters (the final answer is read from the end).",
    )
    answer_timeout: bool = Field(
        False,
        description="True when the answer is null because its LaTeX could not be evaluated within the request's "
        "parsing budget (the service's answer_budget_s), not because the text has no answer.",
    )
    correct: bool = Field(description="Equal to the gold answer (or to the pseudo-label when label-free).")
    words: int = Field(ge=0)
    s_end: Unit = Field(description="Leave-one-out answer agreement.")
    s_path: Unit = Field(description="Mean path similarity to the other trajectories.")
    s_cf: Unit = Field(description="Agreement with the probes' answers (itself excluded).")
    coherence: Unit = Field(description="Its own s_wm: the s_* above with the s_wm weights.")
    quality: Unit = Field(
        description="v1: 0.4 x conciseness + 0.6 x alignment with the canonical probes; v2: the alignment alone."
    )
    length_penalty: float = Field(ge=0.0)
    reward: float
    robustness: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="v2: u, the length-neutral robustness of a correct trajectory among the group's correct ones "
        "(number and path agreement, residualised on log length); null for wrong ones and for v1.",
    )


LabelSource = Literal["gold", "majority", "none"]


class ScoreResponse(Strict):
    question_id: QuestionId
    s_end: Unit
    s_path: Unit
    s_cf: Unit
    s_wm: Unit
    group_reward: float
    mean_words: float = Field(ge=0.0)
    any_correct: bool
    label_source: LabelSource = Field(
        description="'gold' when a gold answer was given, 'majority' when the majority answer stood in as "
        "a pseudo-label, 'none' when no trajectory had an answer."
    )
    reference_answer: NormalisedAnswer | None = Field(description="The gold or pseudo-label answer used.")
    path_mode: Literal["lexical", "embedding", "none"]
    scorer: str | None = Field(
        default=None, max_length=64, description="The scorer's name, as GET /v1/scorers lists it."
    )
    scorer_version: str
    weights: ScoringWeights
    reward_spread: dict[str, float] | None = Field(
        default=None,
        description="Each reward term's share of the group's reward spread, Cov(term, reward) / Var(reward): sums "
        "to 1 when the rewards differ, 0 for a term constant within the group, all 0 when the rewards are equal.",
    )
    trajectories: list[TrajectoryScore]


class BatchScoreResponse(Strict):
    results: list[ScoreResponse]


class ScorerInfo(Strict):
    """One scorer a service can run, and the weights its rewards read."""

    name: str = Field(max_length=64)
    version: str = Field(max_length=64)
    description: str = Field(max_length=1_000)
    weights: dict[str, float] = Field(description="The ScoringWeights fields this scorer's rewards use, as served.")


class ScorersResponse(Strict):
    active: str = Field(description="The scorer this service scores with (`looper serve --scorer`).")
    scorers: list[ScorerInfo]


class ErrorResponse(Strict):
    detail: str | list[dict]


# --- engine adapters ------------------------------------------------------------------------------

# OpenRLHF's remote reward call (`--reward.remote_url`): openrlhf/utils/agent.py posts
# {"query", "prompts", "labels"} and reads back {"rewards", "scores", "extra_logs"}.
MAX_RL_SAMPLES = 8_192
RLPrompt = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_QUESTION_CHARS)]
# a training engine's response may run long (a reasoning trace): the OpenRLHF route scores it bounded
MAX_RL_RESPONSE_CHARS = 256_000
RLQuery = Annotated[str, Field(strict=True, max_length=MAX_QUESTION_CHARS + MAX_RL_RESPONSE_CHARS)]
RLLabel = (
    Annotated[str, Field(strict=True, max_length=MAX_GOLD_CHARS)]
    | Annotated[int, Field(strict=True, ge=-(10**15), le=10**15)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
    | None
)


class OpenRLHFRewardRequest(Strict):
    """OpenRLHF's remote reward request: one entry per sample, the three lists of equal length."""

    query: list[RLQuery] = Field(
        min_length=1, max_length=MAX_RL_SAMPLES, description="Full decoded text: the prompt followed by the response."
    )
    prompts: list[RLPrompt] = Field(
        min_length=1, max_length=MAX_RL_SAMPLES, description="The prompt of each sample (its query's prefix)."
    )
    labels: list[RLLabel] = Field(
        min_length=1,
        max_length=MAX_RL_SAMPLES,
        description="Gold answer per sample (GSM8K solution or a number); null or '' scores label-free.",
    )

    @model_validator(mode="after")
    def _equal_lengths(self) -> OpenRLHFRewardRequest:
        if not len(self.query) == len(self.prompts) == len(self.labels):
            raise ValueError(
                f"query, prompts and labels must have equal lengths; got {len(self.query)}, "
                f"{len(self.prompts)}, {len(self.labels)}"
            )
        return self


class OpenRLHFExtraLogs(Strict):
    """Per-sample values OpenRLHF logs (each list in request order)."""

    s_end: list[Unit]
    s_path: list[Unit]
    s_cf: list[Unit]
    s_wm: list[Unit] = Field(description="The sample's own coherence (its s_wm_i).")
    correct: list[Unit] = Field(description="1.0 when the sample's answer equals the reference, else 0.0.")


class OpenRLHFRewardResponse(Strict):
    rewards: list[float] = Field(description="Regime W per-trajectory reward, the training signal.")
    scores: list[Unit] = Field(
        description="Correctness (1.0/0.0): what OpenRLHF's dynamic filtering averages per prompt, range (0, 1)."
    )
    extra_logs: OpenRLHFExtraLogs


# --- records written by the clients ------------------------------------------------------------


class SamplingInfo(Strict):
    temperature: float
    top_p: float
    seed: int
    max_new_tokens: int


class RolloutTrajectory(Strict):
    arm_name: ArmName
    text: str = Field(max_length=MAX_TEXT_CHARS)
    answer: NormalisedAnswer | None
    answer_timeout: bool = Field(False, description="The service ran out of LaTeX parsing budget for its answer.")
    correct: bool
    reward: float
    quality: Unit
    coherence: Unit
    completion_tokens: int | None = Field(default=None, ge=0)
    sampling: SamplingInfo | None = None


class RolloutRecord(Strict):
    """One line of a rollouts JSONL file: a question, every arm's trajectory and the group's scores."""

    question_id: QuestionId
    question: str = Field(max_length=MAX_QUESTION_CHARS)
    gold_answer: str | None = Field(default=None, max_length=MAX_GOLD_CHARS)
    trajectories: list[RolloutTrajectory] = Field(min_length=1, max_length=MAX_GROUP_SIZE)
    s_end: Unit
    s_path: Unit
    s_cf: Unit
    s_wm: Unit
    group_reward: float
    label_source: LabelSource
    scorer_version: str
    weights: ScoringWeights
    model: str = Field(max_length=1024)
    engine: str = Field(max_length=64)


PairType = Literal["correctness", "coherence"]


class PreferencePair(Strict):
    question_id: QuestionId
    prompt: str = Field(max_length=MAX_QUESTION_CHARS + MAX_PROMPT_CHARS)
    chosen: str = Field(max_length=MAX_TEXT_CHARS)
    rejected: str = Field(max_length=MAX_TEXT_CHARS)
    pair_type: PairType
    chosen_reward: float
    rejected_reward: float
    chosen_arm: ArmName
    rejected_arm: ArmName


CONTRACT_MODELS: dict[str, type[BaseModel]] = {
    "ArmSpec": ArmSpec,
    "ArmSet": ArmSet,
    "PromptsRequest": PromptsRequest,
    "PromptsResponse": PromptsResponse,
    "Trajectory": Trajectory,
    "ScoreRequest": ScoreRequest,
    "ScoreResponse": ScoreResponse,
    "BatchScoreRequest": BatchScoreRequest,
    "BatchScoreResponse": BatchScoreResponse,
    "ScoringWeights": ScoringWeights,
    "ScorersResponse": ScorersResponse,
    "RolloutRecord": RolloutRecord,
    "PreferencePair": PreferencePair,
    "OpenRLHFRewardRequest": OpenRLHFRewardRequest,
    "OpenRLHFRewardResponse": OpenRLHFRewardResponse,
}


def json_schemas() -> dict[str, dict]:
    """The JSON Schema of every contract model, keyed by model name."""
    return {name: model.model_json_schema() for name, model in CONTRACT_MODELS.items()}
