"""Generation engines behind one small interface: vLLM where present, HF transformers otherwise.

Both take a whole batch of requests (every arm of every question) in one call; neither ever generates
one sample at a time.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared_schemas.prompts import prompt_token_ids

log = logging.getLogger("looper.engines")

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")
# vLLM: sequences decoded at once, every step in a captured CUDA graph (batch_limits). An H200 ran a 0.5B model
# at 24.8k tok/s with 256, 26.6k with 512 and 16.4k with 1,024, the steps above 512 without graphs (bench/README.md)
DEFAULT_MAX_NUM_SEQS = 512


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    temperature: float
    top_p: float
    seed: int
    max_new_tokens: int


@dataclass(frozen=True)
class Generation:
    text: str
    completion_tokens: int


class Engine(Protocol):
    name: str
    model_name: str

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]: ...


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus every chat end-of-turn token the vocabulary has (Qwen ends turns on <|im_end|>)."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [vocab[t] for t in STOP_TOKENS if t in vocab and vocab[t] not in ids]
    return ids


class PerRowSampling:
    """A logits processor giving every row of a batch its own temperature and top-p (0 = greedy).

    transformers' `generate` takes one temperature and top_p per call; with this, every arm of every
    question shares one batched call instead of one call per arm.

    With `seeds` (one per row) it also draws every row's token itself, by inverse-CDF sampling with one
    uniform per step from the row's own stream (`random.Random(seed)`), and leaves `generate` a single
    finite logit to pick: a row's sample then depends on its seed and its logits only, never on which other
    rows share its batch or where it sits in it (vLLM seeds each request the same way). Without `seeds`
    the masked scores are returned for `generate` to sample with torch's global generator.
    """

    def __init__(self, temperatures, top_ps, seeds=None):
        import torch

        self.greedy = temperatures <= 0
        self.temperatures = torch.where(self.greedy, torch.ones_like(temperatures), temperatures)[:, None]
        self.top_ps = top_ps[:, None]
        self.streams = None if seeds is None else [random.Random(int(seed)) for seed in seeds]

    def __call__(self, input_ids, scores):
        import torch

        scores = scores / self.temperatures.to(scores.dtype)
        sorted_scores, order = scores.sort(dim=-1)
        # drop the low tail whose total probability is under 1 - top_p; the top token always stays
        drop = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= 1 - self.top_ps
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        if self.streams is not None:
            return self._draw(scores)
        if self.greedy.any():
            best = scores.argmax(dim=-1, keepdim=True)
            only_best = torch.full_like(scores, float("-inf")).scatter(1, best, 0.0)
            scores = torch.where(self.greedy[:, None], only_best, scores)
        return scores

    def _draw(self, scores):
        import torch

        # one draw per row per step, greedy rows included, so a stream's k-th draw is always its k-th token
        uniforms = torch.tensor([s.random() for s in self.streams], dtype=torch.float64, device=scores.device)
        cdf = scores.double().softmax(dim=-1).cumsum(dim=-1)
        # the first token whose cumulative probability exceeds u * total: never one of probability 0
        drawn = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True).clamp_(max=scores.shape[-1] - 1)
        chosen = torch.where(self.greedy[:, None], scores.argmax(dim=-1, keepdim=True), drawn)
        return torch.full_like(scores, float("-inf")).scatter(1, chosen, 0.0)


class FillerRows:
    """A stopping criterion that marks the given rows finished from their first token on.

    The static-cache path pads a batch with filler rows up to a fixed size; stopped at once, they never
    keep a batch running after every real row has emitted a stop token.
    """

    def __init__(self, filler):
        self.filler = filler

    def __call__(self, input_ids, scores, **kwargs):
        return self.filler


def bucket_rows(rows: int, max_batch_size: int) -> int:
    """The batch size a chunk is padded to: the next power of two, at most `max_batch_size`."""
    return min(1 << (rows - 1).bit_length(), max_batch_size)


class HFEngine:
    """transformers `generate`, left-padded, sorted by prompt length, every arm in the same call.

    Sampling is seeded per row: every request draws its tokens from its own stream seeded with its `seed`
    (`PerRowSampling`), as vLLM seeds each request, so a request's output does not depend on the other
    requests of the call (the same prompt, seed and logits give the same text in any batch or shard).

    `static_cache=True` is the tuned path for machines without vLLM: a preallocated KV cache, prompts
    left-padded to a multiple of `length_bucket` tokens and batches padded to a power of two, so only a
    few shapes occur and, with `torch_compile=True` (CUDA only), the decode step compiled by transformers
    (inductor, mode "reduce-overhead": CUDA graphs) is reused across calls instead of recompiled.
    """

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        base: str | None = None,
        max_batch_size: int = 64,
        dtype=None,
        device=None,
        static_cache: bool = False,
        torch_compile: bool = False,
        length_bucket: int = 64,
    ):
        import torch

        from looper_common.modeling import load_model, load_tokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch_compile and not static_cache:
            raise ValueError("torch_compile compiles the decode step over a static cache: set static_cache too")
        if torch_compile and torch.device(self.device).type != "cuda":
            raise ValueError(
                f"torch_compile needs a CUDA device (transformers compiles generate there only), not {self.device}"
            )
        self.model_name = model
        self.tokenizer = load_tokenizer(model, base)
        self.tokenizer.padding_side = "left"
        loaded = load_model(model, base=base, dtype=dtype)
        if hasattr(loaded, "merge_and_unload"):  # generate from merged weights: no LoRA overhead per token
            loaded = loaded.merge_and_unload()
        self.model = loaded.to(self.device).eval()
        self.max_batch_size = max_batch_size
        self.static_cache = static_cache
        self.length_bucket = length_bucket
        self.compile_config = None
        if torch_compile:
            from transformers import CompileConfig

            # CUDA graphs of the decode step; fullgraph, so a graph break fails loudly instead of running slowly
            self.compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
        self.stop_ids = stop_token_ids(self.tokenizer)

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            by_length[r.max_new_tokens].append(i)
        out: list[Generation | None] = [None] * len(requests)
        for max_new_tokens, indices in by_length.items():
            # similar prompt lengths together: less padding, and a fixed order for a given batch
            indices.sort(key=lambda i: (len(requests[i].prompt), i))
            for start in range(0, len(indices), self.max_batch_size):
                chunk = indices[start : start + self.max_batch_size]
                for i, generation in zip(
                    chunk, self._generate_chunk([requests[i] for i in chunk], max_new_tokens), strict=True
                ):
                    out[i] = generation
        return out

    def _generate_chunk(self, chunk: list[GenerationRequest], max_new_tokens: int) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        rows = len(chunk)
        tuned = {}
        if self.static_cache:
            filled = bucket_rows(rows, self.max_batch_size)
            chunk = chunk + [chunk[-1]] * (filled - rows)
            filler = torch.arange(filled, device=self.device) >= rows
            tuned = {
                "cache_implementation": "static",
                "stopping_criteria": StoppingCriteriaList([FillerRows(filler)]),
                # transformers compiles the decode step of every static-cache call on CUDA unless told not to
                "disable_compile": self.compile_config is None,
            }
            if self.compile_config is not None:
                tuned["compile_config"] = self.compile_config
        batch = self.tokenizer.pad(
            {"input_ids": prompt_token_ids([r.prompt for r in chunk], self.tokenizer)},
            return_tensors="pt",
            padding=True,
            pad_to_multiple_of=self.length_bucket if self.static_cache else None,
        ).to(self.device)
        sampling = PerRowSampling(
            torch.tensor([r.temperature for r in chunk], device=self.device),
            torch.tensor([r.top_p for r in chunk], device=self.device),
            seeds=[r.seed for r in chunk],
        )
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                logits_processor=[sampling],
                max_new_tokens=max_new_tokens,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                **tuned,
            )
        results = []
        for row in output[:rows, batch["input_ids"].shape[1] :].tolist():
            length = next((k for k, t in enumerate(row) if t in self.stop_ids), len(row))
            results.append(Generation(self.tokenizer.decode(row[:length], skip_special_tokens=True), length))
        return results


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds `rank` (a folded SFT+DPO adapter is r 64+16=80)."""
    fitting = [r for r in VLLM_LORA_RANKS if r >= max(rank, 16)]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
    return fitting[0]


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank of an adapter dir (its `r`, or a larger one from `rank_pattern`)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return max([int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def same_model(a: str, b: str) -> bool:
    """Two model specs name the same model: equal hub ids, or paths to the same directory."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


class VLLMEngine:
    """vLLM's offline `LLM.generate`: one call for the whole batch, per-request SamplingParams and seeds.

    `model` may be a LoRA adapter (the engine loads its base and generates through the adapter). With
    `max_lora_rank`, LoRA is enabled for adapters up to that rank over the loaded model, and
    `for_model(adapter)` returns an engine sharing this one's `LLM` that generates through that adapter
    (`for_model(base)`: through none), so several models over one base need one vLLM start-up.

    With `merge_lora`, an adapter is instead folded into its base (a full checkpoint in a temporary dir,
    deleted once vLLM has loaded it) and served without LoRA kernels: one model per engine, but no per-token
    LoRA work, which costs a small model more than the folding does. `merged_dir`: that checkpoint made
    already, by a caller that removes it (data-parallel rollouts fold once for all their engines).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        base: str | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        max_num_seqs: int | None = DEFAULT_MAX_NUM_SEQS,
        max_lora_rank: int | None = None,
        merge_lora: bool = False,
        merged_dir: str | None = None,
    ):
        if data_parallel_size > 1:
            # vLLM's LLM.__init__ raises for this itself (read in 0.26 and 0.32: "LLM(data_parallel_size=N) is not supported
            # for single-process usage and may hang"); say what to do instead before paying for the import
            raise ValueError(
                f"data_parallel_size={data_parallel_size}: vLLM's offline LLM runs one replica per process. "
                "Rollouts shard the questions over one worker process per GPU (RolloutConfig.data_parallel_size, "
                "`looper rollouts --data-parallel-size N`); elsewhere run one process per GPU"
            )
        limits = batch_limits(max_num_seqs, enforce_eager)
        started = time.perf_counter()
        from vllm import LLM

        # where an engine's start goes: vLLM's import, the fold (merge_lora), LLM() (its config, the engine-core
        # process, weights, compile, graphs, KV cache); read by the eval's summary
        self.start_s: dict[str, float] = {"import_vllm": round(time.perf_counter() - started, 2)}

        from looper_common.modeling import resolve_source

        source = resolve_source(model, base)
        self.model_name = model
        self.lora = None
        self.max_lora_rank: int | None = None
        self._lora_ids: dict[str, int] = {}  # adapter path -> LoRARequest id, shared by every for_model view
        kwargs = {
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            # the counters behind preemptions(); vLLM's LLM class turns them off unless asked
            "disable_log_stats": False,
            **limits,
        }
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if merge_lora and max_lora_rank:
            raise ValueError("merge_lora serves one merged model per engine: it cannot also take LoRA adapters")
        merged = None
        self.merged_from: str | None = None  # the adapter this engine serves folded into its base
        if merge_lora and source.kind == "adapter":
            if merged_dir is None:
                folding = time.perf_counter()
                merged = merged_checkpoint(source.path, source.base, dtype)
                self.start_s["merge"] = round(time.perf_counter() - folding, 2)
            self.merged_from, self.base = source.path, source.base
            source = resolve_source(merged_dir or merged.name)
        rank = max_lora_rank or 0
        if source.kind == "adapter":
            rank = max(rank, adapter_rank(source.path))
            target = source.base
        elif source.kind == "gguf":
            if max_lora_rank:
                raise ValueError(f"{model}: LoRA adapters over a .gguf model are not supported; use its model dir")
            target = f"{source.path}/{source.gguf_file}"
        else:
            target = source.path
        if rank:
            self.max_lora_rank = vllm_lora_rank(rank)
            kwargs.update(enable_lora=True, max_lora_rank=self.max_lora_rank)
        if merged is None:
            self.base = target
        if source.kind == "adapter":
            self.lora = self._lora_request(source.path)
        import torch

        if torch.cuda.is_initialized():  # a forked engine process cannot use CUDA once this one has
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        try:
            building = time.perf_counter()
            self.llm = LLM(model=target, **kwargs)
            self.start_s["llm_init"] = round(time.perf_counter() - building, 2)
            log.info("vLLM engine started (seconds): %s", self.start_s)
            self.tokenizer = self.llm.get_tokenizer()
        finally:
            if merged is not None:  # loaded (or failed): the weights live in the engine, the checkpoint takes disk
                merged.cleanup()
        self.stop_ids = stop_token_ids(self.tokenizer)

    def preemptions(self) -> int:
        """Requests vLLM has preempted (evicted from the KV cache, recomputed later) since this engine started:
        more than 0 means the batch outgrew the cache and the engine redid work."""
        from vllm.v1.metrics.reader import Counter

        return sum(
            int(m.value) for m in self.llm.get_metrics() if isinstance(m, Counter) and m.name == "vllm:num_preemptions"
        )

    def _lora_request(self, path: str):
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(str(path), len(self._lora_ids) + 1)
        return LoRARequest(f"adapter-{lora_id}", lora_id, str(path))

    def for_model(self, model: str, base: str | None = None) -> VLLMEngine:
        """An engine on this one's `LLM` generating as `model`: the loaded base itself, or a LoRA adapter over
        it of rank <= max_lora_rank. Anything else (another base, a merged model) is refused."""
        from looper_common.modeling import resolve_source

        source = resolve_source(model, base)
        view = copy.copy(self)  # shares the LLM, tokenizer and the adapter ids
        view.model_name = model
        if self.merged_from is not None:
            if not same_model(source.path, self.merged_from):
                raise ValueError(f"this engine serves only {self.merged_from} (merged into its base), not {model}")
        elif source.kind == "adapter":
            if not same_model(source.base, self.base):
                raise ValueError(
                    f"{model} is a LoRA adapter over {source.base}, not over this engine's base {self.base}: "
                    "evaluate it in an engine of its own"
                )
            rank = adapter_rank(source.path)
            if not self.max_lora_rank or rank > self.max_lora_rank:
                raise ValueError(
                    f"{model}: LoRA rank {rank} does not fit this engine's max_lora_rank {self.max_lora_rank}"
                )
            view.lora = self._lora_request(source.path)
        elif source.kind != "gguf" and same_model(source.path, self.base):
            view.lora = None
        else:
            raise ValueError(f"{model} is neither this engine's base {self.base} nor a LoRA adapter over it")
        return view

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=r.temperature,
                top_p=r.top_p if r.temperature > 0 else 1.0,
                seed=r.seed,
                max_tokens=r.max_new_tokens,
                stop_token_ids=self.stop_ids,
                # no text while decoding: each answer is decoded once at the end, as the HF engine does
                detokenize=False,
            )
            for r in requests
        ]
        prompts = vllm_token_prompts([r.prompt for r in requests], self.tokenizer)
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outputs]
        # the text ends before the stop token (vLLM keeps it among the ids, and the count with it)
        texts = self.tokenizer.batch_decode(
            [row[:-1] if row and row[-1] in self.stop_ids else row for row in ids], skip_special_tokens=True
        )
        return [Generation(text, len(row)) for text, row in zip(texts, ids, strict=True)]


def engine_preemptions(engine: Engine) -> int | None:
    """vLLM's preemption count so far; None for an engine that keeps none (HF)."""
    count = getattr(engine, "preemptions", None)
    return count() if callable(count) else None


def batch_limits(max_num_seqs: int | None, enforce_eager: bool) -> dict:
    """vLLM's running-batch cap and its CUDA-graph capture sizes, set together.

    On a >= 70 GB GPU vLLM's LLM class runs up to 1,024 sequences at once but captures graphs only up to 512
    (min(2 x max_num_seqs, 512)): a step with more sequences runs eagerly, which a host-bound small model pays
    for in every step. Capturing up to the cap keeps every step in a graph. None: vLLM's own defaults."""
    if max_num_seqs is None:
        return {}
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    limits: dict = {"max_num_seqs": max_num_seqs}
    if not enforce_eager:
        limits["compilation_config"] = {"max_cudagraph_capture_size": max_num_seqs}
    return limits


def checkpoint_dtype(model: str) -> str:
    """The dtype a model dir's config.json records (vLLM's `auto`), bfloat16 where it records none."""
    config = Path(model) / "config.json"
    recorded = json.loads(config.read_text()) if config.is_file() else {}
    dtype = str(recorded.get("torch_dtype") or recorded.get("dtype") or "bfloat16")
    return dtype if dtype in ("bfloat16", "float16", "float32") else "bfloat16"


def merged_checkpoint(adapter: str, base: str, dtype: str) -> tempfile.TemporaryDirectory:
    """`adapter` folded into `base` as a full checkpoint in a new temporary dir, in `dtype` (auto: the base's)."""
    from looper_common.modeling import convert_to_dir

    folder = tempfile.TemporaryDirectory(prefix="looper-merged-")
    started = time.perf_counter()
    try:
        convert_to_dir(adapter, folder.name, checkpoint_dtype(base) if dtype == "auto" else dtype, base=base)
    except BaseException:
        folder.cleanup()
        raise
    log.info("merged %s into %s for serving in %.1f s", adapter, base, time.perf_counter() - started)
    return folder


def vllm_token_prompts(prompts: list[str], tokenizer) -> list[dict]:
    """vLLM's prompts for rendered prompt texts, as token ids: exactly the ids every other path feeds, whatever
    vLLM's own tokenization defaults are."""
    return [{"prompt_token_ids": ids} for ids in prompt_token_ids(prompts, tokenizer)]


def resolve_engine_kind(kind: str) -> str:
    """`auto` is vLLM when it is installed and a GPU is present, else HF transformers."""
    if kind != "auto":
        return kind
    import importlib.util

    import torch

    return "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "hf"


def make_engine(kind: str, model: str, **kwargs) -> Engine:
    import torch

    kind = resolve_engine_kind(kind)
    if kind == "vllm":
        return VLLMEngine(model, **{k: v for k, v in kwargs.items() if k in VLLM_OPTIONS})
    if kind == "hf":
        options = {k: v for k, v in kwargs.items() if k in HF_OPTIONS}
        if isinstance(options.get("dtype"), str):
            options["dtype"] = None if options["dtype"] == "auto" else getattr(torch, options["dtype"])
        return HFEngine(model, **options)
    raise ValueError(f"unknown engine {kind!r}: use auto, vllm or hf")


HF_OPTIONS = {"base", "max_batch_size", "dtype", "device", "static_cache", "torch_compile", "length_bucket"}
VLLM_OPTIONS = {
    "base",
    "tensor_parallel_size",
    "data_parallel_size",
    "dtype",
    "gpu_memory_utilization",
    "max_model_len",
    "enforce_eager",
    "max_num_seqs",
    "max_lora_rank",
    "merge_lora",
    "merged_dir",
}
