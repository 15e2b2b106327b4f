"""A tiny random-weight causal LM with a real byte-level BPE tokenizer and a chat template, built offline.

Right for tests and the smallest demo: every code path (tokenise, generate, LoRA, QLoRA, DPO, merge) runs
for real in seconds, with no hub and no weights shipped in the repository.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# Llama-3's layout: the template writes the BOS, and the tokenizer also adds one unless told not to
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"]
TOKENIZER_STYLES = {
    "chatml": {
        "special_tokens": SPECIAL_TOKENS,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "additional_special_tokens": ["<|endoftext|>", "<|im_start|>"],
        "chat_template": CHAT_TEMPLATE,
    },
    "llama3": {
        "special_tokens": LLAMA3_SPECIAL_TOKENS,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
        "chat_template": LLAMA3_TEMPLATE,
    },
}


def _corpus(n: int, seed: int) -> list[str]:
    from trainer.problems import generate

    texts = []
    for p in generate(n, seed=seed):
        texts += [p.question, p.answer, f"Answer: {p.final}"]
    return texts


def build_tokenizer(vocab_size: int = 1024, seed: int = 0, style: str = "chatml"):
    """A byte-level BPE tokenizer: "chatml" (Qwen's layout, no BOS) or "llama3" (a BOS that the chat template
    writes and the tokenizer's post-processor adds again by default, as Llama-3's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in TOKENIZER_STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}: use {' or '.join(TOKENIZER_STYLES)}")
    layout = TOKENIZER_STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=layout["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(400, seed), trainer=trainer)
    bos = layout["bos_token"]
    if bos is not None:  # the tokenizer adds its BOS in front of every text, as Llama-3's does
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=layout["eos_token"],
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=layout["additional_special_tokens"],
    )
    fast.chat_template = layout["chat_template"]
    return fast


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "llama",
    vocab_size: int = 1024,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    tokenizer_style: str = "chatml",
) -> Path:
    """Write a tokenizer (`build_tokenizer`'s style) and a random-weight `arch` ("llama" or "qwen2") model to
    out_dir; return it."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size, seed, tokenizer_style)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _interleave_rope_rows(weight, n_heads: int):
    """HF rotates a head's first half against its second; llama.cpp rotates adjacent pairs. Reorder the
    q/k rows to llama.cpp's layout, the inverse of what transformers undoes on load."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def export_gguf(model_dir: str | Path, out_file: str | Path, *, f16: bool = False) -> Path:
    """Write the tiny Llama in model_dir and its tokenizer as one GGUF file; return its path.

    Tensors are f32, or with f16=True the matrices f16 and the norms f32 (llama.cpp's convention).
    """
    import json

    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"export_gguf writes llama models only; {model_dir} holds a {cfg.model_type!r} model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(out, "llama")  # writes general.architecture itself
    writer.add_name("looper-tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.head_dim)  # transformers reads head_dim back from this key
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    # Byte-level BPE, stored as llama.cpp's "gpt2" tokenizer: the vocabulary in id order, spelled in the byte
    # alphabet, and the merges as "a b" strings. "gpt-2" names the pre-tokenizer regex ByteLevel uses.
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("GGUF stores a token's id as its position: the vocabulary ids must be 0..n-1")
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    # CONTROL tokens are matched whole instead of being cut into byte pieces
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # the tiny model has no BOS; say so rather than leave readers to guess
    writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name}")
        data = tensor.numpy()
        if name.endswith("attn_q.weight"):
            data = _interleave_rope_rows(data, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            data = _interleave_rope_rows(data, cfg.num_key_value_heads)
        writer.add_tensor(name, data.astype(np.float16 if f16 and data.ndim == 2 else np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def teach_format(
    model_dir: str | Path, *, steps: int = 150, lr: float = 3e-3, batch_size: int = 16, seed: int = 0
) -> Path:
    """Full fine-tune of a tiny model on generated worked solutions, in place, so that it answers in the
    project's format ('... Answer: N') with numbers of its own: answers that agree and disagree, which is
    what scoring, preference pairs and evaluation need to be exercised for real."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared_schemas.prompts import build_prompt, solution_target
    from trainer.data import generated_records

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    texts = [
        build_prompt(r["question"], tokenizer) + solution_target(r["answer"]) + tokenizer.eos_token
        for r in generated_records(steps * batch_size // 4, seed=seed + 1)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = [texts[(step * batch_size + k) % len(texts)] for k in range(batch_size)]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=256)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(model_dir)
    return Path(model_dir)
