"""rollout_worker's ServiceClient against the real service: results, fail-fast 4xx, retries, an absent service."""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from looper.samples import sample_group
from looper_common.local_service import free_port, local_service
from rollout_worker.client import ClientConfig, ServiceClient, ServiceError, ServiceUnavailable
from shared_schemas.models import PromptQuestion, PromptsRequest, ScoreRequest, ScoreResponse

FAST_RETRY = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


def run(coro):
    return asyncio.run(coro)


def groups(n: int, words: int = 40) -> list[ScoreRequest]:
    rng = random.Random(11)
    return [sample_group(rng, f"client-{k}", words=words) for k in range(n)]


def request_count(url: str, route: str, status: int) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "looper_http_requests_total" and sample.labels == {
                "route": route,
                "status": str(status),
            }:
                return sample.value
    return 0.0


def client_for(service, **overrides) -> ServiceClient:
    return ServiceClient(ClientConfig(url=service.url, token=service.token, timeout_s=30.0, **overrides))


def test_happy_path(service):
    requests = groups(3)

    async def go():
        async with client_for(service, max_concurrency=2) as client:
            await client.wait_ready(timeout_s=10)
            arm_set = await client.arms()
            prompts = await client.prompts([PromptQuestion(question_id="p", question=requests[0].question)])
            singles = await asyncio.gather(*(client.score(r) for r in requests))
            batch = await client.score_batch(requests)
            return arm_set, prompts, singles, batch

    arm_set, prompts, singles, batch = run(go())
    assert len(arm_set.arms) == 11
    assert [p.arm_name for p in prompts.questions[0].prompts] == [a.name for a in arm_set.arms]
    assert [r.question_id for r in singles] == [r.question_id for r in batch] == [r.question_id for r in requests]
    assert singles == batch
    direct = httpx.post(f"{service.url}/v1/score", json=requests[0].model_dump(mode="json"), headers=service.headers)
    assert ScoreResponse.model_validate_json(direct.content) == singles[0]
    for request, result in zip(requests, singles, strict=True):
        assert [t.arm_name for t in result.trajectories] == [t.arm_name for t in request.trajectories]


def test_4xx_fails_fast_with_the_services_message(service):
    bad = groups(1)[0].model_copy(update={"question_id": "bad-gold", "gold_answer": "unknown"})
    before = request_count(service.url, "/v1/score", 422)

    async def go():
        async with client_for(service, max_retries=5, backoff_base_s=5.0) as client:
            await client.score(bad)

    with pytest.raises(ServiceError) as error:
        run(go())
    assert error.value.status == 422
    assert "'bad-gold'" in str(error.value) and "no number" in str(error.value)
    assert request_count(service.url, "/v1/score", 422) - before == 1  # sent once, not retried


def test_wrong_token_is_a_403_service_error_sent_once(regime_w_service):
    before = request_count(regime_w_service.url, "/v1/arms", 403)

    async def go():
        config = ClientConfig(url=regime_w_service.url, token="w" * 40, max_retries=5, backoff_base_s=5.0)
        async with ServiceClient(config) as client:
            await client.arms()

    with pytest.raises(ServiceError) as error:
        run(go())
    assert error.value.status == 403 and "invalid bearer token" in str(error.value)
    assert request_count(regime_w_service.url, "/v1/arms", 403) - before == 1


def test_validation_errors_become_a_readable_message(regime_w_service):
    async def go():
        async with client_for(regime_w_service, max_retries=5, backoff_base_s=5.0) as client:
            # A body of the wrong model, as a client out of date with the contract would send.
            wrong = PromptsRequest(questions=[PromptQuestion(question_id="q", question="What is 1 + 1?")])
            await client._call("POST", "/v1/score", ScoreResponse, wrong)

    with pytest.raises(ServiceError) as error:
        run(go())
    message = str(error.value)
    assert error.value.status == 422
    assert "body.trajectories: Field required" in message and "body.questions: Extra inputs" in message


def test_killed_service_raises_service_unavailable_after_the_retry_budget(start_service):
    with start_service("killed", stub=True) as service:
        request = groups(1)[0]

        async def first_then_dead():
            async with client_for(service, max_retries=3, **FAST_RETRY) as client:
                first = await client.score(request)
                service.local.process.kill()
                service.local.process.wait()
                try:
                    await client.score(request)
                except ServiceUnavailable as exc:
                    return first, exc
            raise AssertionError("no ServiceUnavailable")

        first, error = run(first_then_dead())
    assert first.question_id == request.question_id
    assert "failed 4 times" in str(error) and "/v1/score" in str(error)
    assert "ConnectError" in str(error)


def test_service_started_late_is_reached_through_retries():
    port, token = free_port(), secrets.token_urlsafe(32)
    request = groups(1)[0]
    started, stop, failure = {}, threading.Event(), []

    def serve_later():
        try:
            time.sleep(0.5)
            with local_service(stub=True, port=port, token=token, ready_timeout_s=30):
                started["ready_at"] = time.monotonic()
                stop.wait(60)
        except Exception as exc:  # surfaced by the assertions below
            failure.append(exc)

    async def go():
        config = ClientConfig(url=f"http://127.0.0.1:{port}", token=token, max_retries=12, backoff_max_s=1.0)
        async with ServiceClient(config) as client:
            with pytest.raises(httpx.ConnectError):
                await client._http.get("/healthz")  # nothing listens yet
            started["call_at"] = time.monotonic()
            return await client.score(request)

    thread = threading.Thread(target=serve_later, daemon=True)
    thread.start()
    try:
        result = run(go())
    finally:
        stop.set()
        thread.join(30)
    assert not failure, failure
    assert started["call_at"] < started["ready_at"]  # the call began before the service was up
    assert result.question_id == request.question_id
    assert [t.arm_name for t in result.trajectories] == [t.arm_name for t in request.trajectories]
