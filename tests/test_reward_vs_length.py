"""experiments/reward_vs_length.py: reward against answer length, correctness held fixed."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "reward_vs_length.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reward_vs_length", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def trajectory(tokens: int, reward: float, correct: bool) -> dict:
    return {"completion_tokens": tokens, "reward": reward, "quality": reward, "coherence": -reward, "correct": correct}


def test_pairs_are_taken_within_a_question_and_a_correctness(script, tmp_path, capsys):
    records = [
        # right answers: the shorter is rewarded more in 2 of 3 pairs; the wrong one pairs with nobody
        {
            "trajectories": [
                trajectory(10, 1.2, True),
                trajectory(20, 1.1, True),
                trajectory(30, 1.15, True),
                trajectory(5, -0.5, False),
            ]
        },
        # wrong answers: equal lengths or equal rewards make no pair; every other pair prefers the longer
        {
            "trajectories": [
                trajectory(40, -0.4, False),
                trajectory(40, -0.3, False),
                trajectory(50, -0.3, False),
                trajectory(60, -0.2, False),
            ]
        },
    ]
    bias = script.length_bias(records)
    assert bias["correct"]["trajectories"] == 3 and bias["correct"]["pairs"] == 3
    assert bias["correct"]["shorter_has_higher_reward"] == pytest.approx(2 / 3)
    # pairs of the second question: (40,-0.4)-(50,-0.3), (40,-0.4)-(60,-0.2), (40,-0.3)-(60,-0.2), (50,-0.3)-(60,-0.2)
    assert bias["wrong"]["pairs"] == 4 and bias["wrong"]["shorter_has_higher_reward"] == 0.0
    assert bias["wrong"]["corr_tokens_reward"] > 0.5 > -0.5 > bias["wrong"]["corr_tokens_coherence"]
    assert bias["correct"]["corr_tokens_reward"] == pytest.approx(-bias["correct"]["corr_tokens_coherence"])

    rollouts = tmp_path / "rollouts.jsonl"
    rollouts.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = script.main([str(rollouts), "--json", str(tmp_path / "bias.json")])
    assert json.loads((tmp_path / "bias.json").read_text()) == result and result["questions"] == 2
    assert "| correct | 3 |" in capsys.readouterr().out


def test_no_pairs_and_no_spread_give_none_not_an_error(script):
    bias = script.length_bias([{"trajectories": [trajectory(10, 1.0, True)]}])
    assert bias["correct"]["pairs"] == 0 and bias["correct"]["shorter_has_higher_reward"] is None
    assert bias["correct"]["corr_tokens_reward"] is None and bias["wrong"]["trajectories"] == 0
