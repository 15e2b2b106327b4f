"""QLoRA SFT peak GPU memory and step time for an 8B-shaped model with random weights (no download).

    python bench/qlora_memory_bench.py [--lora-ranks 16,64] [--checkpointing on,off] [--seq-lens 512,1024,2048]
        [--batch-sizes 1,4,8] [--steps 3] [--timing-warmup 1]
        [--hidden 4096 --layers 32 --heads 32 --kv-heads 8 --intermediate 14336 --vocab 128256]

The model: Llama-3-8B's shape (the defaults above; --hidden, --layers, ... override it) built on the meta
device, then materialised layer by layer on the GPU: every linear layer of the decoder blocks is a
bitsandbytes `Linear4bit` whose random bf16 weight (N(0, 0.02)) is quantised to NF4 with double quantisation
and bf16 compute (the settings of `looper_common.modeling`'s 4bit loading) right after it is drawn, so at most one
bf16 matrix exists at a time; embeddings, norms and the LM head stay bf16, as `from_pretrained` with a
BitsAndBytesConfig leaves them. Nothing is written to disk and no full bf16 copy is ever made. The model is
flagged as a 4-bit bitsandbytes model, so TRL and the Trainer treat it as one (bf16 LoRA, no `.to()`).

Training: the project's SFT path, `trainer.sft.train_prompt_completion` with an `SFTStageConfig` (LoRA of the
given rank on all seven linear projections, `lora_alpha` 16, TRL's SFTTrainer, the stage's guards), on
pre-tokenised rows of exactly --seq-lens random tokens (loss on the last three quarters, like a completion).
Each grid point is one short run: --timing-warmup + --steps optimizer steps, micro-batch = batch size, no
gradient accumulation; the LoRA is removed from the model afterwards and the next point starts from the same
quantised model. Step time: median over the --steps timed steps (CUDA synchronised); tokens/s = batch x
seq len / step time. Memory: weight memory = allocated after building the model; peak allocated / reserved
= torch.cuda.max_memory_allocated / max_memory_reserved over the run (reset before it). A point that runs
out of memory is reported as OOM and the grid goes on.

On a CPU (bitsandbytes 0.50 does NF4 there) the default shape is tiny, so the script runs anywhere in
seconds; memory is then the process's peak RSS so far (it only grows), not per point. Prints a table and
writes bench/results/qlora_memory_bench.json.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from looper_common.random_init import SHAPES, llama_config

LLAMA3_8B, TINY = SHAPES["llama-3-8b"], SHAPES["tiny-llama"]


# --- the model ---------------------------------------------------------------------------------------------


def build_qlora_model(config, device, dtype, seed: int = 0):
    """A random-weight causal LM whose decoder linears are NF4 `Linear4bit`, built one matrix at a time."""
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    from looper_common.modeling import _quantization_config

    quant = _quantization_config("4bit", dtype)  # the project's QLoRA settings: NF4, double quant, compute dtype
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child is model.get_output_embeddings():
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=quant.bnb_4bit_compute_dtype, compress_statistics=quant.bnb_4bit_use_double_quant,
                quant_type=quant.bnb_4bit_quant_type, quant_storage=torch.uint8, device="meta",
            )  # fmt: skip
            weight = torch.empty(child.out_features, child.in_features, dtype=dtype, device=device).normal_(0, 0.02)
            layer.weight = bnb.nn.Params4bit(
                weight,
                requires_grad=False,
                compress_statistics=quant.bnb_4bit_use_double_quant,
                quant_type=quant.bnb_4bit_quant_type,
                quant_storage=torch.uint8,
                module=layer,
            ).to(device)  # quantised here; the bf16 matrix is freed
            if child.bias is not None:
                layer.bias = nn.Parameter(torch.zeros(child.out_features, dtype=dtype, device=device))
            setattr(parent, name, layer)
            del weight

    for module in model.modules():  # what is still on the meta device: embeddings, norms, the LM head
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                value = torch.empty(param.shape, dtype=dtype, device=device)
                value.fill_(1.0) if "norm" in type(module).__name__.lower() else value.normal_(0, 0.02)
                setattr(module, name, nn.Parameter(value, requires_grad=False))
    rotary = model.model.rotary_emb
    with torch.device(device):  # its inverse frequencies are computed at construction
        model.model.rotary_emb = type(rotary)(config)
    leftovers = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if leftovers:
        raise RuntimeError(f"still on the meta device: {leftovers[:5]}")

    # what `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))` marks a model with
    model.is_loaded_in_4bit = True
    model.quantization_method = "bitsandbytes"
    model.config.quantization_config = quant
    model.eval()
    return model


def parameter_counts(model) -> dict:
    import bitsandbytes as bnb

    quantised = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    other = sum(p.numel() for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit))
    return {"params_quantised": quantised, "params_bf16": other, "params": quantised + other}


# --- one grid point -------------------------------------------------------------------------------------------


class StepClock:
    """TrainerCallback-like timer of optimizer steps; also keeps the trained (PEFT) model to unload it after."""

    def __init__(self, sync):
        self.sync, self.steps, self.model, self._start = sync, [], None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

    def on_step_begin(self, args, state, control, **kwargs):
        self.sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.sync()
        self.steps.append(time.perf_counter() - self._start)


def as_callback(clock):
    from transformers import TrainerCallback

    class Clock(StepClock, TrainerCallback):
        pass

    callback = Clock(clock.sync)
    return callback


def random_rows(n: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    """Pre-tokenised rows of exactly seq_len tokens; the loss covers the last three quarters."""
    rng = random.Random(seed)
    prompt = seq_len // 4
    mask = [0] * prompt + [1] * (seq_len - prompt)
    return [{"input_ids": [rng.randrange(1, vocab) for _ in range(seq_len)], "completion_mask": mask} for _ in range(n)]


def run_point(model, tokenizer, point: dict, args, device) -> dict:
    """One short SFT run through the project's trainer; the model comes back without its LoRA."""
    import torch

    from trainer.sft import SFTStageConfig, train_prompt_completion

    on_cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    out = Path(tempfile.mkdtemp(prefix="qlora_bench_"))
    steps = args.timing_warmup + args.steps
    config = SFTStageConfig(
        model="random-weights", train_file="unused", output_dir=str(out),
        lora_r=point["lora_r"], lora_alpha=16, lora_dropout=0.0,
        per_device_train_batch_size=point["batch_size"], gradient_accumulation_steps=1,
        max_length=point["seq_len"], max_steps=steps, warmup_steps=0, logging_steps=1000, save_steps=100_000,
        gradient_checkpointing=point["checkpointing"],
    )  # fmt: skip
    rows = random_rows(point["batch_size"] * steps, point["seq_len"], model.config.vocab_size, args.seed)
    clock = as_callback(StepClock(sync))
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = {**point}
    try:
        train_prompt_completion(
            config, tokenizer, rows, {"stage": "qlora-bench"}, callbacks=[clock], policy=(model, None)
        )
        timed = clock.steps[args.timing_warmup :]
        step_s = statistics.median(timed)
        result.update(
            status="ok",
            step_s=step_s,
            tokens_per_s=point["batch_size"] * point["seq_len"] / step_s,
            trainable_params=sum(p.numel() for p in clock.model.parameters() if p.requires_grad),
        )
    except torch.OutOfMemoryError:
        result["status"] = "OOM"
    finally:
        if on_cuda:
            result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        else:
            result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        restore(model)
        shutil.rmtree(out, ignore_errors=True)
    return result


def restore(model) -> None:
    """Take the LoRA layers and training hooks off the shared base model, so the next point starts clean
    (what PeftModel.unload does, and also after a run that failed half-way)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config
    # transformers 5.2x renamed gradient -> activation checkpointing (5.17 has only the old names)
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    try:
        model.disable_input_require_grads()
    except AttributeError:
        pass  # never enabled
    gc.collect()


# --- main -------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    import torch

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    def switches(text: str) -> list[bool]:
        values = {"on": True, "off": False, "true": True, "false": False}
        return [values[x.strip().lower()] for x in text.split(",") if x.strip()]

    on_cuda = torch.cuda.is_available()
    shape = LLAMA3_8B if on_cuda else TINY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=shape["hidden"])
    parser.add_argument("--layers", type=int, default=shape["layers"])
    parser.add_argument("--heads", type=int, default=shape["heads"])
    parser.add_argument("--kv-heads", type=int, default=shape["kv_heads"])
    parser.add_argument("--intermediate", type=int, default=shape["intermediate"])
    parser.add_argument("--vocab", type=int, default=shape["vocab"])
    parser.add_argument("--lora-ranks", type=ints, default=[16, 64], help="comma-separated")
    parser.add_argument("--checkpointing", type=switches, default=[True, False], help="on,off")
    parser.add_argument("--seq-lens", type=ints, default=[512, 1024, 2048] if on_cuda else [64, 128])
    parser.add_argument("--batch-sizes", type=ints, default=[1, 4, 8] if on_cuda else [1, 2])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per point")
    parser.add_argument("--timing-warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0 if on_cuda else 1, help="torch CPU threads (0: default)")
    parser.add_argument("--out", default="bench/results/qlora_memory_bench.json")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def grid(args) -> list[dict]:
    """Every point, cheapest first within a LoRA rank and checkpointing setting."""
    return [
        {"lora_r": r, "checkpointing": c, "seq_len": s, "batch_size": b}
        for r, c, s, b in itertools.product(args.lora_ranks, args.checkpointing, args.seq_lens, args.batch_sizes)
    ]


def main(argv=None) -> dict:
    import torch
    import transformers

    from looper.tiny_model import build_tokenizer

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    shape = {k: getattr(args, k) for k in LLAMA3_8B}
    config = llama_config(shape, max(args.seq_lens), dtype)

    start = time.perf_counter()
    model = build_qlora_model(config, device, dtype, args.seed)
    build_s = time.perf_counter() - start
    weights_gib = torch.cuda.memory_allocated() / 2**30 if on_cuda else None
    counts = parameter_counts(model)
    tokenizer = build_tokenizer(256)  # only its pad token is used: the rows are already token ids
    console = Console(width=140)
    console.print(
        f"built {counts['params'] / 1e9:.2f}B params ({counts['params_quantised'] / 1e9:.2f}B NF4) in {build_s:.1f}s"
        + (f", weights {weights_gib:.2f} GiB" if weights_gib is not None else "")
    )

    results = []
    for point in grid(args):
        row = run_point(model, tokenizer, point, args, device)
        results.append(row)
        console.print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})

    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    shape_text = ", ".join(f"{k} {v}" for k, v in shape.items())
    table = Table(title=f"QLoRA SFT (NF4 double quant, {args.dtype} compute), {shape_text}, {device_name}")
    columns = ["LoRA r", "ckpt", "seq", "batch", "status", "step s", "tokens/s"]
    columns += ["peak alloc GiB", "peak reserved GiB"] if on_cuda else ["peak RSS GiB (process)"]
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        ok = r["status"] == "ok"
        memory = (
            [f"{r['peak_allocated_gib']:.1f}", f"{r['peak_reserved_gib']:.1f}"]
            if on_cuda
            else [f"{r['peak_rss_gib']:.2f}"]
        )
        table.add_row(
            str(r["lora_r"]), "on" if r["checkpointing"] else "off", str(r["seq_len"]), str(r["batch_size"]),
            r["status"], f"{r['step_s']:.3f}" if ok else "-", f"{r['tokens_per_s']:,.0f}" if ok else "-", *memory,
        )  # fmt: skip
    console.print(table)
    if weights_gib is not None:
        console.print(f"weight memory alone (quantised model, before training): {weights_gib:.2f} GiB")

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("trl", "peft", "accelerate", "bitsandbytes"):
        versions[name] = importlib.metadata.version(name)
    result = {
        "device": device_name,
        "shape": shape,
        "dtype": args.dtype,
        "quantization": "nf4, double quant",
        **counts,
        "build_s": build_s,
        "weight_memory_gib": weights_gib,
        "steps": args.steps,
        "timing_warmup": args.timing_warmup,
        "versions": versions,
        "rows": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
