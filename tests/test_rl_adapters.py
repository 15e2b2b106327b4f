"""The engine adapters against the real services, called exactly as the engines call them.

OpenRLHF (openrlhf/utils/agent.py, SingleTurnAgentExecutor._fetch_rewards_via_http): aiohttp
`session.post(url, json={"query": [...], "prompts": [...], "labels": [...]})`, the lists sliced per reward
server, `query` = tokenizer.decode(prompt + response tokens, skip_special_tokens=False); it reads back
`rewards`, `scores` (falling back to `rewards`) and `extra_logs`. The current version sends one sample
per call; the earlier one (openrlhf/utils/remote_rm_utils.py) sent the whole rollout batch, every prompt's
n_samples_per_prompt responses next to each other, and concatenated each answer's lists.

verl (verl/workers/reward_manager/batch.py, BatchRewardManager.verify): `compute_score(data_sources=<numpy
object array>, solution_strs=<list of str>, ground_truths=<list>, extra_infos=<numpy object array of dicts>,
**reward_kwargs)`, each row repeated n times next to each other (DataProto.repeat(interleave=True)); a dict
result's "score" is the reward and every key is logged.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from rollout_worker.verl_reward import compute_score
from shared_schemas.models import ScoreRequest, ScoreResponse, Trajectory

ROUTE = "/v1/openrlhf/reward"
TEMPLATE = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

QUESTIONS = [
    {
        "question": "Tom has 3 bags of 4 apples. How many apples does he have?",
        "answer": "3 bags of 4 apples is 3 * 4 = <<3*4=12>>12 apples.\n#### 12",
        "ground_truth": "12",
        "responses": [
            "3 bags with 4 apples each: 3 x 4 = 12.\nAnswer: 12",
            "Three bags of four apples make twelve apples in all, so 12.\nThe answer is 12",
            "3 + 4 = 7 apples.\nAnswer: 7",
            "He has 4 x 4 = 16 apples.\nAnswer: 16",
        ],
    },
    {
        "question": "A shelf holds 5 rows of 6 books. 4 books are removed. How many books are left?",
        "answer": "5 * 6 = <<5*6=30>>30 books; 30 - 4 = <<30-4=26>>26.\n#### 26",
        "ground_truth": "26",
        "responses": [
            "5 rows of 6 is 30 books, minus 4 leaves 26.\nAnswer: 26",
            "30 - 4 = 26\n#### 26",
            "5 x 6 = 30 books.\nAnswer: 30",
        ],
    },
]


def post(service, body: bytes, token: str | None = "service", scheme: str = "Bearer") -> httpx.Response:
    headers = {"Content-Type": "application/json"}  # what aiohttp's json= sets
    token = service.token if token == "service" else token
    if token:
        headers["Authorization"] = f"{scheme} {token}"
    return httpx.post(f"{service.url}{ROUTE}", content=body, headers=headers, timeout=30)


def openrlhf_call(service, queries: list[str], prompts: list[str], labels: list) -> dict:
    """One reward server, as SingleTurnAgentExecutor._fetch_rewards_via_http builds the payload."""
    num_servers = 1
    batch_size = (len(queries) + num_servers - 1) // num_servers
    payload = {"query": queries[:batch_size], "prompts": prompts[:batch_size], "labels": labels[:batch_size]}
    response = post(service, json.dumps(payload).encode())  # aiohttp serialises json= with json.dumps
    assert response.status_code == 200, response.text
    return response.json()


def rollout_batch(label_key: str = "answer") -> tuple[list[str], list[str], list]:
    """(queries, prompts, labels) of a rollout batch: each prompt's responses next to each other."""
    queries, prompts, labels = [], [], []
    for q in QUESTIONS:
        prompt = TEMPLATE.format(question=q["question"])
        for text in q["responses"]:
            queries.append(prompt + text + "<|im_end|>")  # the EOS token, decoded with skip_special_tokens=False
            prompts.append(prompt)
            labels.append(q[label_key] if label_key else "")
    return queries, prompts, labels


def scored_by_score_route(service, question: str, gold: str | None, responses: list[str]) -> ScoreResponse:
    group = ScoreRequest(
        question_id="reference",
        question=question,
        gold_answer=gold,
        trajectories=[Trajectory(arm_name=f"sample_{k}", text=t) for k, t in enumerate(responses)],
    )
    with service.client() as client:
        response = client.post(
            "/v1/score", content=group.model_dump_json(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200, response.text
    return ScoreResponse.model_validate_json(response.content)


def expected(service, label_key: str = "answer") -> list:
    """Each sample's TrajectoryScore from /v1/score, in rollout-batch order."""
    out = []
    for q in QUESTIONS:
        gold = q[label_key] if label_key else None
        out += scored_by_score_route(
            service, TEMPLATE.format(question=q["question"]), gold, q["responses"]
        ).trajectories
    return out


def check_answer(answer: dict, reference: list, exact: bool = True) -> None:
    """Equal to /v1/score's values; `exact=False` when a group's trajectories came in another order (float sums)."""
    n = len(reference)
    same = (lambda xs: xs) if exact else (lambda xs: pytest.approx(xs, rel=1e-12, abs=1e-12))
    assert set(answer) == {"rewards", "scores", "extra_logs"}
    assert set(answer["extra_logs"]) == {"s_end", "s_path", "s_cf", "s_wm", "correct"}
    assert len(answer["rewards"]) == len(answer["scores"]) == n
    assert all(len(v) == n and all(isinstance(x, float) for x in v) for v in answer["extra_logs"].values())
    assert answer["rewards"] == same([t.reward for t in reference])
    assert answer["scores"] == answer["extra_logs"]["correct"] == [float(t.correct) for t in reference]
    assert answer["extra_logs"]["s_end"] == same([t.s_end for t in reference])
    assert answer["extra_logs"]["s_path"] == same([t.s_path for t in reference])
    assert answer["extra_logs"]["s_cf"] == same([t.s_cf for t in reference])
    assert answer["extra_logs"]["s_wm"] == same([t.coherence for t in reference])


# --- OpenRLHF ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_key", ["answer", "ground_truth"])
def test_openrlhf_batch_call_scores_each_prompt_as_a_group(service, label_key):
    queries, prompts, labels = rollout_batch(label_key)
    answer = openrlhf_call(service, queries, prompts, labels)
    reference = expected(service, label_key)
    check_answer(answer, reference)
    assert answer["scores"] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    rewards = answer["rewards"]
    for group in (range(0, 4), range(4, 7)):
        right = [rewards[i] for i in group if answer["scores"][i] == 1.0]
        wrong = [rewards[i] for i in group if answer["scores"][i] == 0.0]
        assert min(right) > max(wrong)


def test_openrlhf_groups_by_prompt_in_any_order(regime_w_service):
    queries, prompts, labels = rollout_batch()
    order = [6, 0, 4, 3, 1, 5, 2]
    answer = openrlhf_call(
        regime_w_service, [queries[i] for i in order], [prompts[i] for i in order], [labels[i] for i in order]
    )
    reference = expected(regime_w_service)
    check_answer(answer, [reference[i] for i in order], exact=False)


def test_openrlhf_single_sample_calls_as_the_current_client_sends_them(service):
    """One call per sample; the executor reads rewards_info_list[0]["rewards"] etc. for that sample."""
    queries, prompts, labels = rollout_batch()
    for i in (0, 2, 5):
        rewards_info = openrlhf_call(service, [queries[i]], [prompts[i]], [labels[i]])
        score_value = rewards_info.get("scores")
        if score_value is None:
            score_value = rewards_info.get("rewards")
        text = QUESTIONS[0 if i < 4 else 1]["responses"][i if i < 4 else i - 4]
        (alone,) = scored_by_score_route(service, prompts[i], labels[i], [text]).trajectories
        assert rewards_info["rewards"] == [alone.reward]
        assert score_value == [float(alone.correct)]
        assert rewards_info["extra_logs"]["s_wm"] == [alone.coherence]


def test_openrlhf_label_free_and_numeric_labels(regime_w_service):
    queries, prompts, _ = rollout_batch()
    free = openrlhf_call(regime_w_service, queries, prompts, [""] * 4 + [None] * 3)
    check_answer(free, expected(regime_w_service, label_key=""))
    numbers = openrlhf_call(regime_w_service, queries, prompts, [12] * 4 + [26.0] * 3)
    assert numbers["scores"] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_openrlhf_fast_path_answers_as_the_route(regime_w_service):
    queries, prompts, labels = rollout_batch()
    body = json.dumps({"query": queries, "prompts": prompts, "labels": labels}).encode()
    fast, slow = post(regime_w_service, body), post(regime_w_service, body, scheme="bearer")
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content) and fast.status_code == 200


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: {**b, "labels": b["labels"][:-1]}, "equal lengths"),
        (lambda b: {**b, "prompts": b["prompts"] + ["extra"]}, "equal lengths"),
        (lambda b: {**b, "query": []}, "at least 1"),
        (lambda b: {**b, "unexpected": 1}, "Extra inputs"),
        (lambda b: {**b, "labels": [True] * len(b["labels"])}, "labels"),
        (lambda b: {**b, "labels": ["no number"] * len(b["labels"])}, "no number"),
        (lambda b: {"query": ["a"] * 70, "prompts": ["p"] * 70, "labels": [""] * 70}, "the limit is 64"),
        (
            lambda b: {
                "query": [str(i) for i in range(130)],
                "prompts": [f"p{i}" for i in range(130)],
                "labels": [""] * 130,
            },
            "the limit is 128",
        ),
    ],
)
def test_openrlhf_bad_input_is_a_422_with_a_message(regime_w_service, change, message):
    queries, prompts, labels = rollout_batch()
    body = change({"query": queries, "prompts": prompts, "labels": labels})
    for scheme in ("Bearer", "bearer"):  # the fast path and FastAPI's route
        response = post(regime_w_service, json.dumps(body).encode(), scheme=scheme)
        assert response.status_code == 422, response.text
        assert message in response.text


def test_openrlhf_route_needs_the_token(service):
    queries, prompts, labels = rollout_batch()
    body = json.dumps({"query": queries, "prompts": prompts, "labels": labels}).encode()
    assert post(service, body, token=None).status_code == 401  # OpenRLHF's own client sends no token
    assert post(service, body, token=service.token + "x").status_code == 403


# --- verl ----------------------------------------------------------------------------------------------------


def verl_batch(n_repeat: int = 1, label_key: str = "ground_truth"):
    """A verl batch as BatchRewardManager.verify hands it over, from rows shaped like examples/data_preprocess/gsm8k.py."""
    rows = [
        {
            "data_source": "openai/gsm8k",
            "reward_model": {"style": "rule", "ground_truth": q[label_key] if label_key else ""},
            "extra_info": {"split": "train", "index": idx, "answer": q["answer"], "question": q["question"]},
        }
        for idx, q in enumerate(QUESTIONS)
    ]
    # rollout.n responses per row; DataProto.repeat(interleave=True) repeats the non-tensor columns with np.repeat
    counts = [len(q["responses"]) for q in QUESTIONS]
    data_sources = np.repeat(np.array([r["data_source"] for r in rows], dtype=object), counts)
    extras = np.repeat(np.array([r["extra_info"] for r in rows], dtype=object), counts)
    reward_models = np.repeat(np.array([r["reward_model"] for r in rows], dtype=object), counts)
    solution_strs = [t for q in QUESTIONS for t in q["responses"]]
    ground_truths = [rm.get("ground_truth", None) for rm in reward_models]
    rollout_reward_scores = [{} for _ in range(len(solution_strs))]
    for i in range(len(solution_strs)):
        extras[i]["rollout_reward_scores"] = rollout_reward_scores[i]
    return data_sources, solution_strs, ground_truths, extras


@pytest.fixture
def verl_env(monkeypatch):
    def use(service):
        monkeypatch.setenv("LOOPER_SERVICE_URL", service.url)
        if service.token:
            monkeypatch.setenv("LOOPER_SERVICE_TOKEN", service.token)
        else:
            monkeypatch.delenv("LOOPER_SERVICE_TOKEN", raising=False)

    return use


def as_the_batch_manager_does(scores: list) -> tuple[list[float], dict[str, list]]:
    rewards, extra = [], {}
    for score in scores:
        if isinstance(score, dict):
            rewards.append(score["score"])
            for key, value in score.items():
                extra.setdefault(key, []).append(value)
        else:
            rewards.append(score)
    return rewards, extra


@pytest.mark.parametrize("label_key", ["ground_truth", ""])
def test_verl_batch_compute_score_matches_the_score_route(service, verl_env, label_key):
    verl_env(service)
    data_sources, solution_strs, ground_truths, extras = verl_batch(label_key=label_key)
    reward_kwargs = {}
    scores = compute_score(
        data_sources=data_sources,
        solution_strs=solution_strs,
        ground_truths=ground_truths,
        extra_infos=extras,
        **reward_kwargs,
    )
    assert isinstance(scores, list) and len(scores) == len(solution_strs)
    assert all(isinstance(s, dict) and isinstance(s["score"], float) for s in scores)
    reference = []
    for q in QUESTIONS:
        gold = q["ground_truth"] if label_key else None
        reference += scored_by_score_route(service, q["question"], gold, q["responses"]).trajectories
    rewards, extra = as_the_batch_manager_does(scores)
    assert rewards == [t.reward for t in reference]
    assert extra["acc"] == [float(t.correct) for t in reference]
    assert extra["s_wm"] == [t.coherence for t in reference]
    assert all(len(v) == len(scores) for v in extra.values())
    if label_key:
        assert extra["acc"] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
        assert min(rewards[:2]) > max(rewards[2:4]) and min(rewards[4:6]) > rewards[6]


def test_verl_compute_score_inside_a_running_event_loop(regime_w_service, verl_env):
    verl_env(regime_w_service)
    data_sources, solution_strs, ground_truths, extras = verl_batch()
    plain = compute_score(data_sources, solution_strs, ground_truths, extras)

    async def from_a_coroutine():
        return compute_score(
            data_sources=data_sources, solution_strs=solution_strs, ground_truths=ground_truths, extra_infos=extras
        )

    assert asyncio.run(from_a_coroutine()) == plain


def test_verl_grouping_keys(regime_w_service, verl_env):
    verl_env(regime_w_service)
    q = QUESTIONS[0]
    n = len(q["responses"])
    by_id = compute_score(["gsm8k"] * n, q["responses"], ["12"] * n, [{"question_id": "tom-apples"}] * n)
    by_question = compute_score(["gsm8k"] * n, q["responses"], ["12"] * n, [{"question": q["question"]}] * n)
    reference = scored_by_score_route(regime_w_service, q["question"], "12", q["responses"]).trajectories
    assert [s["score"] for s in by_id] == [s["score"] for s in by_question] == [t.reward for t in reference]
    alone = compute_score(["gsm8k"] * n, q["responses"], ["12"] * n, None)
    singles = [scored_by_score_route(regime_w_service, "q", "12", [t]).trajectories[0] for t in q["responses"]]
    assert [s["score"] for s in alone] == [t.reward for t in singles]
    assert compute_score([], [], [], []) == []


# --- verl's reward loop (verl 0.9.1, verl/experimental/reward_loop/reward_manager/naive.py and base.py, main at
# 1dda039b; agent_loop.py's _compute_score awaits run_single once per finished response, in any order) ---------


class OneSequence:
    """A DataProto of one sequence as the reward loop hands it over: `data[-1:]` is itself and `data[0]` the item
    whose `batch` holds `responses` and `attention_mask` (prompt + response) and whose `non_tensor_batch` holds
    the dataset row's `data_source`, `reward_model` and `extra_info` (what naive.py's run_single reads)."""

    def __init__(self, tokenizer, response: str, row: dict, prompt_len: int = 5, response_len: int | None = None):
        import torch

        ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        response_len = response_len or len(ids) + 3  # right padding after the response, as verl pads
        self.batch = {
            "responses": torch.tensor(ids + [tokenizer.pad_token_id] * (response_len - len(ids))),
            "attention_mask": torch.tensor([1] * prompt_len + [1] * len(ids) + [0] * (response_len - len(ids))),
        }
        self.non_tensor_batch = row

    def __getitem__(self, index):
        return self


@pytest.fixture(scope="module")
def verl_tokenizer():
    from looper.tiny_model import build_tokenizer

    return build_tokenizer()


LONG = "Let me check it once more. " * 740 + "\nAnswer: 12"  # ~20,000 characters of reasoning
# rollout.n = 4 responses per question (QUESTIONS[1] has 3: a fourth added), the first one ~20,000 characters
LOOP_QUESTIONS = [
    {**QUESTIONS[0], "responses": [LONG, *QUESTIONS[0]["responses"][1:]]},
    {**QUESTIONS[1], "responses": [*QUESTIONS[1]["responses"], "5 * 6 - 4 = 26\nAnswer: 26"]},
]


def verl_rows() -> list[tuple[str, dict]]:
    """(response, row) of every response of LOOP_QUESTIONS, shuffled across questions as verl's balance_batch
    does; each row as verl's gsm8k preprocessor writes it."""
    import random

    rows = [
        (
            response,
            {
                "data_source": "openai/gsm8k",
                "reward_model": {"ground_truth": q["ground_truth"]},
                "extra_info": {"split": "train", "index": idx, "question": q["question"]},
            },
        )  # fmt: skip
        for idx, q in enumerate(LOOP_QUESTIONS)
        for response in q["responses"]
    ]
    random.Random(7).shuffle(rows)
    return rows


def run_step(manager, rows, tokenizer) -> list[dict]:
    """One verl step: every response's run_single awaited concurrently, as the agent loop's workers do."""

    async def step():
        return await asyncio.gather(*(manager.run_single(OneSequence(tokenizer, r, row)) for r, row in rows))

    return asyncio.run(asyncio.wait_for(step(), 60))


def test_verl_reward_loop_manager_scores_each_question_as_one_group(regime_w_service, verl_env, verl_tokenizer):
    from rollout_worker.verl_reward import LooperRewardManager

    verl_env(regime_w_service)
    rows = verl_rows()
    config = {"actor_rollout_ref": {"rollout": {"n": 4}}}
    manager = LooperRewardManager(config=config, tokenizer=verl_tokenizer, compute_score=compute_score)
    results = run_step(manager, rows, verl_tokenizer)
    got = {
        (row["extra_info"]["index"], response): result for (response, row), result in zip(rows, results, strict=True)
    }
    for idx, q in enumerate(LOOP_QUESTIONS):
        reference = scored_by_score_route(regime_w_service, q["question"], q["ground_truth"], q["responses"])
        for response, t in zip(q["responses"], reference.trajectories, strict=True):
            result = got[(idx, response)]
            assert result["reward_score"] == pytest.approx(t.reward)
            assert result["reward_extra_info"]["acc"] == float(t.correct)
    assert got[(0, LONG)]["reward_extra_info"]["acc"] == 1.0  # the long trace scored, its answer read
    assert {tuple(sorted(r["reward_extra_info"])) for r in results} == {
        ("acc", "quality", "s_cf", "s_end", "s_path", "s_wm", "score", "truncated")
    }  # the same keys for every response: verl builds its columns from the first one's


def test_verl_reward_loop_scores_a_partial_group_after_the_wait(regime_w_service, verl_env, verl_tokenizer, monkeypatch,
                                                                caplog):  # fmt: skip
    from rollout_worker.verl_reward import LooperRewardManager

    verl_env(regime_w_service)
    monkeypatch.setenv("LOOPER_GROUP_WAIT_S", "0.5")
    rows = [(r, row) for r, row in verl_rows() if row["extra_info"]["index"] == 1][:3]  # 3 of the 4 responses
    manager = LooperRewardManager(config={"actor_rollout_ref": {"rollout": {"n": 4}}}, tokenizer=verl_tokenizer)
    results = run_step(manager, rows, verl_tokenizer)
    reference = scored_by_score_route(regime_w_service, LOOP_QUESTIONS[1]["question"], "26", [r for r, _ in rows])
    assert [r["reward_score"] for r in results] == pytest.approx([t.reward for t in reference.trajectories])
    assert "3 of 4 responses after 0 s" in caplog.text and "reward.num_workers=1" in caplog.text


def test_verl_reward_loop_with_the_service_down_fails_the_step_with_the_reason(verl_tokenizer, monkeypatch):
    from looper_common.local_service import free_port
    from rollout_worker.client import ClientConfig, ServiceUnavailable
    from rollout_worker.verl_reward import LooperRewardManager

    manager = LooperRewardManager(config={"actor_rollout_ref": {"rollout": {"n": 4}}}, tokenizer=verl_tokenizer)
    manager.client = ClientConfig(url=f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_base_s=0.01)
    with pytest.raises(ServiceUnavailable, match="failed 2 times"):
        run_step(manager, verl_rows(), verl_tokenizer)


def test_verl_naive_manager_calls_score_each_response_alone(regime_w_service, verl_env, caplog):
    import rollout_worker.verl_reward as verl_reward

    verl_env(regime_w_service)
    verl_reward._warned_alone = False
    q = QUESTIONS[0]
    results = [
        compute_score(data_source="openai/gsm8k", solution_str=r, ground_truth="12", extra_info={"index": 0})
        for r in q["responses"]
    ]  # the naive manager's call, once per response (verl 0.9.1 naive.py)
    singles = [scored_by_score_route(regime_w_service, "q", "12", [r]).trajectories[0] for r in q["responses"]]
    assert [r["score"] for r in results] == [t.reward for t in singles]
    assert caplog.text.count("scored alone, without its group") == 1


def test_verl_batch_manager_scores_a_20000_character_response(regime_w_service, verl_env):
    verl_env(regime_w_service)
    data_sources, solution_strs, ground_truths, extras = verl_batch()
    solution_strs[0] = LONG
    scores = compute_score(data_sources=data_sources, solution_strs=solution_strs, ground_truths=ground_truths,
                           extra_infos=extras)  # fmt: skip
    assert len(scores) == len(solution_strs) and scores[0]["acc"] == 1.0
