"""LoRA adapters stacked on the SFT model: load the policy for a new LoRA, and fold two LoRAs into one.

DPO and RL train a new LoRA on the SFT model. When the SFT model is itself a LoRA adapter, it is merged
into its base in memory (the frozen reference is then the SFT model), and the stage's output is one LoRA
over the original base equal to SFT + new LoRA, which every loader, merge and vLLM take as it is.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("looper.adapters")


def load_policy(model_spec: str, base: str | None = None, quantization: str = "none"):
    """The SFT model as a plain model (an adapter merged into its base in memory) and how it was given."""
    import torch

    from looper_common.modeling import load_model, resolve_source

    source = resolve_source(model_spec, base)
    device_map = None
    if torch.cuda.is_available():
        from accelerate import PartialState

        # one whole copy per process, loaded straight onto its GPU: a quantised model must be, and a bf16 8B
        # one otherwise goes through host memory first (16 GB, most of a minute)
        device_map = {"": PartialState().local_process_index}
    model = load_model(model_spec, base=base, quantization=quantization, device_map=device_map)
    if source.kind == "adapter":
        if quantization != "none":
            log.warning("merging the SFT adapter into a %s base rounds it", quantization)
        model = model.merge_and_unload()
    return model, source


def _lora_parts(adapter_dir: Path) -> tuple[dict, dict[str, dict]]:
    """(adapter_config, {module: {"A", "B", "scaling"}}) of a plain LoRA adapter dir."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    unsupported = [
        key
        for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform")
        if config.get(key)
    ]
    if config.get("peft_type") != "LORA" or unsupported:
        raise ValueError(
            f"{adapter_dir}: only plain LoRA adapters can be folded (found {config.get('peft_type')} "
            f"{', '.join(unsupported)}); merge the SFT adapter first (looper merge) and run DPO on the merged dir"
        )
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    modules: dict[str, dict] = {}
    for key, tensor in state.items():
        for part in ("A", "B"):
            suffix = f".lora_{part}.weight"
            if key.endswith(suffix):
                modules.setdefault(key[: -len(suffix)], {})[part] = tensor
                break
        else:
            raise ValueError(f"{adapter_dir}: unexpected tensor {key} in a LoRA adapter; merge it first (looper merge)")
    for module in modules.values():
        rank = module["A"].shape[0]
        alpha = config["lora_alpha"]
        module["scaling"] = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return config, modules


def fold_adapters(sft_dir: Path, new_dir: Path, out: Path, base: str) -> dict:
    """One LoRA over `base` equal to SFT LoRA + new LoRA: A = [A_sft; A_new], B = [s_sft B_sft, s_new B_new].

    B A = s_sft B_sft A_sft + s_new B_new A_new exactly, with scaling alpha/r = 1. A module only one adapter
    targets gets zero rows/columns for the other.
    """
    import torch
    from safetensors.torch import save_file

    sft_config, sft = _lora_parts(sft_dir)
    new_config, new = _lora_parts(new_dir)
    r_sft = {m["A"].shape[0] for m in sft.values()}
    r_new = {m["A"].shape[0] for m in new.values()}
    if len(r_sft) != 1 or len(r_new) != 1:
        raise ValueError("folding needs one rank per adapter; merge the SFT adapter first (looper merge)")
    rs, rd = r_sft.pop(), r_new.pop()
    state = {}
    for name in sorted(set(sft) | set(new)):
        ref = sft.get(name) or new[name]
        dtype = torch.float32
        fan_in, fan_out = ref["A"].shape[1], ref["B"].shape[0]
        parts_a, parts_b = [], []
        for adapter, rank in ((sft.get(name), rs), (new.get(name), rd)):
            if adapter is None:
                parts_a.append(torch.zeros(rank, fan_in, dtype=dtype))
                parts_b.append(torch.zeros(fan_out, rank, dtype=dtype))
            else:
                parts_a.append(adapter["A"].to(dtype))
                parts_b.append(adapter["B"].to(dtype) * adapter["scaling"])
        state[f"{name}.lora_A.weight"] = torch.cat(parts_a, dim=0).contiguous()
        state[f"{name}.lora_B.weight"] = torch.cat(parts_b, dim=1).contiguous()
    targets = sorted(_targets(sft_config, new_config))
    config = {
        **new_config,
        "r": rs + rd,
        "lora_alpha": rs + rd,
        "use_rslora": False,
        "target_modules": targets,
        "base_model_name_or_path": base,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"sft_rank": rs, "new_rank": rd, "rank": rs + rd, "modules": len(state) // 2, "base": base}


def _targets(*configs: dict) -> set[str]:
    targets: set[str] = set()
    for config in configs:
        modules = config.get("target_modules") or []
        if isinstance(modules, str):
            raise ValueError("folding needs target_modules as a list of names; merge the SFT adapter first")
        targets |= set(modules)
    return targets


def save_stacked_adapter(trainer, out: Path, source, delta_name: str) -> dict | None:
    """Save the trained LoRA as the stage's adapter. Trained on an SFT adapter (merged in memory), the bare
    LoRA goes to out/delta_name recorded over that SFT adapter, and out holds the fold over the base."""
    if source.kind != "adapter":
        trainer.save_model(str(out))
        return None
    delta = out / delta_name
    trainer.save_model(str(delta))
    if not trainer.is_world_process_zero():
        return None
    delta_config = json.loads((delta / "adapter_config.json").read_text())
    delta_config["base_model_name_or_path"] = str(source.path)
    (delta / "adapter_config.json").write_text(json.dumps(delta_config, indent=2) + "\n")
    return fold_adapters(Path(source.path), delta, out, base=source.base)
