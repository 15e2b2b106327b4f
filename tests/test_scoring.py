"""Regime W scoring (reward_service.scoring) against values computed by hand from SPEC section 3."""

from __future__ import annotations

import pytest

from reward_service.arms import REGIME_W_ARMS
from reward_service.scorer import ScoringError
from reward_service.scoring import (
    Roles,
    counterfactual_score,
    cross_agreement,
    jaccard,
    jaccard_matrix,
    length_coherence,
    score_group,
    token_set,
    trajectory_counterfactual,
)
from reward_service.settings import ServiceSettings
from reward_service.stub import score_correctness
from shared_schemas.answers import answer_agreement, majority_answer
from shared_schemas.models import ScoreRequest, ScoreResponse, ScoringWeights, Trajectory

ROLES = {arm.name: arm.role for arm in REGIME_W_ARMS}
WEIGHTS = ScoringWeights()


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-9)


def make_request(*arms_and_texts: tuple[str, str], gold: str | None = None) -> ScoreRequest:
    return ScoreRequest(
        question_id="q1",
        question="How many apples?",
        gold_answer=gold,
        trajectories=[Trajectory(arm_name=arm, text=text) for arm, text in arms_and_texts],
    )


def score(*arms_and_texts: tuple[str, str], gold: str | None = None, weights=WEIGHTS) -> ScoreResponse:
    return score_group(make_request(*arms_and_texts, gold=gold), ROLES, weights)


def test_the_eleven_regime_w_arms_and_their_roles() -> None:
    assert ROLES == {
        **{f"wolfram_{k}": "compute" for k in range(4)},
        **{f"maudlin_{k}": "reflective" for k in range(4)},
        "wolfram_standard": "probe_standard",
        "wolfram_rephrase": "probe_rephrase",
        "maudlin_cf1": "probe_counterfactual",
    }


# --- s_end ------------------------------------------------------------------------------------------


def test_s_end_is_the_fraction_of_agreeing_pairs() -> None:
    # 3 answers -> 3 pairs; only (5, 5) agrees -> 1/3
    assert answer_agreement(["5", "5", "7"]) == approx(1 / 3)
    # 4 answers -> 6 pairs; three 5s give 3 agreeing pairs -> 3/6
    assert answer_agreement(["5", "5", "5", "7"]) == approx(0.5)
    assert answer_agreement(["5", "5"]) == 1.0


def test_s_end_of_one_trajectory_is_one_and_of_none_is_zero() -> None:
    assert answer_agreement(["5"]) == 1.0
    assert answer_agreement([]) == 0.0


def test_s_end_no_answer_agrees_with_nothing() -> None:
    # 4 answers -> 6 pairs; (5, 5) agrees, (None, None) does not -> 1/6
    assert answer_agreement(["5", "5", None, None]) == approx(1 / 6)
    assert answer_agreement([None, None]) == 0.0
    assert answer_agreement([None]) == 0.0


def test_s_end_compares_numbers_after_normalisation() -> None:
    response = score(("sample", "Answer: 1,000"), ("sample", "#### 1000"), ("sample", "Answer: 1000.0"))
    assert [t.answer for t in response.trajectories] == ["1000", "1000", "1000"]
    assert response.s_end == 1.0


# --- s_path building blocks ---------------------------------------------------------------------------


def test_token_set_is_lowercased_alphanumeric_runs() -> None:
    assert token_set("The cat, the HAT! 42 x=3") == {"the", "cat", "hat", "42", "x", "3"}


def test_jaccard() -> None:
    # {a,b,c} & {b,c,d} = {b,c} (2); union {a,b,c,d} (4) -> 0.5
    assert jaccard(frozenset("abc"), frozenset("bcd")) == 0.5
    assert jaccard(frozenset("ab"), frozenset("ab")) == 1.0
    assert jaccard(frozenset("ab"), frozenset("cd")) == 0.0
    assert jaccard(frozenset(), frozenset()) == 0.0


def test_jaccard_matrix_is_symmetric_with_ones_on_the_diagonal() -> None:
    # "a b" vs "b c": {b} / {a,b,c} = 1/3; "a b" vs "a b": 1
    assert jaccard_matrix(["a b", "b c", "a b"]) == [
        [1.0, approx(1 / 3), 1.0],
        [approx(1 / 3), 1.0, approx(1 / 3)],
        [1.0, approx(1 / 3), 1.0],
    ]


def test_length_coherence_uses_the_population_variance() -> None:
    # [2, 4, 6]: mean 4, population variance (4 + 0 + 4) / 3 = 8/3, var/mean = 2/3 -> 1 / (1 + 2/3) = 0.6
    # (the sample variance, 8/2 = 4, would give 1 / (1 + 1) = 0.5)
    assert length_coherence([2, 4, 6]) == approx(0.6)
    # [300, 600]: mean 450, variance 150^2 = 22500, var/mean = 50 -> 1/51
    assert length_coherence([300, 600]) == approx(1 / 51)


def test_length_coherence_edge_cases() -> None:
    assert length_coherence([10, 10, 10]) == 1.0
    assert length_coherence([7]) == 1.0
    assert length_coherence([0, 0]) == 1.0
    assert length_coherence([]) == 0.0


# --- a hand-computed group of three plain samples ------------------------------------------------------
#
# t0 "x y Answer: 5"  4 words, tokens {x, y, answer, 5}
# t1 "x z Answer: 5"  4 words, tokens {x, z, answer, 5}
# t2 "Answer: 7"      2 words, tokens {answer, 7}
# Jaccard: t0-t1 = 3/5 = 0.6 ({x,answer,5} / {x,y,z,answer,5}); t0-t2 = t1-t2 = 1/5 = 0.2 ({answer} / 5 tokens)
# mean pairwise Jaccard = (0.6 + 0.2 + 0.2) / 3 = 1/3
# words [4, 4, 2]: mean 10/3, population variance ((2/3)^2 + (2/3)^2 + (4/3)^2) / 3 = (24/9) / 3 = 8/9,
#   var/mean = (8/9) / (10/3) = 4/15 -> length coherence 1 / (1 + 4/15) = 15/19
# s_end = 1/3 (one agreeing pair of three); s_cf = s_end = 1/3 (no probes, no personas: the fallback)
# s_path = 0.4 * 15/19 + 0.6 * 1/3 = 6/19 + 1/5
# s_wm = 0.4 * 1/3 + 0.3 * s_path + 0.3 * 1/3

THREE_SAMPLES = (("sample_0", "x y Answer: 5"), ("sample_1", "x z Answer: 5"), ("sample_2", "Answer: 7"))
THREE_S_PATH = 0.4 * 15 / 19 + 0.6 * 1 / 3
THREE_S_WM = 0.4 * 1 / 3 + 0.3 * THREE_S_PATH + 0.3 * 1 / 3


def test_group_scores_of_three_samples() -> None:
    response = score(*THREE_SAMPLES, gold="5")
    assert [t.answer for t in response.trajectories] == ["5", "5", "7"]
    assert [t.words for t in response.trajectories] == [4, 4, 2]
    assert response.s_end == approx(1 / 3)
    assert response.s_path == approx(THREE_S_PATH)
    assert response.s_path == approx(0.5157894737)  # 6/19 + 1/5 = 49/95
    assert response.s_cf == approx(1 / 3)
    assert response.s_wm == approx(THREE_S_WM)
    assert response.s_wm == approx(0.3880701754)  # 0.7/3 + 0.3 * 49/95
    assert response.mean_words == approx(10 / 3)


def test_group_reward_with_a_correct_answer() -> None:
    # base 1.0 (t0 is correct) + 0.7 * s_wm; mean words 10/3 < 400: no penalty
    response = score(*THREE_SAMPLES, gold="5")
    assert response.any_correct
    assert response.group_reward == approx(1.0 + 0.7 * THREE_S_WM)


def test_group_reward_without_a_correct_answer() -> None:
    # base -0.5 (nobody answered 9) + 0.7 * s_wm
    response = score(*THREE_SAMPLES, gold="9")
    assert not response.any_correct
    assert response.group_reward == approx(-0.5 + 0.7 * THREE_S_WM)


def test_per_trajectory_terms_of_three_samples() -> None:
    t0, t1, t2 = score(*THREE_SAMPLES, gold="5").trajectories
    # t0: s_end_i = (2 - 1) / (3 - 1) = 0.5 (t1 of the two others agrees)
    #     s_path_i = mean(0.6, 0.2) = 0.4
    #     s_cf_i = agreement with the others (no probes): t1 yes, t2 no = 0.5
    #     coherence = 0.4 * 0.5 + 0.3 * 0.4 + 0.3 * 0.5 = 0.47
    #     conciseness = shortest 2 / 4 = 0.5, alignment (no anchors) = s_path_i = 0.4
    #     quality = 0.4 * 0.5 + 0.6 * 0.4 = 0.44
    assert (t0.s_end, t0.s_path, t0.s_cf) == (approx(0.5), approx(0.4), approx(0.5))
    assert t0.coherence == approx(0.47)
    assert t0.quality == approx(0.44)
    assert t1.coherence == approx(0.47) and t1.quality == approx(0.44)  # the mirror image of t0
    # t2: s_end_i = 0, s_path_i = mean(0.2, 0.2) = 0.2, s_cf_i = 0 -> coherence = 0.3 * 0.2 = 0.06
    #     conciseness = 2 / 2 = 1, alignment = 0.2 -> quality = 0.4 * 1 + 0.6 * 0.2 = 0.52
    assert (t2.s_end, t2.s_path, t2.s_cf) == (0.0, approx(0.2), 0.0)
    assert t2.coherence == approx(0.06)
    assert t2.quality == approx(0.52)
    assert [t.correct for t in (t0, t1, t2)] == [True, True, False]
    assert [t.length_penalty for t in (t0, t1, t2)] == [0.0, 0.0, 0.0]


def test_per_trajectory_reward_formula() -> None:
    t0, t1, t2 = score(*THREE_SAMPLES, gold="5").trajectories
    # reward = base_i + 0.05 * s_wm + 0.1 * coherence_i + 0.05 * quality_i - length penalty_i
    # t0: 1.0 + 0.05 * s_wm + 0.1 * 0.47 + 0.05 * 0.44 = 1.069 + 0.05 * s_wm
    assert t0.reward == approx(1.0 + 0.05 * THREE_S_WM + 0.047 + 0.022)
    assert t0.reward == approx(1.0884035088)
    assert t1.reward == approx(t0.reward)
    # t2: -0.5 + 0.05 * s_wm + 0.1 * 0.06 + 0.05 * 0.52 = -0.468 + 0.05 * s_wm
    assert t2.reward == approx(-0.5 + 0.05 * THREE_S_WM + 0.006 + 0.026)


# --- length penalties --------------------------------------------------------------------------------


def test_one_long_trajectory_pays_the_length_penalty_in_both_rewards() -> None:
    text = "step " * 498 + "Answer: 5"  # 500 words
    response = score(("sample", text), gold="5")
    # one trajectory: s_end = 1, s_path = 0.4 * 1 + 0.6 * 1 = 1, s_cf = 1 -> s_wm = 1
    assert (response.s_end, response.s_path, response.s_cf, response.s_wm) == (1.0, 1.0, 1.0, 1.0)
    # group: 1.0 + 0.7 * 1 - 0.001 * (500 - 400) = 1.6
    assert response.group_reward == approx(1.6)
    (t,) = response.trajectories
    # its own terms are all 1 (no other trajectory): 1.0 + 0.05 + 0.1 + 0.05 - 0.1 = 1.1
    assert t.words == 500
    assert t.length_penalty == approx(0.1)
    assert (t.s_end, t.s_path, t.s_cf, t.coherence, t.quality) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert t.reward == approx(1.1)
    # wrong: -0.5 + 0.7 - 0.1 = 0.1 for the group, -0.5 + 0.2 - 0.1 = -0.4 for the trajectory
    wrong = score(("sample", text), gold="6")
    assert wrong.group_reward == approx(0.1)
    assert wrong.trajectories[0].reward == approx(-0.4)


def test_group_penalty_uses_mean_words_and_each_trajectory_pays_its_own() -> None:
    short = "a " * 298 + "Answer: 5"  # 300 words, tokens {a, answer, 5}
    long = "b " * 598 + "Answer: 5"  # 600 words, tokens {b, answer, 5}
    response = score(("sample_0", short), ("sample_1", long), gold="5")
    # Jaccard {answer, 5} / {a, b, answer, 5} = 0.5; length coherence 1/51 (see above)
    # s_end = 1, s_cf = 1 (fallback), s_path = 0.4/51 + 0.6 * 0.5
    s_path = 0.4 / 51 + 0.3
    s_wm = 0.4 * 1 + 0.3 * s_path + 0.3 * 1
    assert response.s_path == approx(s_path)
    assert response.s_wm == approx(s_wm)
    # mean words 450 -> group penalty 0.001 * 50 = 0.05
    assert response.mean_words == 450
    assert response.group_reward == approx(1.0 + 0.7 * s_wm - 0.05)
    t_short, t_long = response.trajectories
    # both: coherence = 0.4 * 1 + 0.3 * 0.5 + 0.3 * 1 = 0.85
    # short: quality = 0.4 * (300/300) + 0.6 * 0.5 = 0.7, no penalty
    # long:  quality = 0.4 * (300/600) + 0.6 * 0.5 = 0.5, penalty 0.001 * 200 = 0.2
    assert (t_short.coherence, t_long.coherence) == (approx(0.85), approx(0.85))
    assert (t_short.quality, t_long.quality) == (approx(0.7), approx(0.5))
    assert (t_short.length_penalty, t_long.length_penalty) == (0.0, approx(0.2))
    assert t_short.reward == approx(1.0 + 0.05 * s_wm + 0.1 * 0.85 + 0.05 * 0.7)
    assert t_long.reward == approx(1.0 + 0.05 * s_wm + 0.1 * 0.85 + 0.05 * 0.5 - 0.2)


# --- s_cf ----------------------------------------------------------------------------------------------

# wolfram_0 5, maudlin_0 7, probe A 5, probe A' 7, CF1 5
PROBES_SPLIT = (
    ("wolfram_0", "Answer: 5"),
    ("maudlin_0", "Answer: 7"),
    ("wolfram_standard", "Answer: 5"),
    ("wolfram_rephrase", "Answer: 7"),
    ("maudlin_cf1", "Answer: 5"),
)
# the same, but probe A' agrees with A and CF1
PROBES_AGREE = PROBES_SPLIT[:3] + (("wolfram_rephrase", "Answer: 5"),) + PROBES_SPLIT[4:]


def test_s_cf_with_probes_is_cf1_agreeing_with_a_and_a_prime() -> None:
    # CF1 (5) vs A (5): agree; CF1 vs A' (7): disagree -> 1/2
    assert score(*PROBES_SPLIT).s_cf == approx(0.5)
    # CF1 (5) vs A (5) and A' (5): both agree -> 1
    assert score(*PROBES_AGREE).s_cf == 1.0


def test_s_cf_with_probes_ignores_the_personas() -> None:
    # the personas disagree with everything, the probes agree: s_cf = 1
    response = score(
        ("wolfram_0", "Answer: 1"),
        ("maudlin_0", "Answer: 2"),
        ("wolfram_standard", "Answer: 5"),
        ("wolfram_rephrase", "Answer: 5"),
        ("maudlin_cf1", "Answer: 5"),
    )
    assert response.s_cf == 1.0


def test_s_cf_of_each_trajectory_is_its_agreement_with_the_other_probes() -> None:
    # probes: A (5), A' (7), CF1 (5); each trajectory against the probes other than itself
    # wolfram_0 (5) vs 5, 7, 5 -> 2/3     maudlin_0 (7) vs 5, 7, 5 -> 1/3
    # A (5) vs A' 7, CF1 5 -> 1/2         A' (7) vs A 5, CF1 5 -> 0         CF1 (5) vs A 5, A' 7 -> 1/2
    s_cf_i = [t.s_cf for t in score(*PROBES_SPLIT).trajectories]
    assert s_cf_i == [approx(2 / 3), approx(1 / 3), approx(0.5), 0.0, approx(0.5)]


PERSONAS_ONLY = (
    ("wolfram_0", "Answer: 5"),
    ("wolfram_1", "Answer: 7"),
    ("maudlin_0", "Answer: 5"),
    ("maudlin_1", "Answer: 5"),
    ("maudlin_2", "Answer: 5"),
)


def test_s_cf_without_probes_is_wolfram_by_maudlin_agreement() -> None:
    # 2 wolfram x 3 maudlin = 6 pairs; wolfram_0 (5) agrees with all 3 maudlin (5), wolfram_1 (7) with none -> 3/6
    # (s_end differs: four 5s -> 6 agreeing pairs of 10 = 0.6)
    response = score(*PERSONAS_ONLY)
    assert response.s_cf == approx(0.5)
    assert response.s_end == approx(0.6)


def test_s_cf_of_each_persona_without_probes_is_agreement_with_the_other_persona() -> None:
    # wolfram_0 (5) vs maudlin 5, 5, 5 -> 1; wolfram_1 (7) -> 0; each maudlin (5) vs wolfram 5, 7 -> 1/2
    s_cf_i = [t.s_cf for t in score(*PERSONAS_ONLY).trajectories]
    assert s_cf_i == [1.0, 0.0, approx(0.5), approx(0.5), approx(0.5)]


def test_s_cf_falls_back_to_answer_agreement_for_plain_samples() -> None:
    # no probes, no personas: s_cf = s_end = 1/3 for answers 5, 5, 7
    assert score(*THREE_SAMPLES).s_cf == approx(1 / 3)
    # one persona only (no maudlin): the same fallback; answers 5, 5, 5, 7 -> 3 of 6 pairs
    only_wolfram = [(f"wolfram_{k}", f"Answer: {a}") for k, a in enumerate((5, 5, 5, 7))]
    assert score(*only_wolfram).s_cf == approx(0.5)


def test_counterfactual_helpers_directly() -> None:
    roles = Roles.of(["compute", "reflective", "probe_standard", "probe_rephrase", "probe_counterfactual"])
    assert roles.counterfactual == [4] and roles.anchors == [2, 3] and roles.probes == [2, 3, 4]
    answers = ["5", "7", "5", "7", "5"]
    assert counterfactual_score(answers, roles) == approx(0.5)
    assert trajectory_counterfactual(answers, roles, 0) == approx(2 / 3)
    # cross_agreement: (0, 1) and (0, 2): answers 5 vs 7, 5 vs 5 -> 1/2; the pair (i, i) is skipped
    assert cross_agreement(answers, [0], [1, 2]) == approx(0.5)
    assert cross_agreement(answers, [0], [0]) == 0.0
    assert cross_agreement([None, None], [0], [1]) == 0.0


def test_s_cf_differs_between_groups_with_different_probe_answers() -> None:
    """SPEC: s_cf must never be a constant."""
    split, agree = score(*PROBES_SPLIT), score(*PROBES_AGREE)
    assert split.s_cf != agree.s_cf
    assert (split.s_cf, agree.s_cf) == (approx(0.5), 1.0)


# --- s_wm and quality ------------------------------------------------------------------------------


def test_s_wm_follows_the_weights() -> None:
    # PERSONAS_ONLY: s_end 0.6, s_cf 0.5
    default = score(*PERSONAS_ONLY)
    assert default.s_wm == approx(0.4 * 0.6 + 0.3 * default.s_path + 0.3 * 0.5)
    only_end = score(*PERSONAS_ONLY, weights=ScoringWeights(s_end=1.0, s_path=0.0, s_cf=0.0))
    assert only_end.s_wm == approx(0.6)
    only_cf = score(*PERSONAS_ONLY, weights=ScoringWeights(s_end=0.0, s_path=0.0, s_cf=1.0))
    assert only_cf.s_wm == approx(0.5)
    assert only_cf.weights == ScoringWeights(s_end=0.0, s_path=0.0, s_cf=1.0)  # echoed in the response


def test_quality_is_conciseness_and_alignment_with_probes_a_and_a_prime() -> None:
    response = score(
        ("sample", "p q Answer: 5"),  # tokens {p, q, answer, 5}
        ("wolfram_standard", "p q Answer: 5"),  # identical to the sample: Jaccard 1
        ("wolfram_rephrase", "p r Answer: 5"),  # {p, answer, 5} / {p, q, r, answer, 5} = 3/5 with both others
    )
    # all 4 words: conciseness 1 for everyone
    # sample: alignment = mean(1, 0.6) = 0.8 -> quality 0.4 + 0.6 * 0.8 = 0.88
    # A: alignment with A' only (itself excluded) = 0.6 -> 0.4 + 0.36 = 0.76; A' likewise with A
    assert [t.quality for t in response.trajectories] == [approx(0.88), approx(0.76), approx(0.76)]


# --- rewards that can build pairs (SPEC requirements) ------------------------------------------------


def test_per_trajectory_rewards_are_not_a_constant_shift_of_correctness() -> None:
    """SPEC: the per-trajectory rewards of one group are not a constant shift of the correctness term."""
    response = score(*THREE_SAMPLES, gold="5")
    bases = [WEIGHTS.correct_base if t.correct else WEIGHTS.incorrect_base for t in response.trajectories]
    shifts = [t.reward - base for t, base in zip(response.trajectories, bases, strict=True)]
    # t0: 0.05 * s_wm + 0.069, t2: 0.05 * s_wm + 0.032 (see test_per_trajectory_reward_formula)
    assert shifts[0] - shifts[2] == approx(0.037)
    assert max(shifts) - min(shifts) > 0.03


ELEVEN_CORRECT = (
    ("wolfram_0", "Eggs left: 16 - 3 - 4 = 9.\nMoney: 9 * 2 = 18.\nAnswer: 18"),
    ("wolfram_1", "16 - 3 - 4 = 9 eggs.\n9 * 2 = 18 dollars.\nAnswer: 18"),
    ("wolfram_2", "Remaining eggs = 16 - 7 = 9\nIncome = 9 * $2 = $18\nAnswer: 18"),
    ("wolfram_3", "She uses 3 + 4 = 7 eggs, sells 16 - 7 = 9, earns 9 * 2 = 18.\nAnswer: 18"),
    (
        "maudlin_0",
        "First, count what she uses: 3 for breakfast and 4 for muffins, 7 in all. "
        "That leaves 16 - 7 = 9 eggs. Careful: the price is per egg, so 9 * 2 = 18.\nAnswer: 18",
    ),
    (
        "maudlin_1",
        "Let us reason. The ducks lay 16 eggs; she eats 3 and bakes with 4, so 9 remain. "
        "Each sells for $2, giving $18. Double-check: 9 * 2 = 18.\nAnswer: 18",
    ),
    (
        "maudlin_2",
        "She keeps 3 + 4 = 7 eggs, which is the step people often get wrong by forgetting the "
        "muffins. So she sells 9 eggs and makes 18 dollars.\nAnswer: 18",
    ),
    ("maudlin_3", "Nine eggs are sold (16 - 3 - 4). At two dollars each that is 18 dollars.\nAnswer: 18"),
    ("wolfram_standard", "Eggs sold: 16 - 3 - 4 = 9.\nRevenue: 9 * 2 = 18.\nAnswer: 18"),
    ("wolfram_rephrase", "Eggs sold: 16 - 3 - 4 = 9.\nDaily revenue: 9 * 2 = 18 dollars.\nAnswer: 18"),
    (
        "maudlin_cf1",
        "The obvious approach subtracts the eggs she uses and multiplies by the price. "
        "It assumes every remaining egg is sold at $2, which the problem states. 16 - 7 = 9, 9 * 2 = 18.\n"
        "Answer: 18",
    ),
)


def test_correct_trajectories_of_one_question_get_different_rewards() -> None:
    """SPEC: otherwise no coherence pairs can be built."""
    response = score_group(make_request(*ELEVEN_CORRECT, gold="18"), ROLES, WEIGHTS)
    assert all(t.correct for t in response.trajectories)
    rewards = [t.reward for t in response.trajectories]
    assert len({round(r, 9) for r in rewards}) == len(rewards)  # every reward is distinct
    assert max(rewards) - min(rewards) > 0.01
    # and none of them is just the correctness base
    assert all(r != WEIGHTS.correct_base for r in rewards)


def test_arm_names_survive_scoring_in_request_order() -> None:
    order = ["maudlin_cf1", "sample_7", "wolfram_2", "maudlin_0", "wolfram_standard", "custom.arm-1"]
    pairs = [(name, f"{name} says Answer: {k}") for k, name in enumerate(order)]
    response = score(*pairs, gold="1")
    assert [t.arm_name for t in response.trajectories] == order
    assert [t.answer for t in response.trajectories] == [str(k) for k in range(len(order))]


# --- labels --------------------------------------------------------------------------------------


def test_gold_as_a_gsm8k_solution_with_commas() -> None:
    response = score(("sample", "Answer: 1000"), ("sample", "Answer: 999"), gold="So 500 * 2 = 1,000\n#### 1,000")
    assert response.label_source == "gold"
    assert response.reference_answer == "1000"
    assert [t.correct for t in response.trajectories] == [True, False]


def test_label_free_scoring_uses_the_majority_as_pseudo_label() -> None:
    response = score(*THREE_SAMPLES)  # answers 5, 5, 7; no gold
    assert response.label_source == "majority"
    assert response.reference_answer == "5"
    assert [t.correct for t in response.trajectories] == [True, True, False]
    # the coherence scores are those of the labelled group, and so is the reward (5 is also the gold there)
    labelled = score(*THREE_SAMPLES, gold="5")
    assert (response.s_end, response.s_path, response.s_cf, response.s_wm) == (
        labelled.s_end,
        labelled.s_path,
        labelled.s_cf,
        labelled.s_wm,
    )
    assert response.group_reward == approx(1.0 + 0.7 * THREE_S_WM)


def test_majority_ties_go_to_the_smallest_number() -> None:
    assert majority_answer(["7", "5", None]) == "5"
    assert majority_answer(["10", "9", "10", "9"]) == "9"
    assert score(("sample", "Answer: 7"), ("sample", "Answer: 5")).reference_answer == "5"


def test_label_free_scoring_without_any_answer() -> None:
    response = score(("sample", "I do not know"), ("sample", "no idea"))
    assert response.label_source == "none"
    assert response.reference_answer is None
    assert not response.any_correct
    assert [t.correct for t in response.trajectories] == [False, False]
    # s_end = 0 (no answers); s_cf = 0; s_path still computed:
    # words [4, 2]: mean 3, population variance 1, var/mean = 1/3 -> length coherence 3/4;
    # Jaccard {i, do, not, know} vs {no, idea} shares nothing -> 0; s_path = 0.4 * 3/4 + 0.6 * 0 = 0.3
    # s_wm = 0.3 * 0.3 = 0.09; group reward = -0.5 + 0.7 * 0.09 = -0.437
    assert (response.s_end, response.s_cf) == (0.0, 0.0)
    assert response.s_path == approx(0.3)
    assert response.s_wm == approx(0.09)
    assert response.group_reward == approx(-0.437)


def test_gold_without_a_number_is_a_scoring_error() -> None:
    with pytest.raises(ScoringError, match="no number"):
        score(*THREE_SAMPLES, gold="the answer is unknown")


# --- the public stub -----------------------------------------------------------------------------


def test_stub_rewards_are_exactly_the_correctness_bases() -> None:
    settings = ServiceSettings(require_auth=False)
    response = score_correctness(make_request(*THREE_SAMPLES, gold="5"), settings)
    assert response.scorer_version.startswith("stub")
    assert [t.reward for t in response.trajectories] == [1.0, 1.0, -0.5]
    assert response.group_reward == 1.0
    assert (response.s_path, response.s_cf, response.s_wm) == (0.0, 0.0, 0.0)
    assert [t.arm_name for t in response.trajectories] == ["sample_0", "sample_1", "sample_2"]
    wrong = score_correctness(make_request(*THREE_SAMPLES, gold="9"), settings)
    assert [t.reward for t in wrong.trajectories] == [-0.5, -0.5, -0.5]
    assert wrong.group_reward == -0.5
