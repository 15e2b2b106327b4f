"""Regime W v2: coherence as a bounded, length-neutral tie-break that can never outvote correctness.

Regime W v1 measurably made GRPO worse than a plain correctness reward (experiments/README.md): its quality term
pays for brevity (shortest / words), token Jaccard favours short texts, and under TRL's per-group std scaling
the small coherence differences of a group whose answers are all right (or all wrong) become its whole
advantage. v2 keeps Regime W's ingredients under three rules (SPEC section 3):

1. Correctness dominates. A trajectory's reward is its correctness base plus a tie-break that only correct
   trajectories of *mixed* groups (some right, some wrong) get: `r_i = c_i + lambda * [c_i] * [mixed] * u_i`,
   lambda <= 0.1 against a correct/wrong gap of 1.5, so every correct trajectory outranks every wrong one. The
   tie-break's share of the group's advantage (L2 norm of its group-centred values over that of correctness')
   is capped at `tie_break_max_share`; a per-group affine scaling (TRL's group, batch or no scaling) keeps
   that ratio, so the cap holds for every `scale_rewards`.
2. Length-neutral. No conciseness, no length penalty. `u_i` is a robustness score of correct trajectory i
   among the group's correct ones: the numbers its reasoning shares with theirs (intermediate results, not only
   the final answer) and its path similarity to them. Both grow and shrink with length, so they are regressed on
   log length within the group and only the residual is kept: u = tanh(residual / robustness_scale).
3. No phantom signal. Terms constant within a group (group s_wm) are not in the reward, and uniform groups get
   no tie-break: their rewards are equal, so they carry no advantage at all. `reward_spread` reports each term's
   share of the group's reward spread.

The random-tiebreak control scores exactly like v2, with the group's u values shuffled among its correct
trajectories (seeded by the group's texts): the same distribution and variance, no information. It answers
"does any small extra term help?" (the spurious-reward control).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Mapping, Sequence

from reward_service.scoring import GroupAnalysis, Matrix, analyse_group, jaccard, spread_shares
from shared_schemas.answers import AnswerMode, normalise_number
from shared_schemas.models import ArmRole, ScoreRequest, ScoreResponse, ScoringWeights, TrajectoryScore

V2_VERSION = "regime-w/2.0.0"
RANDOM_TIEBREAK_VERSION = "regime-w-random-tiebreak/2.0.0"
V2_TERMS = ("correctness", "tie_break")
# the ScoringWeights fields v2 reads (what GET /v1/scorers lists for it)
V2_WEIGHTS = (
    "correct_base",
    "incorrect_base",
    "tie_break",
    "tie_break_max_share",
    "robustness_numbers",
    "robustness_scale",
    "path_length",
    "path_similarity",
    "s_end",
    "s_path",
    "s_cf",
)

_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def numbers_in(text: str) -> frozenset[str]:
    """The distinct numbers a text writes, normalised ('1,200' = '1200' = '1200.0')."""
    found = (normalise_number(m.group()) for m in _NUMBER.finditer(text))
    return frozenset(n for n in found if n is not None)


def residuals(values: Sequence[float], covariate: Sequence[float]) -> list[float]:
    """Least-squares residuals of `values` on `covariate` (with an intercept): what the covariate does not explain.
    With a constant covariate, the values less their mean."""
    n = len(values)
    mean_v = sum(values) / n
    mean_x = sum(covariate) / n
    sxx = sum((x - mean_x) ** 2 for x in covariate)
    if sxx <= 1e-12:
        return [v - mean_v for v in values]
    slope = sum((x - mean_x) * (v - mean_v) for x, v in zip(covariate, values, strict=True)) / sxx
    return [v - mean_v - slope * (x - mean_x) for x, v in zip(covariate, values, strict=True)]


def robustness(texts: Sequence[str], g: GroupAnalysis, sim: Matrix, weights: ScoringWeights) -> list[float | None]:
    """u_i in (-1, 1) for every correct trajectory (None for the others): its number and path agreement with the
    other correct trajectories, less what its length predicts. Fewer than three correct trajectories give u = 0:
    a line through two points explains both, so nothing length-neutral is left to compare."""
    members = [i for i, c in enumerate(g.correct) if c]
    u: list[float | None] = [None] * len(texts)
    if len(members) < 3:
        for i in members:
            u[i] = 0.0
        return u
    numbers = {i: numbers_in(texts[i]) for i in members}
    raw = []
    for i in members:
        others = [j for j in members if j != i]
        number_agreement = sum(jaccard(numbers[i], numbers[j]) for j in others) / len(others)
        path_agreement = sum(sim[i][j] for j in others) / len(others)
        raw.append(weights.robustness_numbers * number_agreement + (1 - weights.robustness_numbers) * path_agreement)
    log_length = [math.log1p(g.words[i]) for i in members]
    for i, r in zip(members, residuals(raw, log_length), strict=True):
        u[i] = math.tanh(r / weights.robustness_scale)
    return u


def _centred_norm(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values))


def tie_breaks(correct: Sequence[bool], u: Sequence[float | None], weights: ScoringWeights) -> list[float]:
    """lambda * u_i for the correct trajectories of a mixed group, 0 elsewhere, scaled down where needed so that its
    group-centred norm is at most `tie_break_max_share` times that of the correctness bases."""
    if all(correct) or not any(correct):
        return [0.0] * len(correct)
    extra = [weights.tie_break * (u_i or 0.0) if c else 0.0 for c, u_i in zip(correct, u, strict=True)]
    bases = [weights.correct_base if c else weights.incorrect_base for c in correct]
    limit = weights.tie_break_max_share * _centred_norm(bases)
    norm = _centred_norm(extra)
    if norm > limit:
        extra = [e * limit / norm for e in extra]
    return extra


def shuffled_among_correct(u: Sequence[float | None], request: ScoreRequest) -> list[float | None]:
    """The same u values, dealt out at random among the correct trajectories; the seed is the group's texts, so a
    group always gets the same shuffle."""
    members = [i for i, value in enumerate(u) if value is not None]
    digest = hashlib.sha256(request.question_id.encode("utf-8", "surrogatepass"))
    for t in request.trajectories:
        digest.update(b"\0" + t.text.encode("utf-8", "surrogatepass"))
    values = [u[i] for i in members]
    random.Random(digest.digest()).shuffle(values)
    out = list(u)
    for i, value in zip(members, values, strict=True):
        out[i] = value
    return out


def score_group_v2(
    request: ScoreRequest,
    arm_roles: Mapping[str, ArmRole],
    weights: ScoringWeights,
    *,
    path_mode: str = "lexical",
    similarity: Matrix | None = None,
    answer_mode: AnswerMode = "strict",
    random_tiebreak: bool = False,
) -> ScoreResponse:
    """Score one group with v2 (or, with `random_tiebreak`, the shuffled-u control). The coherence scores
    (s_end, s_path, s_cf, s_wm and each trajectory's own) are v1's, reported for the logs; they are not rewards."""
    g = analyse_group(request, arm_roles, weights, similarity=similarity, answer_mode=answer_mode)
    w = weights
    u = robustness([t.text for t in request.trajectories], g, g.similarity, w)
    if random_tiebreak:
        u = shuffled_among_correct(u, request)
    extra = tie_breaks(g.correct, u, w)
    bases = [w.correct_base if c else w.incorrect_base for c in g.correct]
    scored = [
        TrajectoryScore(
            arm_name=traj.arm_name,
            answer=g.answers[i],
            answer_timeout=g.answer_timeouts[i],
            correct=g.correct[i],
            words=g.words[i],
            s_end=g.s_end_i[i],
            s_path=g.s_path_i[i],
            s_cf=g.s_cf_i[i],
            coherence=g.coherence[i],
            quality=min(1.0, max(0.0, g.alignment[i])),
            length_penalty=0.0,
            reward=bases[i] + extra[i],
            robustness=u[i],
        )
        for i, traj in enumerate(request.trajectories)
    ]
    return ScoreResponse(
        question_id=request.question_id,
        s_end=g.s_end,
        s_path=g.s_path,
        s_cf=g.s_cf,
        s_wm=g.s_wm,
        group_reward=w.correct_base if g.any_correct else w.incorrect_base,
        mean_words=g.mean_words,
        any_correct=g.any_correct,
        label_source=g.label_source,
        reference_answer=g.reference,
        path_mode=path_mode,
        scorer="random_tiebreak" if random_tiebreak else "regime_w_v2",
        scorer_version=RANDOM_TIEBREAK_VERSION if random_tiebreak else V2_VERSION,
        weights=weights,
        reward_spread=spread_shares({"correctness": bases, "tie_break": extra}),
        trajectories=scored,
    )
