"""A random-weight model of a real architecture, for running the big presets where the real weights cannot go.

`looper convert --random-init llama-3-8b --tokenizer DIR --output-dir models/llama-3-8b-random` builds the exact
Llama-3-8B shape (32 layers, hidden 4096, 8 KV heads, intermediate 14336, vocabulary 128,256, untied output
embeddings, rope theta 500,000) in bf16 on the GPU where there is one, and saves it as a safetensors dir that
every stage loads like any model. Nothing is carried to the machine but the tokenizer: the ~16 GB are made
there. Any `config.json` (a file or its folder) works in place of a named shape.

The tokenizer is a real one, grown to the config's vocabulary with filler tokens `<|filler_N|>`: random
weights sample every id of the vocabulary, and each must decode to something. A tokenizer larger than the
vocabulary is refused (the model could not embed its ids).
"""

from __future__ import annotations

import json
from pathlib import Path

from looper_common.modeling import ModelSourceError

SHAPES = {
    "llama-3-8b": {"hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 8, "intermediate": 14336, "vocab": 128256},
    "tiny-llama": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 1024},
}
FILLER = "<|filler_{}|>"


def llama_config(shape: dict, max_positions: int = 8192, dtype=None):
    """A Llama-3-style config of the given shape (SHAPES' keys)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        intermediate_size=shape["intermediate"],
        vocab_size=shape["vocab"],
        max_position_embeddings=max_positions,
        rope_theta=500_000.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        dtype=dtype,
    )


def load_config(source: str, vocab: int | None = None):
    """A named shape (SHAPES) or a config.json (the file or its folder); `vocab` overrides the vocabulary."""
    from transformers import AutoConfig

    if source in SHAPES:
        config = llama_config(SHAPES[source])
    else:
        path = Path(source)
        folder = path.parent if path.name == "config.json" else path
        if not (folder / "config.json").is_file():
            raise ModelSourceError(f"{source}: neither a shape ({', '.join(SHAPES)}) nor a config.json or its folder")
        config = AutoConfig.from_pretrained(str(folder))
    if vocab is not None:
        config.vocab_size = vocab
    return config


def grow_tokenizer(tokenizer, vocab_size: int) -> int:
    """Add filler tokens until the tokenizer has `vocab_size` ids; returns how many were added."""
    have = len(tokenizer)
    if have > vocab_size:
        raise ModelSourceError(
            f"the tokenizer has {have:,} tokens, more than the model's vocabulary of {vocab_size:,}: pass a smaller "
            "tokenizer (--tokenizer), or --vocab to enlarge the vocabulary (the shape is then no longer exact)"
        )
    return tokenizer.add_tokens([FILLER.format(i) for i in range(have, vocab_size)])


def random_init(
    source: str,
    tokenizer_dir: str,
    output_dir: str | Path,
    dtype: str = "bfloat16",
    seed: int = 0,
    vocab: int | None = None,
) -> Path:
    """Build the model with random weights (on the GPU if there is one) and save it with the grown tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from looper_common.modeling import load_tokenizer

    config = load_config(source, vocab)
    tokenizer = load_tokenizer(tokenizer_dir)
    added = grow_tokenizer(tokenizer, config.vocab_size)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with device:  # the weights are drawn where they will be written from: no 16 GB copy through the host
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    out = Path(output_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    manifest = {
        "random_init": source if source in SHAPES else str(Path(source).resolve()),
        "vocab_size": config.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "seed": seed,
        "tokenizer": str(tokenizer_dir),
        "filler_tokens": added,
        "device": str(device),
    }
    (out / "random_init.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
