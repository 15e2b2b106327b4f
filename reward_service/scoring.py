"""Regime W: multi-path coherence scores and rewards for one question's group of trajectories.

Pure functions over plain data (no I/O, no model): the embedding mode passes in a similarity matrix
computed elsewhere. Every score is in [0, 1] and invariant to the order of the trajectories.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from reward_service.scorer import reference_answer
from shared_schemas.answers import AnswerMode, answer_agreement, read_answer
from shared_schemas.models import (
    ArmRole,
    LabelSource,
    ScoreRequest,
    ScoreResponse,
    ScoringWeights,
    TrajectoryScore,
)

SCORER_VERSION = "regime-w/1.0.0"
# the per-trajectory reward's terms, in the order they add up (reward_spread names them)
V1_TERMS = ("correctness", "group_coherence", "coherence", "quality", "length_penalty")

_TOKEN = re.compile(r"[a-z0-9]+")
_ANCHOR_ROLES = ("probe_standard", "probe_rephrase")
_PROBE_ROLES = ("probe_standard", "probe_rephrase", "probe_counterfactual")

Matrix = Sequence[Sequence[float]]


# --- building blocks ------------------------------------------------------------------------------


def token_set(text: str) -> frozenset[str]:
    return frozenset(_TOKEN.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    shared = len(a & b)
    union = len(a) + len(b) - shared
    return shared / union if union else 0.0


# ASCII bytes -> lower-case letters and digits kept, everything else a separator (see _token_sets).
_ASCII_TOKENS = bytes(c + 32 if 65 <= c <= 90 else c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))


# ASCII bytes -> 0 for what str.split() splits on (str.isspace), 1 for the rest (see word_count).
_ASCII_SPACES = bytes(0 if c < 128 and chr(c).isspace() else 1 for c in range(256))


def word_count(text: str) -> int:
    """len(text.split()), without building the list for ASCII text: the words are the runs of non-space
    characters, counted as the places where a space is followed by a non-space (plus a leading word)."""
    if not text.isascii():
        return len(text.split())
    marks = text.encode("ascii").translate(_ASCII_SPACES)
    return marks.count(b"\x00\x01") + (marks[:1] == b"\x01")


def _token_sets(texts: Sequence[str]) -> list[set[str]]:
    """token_set of each text, faster: ASCII text is tokenised by a byte translation table (the same tokens
    as the regex on lower-cased text); any other text by token_set itself."""
    return [
        set(t.encode("ascii").translate(_ASCII_TOKENS).decode("ascii").split()) if t.isascii() else token_set(t)
        for t in texts
    ]


def jaccard_matrix(texts: Sequence[str]) -> list[list[float]]:
    """Pairwise token Jaccard; each token set is a bit mask over the group's vocabulary, so an
    intersection's size is a popcount (the same integers, hence the same floats, as `jaccard`)."""
    sets = _token_sets(texts)
    vocab: dict[str, int] = {}
    masks = []
    for tokens in sets:
        mask = 0
        for token in tokens:
            bit = vocab.get(token)
            if bit is None:
                bit = vocab[token] = 1 << len(vocab)
            mask |= bit
        masks.append(mask)
    sizes = [len(tokens) for tokens in sets]
    n = len(sets)
    sim = [[1.0] * n for _ in range(n)]
    for i, j in combinations(range(n), 2):
        shared = (masks[i] & masks[j]).bit_count()
        union = sizes[i] + sizes[j] - shared
        sim[i][j] = sim[j][i] = shared / union if union else 0.0
    return sim


def length_coherence(word_counts: Sequence[int]) -> float:
    """1 / (1 + var/mean) of the word counts: 1 for equal lengths, towards 0 as they spread."""
    if not word_counts:
        return 0.0
    mean = sum(word_counts) / len(word_counts)
    if mean == 0:
        return 1.0
    var = sum((w - mean) ** 2 for w in word_counts) / len(word_counts)
    return 1.0 / (1.0 + var / mean)


def cross_agreement(answers: Sequence[str | None], left: Sequence[int], right: Sequence[int]) -> float:
    """Fraction of (left, right) index pairs, distinct trajectories, whose answers are equal."""
    pairs = [(i, j) for i in left for j in right if i != j]
    if not pairs:
        return 0.0
    return sum(answers[i] is not None and answers[i] == answers[j] for i, j in pairs) / len(pairs)


def mean_similarity_to(sim: Matrix, i: int, others: Sequence[int]) -> float:
    others = [j for j in others if j != i]
    if not others:
        return 1.0 if len(sim) == 1 else 0.0
    return sum(sim[i][j] for j in others) / len(others)


def _unit(x: float) -> float:
    return min(1.0, max(0.0, x))


# --- the group ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    """Which trajectory indices play which part in s_cf and the quality term."""

    counterfactual: list[int]
    anchors: list[int]
    probes: list[int]
    compute: list[int]
    reflective: list[int]

    @classmethod
    def of(cls, roles: Sequence[str]) -> Roles:
        def where(*wanted: str) -> list[int]:
            return [i for i, r in enumerate(roles) if r in wanted]

        return cls(
            counterfactual=where("probe_counterfactual"),
            anchors=where(*_ANCHOR_ROLES),
            probes=where(*_PROBE_ROLES),
            compute=where("compute", "probe_standard", "probe_rephrase"),
            reflective=where("reflective", "probe_counterfactual"),
        )


def counterfactual_score(answers: Sequence[str | None], roles: Roles) -> float:
    """s_cf: CF1 agreeing with probes A and A'; without probes, compute x reflective persona agreement.

    A group with neither probes nor both personas (e.g. plain policy samples) falls back to s_end, so
    s_cf always moves with the answers and is never a constant.
    """
    if roles.counterfactual and roles.anchors:
        return cross_agreement(answers, roles.counterfactual, roles.anchors)
    if roles.compute and roles.reflective:
        return cross_agreement(answers, roles.compute, roles.reflective)
    return answer_agreement(answers)


def trajectory_counterfactual(answers: Sequence[str | None], roles: Roles, i: int) -> float:
    """s_cf_i: its answer's agreement with the probes' answers, itself excluded (same fallbacks as s_cf)."""
    probes = [j for j in roles.probes if j != i]
    if not probes:
        if i in roles.compute and roles.reflective:
            probes = roles.reflective
        elif i in roles.reflective and roles.compute:
            probes = roles.compute
        else:
            probes = [j for j in range(len(answers)) if j != i]
    if not probes:
        return answer_agreement([answers[i]])
    return cross_agreement(answers, [i], probes)


@dataclass(frozen=True)
class GroupAnalysis:
    """Everything the Regime W scorers read off one group before any reward is formed (v1 and v2 share it)."""

    answers: list[str | None]
    answer_timeouts: list[bool]  # no answer for want of LaTeX parsing budget (read_answer's timed_out)
    words: list[int]
    correct: list[bool]
    reference: str | None
    label_source: LabelSource
    similarity: Matrix  # path similarity: token Jaccard, or the embedding mode's matrix
    s_end: float
    s_path: float
    s_cf: float
    s_wm: float
    mean_words: float
    # per trajectory
    s_end_i: list[float]
    s_path_i: list[float]
    s_cf_i: list[float]
    coherence: list[float]
    conciseness: list[float]
    alignment: list[float]  # mean token overlap with probes A and A' (with everyone where there are none)

    @property
    def any_correct(self) -> bool:
        return any(self.correct)


def analyse_group(
    request: ScoreRequest,
    arm_roles: Mapping[str, ArmRole],
    weights: ScoringWeights,
    *,
    similarity: Matrix | None = None,
    answer_mode: AnswerMode = "strict",
) -> GroupAnalysis:
    """Answers, correctness and every coherence score of one group. `similarity` (n x n, in [0, 1]) replaces
    token Jaccard as the path similarity when given."""
    texts = [t.text for t in request.trajectories]
    n = len(texts)
    readings = [read_answer(t, answer_mode) for t in texts]
    answers = [r.answer for r in readings]
    words = [word_count(t) for t in texts]
    roles = Roles.of([arm_roles.get(t.arm_name, "sample") for t in request.trajectories])

    reference, label_source = reference_answer(request, answers)
    correct = [a is not None and a == reference for a in answers]

    overlap = jaccard_matrix(texts)  # the quality term's alignment is token overlap in every mode
    sim = similarity if similarity is not None else overlap
    everyone = range(n)
    w = weights

    s_end = answer_agreement(answers)
    pair_sims = [sim[i][j] for i, j in combinations(everyone, 2)]
    mean_sim = sum(pair_sims) / len(pair_sims) if pair_sims else 1.0
    s_path = _unit(w.path_length * length_coherence(words) + w.path_similarity * mean_sim)
    s_cf = counterfactual_score(answers, roles)
    s_wm = _unit(w.s_end * s_end + w.s_path * s_path + w.s_cf * s_cf)

    counts = Counter(a for a in answers if a is not None)
    shortest = min((c for c in words if c > 0), default=0)
    s_end_i, s_path_i, s_cf_i, coherence, conciseness, alignment = [], [], [], [], [], []
    for i in everyone:
        if n == 1:
            s_end_i.append(1.0 if answers[i] is not None else 0.0)
        else:
            s_end_i.append((counts[answers[i]] - 1) / (n - 1) if answers[i] is not None else 0.0)
        s_path_i.append(_unit(mean_similarity_to(sim, i, everyone)))
        s_cf_i.append(trajectory_counterfactual(answers, roles, i))
        coherence.append(_unit(w.s_end * s_end_i[i] + w.s_path * s_path_i[i] + w.s_cf * s_cf_i[i]))
        conciseness.append(shortest / words[i] if words[i] else 0.0)
        anchors = [j for j in roles.anchors if j != i]
        alignment.append(
            mean_similarity_to(overlap, i, anchors) if anchors else mean_similarity_to(overlap, i, everyone)
        )

    return GroupAnalysis(
        answers=answers,
        answer_timeouts=[r.timed_out for r in readings],
        words=words,
        correct=correct,
        reference=reference,
        label_source=label_source,
        similarity=sim,
        s_end=s_end,
        s_path=s_path,
        s_cf=s_cf,
        s_wm=s_wm,
        mean_words=sum(words) / n,
        s_end_i=s_end_i,
        s_path_i=s_path_i,
        s_cf_i=s_cf_i,
        coherence=coherence,
        conciseness=conciseness,
        alignment=alignment,
    )


def spread_shares(terms: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each term's share of the group's reward spread: Cov(term, reward) / Var(reward), reward = the terms' sum.

    The shares add up to 1 whenever the rewards differ; a term that is the same for every trajectory (anything
    computed once per group) has share 0, so it is never counted as signal. All zeros when the rewards are equal.
    """
    columns = {name: list(values) for name, values in terms.items()}
    n = len(next(iter(columns.values())))
    total = [sum(column[i] for column in columns.values()) for i in range(n)]
    mean_total = sum(total) / n
    var = sum((t - mean_total) ** 2 for t in total) / n
    if var <= 1e-18:
        return {name: 0.0 for name in columns}
    shares = {}
    for name, column in columns.items():
        mean = sum(column) / n
        shares[name] = sum((c - mean) * (t - mean_total) for c, t in zip(column, total, strict=True)) / n / var
    return shares


def score_group(
    request: ScoreRequest,
    arm_roles: Mapping[str, ArmRole],
    weights: ScoringWeights,
    *,
    path_mode: str = "lexical",
    similarity: Matrix | None = None,
    answer_mode: AnswerMode = "strict",
    scorer_version: str = SCORER_VERSION,
) -> ScoreResponse:
    """Regime W v1, the seeds' design: correctness plus every coherence and quality term (SPEC section 3)."""
    g = analyse_group(request, arm_roles, weights, similarity=similarity, answer_mode=answer_mode)
    w = weights
    base = w.correct_base if g.any_correct else w.incorrect_base
    group_reward = (
        base + w.group_coherence * g.s_wm - w.length_penalty_per_word * max(0.0, g.mean_words - w.length_free_words)
    )
    terms: dict[str, list[float]] = {name: [] for name in V1_TERMS}
    scored = []
    for i, traj in enumerate(request.trajectories):
        quality = _unit(w.quality_conciseness * g.conciseness[i] + w.quality_alignment * g.alignment[i])
        length_penalty = w.length_penalty_per_word * max(0, g.words[i] - w.length_free_words)
        parts = {
            "correctness": w.correct_base if g.correct[i] else w.incorrect_base,
            "group_coherence": w.trajectory_group_coherence * g.s_wm,
            "coherence": w.trajectory_coherence * g.coherence[i],
            "quality": w.trajectory_quality * quality,
            "length_penalty": -length_penalty,
        }
        for name, value in parts.items():
            terms[name].append(value)
        reward = (
            parts["correctness"] + parts["group_coherence"] + parts["coherence"] + parts["quality"] - length_penalty
        )
        scored.append(
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
                quality=quality,
                length_penalty=length_penalty,
                reward=reward,
            )
        )

    return ScoreResponse(
        question_id=request.question_id,
        s_end=g.s_end,
        s_path=g.s_path,
        s_cf=g.s_cf,
        s_wm=g.s_wm,
        group_reward=group_reward,
        mean_words=g.mean_words,
        any_correct=g.any_correct,
        label_source=g.label_source,
        reference_answer=g.reference,
        path_mode=path_mode,
        scorer="regime_w_v1",
        scorer_version=scorer_version,
        weights=weights,
        reward_spread=spread_shares(terms),
        trajectories=scored,
    )
