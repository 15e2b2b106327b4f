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
from shared_schemas.answers import AnswerMode, answer_agreement, extract_answer
from shared_schemas.models import ArmRole, ScoreRequest, ScoreResponse, ScoringWeights, TrajectoryScore

SCORER_VERSION = "regime-w/1.0.0"

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
    """Score one question's group. `similarity` (n x n, in [0, 1]) replaces token Jaccard when given."""
    texts = [t.text for t in request.trajectories]
    n = len(texts)
    answers = [extract_answer(t, answer_mode) for t in texts]
    words = [word_count(t) for t in texts]
    roles = Roles.of([arm_roles.get(t.arm_name, "sample") for t in request.trajectories])

    reference, label_source = reference_answer(request, answers)
    correct = [a is not None and a == reference for a in answers]
    any_correct = any(correct)

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

    mean_words = sum(words) / n
    base = w.correct_base if any_correct else w.incorrect_base
    group_reward = (
        base + w.group_coherence * s_wm - w.length_penalty_per_word * max(0.0, mean_words - w.length_free_words)
    )

    counts = Counter(a for a in answers if a is not None)
    shortest = min((c for c in words if c > 0), default=0)
    scored = []
    for i, traj in enumerate(request.trajectories):
        if n == 1:
            s_end_i = 1.0 if answers[i] is not None else 0.0
        else:
            s_end_i = (counts[answers[i]] - 1) / (n - 1) if answers[i] is not None else 0.0
        s_path_i = _unit(mean_similarity_to(sim, i, everyone))
        s_cf_i = trajectory_counterfactual(answers, roles, i)
        coherence = _unit(w.s_end * s_end_i + w.s_path * s_path_i + w.s_cf * s_cf_i)

        conciseness = shortest / words[i] if words[i] else 0.0
        anchors = [j for j in roles.anchors if j != i]
        alignment = mean_similarity_to(overlap, i, anchors) if anchors else mean_similarity_to(overlap, i, everyone)
        quality = _unit(w.quality_conciseness * conciseness + w.quality_alignment * alignment)

        length_penalty = w.length_penalty_per_word * max(0, words[i] - w.length_free_words)
        reward = (
            (w.correct_base if correct[i] else w.incorrect_base)
            + w.trajectory_group_coherence * s_wm
            + w.trajectory_coherence * coherence
            + w.trajectory_quality * quality
            - length_penalty
        )
        scored.append(
            TrajectoryScore(
                arm_name=traj.arm_name,
                answer=answers[i],
                correct=correct[i],
                words=words[i],
                s_end=s_end_i,
                s_path=s_path_i,
                s_cf=s_cf_i,
                coherence=coherence,
                quality=quality,
                length_penalty=length_penalty,
                reward=reward,
            )
        )

    return ScoreResponse(
        question_id=request.question_id,
        s_end=s_end,
        s_path=s_path,
        s_cf=s_cf,
        s_wm=s_wm,
        group_reward=group_reward,
        mean_words=mean_words,
        any_correct=any_correct,
        label_source=label_source,
        reference_answer=reference,
        path_mode=path_mode,
        scorer_version=scorer_version,
        weights=weights,
        trajectories=scored,
    )
