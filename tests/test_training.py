"""SFT, QLoRA, merge and model loading, for real, on a tiny random-weight model with a real tokenizer."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import completion_loss

from looper_common.modeling import ModelSourceError, load_model, load_tokenizer, resolve_source
from shared_schemas.prompts import build_prompt
from trainer.data import generated_records, write_jsonl
from trainer.merge import MergeConfig, merge_adapter
from trainer.sft import SFTStageConfig, prompt_completion_rows, run_sft


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl(path, generated_records(8, seed=5))
    return path


def sft_config(tiny, train_file, out, **overrides) -> SFTStageConfig:
    values = dict(
        model=str(tiny),
        train_file=str(train_file),
        output_dir=str(out),
        learning_rate=1e-2,
        max_steps=20,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_length=256,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        warmup_steps=0,
        logging_steps=1,
        save_steps=1000,
    )
    values.update(overrides)
    return SFTStageConfig(**values)


@pytest.fixture(scope="module")
def sft_adapter(tiny, train_file, tmp_path_factory) -> Path:
    return run_sft(sft_config(tiny, train_file, tmp_path_factory.mktemp("sft") / "adapter"))


def test_sft_lowers_the_loss_and_changes_the_adapter(tiny, train_file, sft_adapter):
    records = [json.loads(line) for line in train_file.read_text().splitlines()]
    tokenizer = load_tokenizer(str(tiny))
    before = completion_loss(load_model(str(tiny)), tokenizer, prompt_completion_rows(records, tokenizer))
    adapted = load_model(str(sft_adapter))
    after = completion_loss(adapted, tokenizer, prompt_completion_rows(records, tokenizer))
    assert after < before - 0.25, (before, after)
    lora_b = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero
    manifest = json.loads((sft_adapter / "looper_manifest.json").read_text())
    assert manifest["global_step"] == 20 and manifest["nonfinite_skipped"] == 0
    assert manifest["config"]["lora_r"] == 8 and len(manifest["train_file_sha256"]) == 64
    logged = [json.loads(line) for line in (sft_adapter / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in row and "grad_norm" in row for row in logged)


def test_presets_set_the_lora_size(tiny, train_file):
    assert (SFTStageConfig(model="m", train_file="t").lora_r, SFTStageConfig(model="m", train_file="t").lora_alpha) == (
        64,
        16,
    )
    aggressive = SFTStageConfig(model="m", train_file="t", preset="aggressive")
    assert (aggressive.lora_r, aggressive.lora_alpha) == (128, 32)


def test_qlora_4bit_runs_on_cpu(tiny, train_file, tmp_path):
    out = run_sft(sft_config(tiny, train_file, tmp_path / "qlora", quantization="4bit", max_steps=2))
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["global_step"] == 2
    quantised = load_model(str(out), quantization="4bit")
    assert getattr(quantised.base_model.model, "is_loaded_in_4bit", False)


def test_sft_killed_mid_run_resumes_from_its_checkpoint(tiny, train_file, tmp_path):
    out = tmp_path / "resumable"
    args = [sys.executable, "-m", "looper.cli", "sft", "--model", str(tiny), "--train-file", str(train_file)]
    args += ["--output-dir", str(out), "--learning-rate", "1e-3", "--per-device-train-batch-size", "2"]
    args += ["--gradient-accumulation-steps", "1", "--lora-r", "4", "--max-length", "256", "--save-steps", "3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [*args, "--max-steps", "100000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    # pull the plug without warning, possibly in the middle of writing the next checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "looper_manifest.json").exists()

    resumed = subprocess.run([*args, "--max-steps", "60"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["resumed_from"] and "checkpoint-" in manifest["resumed_from"]
    assert manifest["global_step"] == 60


def test_merge_gives_the_adapters_logits(sft_adapter, tmp_path):
    merged_dir = merge_adapter(
        MergeConfig(adapter=str(sft_adapter), output_dir=str(tmp_path / "merged"), dtype="float32")
    )
    manifest = json.loads((merged_dir / "looper_manifest.json").read_text())
    assert manifest["max_logit_diff_fp32"] <= 1e-3 and manifest["reload_logit_diff"] == 0
    assert resolve_source(str(merged_dir)).kind == "local"
    tokenizer = load_tokenizer(str(merged_dir))
    ids = tokenizer([build_prompt("Sam has 5 pens and buys 7 more. How many pens?", tokenizer)], return_tensors="pt")
    with torch.no_grad():
        via_adapter = load_model(str(sft_adapter)).eval()(**ids).logits
        via_merged = load_model(str(merged_dir)).eval()(**ids).logits
    assert torch.allclose(via_adapter, via_merged, atol=1e-4)


def test_model_sources_resolve(tiny, sft_adapter, tmp_path):
    assert resolve_source(str(tiny)).kind == "local"
    adapter = resolve_source(str(sft_adapter))
    assert adapter.kind == "adapter" and adapter.base == str(tiny)
    assert resolve_source("deepseek-ai/DeepSeek-R1-Distill-Llama-8B").kind == "hub"
    with pytest.raises(ModelSourceError, match="no such file"):
        resolve_source(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_a_hub_id_while_offline_says_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="pass a local path"):
        load_model("looper-tests/not-a-cached-model")


def test_a_hub_id_loads_from_the_local_hub_cache_offline(tiny, tmp_path):
    """The hub-id path for real: a snapshot laid out as huggingface_hub caches it, loaded with no network."""
    snapshot = tmp_path / "hub" / "models--looper-tests--tiny" / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(tiny, snapshot)
    refs = tmp_path / "hub" / "models--looper-tests--tiny" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    code = (
        "from looper_common.modeling import load_model, load_tokenizer\n"
        "m = load_model('looper-tests/tiny'); t = load_tokenizer('looper-tests/tiny')\n"
        "print(type(m).__name__, len(t))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "LlamaForCausalLM"


def test_resume_skips_a_checkpoint_torn_by_a_kill(tmp_path):
    from trainer.callbacks import last_complete_checkpoint

    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_st')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-8").mkdir()  # killed before its state was written
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "missing") is None
