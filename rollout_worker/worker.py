"""Rollouts: every arm of every question generated in one engine call per batch, scored over HTTP.

Durability: generated groups go to a spool file (fsync) before they are scored; scored records are
appended to the output (fsync) and only then dropped from the spool. A restart first reads the question ids
already in the output, drops spooled groups among them (a kill between the append and the spool's rewrite
leaves a group in both), scores the rest of the spool and skips those ids, so a kill -9 or a service outage
loses nothing, redoes nothing that was finished and never writes a record twice.

`data_parallel_size` N > 1 runs N such workers side by side, one per GPU (or `engines_per_gpu` per GPU), each on
a shard of the questions, and merges their files (`rollout_worker/parallel.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from looper_common.jsonl import append_lines, read_complete_lines, read_jsonl, rewrite_lines
from looper_common.token import TOKEN_ENV, read_token
from rollout_worker.client import ClientConfig, ServiceClient, ServiceUnavailable
from rollout_worker.engines import DEFAULT_MAX_NUM_SEQS, Engine, GenerationRequest, engine_preemptions, make_engine
from shared_schemas.models import (
    ArmSpec,
    PromptQuestion,
    RolloutRecord,
    RolloutTrajectory,
    SamplingInfo,
    ScoreRequest,
    ScoreResponse,
    Trajectory,
)
from shared_schemas.prompts import render_chat

log = logging.getLogger("looper.rollouts")
PROMPT_CHUNK = 128


@dataclass
class RolloutConfig:
    questions_file: str = field(default="", metadata={"help": "JSONL of {id, question, answer}"})
    output_file: str = field(default="runs/rollouts.jsonl", metadata={"help": "one scored record per question"})
    model: str = field(default="", metadata={"help": "hub id, local dir, .gguf, LoRA adapter dir or merged dir"})
    base: str | None = field(default=None, metadata={"help": "base model of an adapter (default: its recorded base)"})
    engine: Literal["auto", "vllm", "hf"] = "auto"
    service_url: str = "http://127.0.0.1:8000"
    token_file: str | None = field(default=None, metadata={"help": f"bearer token file (default: ${TOKEN_ENV})"})
    max_questions: int = 500
    batch_size: int = field(default=16, metadata={"help": "questions per engine call (x every arm)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "override the arms' max_new_tokens"})
    label_free: bool = field(default=False, metadata={"help": "send no gold answers (majority pseudo-labels)"})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "auto: bf16 on GPUs, fp32 on CPU"}
    )
    enforce_eager: bool = field(default=False, metadata={"help": "vLLM: no CUDA graphs (needed on CPU builds)"})
    max_num_seqs: int | None = field(
        default=DEFAULT_MAX_NUM_SEQS,
        metadata={"help": "vLLM, per engine: sequences decoded at once, CUDA graphs captured up to as many"},
    )
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "vLLM: serve a LoRA adapter folded into its base, without LoRA kernels (see bench/README.md)"
        },
    )
    max_batch_size: int = field(default=64, metadata={"help": "HF engine: rows per generate call"})
    static_cache: bool = field(
        default=False, metadata={"help": "HF engine: static KV cache and bucketed batch shapes (where no vLLM)"}
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "HF engine: decode step compiled into CUDA graphs (needs static_cache)"}
    )
    tensor_parallel_size: int = 1
    data_parallel_size: int = field(
        default=1,
        metadata={"help": "N worker processes, each with its own engine and a shard of the questions"},
    )
    engines_per_gpu: int = field(
        default=1,
        metadata={
            "help": "of those N engines, how many share one GPU, each with gpu_memory_utilization / K "
            "(measured on an H100 with a 0.5B model: no gain over 1, see bench/README.md)"
        },
    )
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    score_chunk: int = field(default=32, metadata={"help": "groups per /v1/score/batch call"})
    service_wait_s: float = field(default=600.0, metadata={"help": "how long to wait for a down service at the end"})

    def __post_init__(self):
        if not self.questions_file or not self.model:
            raise ValueError("questions_file and model are required")
        for name in ("batch_size", "tensor_parallel_size", "data_parallel_size", "engines_per_gpu"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.engines_per_gpu > self.data_parallel_size:
            raise ValueError(
                f"engines_per_gpu {self.engines_per_gpu} > data_parallel_size {self.data_parallel_size}: "
                "data_parallel_size counts every engine, so pass it at least engines_per_gpu"
            )


# --- building records --------------------------------------------------------------------------------


def build_record(group: dict, result: ScoreResponse, model: str, engine: str) -> RolloutRecord:
    request = ScoreRequest.model_validate(group["request"])
    trajectories = [
        RolloutTrajectory(
            arm_name=t.arm_name,
            text=t.text,
            answer=s.answer,
            answer_timeout=s.answer_timeout,
            correct=s.correct,
            reward=s.reward,
            quality=s.quality,
            coherence=s.coherence,
            completion_tokens=meta["completion_tokens"],
            sampling=SamplingInfo(**meta["sampling"]),
        )
        for t, s, meta in zip(request.trajectories, result.trajectories, group["meta"], strict=True)
    ]
    return RolloutRecord(
        question_id=request.question_id,
        question=request.question,
        gold_answer=request.gold_answer,
        trajectories=trajectories,
        s_end=result.s_end,
        s_path=result.s_path,
        s_cf=result.s_cf,
        s_wm=result.s_wm,
        group_reward=result.group_reward,
        label_source=result.label_source,
        scorer_version=result.scorer_version,
        weights=result.weights,
        model=model,
        engine=engine,
    )


class RolloutRun:
    def __init__(self, config: RolloutConfig, engine: Engine, client: ServiceClient):
        self.config, self.engine, self.client = config, engine, client
        self.output = Path(config.output_file)
        self.spool = self.output.with_name(self.output.name + ".spool")
        self.metrics = self.output.with_name(self.output.name + ".metrics.jsonl")
        self.finished: set[str] = set()  # question ids in the output, read once at the start
        self.preempted = engine_preemptions(engine)  # vLLM's count so far; each metrics row gets what it adds

    def unscored_spool(self) -> list[dict]:
        """The spooled groups not yet in the output. A kill between appending a group's record to the output
        and rewriting the spool leaves the group in both: it is dropped from the spool, never scored twice."""
        pending = read_complete_lines(self.spool)
        unscored = [g for g in pending if g["request"]["question_id"] not in self.finished]
        if len(unscored) < len(pending):
            log.info("%d spooled groups were already in %s; dropped from the spool", len(pending) - len(unscored),
                     self.output)  # fmt: skip
            rewrite_lines(self.spool, [json.dumps(g) for g in unscored])
        return unscored

    async def score_spool(self, wait: bool) -> int:
        """Score every spooled group; on an outage keep them (wait=False) or wait for the service (True)."""
        scored = 0
        deadline = time.monotonic() + self.config.service_wait_s
        while pending := self.unscored_spool():
            chunk = pending[: self.config.score_chunk]
            try:
                results = await self.client.score_batch([ScoreRequest.model_validate(g["request"]) for g in chunk])
            except ServiceUnavailable as exc:
                if not wait:
                    log.warning("service unavailable; %d groups kept in %s (%s)", len(pending), self.spool, exc)
                    return scored
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"{exc}. {len(pending)} generated groups are kept in {self.spool}; rerun to score them"
                    ) from None
                log.warning("service unavailable; waiting for it (%d groups spooled)", len(pending))
                await asyncio.sleep(2.0)
                continue
            records = [
                build_record(g, r, self.config.model, self.engine.name) for g, r in zip(chunk, results, strict=True)
            ]
            append_lines(self.output, [r.model_dump_json() for r in records])
            scored_ids = {r.question_id for r in records}
            self.finished |= scored_ids
            # read again: generation may have spooled more groups while these were scored
            left = [g for g in read_complete_lines(self.spool) if g["request"]["question_id"] not in scored_ids]
            rewrite_lines(self.spool, [json.dumps(g) for g in left])
            scored += len(records)
        return scored

    def groups_for(self, batch: list[dict], prompts: dict[str, dict[str, tuple[str, str]]], arms: list[ArmSpec]):
        tokenizer = self.engine.tokenizer
        requests, layout = [], []
        for q in batch:
            for arm in arms:
                system, user = prompts[q["id"]][arm.name]
                max_new = self.config.max_new_tokens or arm.max_new_tokens
                requests.append(
                    GenerationRequest(
                        render_chat(system, user, tokenizer), arm.temperature, arm.top_p, arm.seed, max_new
                    )
                )
                layout.append((q, arm, max_new))
        return requests, layout

    async def run(self, questions: list[dict]) -> dict:
        arm_set = await self.client.arms()
        arms = list(arm_set.arms)
        self.finished = {r["question_id"] for r in read_complete_lines(self.output)}
        scored_before = await self.score_spool(wait=False)
        spooled = {g["request"]["question_id"] for g in read_complete_lines(self.spool)}
        todo = [q for q in questions if q["id"] not in self.finished and q["id"] not in spooled]
        log.info(
            "%d questions: %d done, %d spooled, %d to generate",
            len(questions), len(self.finished), len(spooled), len(todo),
        )  # fmt: skip

        prompts: dict[str, dict[str, tuple[str, str]]] = {}
        for start in range(0, len(todo), PROMPT_CHUNK):
            chunk = todo[start : start + PROMPT_CHUNK]
            rendered = await self.client.prompts(
                [PromptQuestion(question_id=q["id"], question=q["question"]) for q in chunk]
            )
            for qp in rendered.questions:
                prompts[qp.question_id] = {p.arm_name: (p.system, p.user) for p in qp.prompts}

        tokens, generate_seconds, started = 0, 0.0, time.monotonic()
        # a progress bar on a terminal, with log lines written above it; plain progress lines in a log file
        interactive = sys.stderr.isatty()
        bar = tqdm(total=len(todo), desc="rollouts", unit="q", disable=not interactive)
        redirect = logging_redirect_tqdm() if interactive else contextlib.nullcontext()
        # Generation runs in one thread of its own while the spool is scored on this loop: a slow or down
        # service (retries, backoff) never holds up the engine. Groups are spooled before any scoring.
        generator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        loop = asyncio.get_running_loop()

        def generate(requests):
            return loop.run_in_executor(generator, self.engine.generate, requests)

        scoring: asyncio.Task | None = None
        with redirect:
            try:
                for start in range(0, len(todo), self.config.batch_size):
                    batch = todo[start : start + self.config.batch_size]
                    batch_tokens, seconds = await self._generate_batch(batch, prompts, arms, generate)
                    tokens, generate_seconds = tokens + batch_tokens, generate_seconds + seconds
                    if scoring is None or scoring.done():
                        if scoring is not None:
                            scoring.result()  # a scoring failure other than an outage stops the run
                        scoring = asyncio.create_task(self.score_spool(wait=False))
                    elapsed = time.monotonic() - started
                    bar.update(len(batch))
                    bar.set_postfix(q_per_s=f"{bar.n / elapsed:.2f}", tok_per_s=f"{tokens / elapsed:.0f}")
                    if not interactive:
                        done = start + len(batch)
                        log.info("rollouts: %d/%d questions, %.2f q/s, %.0f tok/s", done, len(todo), done / elapsed,
                                 tokens / elapsed)  # fmt: skip
                if scoring is not None:
                    await scoring
            finally:
                if scoring is not None and not scoring.done():
                    scoring.cancel()
                generator.shutdown(wait=True)
        bar.close()
        await self.score_spool(wait=True)
        return {
            "records": len(self.finished),
            "generated": len(todo),
            "scored_from_earlier_spool": scored_before,
            "completion_tokens": tokens,
            "generate_seconds": round(generate_seconds, 3),
        }

    async def _generate_batch(self, batch, prompts, arms, generate) -> tuple[int, float]:
        """Every arm of a batch of questions generated (`generate` runs the engine in its thread) and spooled;
        returns the completion tokens and the seconds generation took."""
        requests, layout = self.groups_for(batch, prompts, arms)
        t0 = time.monotonic()
        generations = await generate(requests)
        seconds = time.monotonic() - t0
        groups: dict[str, dict] = {}
        for (q, arm, max_new), gen in zip(layout, generations, strict=True):
            group = groups.setdefault(
                q["id"],
                {
                    "request": {
                        "question_id": q["id"],
                        "question": q["question"],
                        "gold_answer": None if self.config.label_free else q["answer"],
                        "trajectories": [],
                    },
                    "meta": [],
                },
            )
            group["request"]["trajectories"].append(Trajectory(arm_name=arm.name, text=gen.text).model_dump())
            sampling = {"temperature": arm.temperature, "top_p": arm.top_p, "seed": arm.seed, "max_new_tokens": max_new}
            group["meta"].append({"completion_tokens": gen.completion_tokens, "sampling": sampling})
        append_lines(self.spool, [json.dumps(g) for g in groups.values()])
        tokens = sum(g.completion_tokens for g in generations)
        row = {
            "questions": len(batch),
            "trajectories": len(generations),
            "completion_tokens": tokens,
            "generate_seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            "finished_at": round(time.time(), 3),
            "preemptions": self._new_preemptions(),  # > 0: the KV cache ran out and vLLM redid work
        }
        append_lines(self.metrics, [json.dumps(row)])
        return tokens, seconds

    def _new_preemptions(self) -> int | None:
        """vLLM's preemptions since the last metrics row (None: an engine that counts none), so that rows add up
        over a run and over shards."""
        count = engine_preemptions(self.engine)
        if count is None:
            return None
        new, self.preempted = count - self.preempted, count
        return new


def build_engine(config: RolloutConfig, merged_dir: str | None = None) -> Engine:
    """The config's engine; `merged_dir`: its adapter already folded into its base (with merge_lora)."""
    options = {k: v for k, v in asdict(config).items() if k not in ("model", "engine")}
    return make_engine(config.engine, config.model, **options, merged_dir=merged_dir)


def load_questions(config: RolloutConfig) -> list[dict]:
    return read_jsonl(config.questions_file, required=("id", "question", "answer"))[: config.max_questions]


def run_rollouts(config: RolloutConfig, engine: Engine | None = None, questions: list[dict] | None = None) -> dict:
    """Every arm of every question generated, scored and written to `config.output_file` (resumable).

    `data_parallel_size` N > 1: N worker processes, each with its own engine on its own GPU and a shard of
    the questions, merged into the output in question order (`rollout_worker.parallel`)."""
    from rollout_worker import parallel

    questions = load_questions(config) if questions is None else questions
    token = read_token(config.token_file)  # a bad token file is said before any model loads
    if config.data_parallel_size > 1:
        if engine is not None:
            raise ValueError("data_parallel_size > 1 starts one engine per worker process: pass no engine")
        return parallel.run_data_parallel(config, questions)
    parallel.refuse_unfinished_shards(Path(config.output_file), 1)
    engine = engine or build_engine(config)
    client_config = ClientConfig(url=config.service_url, token=token)

    async def main() -> dict:
        async with ServiceClient(client_config) as client:
            return await RolloutRun(config, engine, client).run(questions)

    return asyncio.run(main())
