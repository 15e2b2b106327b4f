"""QLoRA / LoRA supervised fine-tuning on (question, solution) records with TRL's SFTTrainer.

Loss only on the solution tokens; the prompt is the project's one prompt format (shared_schemas.prompts).
Output: a LoRA adapter dir with its tokenizer, a run manifest and per-step metrics; interrupted runs
resume from their last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from looper_common.config import help_text
from shared_schemas.prompts import build_prompt, solution_target
from trainer.data import read_jsonl

log = logging.getLogger("looper.sft")

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PRESETS = {"default": {"lora_r": 64, "lora_alpha": 16}, "aggressive": {"lora_r": 128, "lora_alpha": 32}}


@dataclass
class LoRATraining:
    """The training settings SFT and rejection-sampling SFT share (one trainer runs both)."""

    preset: Literal["default", "aggressive"] = field(
        default="default", metadata=help_text("LoRA size: default r=64 alpha=16; aggressive r=128 alpha=32")
    )
    lora_r: int | None = field(default=None, metadata=help_text("overrides the preset"))
    lora_alpha: int | None = field(default=None, metadata=help_text("overrides the preset"))
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    quantization: Literal["none", "4bit", "8bit"] = field(
        default="none", metadata=help_text("QLoRA: 4bit NF4 or 8bit base via bitsandbytes")
    )
    learning_rate: float = 5e-5
    num_train_epochs: float = 1.0
    max_steps: int = field(default=-1, metadata=help_text("stop after this many optimizer steps (-1: epochs decide)"))
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    max_length: int = 1024
    warmup_steps: float = field(default=0.03, metadata=help_text("warmup: steps if >= 1, else a fraction of all steps"))
    lr_scheduler_type: str = "linear"
    seed: int = field(default=0, metadata=help_text("training seed (RFT: also the any_correct shuffle)"))
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    max_nonfinite_steps: int = field(default=10, metadata=help_text("abort after more skipped non-finite steps"))
    report_to: str = field(default="none", metadata=help_text("none, tensorboard or wandb"))

    def __post_init__(self):
        preset = PRESETS[self.preset]
        self.lora_r = self.lora_r or preset["lora_r"]
        self.lora_alpha = self.lora_alpha or preset["lora_alpha"]


@dataclass
class SFTStageConfig(LoRATraining):
    model: str = field(default="", metadata=help_text("base model: hub id, local dir or .gguf file"))
    train_file: str = field(default="", metadata=help_text("JSONL of {id, question, answer}"))
    output_dir: str = field(default="runs/sft", metadata=help_text("adapter, tokenizer, manifest and checkpoints"))
    eval_file: str | None = field(default=None, metadata=help_text("optional JSONL scored for eval loss"))
    max_examples: int | None = field(default=None, metadata=help_text("use only the first N records"))

    def __post_init__(self):
        super().__post_init__()
        if not self.model or not self.train_file:
            raise ValueError("model and train_file are required")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
    }


def prompt_completion_rows(records: list[dict], tokenizer) -> list[dict]:
    return [
        {"prompt": build_prompt(r["question"], tokenizer), "completion": solution_target(r["answer"])} for r in records
    ]


def lora_config(config):
    """A LoRA of the config's size (r, alpha, dropout, target modules): every stage that trains one."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )


def training_precision() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": False}
    return {"bf16": False, "fp16": False, "use_cpu": True}


def stage_training_args(config_class, config, output_dir: str) -> dict:
    """The TrainingArguments fields every stage sets alike from its config: schedule size, seed, logging,
    checkpoint saving, precision and activation checkpointing."""
    return dict(
        output_dir=output_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=config.report_to,
        logging_nan_inf_filter=False,
        **checkpointing(config_class, config.gradient_checkpointing),
        **training_precision(),
    )


def checkpointing(config_class, enabled: bool) -> dict:
    """TRL turns activation checkpointing on unless told; transformers renamed the flag in 5.2x
    (gradient_checkpointing -> activation_checkpointing), so say it in the installed version's words."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def run_sft(config: SFTStageConfig, callbacks=()) -> Path:
    """`callbacks` run before the non-finite guard at every event (tests inject NaN gradients this way)."""
    from looper_common.modeling import load_tokenizer

    records = read_jsonl(config.train_file)[: config.max_examples]
    tokenizer = load_tokenizer(config.model)
    evaluation = None
    if config.eval_file:
        evaluation = prompt_completion_rows(read_jsonl(config.eval_file), tokenizer)
    manifest = {
        "stage": "sft",
        "config": dataclasses.asdict(config),
        "train_file_sha256": file_sha256(config.train_file),
        "examples": len(records),
    }
    return train_prompt_completion(
        config, tokenizer, prompt_completion_rows(records, tokenizer), manifest, evaluation, callbacks=callbacks
    )


def train_prompt_completion(
    config,
    tokenizer,
    rows: list[dict],
    manifest: dict,
    eval_rows: list[dict] | None = None,
    *,
    callbacks=(),
    policy=None,
) -> Path:
    """The SFT trainer on {prompt, completion} rows (loss on the completion only); SFT and RFT share it.

    `config` has SFTStageConfig's training fields. `policy` is None (load `config.model`, save the LoRA as it
    is: SFT) or `trainer.adapters.load_policy`'s (model, source): an adapter policy is merged in memory and
    the new LoRA is saved folded over its base, as DPO and RL do. `manifest` gets the training results.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from looper_common.modeling import load_model
    from trainer.callbacks import JsonlMetrics, NonFiniteGuard, assert_finite_weights, last_complete_checkpoint

    out = Path(config.output_dir)
    checkpoints = out / "checkpoints"
    if policy is None:
        model, source = load_model(config.model, quantization=config.quantization), None
    else:
        model, source = policy
    train = Dataset.from_list(rows)
    evaluation = Dataset.from_list(eval_rows) if eval_rows is not None else None

    args = SFTConfig(
        **stage_training_args(SFTConfig, config, str(checkpoints)),
        max_length=config.max_length,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        completion_only_loss=True,
        eval_strategy="epoch" if evaluation is not None else "no",
    )
    guard = NonFiniteGuard(config.max_nonfinite_steps)
    out.mkdir(parents=True, exist_ok=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=[*callbacks, guard, JsonlMetrics(out / "metrics.jsonl")],
    )
    resume = last_complete_checkpoint(checkpoints)
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)

    assert_finite_weights(trainer.model)
    if source is None:
        trainer.model.save_pretrained(out)
    else:
        from trainer.adapters import save_stacked_adapter

        manifest["model_source"] = {"kind": source.kind, "path": source.path, "base": source.base}
        manifest["folded"] = save_stacked_adapter(trainer, out, source, f"{manifest['stage']}_delta")
    tokenizer.save_pretrained(out)
    manifest = {
        **manifest,
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "nonfinite_skipped": guard.skipped,
        "resumed_from": resume,
        "versions": versions(),
    }
    (out / "looper_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
