"""Seed-pooled comparisons (trainer/pooled.py, `looper compare-seeds`): the stratified McNemar test and the exact
sign-flip test against hand computation and brute force, the pooling over hand-made eval dirs, the errors."""

import itertools
import json
import math

import numpy as np
import pytest
from eval_outputs import write_eval

from trainer.compare import CompareError, mcnemar_exact
from trainer.pooled import cmh_matched_pairs, pooled_comparison, sign_flip_p


def test_the_stratified_mcnemar_statistic_sums_the_strata_discordances():
    chi2, p = cmh_matched_pairs([7, 5, 6], [2, 3, 1])  # (18 - 6)^2 / 24 = 6
    assert chi2 == pytest.approx(6.0) and p == pytest.approx(math.erfc(math.sqrt(3.0)))
    assert p == pytest.approx(0.014306, abs=1e-6)  # the chi-square(1) tail at 6
    one, _ = cmh_matched_pairs([7], [2])  # one stratum: the uncorrected McNemar chi-square
    assert one == pytest.approx(25 / 9)
    assert cmh_matched_pairs([0, 0], [0, 0]) == (0.0, 1.0)


def brute_force_sign_flip(t: list[int]) -> float:
    observed = abs(sum(t))
    hits = sum(abs(sum(s * x for s, x in zip(signs, t, strict=True))) >= observed
               for signs in itertools.product((1, -1), repeat=len(t)))  # fmt: skip
    return hits / 2 ** len(t)


@pytest.mark.parametrize(
    "t", [[1, 1, 1, -1, 1, 0, 1], [2, -1, 3, 1, 0, -2, 1, 1, 2, -3], [0, 0, 0], [3, 3, 3, 3, -1], [1, -1]]
)
def test_the_sign_flip_p_is_exact(t):
    assert sign_flip_p(np.array(t)) == pytest.approx(brute_force_sign_flip(t), abs=1e-12)


def test_with_one_seed_the_sign_flip_p_is_the_exact_mcnemar_p():
    for b, c in ((7, 2), (0, 5), (12, 12), (30, 11)):
        t = np.array([1] * b + [-1] * c + [0] * 9)
        assert sign_flip_p(t) == pytest.approx(mcnemar_exact(b, c), rel=1e-12)


@pytest.fixture
def seeded_arms(tmp_path):
    """20 questions; a baseline shared by all seeds (right on q0-q9), an arm over 3 seeds and a 3-seed control."""
    base = write_eval(tmp_path / "base", [i < 10 for i in range(20)], ["clean"] * 20, "base")
    arm = [
        write_eval(tmp_path / f"arm-{s}", [i < 10 + extra for i in range(20)], ["clean"] * 20, "arm")
        for s, extra in enumerate((4, 2, 3))  # seed s right on q0..q(9+extra)
    ]
    control = [
        write_eval(tmp_path / f"control-{s}", [i < 10 + extra or i == 19 for i in range(20)], ["clean"] * 20, "c")
        for s, extra in enumerate((1, -1, 0))
    ]
    return {"base": [base], "arm": arm, "control": control}


def test_arms_pool_over_seeds_and_a_shared_baseline_pairs_with_every_seed(seeded_arms):
    result = pooled_comparison(seeded_arms, baselines=["base", "control"], n_resamples=2000, seed=1)
    assert result["n_seeds"] == 3 and result["n_questions"] == 20
    assert list(result["comparisons"]) == ["arm - base", "control - base", "arm - control"]
    vs_base = result["comparisons"]["arm - base"]
    assert [r["b"] for r in vs_base["per_seed"]] == [4, 2, 3] and [r["c"] for r in vs_base["per_seed"]] == [0, 0, 0]
    assert [r["diff_pts"] for r in vs_base["per_seed"]] == [20.0, 10.0, 15.0]
    assert vs_base["per_seed"][1]["p"] == pytest.approx(mcnemar_exact(2, 0))
    pooled = vs_base["pooled"]
    assert pooled["diff_pts"] == pytest.approx(15.0) and pooled["b"] == 9 and pooled["c"] == 0
    assert pooled["p"] == pytest.approx(math.erfc(math.sqrt(9 / 2)))  # chi2 = 81 / 9
    low, high = pooled["ci"]
    assert 0.0 < low < 15.0 < high  # questions q10..q13 carry the whole difference: the interval is wide
    assert pooled["a_acc"] == pytest.approx(39 / 60) and pooled["b_acc"] == pytest.approx(0.5)
    # a multi-seed baseline pairs seed i with seed i: arm seed 1 (q0-q11) vs control seed 1 (q0-q8 and q19)
    row = result["comparisons"]["arm - control"]["per_seed"][1]
    assert (row["b"], row["c"]) == (3, 1)
    # deterministic: the same seed gives the same intervals
    again = pooled_comparison(seeded_arms, baselines=["base", "control"], n_resamples=2000, seed=1)
    assert again == result


def test_uneven_or_unmatched_evals_are_refused_with_what_to_pass(seeded_arms, tmp_path):
    with pytest.raises(CompareError, match="different numbers of seeds"):
        pooled_comparison({**seeded_arms, "control": seeded_arms["control"][:2]}, baselines=["base"])
    with pytest.raises(CompareError, match="unknown baseline 'sft'"):
        pooled_comparison(seeded_arms, baselines=["sft"])
    with pytest.raises(CompareError, match="no baseline"):
        pooled_comparison(seeded_arms, baselines=[])
    with pytest.raises(CompareError, match="only one arm"):
        pooled_comparison({"base": seeded_arms["base"]}, baselines=["base"])
    with pytest.raises(CompareError, match="has no eval dirs"):
        pooled_comparison({**seeded_arms, "empty": []}, baselines=["base"])
    other = write_eval(tmp_path / "other", [True] * 21, ["clean"] * 21, "other")
    with pytest.raises(CompareError, match="cover different questions"):
        pooled_comparison({**seeded_arms, "other": [other]}, baselines=["base"])
    with pytest.raises(CompareError, match="strict or flexible"):
        pooled_comparison(seeded_arms, baselines=["base"], mode="lenient")
    with pytest.raises(CompareError, match="at least 1"):
        pooled_comparison(seeded_arms, baselines=["base"], n_resamples=0)


def test_cli_compare_seeds_writes_the_tables_and_fails_cleanly(seeded_arms, tmp_path, capsys):
    from looper.cli import main

    out = tmp_path / "pooled"
    arm = ",".join(map(str, seeded_arms["arm"]))
    main(["compare-seeds", "--arm", f"base={seeded_arms['base'][0]}", "--arm", f"arm={arm}", "--baseline", "base",
          "--bootstrap", "500", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "## arm - base" in printed and "**+15.00 pts**" in printed and "| 2 | 65.0% | 50.0% |" in printed
    saved = json.loads((out / "pooled.json").read_text())
    assert saved["comparisons"]["arm - base"]["pooled"]["n_seeds"] == 3 and (out / "pooled.md").is_file()
    with pytest.raises(SystemExit, match="looper compare-seeds: arm 'arm' given twice"):
        main(["compare-seeds", "--arm", f"arm={arm}", "--arm", f"arm={arm}", "--baseline", "arm", "--out", str(out)])
    with pytest.raises(SystemExit):  # argparse: not NAME=DIR
        main(["compare-seeds", "--arm", "arm", "--baseline", "arm", "--out", str(out)])
    assert "is not NAME=DIR" in capsys.readouterr().err
