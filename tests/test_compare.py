"""`looper compare`: the statistics against hand-computed values, and the report on hand-made eval files."""

import json
import math
from pathlib import Path

import pytest
from eval_outputs import write_eval

from trainer.compare import (
    CompareError,
    compare_runs,
    load_run,
    mcnemar_exact,
    paired_bootstrap,
    run_compare,
    verdict,
    wilson_interval,
)

# --- statistics -------------------------------------------------------------------------------------------


def test_exact_mcnemar_against_hand_computed_values():
    # b=1, c=6: 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
    assert mcnemar_exact(1, 6) == pytest.approx(0.125, abs=1e-15)
    assert mcnemar_exact(6, 1) == mcnemar_exact(1, 6)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact(10, 30) == pytest.approx(2 * sum(math.comb(40, k) for k in range(11)) / 2**40)
    assert 0 < mcnemar_exact(500, 700) < 1e-7  # large tables stay exact and finite


def test_mcnemar_agrees_with_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(1, 6), (4, 9), (20, 35), (0, 1)]:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_wilson_interval_known_cases():
    # 8/10: centre (0.8 + z^2/20) / (1 + z^2/10), half-width z*sqrt(0.016 + z^2/400) / (1 + z^2/10)
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    low, high = wilson_interval(960, 1209)  # a Platinum-sized run near 80%: about +-2.3 points
    assert low < 960 / 1209 < high and 0.044 < high - low < 0.047


def test_paired_bootstrap_is_seeded_and_contains_the_observed_difference():
    a = [True] * 70 + [False] * 30
    b = [True] * 60 + [False] * 40
    observed = (sum(a) - sum(b)) / len(a)
    low, high = paired_bootstrap(a, b, n_resamples=2000, seed=3)
    assert low < observed < high and (low, high) == paired_bootstrap(a, b, n_resamples=2000, seed=3)
    # 10 discordant pairs, all for A: the normal approximation is 0.10 +- 1.96 * sqrt(10/100^2 - 10^2/100^3)
    half = 1.96 * math.sqrt(10 / 100**2 - 10**2 / 100**3)
    assert (low, high) == pytest.approx((observed - half, observed + half), abs=0.015)
    assert paired_bootstrap(a, a, n_resamples=100) == (0.0, 0.0)  # identical answers: no difference at all
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:-1])


def test_verdict_weighs_the_noise_floor():
    assert verdict(0.01, 2.0, 0.5) == "significant"
    assert verdict(0.01, 2.0, 3.0) == "within run-to-run noise"
    assert verdict(0.01, 2.0, None) == "significant (noise floor not measured)"
    assert verdict(0.2, 5.0, 0.0) == "not significant"


# --- comparisons of hand-made eval outputs ----------------------------------------------------------------


@pytest.fixture
def two_evals(tmp_path):
    # 40 questions; A right on 30, B right on 25; discordant: only A right 7, only B right 2
    n = 40
    a = [i < 30 for i in range(n)]
    b = [i < 23 or 30 <= i < 32 for i in range(n)]
    statuses = ["consensus"] * 30 + ["verified"] * 8 + ["revised"] * 2
    return (
        write_eval(tmp_path / "sft", a, statuses, "sft", noise=0.5),
        write_eval(tmp_path / "base", b, statuses, "base", noise=0.25),
    )


def test_compare_pairs_by_question_with_mcnemar_bootstrap_and_noise(two_evals, tmp_path):
    result = run_compare([str(p) for p in two_evals], tmp_path / "report", n_resamples=2000, seed=1)
    sft, base = result["models"]
    assert (sft["name"], sft["strict"]["correct"], base["strict"]["correct"]) == ("sft", 30, 25)
    assert sft["strict"]["ci95"] == pytest.approx(list(wilson_interval(30, 40)))
    pair = result["pairs"][0]
    assert (pair["only_a_correct"], pair["only_b_correct"]) == (7, 2)
    assert pair["mcnemar_p"] == pytest.approx(2 * (1 + 9 + 36) / 2**9)  # b=7, c=2
    assert pair["diff_points"] == pytest.approx(12.5)
    low, high = pair["bootstrap_ci95_points"]
    assert low < 12.5 < high
    assert pair["noise_floor_points"] == pytest.approx(0.75) and pair["verdict"] == "not significant"
    statuses = result["by_cleaning_status"]
    assert list(statuses) == ["consensus", "revised", "verified"]
    assert statuses["verified"]["base"]["correct"] == 2 and statuses["revised"]["sft"]["correct"] == 0

    report = Path(result["files"]["report"]).read_text()
    assert "| sft vs base | +12.50 pts |" in report and "±0.75 pts" in report
    assert "±0.50 pts (2 correctness flips, 3 answers differ, 2 runs)" in report and "| revised | 2 |" in report
    png = Path(result["files"]["chart"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert json.loads(Path(result["files"]["json"]).read_text())["pairs"][0]["only_a_correct"] == 7


def test_mismatched_question_sets_are_refused_saying_how_many_differ(two_evals, tmp_path):
    other = write_eval(tmp_path / "other", [True] * 38, ["consensus"] * 38, "other")
    with pytest.raises(CompareError, match=r"2 ids differ \(2 only in sft, 0 only in other"):
        run_compare([str(two_evals[0]), str(other)], tmp_path / "out")

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    text = (two_evals[1] / "predictions.jsonl").read_text().replace('"q0"', '"x0"')
    (renamed / "predictions.jsonl").write_text(text)
    with pytest.raises(CompareError, match="2 ids differ"):
        run_compare([str(two_evals[0]), str(renamed)], tmp_path / "out")

    regolded = tmp_path / "regolded"
    regolded.mkdir()
    (regolded / "predictions.jsonl").write_text(
        (two_evals[1] / "predictions.jsonl").read_text().replace('"gold": "1"', '"gold": "7"', 1)
    )
    with pytest.raises(CompareError, match="1 gold answers"):
        run_compare([str(two_evals[0]), str(regolded)], tmp_path / "out")


def test_missing_gold_and_foreign_files_are_clear_errors(two_evals, tmp_path):
    text = (two_evals[1] / "predictions.jsonl").read_text()
    (tmp_path / "nogold.jsonl").write_text(text.replace('"gold": "1"', '"gold": null', 3))
    with pytest.raises(CompareError, match="3 of 40 questions have no gold answer"):
        load_run(tmp_path / "nogold.jsonl")
    (tmp_path / "rollouts.jsonl").write_text(json.dumps({"question_id": "q0", "trajectories": []}) + "\n")
    with pytest.raises(CompareError, match="line 1: not a row of an eval predictions file"):
        load_run(tmp_path / "rollouts.jsonl")
    with pytest.raises(CompareError, match="no predictions.jsonl"):
        load_run(tmp_path / "missing")
    with pytest.raises(CompareError, match="at least two"):
        compare_runs([load_run(two_evals[0])])


def test_cli_compare_reports_and_fails_cleanly(two_evals, tmp_path, capsys):
    from looper.cli import main

    main(["compare", *map(str, two_evals), "--out", str(tmp_path / "r"), "--bootstrap", "500", "--mode", "flexible"])
    out = capsys.readouterr().out
    assert "sft - base: +12.50 pts" in out and "noise ±0.75" in out and (tmp_path / "r" / "accuracy.png").is_file()
    with pytest.raises(SystemExit, match="looper compare: .*no predictions.jsonl"):
        main(["compare", str(two_evals[0]), str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
