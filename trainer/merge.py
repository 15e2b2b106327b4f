"""Fold a LoRA adapter into its base: a full checkpoint, verified by equal logits on a probe batch."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PROBE_QUESTIONS = (
    "Tom has 3 bags with 4 apples each. He eats 2 apples. How many apples are left?",
    "A shirt costs $20 and is 25% off. What is the sale price?",
)


@dataclass
class MergeConfig:
    adapter: str = field(default="", metadata={"help": "LoRA adapter dir"})
    output_dir: str = field(default="runs/merged", metadata={"help": "where the full checkpoint goes"})
    base: str | None = field(default=None, metadata={"help": "base model (default: the adapter's recorded base)"})
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    tolerance: float = field(default=1e-3, metadata={"help": "max |logit difference| merged vs adapter, in fp32"})

    def __post_init__(self):
        if not self.adapter:
            raise ValueError("adapter is required")


class MergeMismatch(RuntimeError):
    pass


def _max_logit_diff(a, b, mask) -> float:
    return float(((a - b).abs() * mask[..., None]).max())


def merge_adapter(config: MergeConfig) -> Path:
    import torch

    from looper_common.modeling import load_model, load_tokenizer, resolve_source
    from shared_schemas.prompts import build_prompt

    source = resolve_source(config.adapter, config.base)
    if source.kind != "adapter":
        raise ValueError(f"{config.adapter} is not a LoRA adapter dir (no adapter_config.json)")
    tokenizer = load_tokenizer(config.adapter, config.base)
    # merge in fp32 so the check measures the merge, not rounding; cast only for saving
    model = load_model(config.adapter, base=config.base, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    probe = tokenizer([build_prompt(q, tokenizer) for q in PROBE_QUESTIONS], return_tensors="pt", padding=True)
    probe = {k: v.to(model.device) for k, v in probe.items()}
    with torch.no_grad():
        adapter_logits = model(**probe).logits
        merged = model.merge_and_unload()
        merged_logits = merged(**probe).logits
    diff = _max_logit_diff(adapter_logits, merged_logits, probe["attention_mask"])
    if diff > config.tolerance:
        raise MergeMismatch(f"merged logits differ from adapter logits by {diff:.2e} > {config.tolerance:.0e}")

    out = Path(config.output_dir)
    target_dtype = getattr(torch, config.dtype)
    merged.to(target_dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out)

    # the saved checkpoint must reload to exactly what was merged (in its own dtype)
    reloaded = load_model(str(out), dtype=target_dtype).eval()
    with torch.no_grad():
        saved_diff = _max_logit_diff(merged(**probe).logits, reloaded(**probe).logits, probe["attention_mask"])
    if saved_diff > 0:
        raise MergeMismatch(f"reloaded checkpoint differs from the merged model by {saved_diff:.2e}")
    manifest = {
        "stage": "merge",
        "config": dataclasses.asdict(config),
        "base": source.base,
        "max_logit_diff_fp32": diff,
        "reload_logit_diff": saved_diff,
    }
    (out / "looper_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
