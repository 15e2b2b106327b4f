"""DPO with LoRA on the SFT model (TRL DPOTrainer); the reference is the frozen SFT model.

The SFT model may be a base/merged dir, a hub id or a LoRA adapter dir. An adapter is merged into its base in
memory first, so the SFT model is the base of the new DPO LoRA and the reference is that same model with the
DPO adapter disabled (TRL does this when given a `peft_config` and no `ref_model`: no second copy of the
weights).

Guards (SPEC 5: a DPO run once finished without moving the weights):
- NonFiniteGuard: steps with NaN/inf gradients are skipped and counted; past a limit the run aborts.
- ZeroGradientGuard: the first `zero_grad_steps` optimizer steps all with an all-zero gradient abort the run.
- After training, trainable weights equal to their initial values (LoRA B still zero) raise
  AdapterUnchangedError; non-finite weights raise NonFiniteError. Nothing is saved in either case.

Output: a LoRA adapter dir loadable by every stage (`looper_common.modeling.load_model`), its tokenizer,
`looper_manifest.json` (config, pairs sha256, pairs by type, versions, first/last logged metrics) and
`metrics.jsonl` (loss, grad norm, rewards/chosen|rejected|margins|accuracies, logps, learning rate).
When the SFT model was an adapter, the saved adapter is the *fold* of the SFT LoRA and the DPO LoRA into one
LoRA over the original base (ranks concatenated, so base + adapter = base + SFT delta + DPO delta exactly);
the bare DPO LoRA, whose base is the merged SFT model, is kept in `dpo_delta/`. Reruns resume from the last
checkpoint in `<output_dir>/checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from looper_common.config import help_text
from trainer.adapters import load_policy, save_stacked_adapter
from trainer.sft import LORA_TARGETS, file_sha256, lora_config, stage_training_args, versions

log = logging.getLogger("looper.dpo")

LOGGED = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


@dataclass
class DPOStageConfig:
    model: str = field(default="", metadata=help_text("the SFT model: LoRA adapter dir, merged/base dir or hub id"))
    pairs_file: str = field(default="", metadata=help_text("preference pairs JSONL written by `looper prefs`"))
    output_dir: str = field(default="runs/dpo", metadata=help_text("adapter, tokenizer, manifest and checkpoints"))
    base: str | None = field(default=None, metadata=help_text("base model of an adapter (default: its recorded base)"))
    pair_types: list[str] = field(
        default_factory=lambda: ["correctness", "coherence"], metadata=help_text("train on these pair types only")
    )
    max_pairs: int | None = field(default=None, metadata=help_text("use only the first N pairs"))
    lora_r: int = field(default=16, metadata=help_text("rank of the DPO LoRA"))
    lora_alpha: int = field(default=32, metadata=help_text("LoRA alpha (scaling alpha/r = 2)"))
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    quantization: Literal["none", "4bit", "8bit"] = field(
        default="none", metadata=help_text("QLoRA: 4bit NF4 or 8bit base via bitsandbytes")
    )
    learning_rate: float = field(default=5e-5, metadata=help_text("5e-6 x 1 epoch did not move the weights (SPEC 5)"))
    num_train_epochs: float = 3.0
    max_steps: int = field(default=-1, metadata=help_text("stop after this many optimizer steps (-1: epochs decide)"))
    per_device_train_batch_size: int = field(default=2, metadata=help_text("pairs per device per micro-batch"))
    gradient_accumulation_steps: int = 2
    beta: float = field(default=0.1, metadata=help_text("DPO beta: strength of the pull towards the reference"))
    loss_type: str = field(
        default="sigmoid", metadata=help_text("TRL DPO loss: sigmoid (DPO), ipo, hinge, robust, ...")
    )
    max_length: int = field(default=1024, metadata=help_text("prompt + completion tokens; longer is truncated"))
    precompute_ref_log_probs: bool = field(
        default=False, metadata=help_text("compute reference log-probs once before training")
    )
    warmup_steps: float = field(default=0.1, metadata=help_text("warmup: steps if >= 1, else a fraction of all steps"))
    lr_scheduler_type: str = "linear"
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    max_nonfinite_steps: int = field(default=10, metadata=help_text("abort after more skipped non-finite steps"))
    zero_grad_steps: int = field(
        default=3, metadata=help_text("abort if the first N optimizer steps all have a zero gradient (0: off)")
    )
    report_to: str = field(default="none", metadata=help_text("none, tensorboard or wandb"))

    def __post_init__(self):
        if not self.model or not self.pairs_file:
            raise ValueError("model and pairs_file are required")
        unknown = sorted(set(self.pair_types) - {"correctness", "coherence"})
        if unknown or not self.pair_types:
            raise ValueError(f"pair_types must be a non-empty subset of correctness, coherence; got {self.pair_types}")


class ZeroGradientError(RuntimeError):
    pass


class AdapterUnchangedError(RuntimeError):
    pass


class ZeroGradientChecks:
    """Abort when the first `steps` optimizer steps all had an all-zero gradient: such a run cannot learn.

    Reads the trainable parameters' gradients before each optimizer step (before NonFiniteGuard may drop
    them); where a launcher keeps gradients out of `.grad` (DeepSpeed), it reads the logged grad norm instead.
    Disarms at the first non-zero gradient. `zero_gradient_guard(steps)` makes it a TrainerCallback.
    """

    def __init__(self, steps: int):
        self.steps = steps
        self.zero = 0
        self.armed = steps > 0
        self.saw_grads = False

    def _observe(self, norm: float, step: int) -> None:
        if not math.isfinite(norm):
            return  # NonFiniteGuard's business
        if norm > 0:
            self.armed = False
            return
        self.zero += 1
        if self.zero >= self.steps:
            raise ZeroGradientError(
                f"the gradient was exactly zero in each of the first {self.zero} optimizer steps (up to step {step}): "
                "this DPO run cannot change the adapter. Check that the LoRA parameters are trainable, that beta > 0, "
                "and that chosen and rejected texts differ. Nothing was saved."
            )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.armed or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        self.saw_grads = True
        norm = float(sum(g.detach().float().pow(2).sum() for g in grads)) ** 0.5
        self._observe(norm, state.global_step + 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.armed and not self.saw_grads and logs and logs.get("grad_norm") is not None:
            self._observe(float(logs["grad_norm"]), state.global_step)


def zero_gradient_guard(steps: int):
    """A ZeroGradientChecks TrainerCallback (transformers is imported here, so `import trainer.dpo` stays light)."""
    from transformers import TrainerCallback

    class ZeroGradientGuard(ZeroGradientChecks, TrainerCallback):
        pass

    return ZeroGradientGuard(steps)


def trainable_snapshot(model) -> dict:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def adapter_change(model, snapshot: dict) -> dict:
    """How far the trainable weights moved from `snapshot`; raises AdapterUnchangedError if not at all."""
    import torch

    now = {n: p.detach().float().cpu() for n, p in model.named_parameters() if n in snapshot}
    deltas = {n: now[n] - snapshot[n] for n in snapshot}
    changed = [n for n, d in deltas.items() if bool(d.abs().max() > 0)]
    lora_b = [now[n] for n in now if "lora_B" in n]
    report = {
        "tensors": len(snapshot),
        "tensors_changed": len(changed),
        "max_abs_change": max((float(d.abs().max()) for d in deltas.values()), default=0.0),
        "delta_norm": float(torch.sqrt(sum((d.pow(2).sum() for d in deltas.values()), torch.tensor(0.0)))),
        "lora_B_norm": float(torch.sqrt(sum((b.pow(2).sum() for b in lora_b), torch.tensor(0.0)))),
    }
    if not changed or (lora_b and report["lora_B_norm"] == 0):
        raise AdapterUnchangedError(
            f"the adapter's weights are unchanged after training ({report['tensors']} trainable tensors, "
            f"{report['tensors_changed']} changed, LoRA B norm {report['lora_B_norm']:.3g}): refusing to save. "
            "Raise the learning rate or the number of steps (LR 5e-6 x 1 epoch did not move a DPO LoRA), "
            "and check the logged grad norms."
        )
    return report


# --- the pairs -------------------------------------------------------------------------------------


def read_pairs(path: str | Path) -> list:
    """Validated pairs of a preference-pairs JSONL file (`read_rows`: a torn last line is skipped)."""
    from looper_common.jsonl import read_rows
    from shared_schemas.models import PreferencePair

    return read_rows(path, PreferencePair.model_validate_json, "preference pair")


def check_prompt_format(pairs: list, tokenizer, path: str | Path) -> None:
    """Every prompt must be build_prompt(question, this tokenizer): the string SFT trained on and eval uses."""
    from shared_schemas.prompts import build_prompt
    from trainer.data import DataError

    marker = "\x00QUESTION\x00"
    head, tail = build_prompt(marker, tokenizer).split(marker)
    bad = [p for p in pairs if not (p.prompt.startswith(head) and p.prompt.endswith(tail))]
    if bad:
        raise DataError(
            f"{path}: {len(bad)} of {len(pairs)} prompts were not rendered with this model's prompt format "
            f"(e.g. question {bad[0].question_id}); rebuild the pairs with `looper prefs --model <this model>`"
        )


# --- folding an SFT LoRA and a DPO LoRA into one ---------------------------------------------------------------


# --- the run ---------------------------------------------------------------------------------------


def _log_summary(history: list[dict]) -> dict:
    rows = [row for row in history if "loss" in row and "train_loss" not in row]
    summary = {}
    for key in LOGGED:
        values = [row[key] for row in rows if key in row]
        if values:
            summary[key] = {"first": values[0], "last": values[-1]}
    return summary


def dpo_training_args(config: DPOStageConfig, output_dir: str, **overrides):
    """TRL's DPOConfig for this stage (`overrides` replace any field: the bench turns saving off)."""
    from trl import DPOConfig

    fields = dict(
        **stage_training_args(DPOConfig, config, output_dir),
        beta=config.beta,
        loss_type=[config.loss_type],
        max_length=config.max_length,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type,
    )
    return DPOConfig(**{**fields, **overrides})


def run_dpo(config: DPOStageConfig, callbacks=()) -> Path:
    """`callbacks` run before the guards at every event (tests inject NaN gradients this way)."""
    from datasets import Dataset
    from trl import DPOTrainer

    from looper_common.modeling import load_tokenizer
    from trainer.callbacks import JsonlMetrics, NonFiniteGuard, assert_finite_weights, last_complete_checkpoint
    from trainer.data import DataError
    from trainer.prefs import why_no_pairs

    out = Path(config.output_dir)
    checkpoints = out / "checkpoints"
    all_pairs = read_pairs(config.pairs_file)
    pairs = [p for p in all_pairs if p.pair_type in config.pair_types][: config.max_pairs]
    if not pairs:
        why = why_no_pairs(config.pairs_file)
        raise DataError(f"{config.pairs_file}: no pairs of type {', '.join(config.pair_types)}{why}")
    tokenizer = load_tokenizer(config.model, config.base)
    check_prompt_format(pairs, tokenizer, config.pairs_file)
    model, source = load_policy(config.model, config.base, config.quantization)
    train = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])

    args = dpo_training_args(config, str(checkpoints))
    peft_config = lora_config(config)
    zero_guard = zero_gradient_guard(config.zero_grad_steps)
    nonfinite_guard = NonFiniteGuard(config.max_nonfinite_steps)
    out.mkdir(parents=True, exist_ok=True)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # with a peft_config: the reference is the same model with the adapter disabled
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config,
        # the zero-gradient guard must see the gradients before the non-finite guard may drop them
        callbacks=[*callbacks, zero_guard, nonfinite_guard, JsonlMetrics(out / "metrics.jsonl")],
    )
    if not any(p.requires_grad for p in trainer.model.parameters()):
        raise ZeroGradientError("no trainable parameters: the DPO LoRA is frozen; nothing to train")
    initial = trainable_snapshot(trainer.model)
    resume = last_complete_checkpoint(checkpoints)
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)

    assert_finite_weights(trainer.model)
    change = adapter_change(trainer.model, initial)
    fold = save_stacked_adapter(trainer, out, source, "dpo_delta")
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
        counts = Counter(p.pair_type for p in pairs)
        manifest = {
            "stage": "dpo",
            "config": dataclasses.asdict(config),
            "model_source": {"kind": source.kind, "path": source.path, "base": source.base},
            "pairs_file_sha256": file_sha256(config.pairs_file),
            "pairs": len(pairs),
            "pairs_by_type": {t: counts[t] for t in config.pair_types},
            "pairs_in_file": len(all_pairs),
            "train_loss": result.training_loss,
            "global_step": trainer.state.global_step,
            "metrics": _log_summary(trainer.state.log_history),
            "adapter_change": change,
            "folded": fold,
            "nonfinite_skipped": nonfinite_guard.skipped,
            "resumed_from": resume,
            "versions": versions(),
        }
        (out / "looper_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return out
