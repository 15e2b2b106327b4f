"""A verl custom reward function (batch form) that scores with the Looper reward service.

verl config::

    reward_model.reward_manager=batch
    custom_reward_function.path=rollout_worker/verl_reward.py
    custom_reward_function.name=compute_score

and in the environment of the process that computes rewards: LOOPER_SERVICE_URL (default
http://127.0.0.1:8000) and LOOPER_SERVICE_TOKEN (omit only for a service started open). The looper
package must be importable there (`pip install -e .` or PYTHONPATH).

verl's batch reward manager (verl/workers/reward_manager/batch.py) calls
``compute_score(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=..., **reward_kwargs)``
with one entry per response. The responses of one prompt form one Regime W group; verl does not pass the
prompt or its uid, so the group is found from each row's ``extra_info`` (the dataset's column), first of:

- ``question_id``: your stable id of the question (recommended);
- ``index`` (with ``split`` when present): what verl's example preprocessors (gsm8k.py, math) write;
- ``question``: the question text.

``extra_info["question"]`` is also sent as the question text. A dataset row might look like::

    {"data_source": "openai/gsm8k", "prompt": [...], "reward_model": {"ground_truth": "72"},
     "extra_info": {"question_id": "gsm8k-train-17", "question": "Natalia sold clips to ..."}}

A row with none of these is scored alone (a group of one: correctness and length terms only). A ground
truth of None or "" scores label-free (the group's majority answer stands in). Each result is a dict
``{"score": reward, "acc": 1.0/0.0, "s_end", "s_path", "s_cf", "s_wm", "quality"}`` (all floats; verl
logs every key, and its validation reports ``acc`` as the core metric).
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
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """verl's batch-form reward function: one dict per response, in order. Extra kwargs are ignored."""
    if len(solution_strs) == 0:
        return []
    groups, positions = build_groups(data_sources, solution_strs, ground_truths, extra_infos)
    results = _run(score_groups(groups, client_config()))
    out = []
    for g, k in positions:
        t = results[g].trajectories[k]
        out.append(
            {
                "score": t.reward,
                "acc": 1.0 if t.correct else 0.0,
                "s_end": t.s_end,
                "s_path": t.s_path,
                "s_cf": t.s_cf,
                "s_wm": t.coherence,
                "quality": t.quality,
                "truncated": 1.0 if t.truncated else 0.0,
            }
        )
    return out
