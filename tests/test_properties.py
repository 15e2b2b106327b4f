"""Property tests: every Regime W score is in [0, 1], scoring is order-invariant and deterministic, and
answer extraction never raises and always yields a normalised number or None."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_service.arms import REGIME_W_ARMS
from reward_service.scoring import score_group
from shared_schemas.answers import extract_answer
from shared_schemas.models import ScoreRequest, ScoreResponse, ScoringWeights, Trajectory

ROLES = {arm.name: arm.role for arm in REGIME_W_ARMS}
ARM_NAMES = sorted(ROLES) + ["sample"]
WEIGHTS = ScoringWeights()
NORMALISED_ANSWER = re.compile(r"^-?\d+(\.\d*[1-9])?$", re.ASCII)  # the NormalisedAnswer pattern, ASCII digits

FAST = settings(max_examples=80, deadline=None)

WORDS = st.sampled_from(["eggs", "sold", "each", "the", "total", "is", "9", "*", "2", "=", "18", "so", "she", "$3"])
ANSWERS = st.sampled_from(["5", "7", "18", "1,000", "1000.0", "-3", "0.5", "3/4", "$12", "\u22122"])


@st.composite
def solution_texts(draw: st.DrawFn) -> str:
    body = " ".join(draw(st.lists(WORDS, max_size=30)))
    if draw(st.booleans()):
        body += f"\n{draw(st.sampled_from(['Answer:', '####', 'The answer is']))} {draw(ANSWERS)}"
    return body


@st.composite
def score_requests(draw: st.DrawFn) -> ScoreRequest:
    n = draw(st.integers(min_value=1, max_value=8))
    trajectories = [
        Trajectory(arm_name=draw(st.sampled_from(ARM_NAMES)), text=draw(solution_texts())) for _ in range(n)
    ]
    gold = draw(st.none() | ANSWERS | ANSWERS.map(lambda a: f"Some working.\n#### {a}"))
    return ScoreRequest(question_id="q", question="How much?", gold_answer=gold, trajectories=trajectories)


def score(request: ScoreRequest) -> ScoreResponse:
    return score_group(request, ROLES, WEIGHTS)


def in_unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


@FAST
@given(score_requests())
def test_every_score_is_in_the_unit_interval(request: ScoreRequest) -> None:
    response = score(request)
    assert all(in_unit(x) for x in (response.s_end, response.s_path, response.s_cf, response.s_wm))
    for t in response.trajectories:
        assert all(in_unit(x) for x in (t.s_end, t.s_path, t.s_cf, t.coherence, t.quality)), t
        assert t.length_penalty >= 0.0
    assert len(response.trajectories) == len(request.trajectories)


@FAST
@given(st.data())
def test_scores_are_invariant_to_trajectory_order(data: st.DataObject) -> None:
    request = data.draw(score_requests())
    n = len(request.trajectories)
    order = data.draw(st.permutations(range(n)))
    permuted = request.model_copy(update={"trajectories": [request.trajectories[i] for i in order]})
    original, shuffled = score(request), score(permuted)

    for field in ("s_end", "s_path", "s_cf", "s_wm", "group_reward", "mean_words"):
        assert getattr(shuffled, field) == pytest.approx(getattr(original, field), abs=1e-12), field
    assert (shuffled.any_correct, shuffled.label_source, shuffled.reference_answer) == (
        original.any_correct,
        original.label_source,
        original.reference_answer,
    )
    # the trajectory at new position k is original trajectory order[k]: same text, same scores
    for k, i in enumerate(order):
        before, after = original.trajectories[i], shuffled.trajectories[k]
        assert permuted.trajectories[k].text == request.trajectories[i].text
        assert (after.arm_name, after.answer, after.correct, after.words) == (
            before.arm_name,
            before.answer,
            before.correct,
            before.words,
        )
        for field in ("s_end", "s_path", "s_cf", "coherence", "quality", "length_penalty", "reward"):
            assert getattr(after, field) == pytest.approx(getattr(before, field), abs=1e-12), field


@FAST
@given(score_requests())
def test_scoring_is_deterministic(request: ScoreRequest) -> None:
    assert score(request) == score(request)
    assert score(request).model_dump_json() == score(request.model_copy(deep=True)).model_dump_json()


# Texts built from the pieces the extractor looks for: anchors, LaTeX, signs, separators, digits.
ANSWERISH = st.lists(
    st.sampled_from(
        list("0123456789 ,.-/$%{}=\n\u2212xab")
        + ["Answer:", "#### ", "The answer is ", r"\boxed{", r"\frac", r"\dfrac", r"\sqrt", "{,}", r"\!", r"\,"]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=300), ANSWERISH), st.sampled_from(["strict", "flexible"]))
def test_extract_answer_never_raises_and_returns_a_normalised_number(text: str, mode: str) -> None:
    answer = extract_answer(text, mode=mode)
    assert answer is None or NORMALISED_ANSWER.fullmatch(answer), answer
    if answer is not None:
        assert len(answer) <= 64  # the NormalisedAnswer max_length
