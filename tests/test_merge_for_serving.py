"""Folding a LoRA adapter into its base for serving (`--merge-lora`): the checkpoint vLLM then loads."""

import json

import pytest
import torch


@pytest.fixture(scope="module")
def drawn_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter over the tiny model with B drawn (not PEFT's zeros), so the fold changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    lora.save_pretrained(out)
    return out


def test_an_adapter_is_folded_in_fp32_and_rounded_once(tiny_model, drawn_adapter, tmp_path):
    from safetensors.torch import load_file

    from looper_common.modeling import convert_to_dir, load_model

    out = convert_to_dir(str(drawn_adapter), tmp_path / "merged", "bfloat16", base=str(tiny_model))
    saved = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    reference = load_model(str(drawn_adapter), dtype=torch.float32).merge_and_unload().state_dict()
    for name, tensor in saved.items():
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name
    q = next(n for n in saved if n.endswith("q_proj.weight"))
    base = load_model(str(tiny_model), dtype=torch.float32).state_dict()
    assert not torch.equal(saved[q], base[q].to(torch.bfloat16))  # the adapter is in it
    assert (out / "tokenizer_config.json").is_file()


def test_auto_keeps_the_dtype_the_base_records(tmp_path):
    from rollout_worker.engines import checkpoint_dtype

    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))
    assert checkpoint_dtype(str(tmp_path)) == "float16"
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "int8"}))
    assert checkpoint_dtype(str(tmp_path)) == "bfloat16"
    assert checkpoint_dtype(str(tmp_path / "missing")) == "bfloat16"


def test_a_failed_merge_leaves_no_folder(tmp_path, monkeypatch):
    from rollout_worker.engines import merged_checkpoint

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with pytest.raises(Exception, match="no-such-adapter"):
        merged_checkpoint(str(tmp_path / "no-such-adapter"), str(tmp_path / "no-such-base"), "float32")
    assert not list(tmp_path.glob("looper-merged-*"))
