"""`looper convert --random-init`: a random-weight model of a named shape or a config.json, with a real tokenizer
grown to its vocabulary, that the stages load like any model (the 8B preset's stand-in, here at a tiny shape)."""

import json

import pytest
import torch

from looper.cli import main
from looper_common.modeling import ModelSourceError, load_model, load_tokenizer
from looper_common.random_init import SHAPES, random_init

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_llama_3_8b_is_the_real_shape():
    from looper_common.random_init import llama_config

    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(llama_config(SHAPES["llama-3-8b"]))
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248  # Llama-3-8B's parameter count


def test_a_tiny_shape_builds_grows_the_tokenizer_and_generates(tiny_model, tmp_path, capsys):
    tokenizer = load_tokenizer(str(tiny_model))
    vocab = len(tokenizer) + 40
    out = tmp_path / "random"
    main(["convert", "--random-init", "tiny-llama", "--tokenizer", str(tiny_model), "--vocab", str(vocab),
          "--output-dir", str(out), "--dtype", "float32", "--seed", "3"])  # fmt: skip
    assert "random-weight model saved" in capsys.readouterr().out
    manifest = json.loads((out / "random_init.json").read_text())
    assert manifest["filler_tokens"] == 40 and manifest["vocab_size"] == vocab and manifest["seed"] == 3
    grown, model = load_tokenizer(str(out)), load_model(str(out))
    assert len(grown) == vocab and model.config.num_hidden_layers == SHAPES["tiny-llama"]["layers"]
    assert grown.decode([vocab - 1]) == f"<|filler_{vocab - 1}|>"  # every id the model can sample decodes
    ids = grown("Problem: 2 + 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=8, do_sample=True, pad_token_id=grown.pad_token_id)
    assert new.shape[1] > ids.shape[1]

    # the same seed, the same weights; a config.json works in place of a shape name
    again = random_init(str(out / "config.json"), str(tiny_model), tmp_path / "again", "float32", seed=3)
    first, second = load_model(str(out)), load_model(str(again))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True))


def test_what_cannot_be_built_says_what_to_pass(tiny_model, tmp_path):
    with pytest.raises(ModelSourceError, match="more than the model's vocabulary of 16.*--vocab"):
        random_init("tiny-llama", str(tiny_model), tmp_path / "x", vocab=16)
    with pytest.raises(ModelSourceError, match="neither a shape"):
        random_init(str(tmp_path / "nothing"), str(tiny_model), tmp_path / "x")
    with pytest.raises(SystemExit, match="needs --tokenizer"):
        main(["convert", "--random-init", "tiny-llama", "--output-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
