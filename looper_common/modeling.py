"""Model loading in one place, for every stage: hub id, local dir, GGUF file, LoRA adapter dir, merged dir.

A stage that loads "the SFT model" takes any of them alike. Quantisation (4-bit NF4 or 8-bit) goes
through bitsandbytes; bf16 on GPUs, fp32 on CPU unless asked otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SourceKind = Literal["hub", "local", "gguf", "adapter"]
Quantization = Literal["none", "4bit", "8bit"]


class ModelSourceError(ValueError):
    """The model argument names nothing loadable; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    path: str  # hub id, directory, or GGUF file
    gguf_file: str | None = None  # file name inside `path` for GGUF sources
    base: str | None = None  # for adapters: the base model it was trained on


def resolve_source(spec: str, base: str | None = None) -> ModelSource:
    """What `spec` is: a GGUF file, an adapter dir (its base from adapter_config.json), a model dir, a hub id."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSourceError(f"{spec}: a model file must be a .gguf; otherwise pass the model's directory")
        return ModelSource("gguf", str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            chosen = base or recorded
            if not chosen:
                raise ModelSourceError(f"{spec}: adapter records no base model; pass --base")
            return ModelSource("adapter", str(path), base=chosen)
        if (path / "config.json").is_file():
            return ModelSource("local", str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(path), gguf_file=ggufs[0].name)
        raise ModelSourceError(f"{spec}: directory has no config.json, adapter_config.json or single .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelSourceError(f"{spec}: no such file or directory (and not a hub id of the form org/name)")
    return ModelSource("hub", spec)


def default_dtype():
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _quantization_config(quantization: Quantization, compute_dtype):
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelSourceError(f"{quantization} loading needs bitsandbytes: pip install 'looper-math[train]'") from exc
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _hub_kwargs(source: ModelSource) -> dict:
    """Offline (HF_HUB_OFFLINE=1, or no network) a hub id loads from the local cache only."""
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE") == "1" else {}


def _offline_hint(source: ModelSource, exc: Exception) -> ModelSourceError:
    return ModelSourceError(
        f"could not load {source.path!r} from the Hugging Face hub or its cache ({type(exc).__name__}: {exc}). "
        "Without hub access pass a local path instead: a model directory, a .gguf file, or a LoRA adapter dir."
    )


def load_tokenizer(spec: str, base: str | None = None):
    from transformers import AutoTokenizer

    source = resolve_source(spec, base)
    if source.kind == "adapter" and not (Path(source.path) / "tokenizer_config.json").is_file():
        return load_tokenizer(source.base)
    kwargs = {"gguf_file": source.gguf_file} if source.kind == "gguf" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs, **_hub_kwargs(source))
    except OSError as exc:
        raise _offline_hint(source, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str,
    *,
    base: str | None = None,
    quantization: Quantization = "none",
    dtype=None,
    device_map=None,
    trainable: bool = False,
):
    """A causal LM from any source; an adapter comes back as a PeftModel over its (possibly quantised) base."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(spec, base)
    dtype = dtype or default_dtype()
    if source.kind == "adapter":
        from peft import PeftModel

        base_model = load_model(source.base, quantization=quantization, dtype=dtype, device_map=device_map)
        if isinstance(base_model, PeftModel):  # an adapter trained on top of another (RL/DPO on SFT): stack them
            base_model = base_model.merge_and_unload()
        return PeftModel.from_pretrained(base_model, source.path, is_trainable=trainable)

    kwargs = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    quant = _quantization_config(quantization, dtype)
    if quant is not None:
        if source.kind == "gguf":
            raise ModelSourceError("quantise a GGUF model by first saving it as a model dir (looper convert)")
        kwargs["quantization_config"] = quant
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs, **_hub_kwargs(source))
    except OSError as exc:
        raise _offline_hint(source, exc) from None
    if source.kind == "gguf":
        # dequantised into plain nn.Linear, but still flagged as GGUF, which blocks saving and training
        model.hf_quantizer.remove_quantization_config(model)
        model.to(dtype)
    return model


def convert_to_dir(spec: str, output_dir: str | Path, dtype: str = "bfloat16", base: str | None = None) -> Path:
    """Save any loadable model (e.g. a GGUF file, dequantised) as a plain safetensors model dir.

    A LoRA adapter is folded into its base in fp32 and only then cast, so the saved weights round once (as
    TRL does before it loads LoRA weights into vLLM)."""
    import torch

    out = Path(output_dir)
    target = getattr(torch, dtype)
    adapter = resolve_source(spec, base).kind == "adapter"
    model = load_model(spec, base=base, dtype=torch.float32 if adapter else target)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.to(target).save_pretrained(out, safe_serialization=True)
    load_tokenizer(spec, base).save_pretrained(out)
    return out
