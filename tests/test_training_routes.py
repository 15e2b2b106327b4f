"""The routes training engines call: a long reasoning trace is scored bounded, never fatal; a label-free sample
with no group is refused with a reason; every 4xx is logged in one line with its reason and request id."""

from __future__ import annotations

import random
import re

import pytest

from looper.samples import sample_group

LIMIT = 16_000


@pytest.fixture(scope="module")
def short_texts(start_service):
    with start_service("training-routes", extra_args=["--max-text-chars", str(LIMIT)]) as service:
        yield service


def long_trace(answer: str, chars: int = 20_000) -> str:
    """A reasoning trace of `chars` characters whose final answer is on its last line."""
    body = "Let me think step by step. " * (chars // 27 + 1)
    return body[: chars - len(answer) - 9] + f"\nAnswer: {answer}"


def counter(client, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_long_trace_in_a_training_batch_is_scored_bounded_and_flagged(short_texts):
    group = sample_group(random.Random(5), "long", words=20).model_dump(mode="json")
    group["gold_answer"] = "#### 42"
    group["trajectories"][2]["text"] = long_trace("42")
    with short_texts.client() as client:
        refused = client.post("/v1/score/batch", json={"groups": [group]})
        assert refused.status_code == 422 and "overlong=truncate" in refused.json()["detail"]
        before = counter(client, "looper_truncated_texts_total")
        for content_type in ("application/json", "application/json; charset=utf-8"):  # fast path and FastAPI's
            response = client.post(
                "/v1/score/batch?overlong=truncate", json={"groups": [group]}, headers={"Content-Type": content_type}
            )
            assert response.status_code == 200, response.text
            scored = response.json()["results"][0]["trajectories"]
            assert [t["truncated"] for t in scored] == [k == 2 for k in range(len(scored))]
            assert scored[2]["answer"] == "42" and scored[2]["correct"]  # read from the tail
            assert scored[2]["words"] < LIMIT // 4  # the similarity terms saw the bounded text
        assert counter(client, "looper_truncated_texts_total") == before + 2
        assert client.post("/v1/score/batch?overlong=maybe", json={"groups": [group]}).status_code == 422


def openrlhf_body(responses: list[str], labels: list) -> dict:
    prompt = "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n"
    return {"query": [prompt + r + "<|im_end|>" for r in responses], "prompts": [prompt] * len(responses),
            "labels": labels}  # fmt: skip


def test_openrlhf_scores_a_20000_character_response(short_texts):
    body = openrlhf_body([long_trace("42"), "6 * 7 = 42\nAnswer: 42", "Answer: 41"], ["#### 42"] * 3)
    with short_texts.client() as client:
        response = client.post("/v1/openrlhf/reward", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["scores"] == [1.0, 1.0, 0.0]


def test_openrlhf_refuses_a_label_free_sample_without_its_group_and_says_why(short_texts, start_service):
    alone = openrlhf_body(["Answer: 41"], [""])
    with short_texts.client() as client:
        response = client.post("/v1/openrlhf/reward", json=alone)
        assert response.status_code == 422
        assert "--label_key" in response.text[:200]  # OpenRLHF logs the first 200 characters of the body
        group = openrlhf_body(["Answer: 42", "Answer: 42", "Answer: 41"], [""] * 3)
        assert client.post("/v1/openrlhf/reward", json=group).json()["scores"] == [1.0, 1.0, 0.0]
    short_texts.log_with("POST /v1/openrlhf/reward -> 422: sample 0")
    assert short_texts.log().count("no label-free score. Set") == 2  # the 4xx line, and the once-a-minute line
    with start_service("singletons", stub=True, extra_args=["--allow-label-free-singletons"]) as opted_in:
        with opted_in.client() as client:
            assert client.post("/v1/openrlhf/reward", json=alone).json()["scores"] == [1.0]


def test_every_4xx_is_logged_in_one_line_with_its_reason_and_request_id(short_texts):
    with short_texts.client() as client:
        response = client.post("/v1/score", json={"question_id": "q", "question": "x", "trajectories": []})
        unauthorised = client.get("/v1/arms", headers={"Authorization": "Bearer wrong-token-0123456789"})
    request_id = response.headers["x-request-id"]
    line = next(line for line in short_texts.log_with(request_id).splitlines() if request_id in line)
    assert "POST /v1/score -> 422: body.trajectories: List should have at least 1 item" in line
    forbidden = f"GET /v1/arms -> 403: invalid bearer token [request {unauthorised.headers['x-request-id']}]"
    assert forbidden in short_texts.log_with(forbidden)
    assert short_texts.token not in short_texts.log() and "wrong-token" not in short_texts.log()
