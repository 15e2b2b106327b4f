"""Regime W v2 (reward_service/scoring_v2.py) against its three rules, and the scorers side by side.

1. correctness dominates: every correct trajectory outranks every wrong one, and the non-correctness part of a
   mixed group's advantage is at most 10% of the correctness part under every GRPO scaling;
2. length-neutral: among equally correct answers, reward does not follow length (looper.samples groups);
3. no phantom signal: uniform groups get equal rewards, and constant terms have no share of the spread.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from looper.samples import sample_group
from reward_service.arms import REGIME_W_ARMS
from reward_service.regime_w import SCORERS
from reward_service.scoring import SCORER_VERSION, score_group, spread_shares
from reward_service.scoring_v2 import (
    numbers_in,
    residuals,
    score_group_v2,
    shuffled_among_correct,
    tie_breaks,
)
from shared_schemas.models import ScoreRequest, ScoringWeights, Trajectory
from trainer.rl import RLStageConfig, modulated_advantages

ROLES = {arm.name: arm.role for arm in REGIME_W_ARMS}
WEIGHTS = ScoringWeights()
SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "reward_vs_length.py"


def groups(n: int = 120, seed: int = 5, arms=None) -> list[ScoreRequest]:
    rng = random.Random(seed)
    kwargs = {"arms": arms} if arms else {}
    return [
        sample_group(rng, f"q{k}", words=rng.choice((40, 120, 300)), wrong_rate=rng.choice((0.1, 0.4, 0.7)), **kwargs)
        for k in range(n)
    ]


def advantages(rewards: torch.Tensor, scale: str, batch_std: float) -> torch.Tensor:
    """TRL 1.16 GRPO's advantage for one group (sum_then_normalize) under each scale_rewards."""
    centred = rewards - rewards.mean()
    if scale == "group":
        return centred / (rewards.std() + 1e-4)
    if scale == "batch":
        return centred / (batch_std + 1e-4)
    return centred


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reward_vs_length_v2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# --- rule 1: correctness dominates -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["regime_w_v2", "random_tiebreak"])
@pytest.mark.parametrize("arms", [None, tuple(f"policy_{k}" for k in range(8))])
def test_every_correct_trajectory_outranks_every_wrong_one(name, arms):
    for request in groups(arms=arms):
        ts = SCORERS[name].score(request, ROLES, WEIGHTS).trajectories
        right = [t.reward for t in ts if t.correct]
        wrong = [t.reward for t in ts if not t.correct]
        if right and wrong:
            assert min(right) > max(wrong)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("name", ["regime_w_v2", "random_tiebreak"])
def test_the_tie_break_is_at_most_a_tenth_of_the_advantage_in_mixed_groups(name, scale):
    results = [SCORERS[name].score(r, ROLES, WEIGHTS) for r in groups(200, seed=9)]
    batch_std = float(torch.tensor([t.reward for r in results for t in r.trajectories]).std())
    checked = 0
    for result in results:
        correct = [t.correct for t in result.trajectories]
        if len(set(correct)) == 1:
            continue
        rewards = torch.tensor([t.reward for t in result.trajectories], dtype=torch.float64)
        bases = torch.tensor([1.0 if c else -0.5 for c in correct], dtype=torch.float64)
        total = advantages(rewards, scale, batch_std)
        from_correctness = advantages(bases, scale, batch_std) if scale != "group" else None
        if from_correctness is None:  # group scaling divides both parts by the same (whole reward's) std
            from_correctness = (bases - bases.mean()) / (rewards.std() + 1e-4)
        extra = total - from_correctness
        assert extra.norm() <= WEIGHTS.tie_break_max_share * from_correctness.norm() + 1e-9
        checked += 1
    assert checked > 50


def test_a_large_tie_break_weight_is_capped_at_the_share():
    weights = ScoringWeights(tie_break=0.5)
    correct = [True, True, True, True, True, True, True, False]
    u = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, None]
    extra = tie_breaks(correct, u, weights)
    bases = [1.0] * 7 + [-0.5]

    def centred_norm(xs):
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs))

    assert centred_norm(extra) == pytest.approx(0.1 * centred_norm(bases))
    assert extra[-1] == 0.0


# --- rule 2: length-neutral ---------------------------------------------------------------------------------


def test_robustness_is_residualised_on_log_length_within_the_group():
    for request in groups(60, seed=3):
        result = score_group_v2(request, ROLES, WEIGHTS)
        members = [t for t in result.trajectories if t.correct]
        if len(members) < 3 or len({t.words for t in members}) < 2:
            continue
        u = [math.atanh(t.robustness) for t in members]  # the residuals, scaled
        log_words = [math.log1p(t.words) for t in members]
        mean_u, mean_w = sum(u) / len(u), sum(log_words) / len(log_words)
        covariance = sum((a - mean_u) * (b - mean_w) for a, b in zip(u, log_words, strict=True))
        assert covariance == pytest.approx(0.0, abs=1e-9)


def test_residuals_remove_the_linear_part():
    assert residuals([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx([0.0, 0.0, 0.0])
    assert residuals([1.0, 3.0], [5.0, 5.0]) == pytest.approx([-1.0, 1.0])  # constant covariate: centred


def test_v2_designs_are_length_neutral_and_v1_is_not(script):
    designs = script.all_designs(script.sample_requests(240, seed=1))
    for name in ("regime_w_v2", "random_tiebreak", "modulated_v2"):
        assert 0.4 <= designs[name]["shorter_wins"] <= 0.6, (name, designs[name])
        assert abs(designs[name]["spearman_words"]) <= 0.1, (name, designs[name])
        assert designs[name]["share_max"] <= 0.1 + 1e-9
        assert designs[name]["phantom"] == 0.0
    v1 = designs["regime_w_v1"]
    assert v1["shorter_wins"] > 0.55 and v1["spearman_words"] < -0.1  # the brevity bias v2 removes
    assert v1["phantom"] > 0.9  # v1 spreads rewards in groups with no correctness signal
    assert designs["correctness"]["pairs"] == 0 and designs["correctness"]["share_max"] == 0.0
    assert 0.5 < designs["consensus"]["label_accuracy"] <= 1.0


# --- rule 3: no phantom signal ------------------------------------------------------------------------------


def test_uniform_groups_get_equal_rewards_and_no_spread():
    seen = 0
    for request in groups(150, seed=11):
        result = score_group_v2(request, ROLES, WEIGHTS)
        if len({t.correct for t in result.trajectories}) > 1:
            continue
        seen += 1
        assert len({t.reward for t in result.trajectories}) == 1
        assert result.reward_spread == {"correctness": 0.0, "tie_break": 0.0}
    assert seen > 5


def test_constant_terms_have_no_share_of_the_spread():
    shares = spread_shares({"correctness": [1.0, -0.5, 1.0], "group": [0.3, 0.3, 0.3], "own": [0.01, 0.0, 0.03]})
    assert shares["group"] == pytest.approx(0.0, abs=1e-12)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["correctness"] > 0.95


def test_v1_reports_its_spread_and_is_otherwise_unchanged():
    request = groups(1, seed=2)[0]
    result = score_group(request, ROLES, WEIGHTS)
    assert result.scorer == "regime_w_v1" and result.scorer_version == SCORER_VERSION == "regime-w/1.0.0"
    assert result.reward_spread["group_coherence"] == pytest.approx(0.0, abs=1e-12)
    assert all(t.robustness is None for t in result.trajectories)


# --- the pieces ---------------------------------------------------------------------------------------------


def test_numbers_are_normalised():
    assert numbers_in("She pays 1,200 dollars, then 1200.0 and 3.50; 7 apples.") == {"1200", "3.5", "7"}


def test_the_control_deals_the_same_values_at_random_and_always_the_same_way():
    changed = 0
    for request in groups(80, seed=4):
        v2 = [t.robustness for t in score_group_v2(request, ROLES, WEIGHTS).trajectories]
        control = [t.robustness for t in score_group_v2(request, ROLES, WEIGHTS, random_tiebreak=True).trajectories]
        assert sorted(v for v in v2 if v is not None) == sorted(v for v in control if v is not None)
        assert [v is None for v in v2] == [v is None for v in control]
        assert control == shuffled_among_correct(v2, request)
        changed += control != v2
    assert changed > 20


def test_too_few_correct_answers_give_no_tie_break():
    request = ScoreRequest(
        question_id="q", question="x", gold_answer="4",
        trajectories=[Trajectory(arm_name="policy_0", text="2 + 2 = 4\nAnswer: 4"),
                      Trajectory(arm_name="policy_1", text="two and two make four, 4.\nAnswer: 4"),
                      Trajectory(arm_name="policy_2", text="Answer: 5")],
    )  # fmt: skip
    result = score_group_v2(request, ROLES, WEIGHTS)
    assert [t.reward for t in result.trajectories] == [1.0, 1.0, -0.5]
    assert [t.robustness for t in result.trajectories] == [0.0, 0.0, None]


def test_sign_preserving_modulation():
    a = torch.tensor([1.2, 0.05, -0.8, 0.0, 0.3])
    u = torch.tensor([1.0, 1.0, 0.5, 1.0, -0.6])
    out = modulated_advantages(a, u, beta=0.1, kappa=10.0)
    assert out.tolist() == pytest.approx([1.3, 0.055, -0.85, 0.0, 0.27])
    assert torch.all(torch.sign(out) == torch.sign(a))
    assert torch.all((out - a).abs() <= a.abs() / 10 + 1e-7)


def test_rl_settings_defaults_and_refusals():
    config = RLStageConfig(model="m", train_file="t")
    assert (config.scale_rewards, config.loss_type) == ("batch", "dapo")
    with pytest.raises(ValueError, match="GRPO only"):
        RLStageConfig(model="m", train_file="t", algo="rloo", scale_rewards="group")
    with pytest.raises(ValueError, match="robustness"):
        RLStageConfig(model="m", train_file="t", advantage_modulation="sign_preserving")
    with pytest.raises(ValueError, match="kappa"):
        RLStageConfig(model="m", train_file="t", advantage_modulation="sign_preserving", scorer="regime_w_v2",
                      modulation_kappa=1.0)  # fmt: skip


# --- served -------------------------------------------------------------------------------------------------


def test_the_v2_service_lists_its_scorers_and_names_the_one_it_used(v2_service):
    with v2_service.client() as client:
        listing = client.get("/v1/scorers")
        assert listing.status_code == 200
        body = listing.json()
        assert body["active"] == "regime_w_v2"
        by_name = {s["name"]: s for s in body["scorers"]}
        assert set(by_name) == {"regime_w_v1", "regime_w_v2", "random_tiebreak"}
        assert by_name["regime_w_v2"]["weights"]["tie_break"] == 0.1
        assert "quality_conciseness" in by_name["regime_w_v1"]["weights"]
        assert "quality_conciseness" not in by_name["regime_w_v2"]["weights"]
        request = groups(1, seed=8)[0]
        scored = client.post("/v1/score", json=request.model_dump())
        assert scored.status_code == 200
        assert (scored.json()["scorer"], scored.json()["scorer_version"]) == ("regime_w_v2", "regime-w/2.0.0")
        assert client.get("/readyz").json()["scorer"] == "regime_w_v2"
        assert httpx.get(f"{v2_service.url}/v1/scorers").status_code == 401


def test_the_default_service_is_still_v1_and_the_stub_lists_only_itself(regime_w_service, stub_service):
    with regime_w_service.client() as client:
        assert client.get("/v1/scorers").json()["active"] == "regime_w_v1"
        request = groups(1, seed=8)[0]
        assert client.post("/v1/score", json=request.model_dump()).json()["scorer_version"] == "regime-w/1.0.0"
    with stub_service.client() as client:
        body = client.get("/v1/scorers").json()
        assert body["active"] == "stub" and [s["name"] for s in body["scorers"]] == ["stub"]


def test_the_stub_refuses_a_closed_scorer():
    run = subprocess.run(
        [sys.executable, "-m", "looper.cli", "serve", "--stub", "--scorer", "regime_w_v2", "--insecure-no-auth"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0 and "needs the closed service" in run.stderr


def test_the_diagnostics_script_on_samples(script, tmp_path, capsys):
    out = tmp_path / "designs.json"
    result = script.main(["--samples", "40", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result["designs"]) == set(script.DESIGNS)
    printed = capsys.readouterr().out
    assert "| regime_w_v2 |" in printed and "| consensus |" in printed
