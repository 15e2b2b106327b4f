"""A tiny Llama exported to GGUF loads back through looper_common.modeling with the same tokens and logits."""

from __future__ import annotations

import pytest
import torch

from looper.tiny_model import build_tiny_model, export_gguf
from looper_common.modeling import load_model, load_tokenizer

TEXTS = [
    "What is 12 plus 30?",
    "<|im_start|>user\nTom has 7 apples,  he eats 2.<|im_end|>\n<|im_start|>assistant\n",
    " leading space\n\ttab, é and ✓",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    src = build_tiny_model(root / "hf")
    return src, load_tokenizer(str(src)), load_model(str(src), dtype=torch.float32), root


# f32 round-trips bit for bit; f16 matrices cost ~3e-4 on logits of magnitude ~0.7
@pytest.mark.parametrize(("f16", "atol"), [(False, 1e-6), (True, 2e-3)])
def test_gguf_round_trip(tiny, f16, atol):
    src, tokenizer, model, root = tiny
    gguf_file = export_gguf(src, root / f"f16-{f16}" / "tiny.gguf", f16=f16)
    loaded_tokenizer = load_tokenizer(str(gguf_file))
    loaded = load_model(str(gguf_file), dtype=torch.float32)

    assert loaded_tokenizer.eos_token == tokenizer.eos_token and loaded_tokenizer.pad_token == tokenizer.pad_token
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        assert loaded_tokenizer(text).input_ids == ids
        assert loaded_tokenizer.decode(ids) == tokenizer.decode(ids)
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits
            got = loaded(torch.tensor([ids])).logits
        torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def test_only_llama_exports(tmp_path):
    src = build_tiny_model(tmp_path / "qwen2", arch="qwen2", layers=1)
    with pytest.raises(ValueError, match="llama models only"):
        export_gguf(src, tmp_path / "qwen2.gguf")
