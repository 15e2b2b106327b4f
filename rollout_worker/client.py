"""Async client of the reward service: pooled connections, bounded concurrency, retries with backoff.

Transient failures (connection errors, timeouts, 429, 5xx) are retried with exponential backoff and
jitter; a 4xx is the caller's fault and fails at once with the service's own message.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TypeVar

import httpx
from pydantic import BaseModel

from shared_schemas.models import (
    ArmSet,
    BatchScoreRequest,
    BatchScoreResponse,
    PromptQuestion,
    PromptsRequest,
    PromptsResponse,
    ScoreRequest,
    ScoreResponse,
    ScorersResponse,
)

Model = TypeVar("Model", bound=BaseModel)
RETRY_STATUS = {429, 500, 502, 503, 504}


class ServiceError(RuntimeError):
    """The service refused the request (4xx): retrying cannot help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"reward service answered {status}: {message}")
        self.status = status


class ServiceUnavailable(RuntimeError):
    """The service could not be reached (or kept failing) within the retry budget."""


@dataclass(frozen=True)
class ClientConfig:
    url: str = "http://127.0.0.1:8000"
    token: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 10.0
    max_concurrency: int = 16


def _detail(response: httpx.Response) -> str:
    """The service's message; FastAPI's validation errors as 'body.field: msg; ...'."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    detail = body.get("detail", response.text) if isinstance(body, dict) else body
    if isinstance(detail, list) and all(isinstance(e, dict) for e in detail):
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', e)}" for e in detail)
    return detail if isinstance(detail, str) else str(detail)


class ServiceClient:
    def __init__(self, config: ClientConfig):
        self.config = config
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
        self._http = httpx.AsyncClient(base_url=config.url, headers=headers, timeout=config.timeout_s, limits=limits)
        self._slots = asyncio.Semaphore(config.max_concurrency)

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, model: type[Model], body: BaseModel | None = None) -> Model:
        content = body.model_dump_json().encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        last = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
            try:
                async with self._slots:
                    response = await self._http.request(method, path, content=content, headers=headers)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"{response.status_code}: {_detail(response)}"
                continue
            if response.status_code >= 400:
                raise ServiceError(response.status_code, _detail(response))
            return model.model_validate_json(response.content)
        raise ServiceUnavailable(
            f"reward service at {self.config.url}{path} failed {self.config.max_retries + 1} times; last: {last}"
        )

    async def arms(self) -> ArmSet:
        return await self._call("GET", "/v1/arms", ArmSet)

    async def prompts(self, questions: list[PromptQuestion]) -> PromptsResponse:
        return await self._call("POST", "/v1/prompts", PromptsResponse, PromptsRequest(questions=questions))

    async def scorers(self) -> ScorersResponse:
        return await self._call("GET", "/v1/scorers", ScorersResponse)

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        return await self._call("POST", "/v1/score", ScoreResponse, request)

    async def score_batch(self, groups: list[ScoreRequest], *, truncate: bool = False) -> list[ScoreResponse]:
        """`truncate`: texts over the service's max_text_chars are scored bounded and flagged, not refused (what a
        training client wants: one long trace must not fail a step)."""
        path = "/v1/score/batch?overlong=truncate" if truncate else "/v1/score/batch"
        response = await self._call("POST", path, BatchScoreResponse, BatchScoreRequest(groups=groups))
        return response.results

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                if (await self._http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise ServiceUnavailable(f"reward service at {self.config.url} not ready after {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
