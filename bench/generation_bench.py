"""Generation speed of one model on one prompt set: plain HF `generate`, the tuned HF path and vLLM.

    python bench/generation_bench.py --model PATH [--backends plain,hf-tuned,vllm] [--batch-sizes 1,64,256]
        [--max-new-tokens 256] [--data-file test.jsonl] [--agreement 200] [--dtype float32] [--hbm-gbps 4800]

Backends, all through rollout_worker.engines:
- plain: `HFEngine` as rollouts use it by default, plain `model.generate` with a dynamic cache (the baseline);
- hf-tuned: `HFEngine(static_cache=True, torch_compile=...)`: static KV cache, bucketed shapes and, on CUDA,
  the decode step compiled into CUDA graphs;
- vllm: `VLLMEngine`, when vLLM is installed; built last, after the HF models are freed.

Every backend decodes greedily the same prompts (the project's prompt format over generated problems, or the
`question` field of --data-file, e.g. GSM8K-Platinum) for at most --max-new-tokens. At each batch size B, the
first B prompts go to the engine in one call, timed after one warm-up call of the same shapes (compilation and
CUDA graph capture are not timed). tokens/s is completion tokens over wall time, prefill included; rows stop at
their stop token, so a batch runs as long as its longest row.

Roofline: one decode step reads every weight once for the whole batch, so HBM bandwidth allows at most
B x bandwidth / weight bytes tokens/s (KV cache reads, prefill and compute ignored). --hbm-gbps is 4800 for an
H200 (the default), 3350 for an H100 SXM.

Agreement (--agreement N, 0 to skip): the first N prompts through every backend, greedy, against plain
`generate`: the fraction of identical completions and of identical final answers (parsed like the reward
service does). Exact agreement needs --dtype float32; in bf16 batched kernels differ in the last bits.

Without --model a tiny random-weight model is built (taught the answer format briefly), so the bench runs
anywhere. Prints tables and writes bench/results/generation_bench.json.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from looper_common.modeling import default_dtype, load_tokenizer, resolve_source
from rollout_worker.engines import GenerationRequest, make_engine
from shared_schemas.answers import extract_answer
from shared_schemas.prompts import build_prompt
from trainer.data import generated_records, read_jsonl

BACKENDS = ("plain", "hf-tuned", "vllm")  # run in this order: vLLM only once the HF models are freed


# --- pure helpers -------------------------------------------------------------------------------------


def decode_weight_bytes(model, bytes_per_param: int) -> int:
    """Bytes of weights one decode step reads: every parameter once, except an input embedding table that is
    not also the LM head (a step reads only its batch's rows of that)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    params = sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())
    return params * bytes_per_param


def roofline_tokens_per_s(batch_size: int, hbm_gbps: float, weight_bytes: int) -> float:
    return batch_size * hbm_gbps * 1e9 / weight_bytes


def agreement(reference: list[str], candidate: list[str]) -> dict:
    """Fractions of identical completions and of identical strict final answers (no answer on both: equal)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"need two equally long, non-empty lists, got {len(reference)} and {len(candidate)}")
    same_text = sum(a == b for a, b in zip(reference, candidate, strict=True))
    same_answer = sum(extract_answer(a) == extract_answer(b) for a, b in zip(reference, candidate, strict=True))
    return {
        "prompts": len(reference),
        "identical": same_text / len(reference),
        "same_answer": same_answer / len(reference),
    }


# --- the model, its prompts, its weight bytes ---------------------------------------------------------


def prompts_for(tokenizer, data_file: str | None, n: int) -> list[str]:
    """n prompts in the project's format; a data file shorter than n is cycled."""
    if data_file:
        questions = [row["question"] for row in read_jsonl(data_file, required=("question",))]
    else:
        questions = [r["question"] for r in generated_records(n, seed=123)]
    return [build_prompt(questions[i % len(questions)], tokenizer) for i in range(n)]


def weight_bytes_of(model: str, dtype: str) -> int:
    """From the model's config alone, on the meta device: nothing is loaded, whatever the backends.
    `dtype` is the weights' dtype (a torch name: bfloat16, float32, ...)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_source(model)
    path = source.base if source.kind == "adapter" else source.path
    config = AutoConfig.from_pretrained(path, **({"gguf_file": source.gguf_file} if source.kind == "gguf" else {}))
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(config)
    return decode_weight_bytes(meta_model, getattr(torch, dtype).itemsize)


# --- one backend --------------------------------------------------------------------------------------


def build_engine(backend: str, model: str, args):
    import torch

    if backend == "vllm":  # vLLM's CPU build has no CUDA graphs
        return make_engine("vllm", model, dtype=args.dtype, enforce_eager=not torch.cuda.is_available())
    # one engine call per batch size: B rows in one `generate`
    options = {"dtype": args.dtype, "max_batch_size": max(args.batch_sizes)}
    if backend == "hf-tuned":
        options.update(static_cache=True, torch_compile=args.torch_compile, length_bucket=args.length_bucket)
    return make_engine("hf", model, **options)


def timed_generate(engine, requests: list[GenerationRequest], repeats: int) -> dict:
    engine.generate(requests)  # warm-up with the same shapes: compilation and CUDA graph capture happen here
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        generations = engine.generate(requests)  # returns host-side text: the GPU work is done
        seconds.append(time.perf_counter() - start)
    tokens = sum(g.completion_tokens for g in generations)
    median = statistics.median(seconds)
    return {"tokens": tokens, "seconds": median, "tokens_per_s": tokens / median}


def run_backend(backend: str, model: str, prompts: list[str], args) -> tuple[list[dict], list[str]]:
    """Speed rows at every batch size, and the greedy completions of the first --agreement prompts."""
    engine = build_engine(backend, model, args)
    requests = [GenerationRequest(p, 0.0, 1.0, 0, args.max_new_tokens) for p in prompts]
    rows = []
    for batch_size in args.batch_sizes:
        row = {
            "backend": backend,
            "batch_size": batch_size,
            **timed_generate(engine, requests[:batch_size], args.repeats),
        }
        rows.append(row)
        Console().print(f"{backend} batch {batch_size}: {row['tokens_per_s']:.0f} tokens/s")
    completions = [g.text for g in engine.generate(requests[: args.agreement])] if args.agreement else []
    return rows, completions


def free_gpu_memory() -> None:
    """Drop the last engine's model, compiled graphs and cached blocks, so the next backend gets the GPU."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- main ---------------------------------------------------------------------------------------------


def parse_args():
    import torch

    def int_list(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model dir / hub id / adapter / .gguf; default: a tiny model built here")
    parser.add_argument("--data-file", help="JSONL with a `question` field (default: generated problems)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, of: " + ", ".join(BACKENDS))
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 64, 256], help="comma-separated")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (median reported)")
    parser.add_argument("--agreement", type=int, default=200, help="prompts compared with plain generate (0: skip)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--hbm-gbps", type=float, default=4800.0, help="GPU memory bandwidth: H200 4800, H100 3350")
    parser.add_argument(
        "--torch-compile",
        action=argparse.BooleanOptionalAction,
        default=torch.cuda.is_available(),
        help="hf-tuned: compile the decode step (CUDA only; default: on where CUDA is)",
    )
    parser.add_argument("--length-bucket", type=int, default=64, help="hf-tuned: prompts padded to a multiple of it")
    parser.add_argument("--out", default="bench/results/generation_bench.json")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown or not args.backends or not args.batch_sizes:
        parser.error(f"--backends takes {', '.join(BACKENDS)}; --batch-sizes at least one size")
    if "vllm" in args.backends and importlib.util.find_spec("vllm") is None:
        Console().print("vLLM is not installed here: the vllm backend is skipped")
        args.backends.remove("vllm")
    args.backends = [b for b in BACKENDS if b in args.backends]
    return args


def main() -> None:
    import torch
    import transformers

    args = parse_args()
    model = args.model
    if model is None:
        from looper.tiny_model import build_tiny_model, teach_format

        torch.set_num_threads(1)  # a tiny model gains nothing from threads, and they slow down a shared CPU
        model = str(teach_format(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"), steps=60))
    prompts = prompts_for(load_tokenizer(model), args.data_file, max([*args.batch_sizes, args.agreement]))
    # what "auto" loads in the HF engines (vLLM's "auto" takes the checkpoint's dtype: bf16 for most models)
    dtype = str(default_dtype()).removeprefix("torch.") if args.dtype == "auto" else args.dtype
    weight_bytes = weight_bytes_of(model, dtype)

    rows, completions = [], {}
    for backend in args.backends:
        backend_rows, completions[backend] = run_backend(backend, model, prompts, args)
        rows += backend_rows
        free_gpu_memory()

    plain_tps = {r["batch_size"]: r["tokens_per_s"] for r in rows if r["backend"] == "plain"}
    for r in rows:
        r["vs_plain"] = r["tokens_per_s"] / plain_tps[r["batch_size"]] if r["batch_size"] in plain_tps else None
        r["roofline_tokens_per_s"] = roofline_tokens_per_s(r["batch_size"], args.hbm_gbps, weight_bytes)
        r["of_roofline"] = r["tokens_per_s"] / r["roofline_tokens_per_s"]
    agreements = []
    if args.agreement and "plain" in completions:
        agreements = [
            {"backend": b, **agreement(completions["plain"], completions[b])} for b in completions if b != "plain"
        ]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    console = Console(width=120)  # the whole table also when the output goes to a file
    table = Table(title=f"greedy generation, {args.max_new_tokens} new tokens max, {device}, {dtype}")
    for col in ("backend", "batch", "tokens", "seconds", "tokens/s", "vs plain", "roofline tokens/s", "of roofline"):
        table.add_column(col, justify="right")
    for r in rows:
        vs_plain = f"{r['vs_plain']:.2f}x" if r["vs_plain"] is not None else "-"
        table.add_row(
            r["backend"],
            str(r["batch_size"]),
            str(r["tokens"]),
            f"{r['seconds']:.2f}",
            f"{r['tokens_per_s']:,.0f}",
            vs_plain,
            f"{r['roofline_tokens_per_s']:,.0f}",
            f"{r['of_roofline']:.1%}",
        )
    console.print(table)
    if agreements:
        table = Table(title="greedy agreement with plain generate")
        for col in ("backend", "prompts", "identical completions", "same final answer"):
            table.add_column(col, justify="right")
        for a in agreements:
            table.add_row(a["backend"], str(a["prompts"]), f"{a['identical']:.1%}", f"{a['same_answer']:.1%}")
        console.print(table)

    vllm_installed = importlib.util.find_spec("vllm") is not None
    result = {
        "model": args.model or "tiny (built by the bench)",
        "data_file": args.data_file,
        "device": device,
        "dtype": dtype,
        "max_new_tokens": args.max_new_tokens,
        "torch_compile": args.torch_compile,
        "length_bucket": args.length_bucket,
        "hbm_gbps": args.hbm_gbps,
        "weight_bytes_per_decode_step": weight_bytes,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": importlib.metadata.version("vllm") if vllm_installed else None,
        },
        "rows": rows,
        "agreement": agreements,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":  # vLLM starts worker processes that import this file again
    main()
