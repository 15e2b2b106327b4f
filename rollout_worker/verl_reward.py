"""verl against the Looper reward service: each question's responses scored together as one Regime W group.

Three entry points, for the two reward paths verl has had (both read here from verl's source, 0.9.1 and 0.7.0):

1. The reward loop (verl >= 0.7 default; the only path since 0.8): ``LooperRewardManager``, a reward-loop
   manager verl loads from this file. verl hands a manager one response at a time (``run_single``); the manager
   holds each response until its question's ``actor_rollout_ref.rollout.n`` responses are in (or
   ``LOOPER_GROUP_WAIT_S`` seconds, default 60, have passed), scores them as one group in
   ``/v1/score/batch``, and answers each. verl 0.8 and later (config under ``reward.``)::

       reward.reward_manager.source=importlib reward.reward_manager.name=LooperRewardManager
       reward.reward_manager.module.path=rollout_worker/verl_reward.py reward.num_workers=1
       reward.custom_reward_function.path=rollout_worker/verl_reward.py
       reward.custom_reward_function.name=compute_score

   (``reward.num_workers=1`` keeps a question's responses in one reward worker, so groups are whole; the
   custom function is what makes verl call the manager at all, and is not used by it.) verl 0.7::

       reward_model.use_reward_loop=True reward_model.reward_loop_source=importlib
       reward_model.reward_loop_module_path=rollout_worker/verl_reward.py
       reward_model.reward_loop_class_name=LooperRewardManager

2. The legacy batch manager (verl <= 0.7 with ``reward_model.use_reward_loop=False``)::

       reward_model.reward_manager=batch custom_reward_function.path=rollout_worker/verl_reward.py
       custom_reward_function.name=compute_score

   which calls ``compute_score(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=...)``
   with the whole batch.
3. ``compute_score`` called once per response (the ``naive`` manager): the response is scored alone, a group of
   one (correctness and length only), with a one-time warning that grouping is lost.

In the environment of the processes that compute rewards: LOOPER_SERVICE_URL (default
http://127.0.0.1:8000) and LOOPER_SERVICE_TOKEN (omit only for a service started open); the looper package
importable there (`pip install -e .` or PYTHONPATH).

The responses of one question form one group, found from each row's ``extra_info`` (the dataset's column),
first of: ``question_id`` (your stable id; recommended); ``index`` (with ``split``), what verl's example
preprocessors (gsm8k.py, math) write; ``question``, the question text. ``extra_info["question"]`` is also sent
as the question text. A row with none of these is scored alone. A ground truth of None or "" scores label-free
(the group's majority answer stands in). A response longer than the service's max_text_chars is scored bounded
(``truncated``: 1.0), never refused. Each result: ``{"score": reward, "acc": 1.0/0.0, "s_end", "s_path",
"s_cf", "s_wm", "quality", "truncated"}``, all floats (verl logs every key; its validation reports ``acc``).
A service that cannot be reached raises: no step trains on missing rewards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from rollout_worker.client import ClientConfig, ServiceClient
from shared_schemas.models import (
    MAX_ID_CHARS,
    MAX_QUESTION_CHARS,
    MAX_TEXT_CHARS,
    ScoreRequest,
    ScoreResponse,
    Trajectory,
    bounded_text,
)

log = logging.getLogger("looper.verl_reward")

DEFAULT_URL = "http://127.0.0.1:8000"
GROUPS_PER_CALL = 64  # within the service's default limit of 128 groups per batch


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _group_key(data_source: Any, extra: Mapping[str, Any], i: int) -> tuple[str, str]:
    """(group key, question_id) of row i."""
    source = "" if data_source is None else str(data_source)
    if extra.get("question_id") is not None:
        key = f"id:{source}:{extra['question_id']}"
    elif extra.get("index") is not None:
        key = f"index:{source}:{extra.get('split', '')}:{extra['index']}"
    elif extra.get("question"):
        key = f"question:{source}:{_digest(str(extra['question']))}"
    else:
        key = f"row:{i}"
        return key, f"verl-row-{i}"
    question_id = str(extra["question_id"]) if extra.get("question_id") is not None else key.split(":", 1)[1]
    if not question_id or len(question_id) > MAX_ID_CHARS:
        question_id = f"verl-{_digest(key)}"
    return key, question_id


def _gold(ground_truth: Any) -> str | None:
    if ground_truth is None:
        return None
    gold = str(ground_truth)
    return gold if gold.strip() else None


def build_groups(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None,
) -> tuple[list[ScoreRequest], list[tuple[int, int]]]:
    """The batch's rows as Regime W groups (first-seen order) and each row's (group, index) in them."""
    n = len(solution_strs)
    if not len(data_sources) == len(ground_truths) == n or (extra_infos is not None and len(extra_infos) != n):
        raise ValueError(
            f"compute_score: data_sources, solution_strs, ground_truths and extra_infos must have equal lengths; "
            f"got {len(data_sources)}, {n}, {len(ground_truths)}, {None if extra_infos is None else len(extra_infos)}"
        )
    members: dict[tuple[str, str | None], list[int]] = {}
    ids, questions = {}, {}
    for i in range(n):
        extra = (extra_infos[i] if extra_infos is not None else None) or {}
        key, question_id = _group_key(data_sources[i], extra, i)
        group = (key, _gold(ground_truths[i]))
        members.setdefault(group, []).append(i)
        ids.setdefault(group, question_id)
        questions.setdefault(group, (str(extra.get("question") or "") or question_id)[:MAX_QUESTION_CHARS])
    if any(k.startswith("row:") for k, _ in members):
        log.warning("verl_reward: rows without extra_info question_id/index/question are scored as groups of one")
    groups, positions = [], [(0, 0)] * n
    for g, (group, indices) in enumerate(members.items()):
        trajectories = [
            Trajectory(arm_name=f"sample_{k}", text=bounded_text(str(solution_strs[i]), MAX_TEXT_CHARS))
            for k, i in enumerate(indices)
        ]
        for k, i in enumerate(indices):
            positions[i] = (g, k)
        groups.append(
            ScoreRequest(
                question_id=ids[group], question=questions[group], gold_answer=group[1], trajectories=trajectories
            )
        )
    return groups, positions


async def score_groups(groups: list[ScoreRequest], config: ClientConfig) -> list[ScoreResponse]:
    """Every group through POST /v1/score/batch, GROUPS_PER_CALL at a time, concurrently; results in order."""
    chunks = [groups[i : i + GROUPS_PER_CALL] for i in range(0, len(groups), GROUPS_PER_CALL)]
    async with ServiceClient(config) as client:
        answers = await asyncio.gather(*(client.score_batch(chunk, truncate=True) for chunk in chunks))
    return [result for answer in answers for result in answer]


def _run(coroutine):
    """asyncio.run, or asyncio.run in a worker thread when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="looper-verl-reward") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def client_config() -> ClientConfig:
    return ClientConfig(
        url=os.environ.get("LOOPER_SERVICE_URL") or DEFAULT_URL, token=os.environ.get("LOOPER_SERVICE_TOKEN") or None
    )


def compute_score(
    data_sources: Sequence[Any] | None = None,
    solution_strs: Sequence[str] | None = None,
    ground_truths: Sequence[Any] | None = None,
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> list[dict[str, float]] | dict[str, float]:
    """verl's reward function. Batch form (the batch manager): one dict per response, in order. Called once per
    response with ``solution_str=`` (the naive manager): that response's dict, scored alone. Other kwargs are
    ignored."""
    if "solution_str" in kwargs:
        return compute_score_one(**kwargs)
    if not solution_strs:
        return []
    groups, positions = build_groups(data_sources, solution_strs, ground_truths, extra_infos)
    results = _run(score_groups(groups, client_config()))
    return [result_dict(results[g].trajectories[k]) for g, k in positions]


def result_dict(t) -> dict[str, float]:
    """One response's result as verl logs it: the reward as "score", every other key a float."""
    return {
        "score": t.reward,
        "acc": 1.0 if t.correct else 0.0,
        "s_end": t.s_end,
        "s_path": t.s_path,
        "s_cf": t.s_cf,
        "s_wm": t.coherence,
        "quality": t.quality,
        "truncated": 1.0 if t.truncated else 0.0,
    }


_warned_alone = False


def compute_score_one(data_source: Any, solution_str: str, ground_truth: Any, extra_info=None, **kwargs) -> dict:
    """compute_score as verl's `naive` manager calls it, once per response: scored alone (a group of one)."""
    global _warned_alone
    if not _warned_alone:
        _warned_alone = True
        log.warning(
            "verl_reward: compute_score is called once per response (verl's naive reward manager), so each "
            "response is scored alone, without its group: use LooperRewardManager (see rollout_worker/verl_reward.py)"
        )
    return compute_score([data_source], [solution_str], [ground_truth], [extra_info or {}])[0]


# --- verl's reward loop -------------------------------------------------------------------------------------


def _reward_manager_base():
    """verl's RewardManagerBase where verl is installed (it then type-checks nothing else), else object."""
    try:
        from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
    except ImportError:
        return object
    return RewardManagerBase


def _config_value(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if config is None:
            return None
        config = config.get(part) if hasattr(config, "get") else getattr(config, part, None)
    return config


class _Waiting:
    """The responses of one question received so far, each with the future its caller awaits."""

    def __init__(self, question_id: str, question: str, gold: str | None):
        self.question_id, self.question, self.gold = question_id, question, gold
        self.texts: list[str] = []
        self.futures: list[asyncio.Future] = []


class LooperRewardManager(_reward_manager_base()):
    """A verl reward-loop manager: responses held until their question's group is whole, then scored together.

    verl constructs it with keywords (config = the trainer's whole config, tokenizer, compute_score and, with
    a reward model, its router); it awaits ``run_single(data)`` for each response, ``data`` a DataProto of one
    sequence, and reads ``{"reward_score": float, "reward_extra_info": dict}`` (the same keys every time).
    """

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None,
                 reward_model_tokenizer=None, **kwargs):  # fmt: skip
        # verl's base __init__ takes (config, tokenizer[, compute_score]) depending on its version: set what it sets
        self.config, self.tokenizer, self.compute_score = config, tokenizer, compute_score
        self.group_size = int(_config_value(config, "actor_rollout_ref.rollout.n") or 1)
        self.group_wait_s = float(os.environ.get("LOOPER_GROUP_WAIT_S", "60"))
        self.client = client_config()
        self._waiting: dict[tuple[str, str | None], _Waiting] = {}
        self._rows = 0
        self._http: tuple[asyncio.AbstractEventLoop, ServiceClient] | None = None

    def _service(self) -> ServiceClient:
        """One client (its connection pool) for every group scored on this event loop, not one per group."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not loop:
            self._http = (loop, ServiceClient(self.client))
        return self._http[1]

    @classmethod
    def init_class(cls, config, tokenizer) -> None:
        return None

    async def run_single(self, data) -> dict:
        item = data[-1:][0]  # a multi-sequence output: its last sequence, as verl's naive manager reads it
        response_ids = item.batch["responses"]
        length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        text = self.tokenizer.decode(response_ids[:length], skip_special_tokens=True)
        rows = item.non_tensor_batch
        ground_truth = (rows.get("reward_model") or {}).get("ground_truth")
        result = await self.score_in_group(rows.get("data_source"), text, ground_truth, rows.get("extra_info") or {})
        return {"reward_score": result["score"], "reward_extra_info": result}

    async def score_in_group(self, data_source: Any, text: str, ground_truth: Any, extra: Mapping) -> dict:
        """The response's result once its group is scored (whole, or after group_wait_s with what came)."""
        self._rows += 1
        key, question_id = _group_key(data_source, extra, self._rows)
        gold = _gold(ground_truth)
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get((key, gold))
        if waiting is None:
            question = (str(extra.get("question") or "") or question_id)[:MAX_QUESTION_CHARS]
            waiting = self._waiting[(key, gold)] = _Waiting(question_id, question, gold)
            if self.group_size > 1 and not key.startswith("row:"):
                loop.call_later(self.group_wait_s, self._flush, (key, gold), waiting)
        future = loop.create_future()
        waiting.texts.append(bounded_text(text, MAX_TEXT_CHARS))
        waiting.futures.append(future)
        if len(waiting.texts) >= self.group_size or key.startswith("row:"):
            self._flush((key, gold), waiting)
        return await future

    def _flush(self, group: tuple[str, str | None], waiting: _Waiting) -> None:
        if self._waiting.get(group) is not waiting:
            return  # already scored
        del self._waiting[group]
        if len(waiting.texts) < self.group_size and not group[0].startswith("row:"):
            log.warning(
                "verl_reward: question %s: %d of %d responses after %.0f s; scoring those (set reward.num_workers=1 "
                "so a question's responses reach one reward worker)",
                waiting.question_id, len(waiting.texts), self.group_size, self.group_wait_s,
            )  # fmt: skip
        asyncio.ensure_future(self._score(waiting))

    async def _score(self, waiting: _Waiting) -> None:
        request = ScoreRequest(
            question_id=waiting.question_id,
            question=waiting.question,
            gold_answer=waiting.gold,
            trajectories=[Trajectory(arm_name=f"sample_{k}", text=t) for k, t in enumerate(waiting.texts)],
        )
        try:
            (result,) = await self._service().score_batch([request], truncate=True)
        except Exception as exc:  # noqa: BLE001 - every caller of the group gets the failure
            for future in waiting.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, trajectory in zip(waiting.futures, result.trajectories, strict=True):
            if not future.done():
                future.set_result(result_dict(trajectory))
