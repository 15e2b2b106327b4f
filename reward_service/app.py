"""The reward service's HTTP layer: thin routes over a scorer (Regime W, or the public stub)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Literal

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from reward_service.scorer import Scorer, ScoringError
from reward_service.settings import ServiceSettings
from shared_schemas.latex import answer_budget
from shared_schemas.models import (
    ArmSet,
    BatchScoreRequest,
    BatchScoreResponse,
    ErrorResponse,
    OpenRLHFExtraLogs,
    OpenRLHFRewardRequest,
    OpenRLHFRewardResponse,
    PromptsRequest,
    PromptsResponse,
    ScoreRequest,
    ScoreResponse,
    ScorersResponse,
    Trajectory,
    bounded_text,
    gold_text,
)

log = logging.getLogger("looper.service")

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing bearer token"},
    403: {"model": ErrorResponse, "description": "Wrong bearer token"},
    413: {"model": ErrorResponse, "description": "Body larger than the service's limit"},
    422: {"model": ErrorResponse, "description": "Invalid request, or over a size limit"},
    503: {"model": ErrorResponse, "description": "Scorer still loading"},
}


def build_scorer(settings: ServiceSettings) -> Scorer:
    if settings.stub:
        from reward_service.stub import StubScorer

        return StubScorer(settings)
    from reward_service.regime_w import RegimeWScorer

    return RegimeWScorer(settings)


class Metrics:
    def __init__(self, scorer: Scorer):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "looper_http_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "looper_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.groups = Counter("looper_groups_scored_total", "Question groups scored", registry=self.registry)
        self.trajectories = Counter("looper_trajectories_scored_total", "Trajectories scored", registry=self.registry)
        self.truncated = Counter(
            "looper_truncated_texts_total",
            "Trajectory texts over max_text_chars scored bounded (training routes)",
            registry=self.registry,
        )
        self.answer_timeouts = Counter(
            "looper_answer_timeouts_total",
            "Trajectories whose LaTeX answer was not evaluated within the request's parsing budget (no answer)",
            registry=self.registry,
        )
        info = Gauge(
            "looper_scorer_info", "Scorer in use", ["scorer", "scorer_version", "path_mode"], registry=self.registry
        )
        info.labels(scorer.name, scorer.version, scorer.path_mode).set(1)


class MetricsMiddleware:
    """Counts and times every request (routes outside the API share one label: bounded cardinality), gives each
    an id (`X-Request-ID`), and logs every 4xx in one line with its reason: never the token, never the body."""

    def __init__(self, app, metrics: Metrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = {"code": 500}
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        error_body = bytearray()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body" and 400 <= status["code"] < 500 and len(error_body) < 8192:
                error_body.extend(message.get("body", b"")[:8192])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route, str(status["code"])).inc()
            if 400 <= status["code"] < 500:
                log.warning(
                    "%s %s -> %d: %s [request %s]",
                    scope["method"], scope["path"][:120], status["code"], error_reason(bytes(error_body)), request_id,
                )  # fmt: skip


def error_reason(body: bytes) -> str:
    """The reason an error body gives, in one line: its detail, or each validation error's field and message
    (never the input it echoes)."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return "(no reason given)"
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in detail if isinstance(e, dict)
        )
    return " ".join(str(detail).split())[:300]


def replay_body(body: bytes, receive):
    """An ASGI receive that hands the app a body already read, then the connection's own messages."""
    delivered = False

    async def replay():
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class _NonStandardConstant(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NonStandardConstant(name)


def nonstandard_json(body: bytes) -> str | None:
    """Why `body` is not standard JSON, when it uses a constant only Python's json module reads (NaN, Infinity,
    -Infinity: `json.dumps` writes them by default, so a client bug sends them); None otherwise. Bodies without
    those letters (all but a few) are not parsed here."""
    if b"NaN" not in body and b"Infinity" not in body:
        return None
    try:
        json.loads(body, parse_constant=_refuse_constant)
    except _NonStandardConstant as exc:
        return f"request body is not standard JSON: {exc.args[0]} is not a JSON value (send a finite number or null)"
    except (ValueError, RecursionError):
        return None  # not JSON at all: the route answers 422 for that
    return None


class BodyGuard:
    """Reads the body before the app does: 413 past the size limit (declared or streamed), 422 for a body that
    uses JSON's non-standard constants, so neither the fast path nor FastAPI ever parses one."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if (reason := nonstandard_json(body)) is not None:
            return await _send_error(send, 422, reason)
        await self.app(scope, replay_body(body, receive), send)

    async def _too_large(self, send):
        await _send_error(send, 413, f"request body larger than {self.max_bytes} bytes")


async def _send_error(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json_safe(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def validation_errors(errors) -> list[dict]:
    """FastAPI's 422 detail, each error's `input` and `ctx` kept only where they are plain JSON: an error answer
    never echoes what it cannot serialise (a NaN, an exception object)."""
    cleaned = []
    for error in errors:
        item = {k: error[k] for k in ("type", "loc", "msg") if k in error}
        for key in ("input", "ctx"):
            if key in error and _json_safe(error[key]):
                item[key] = error[key]
        cleaned.append(item)
    return cleaned


class ScoringFastPath:
    """The scoring routes' common case without FastAPI's request machinery (json.loads, validation of the
    Python objects, dependency resolution): pydantic validates the raw body in one step.

    Only a POST to a scoring route with `Content-Type: application/json` and the exact bearer token is
    tried here; any request it cannot answer (not valid JSON, invalid fields, over a limit, a scoring error)
    goes on to the FastAPI route unchanged, as does every other request, so every error is FastAPI's own
    answer. A request it answers gets the same bytes the route would send (the JSON parsers agree wherever
    pydantic accepts a document; tests/test_service_fast_path.py checks both paths answer alike).
    """

    def __init__(self, app, handlers: dict, token: str | None):
        self.app, self.handlers = app, handlers
        self.authorization = None if token is None else f"Bearer {token}".encode("latin-1")

    async def __call__(self, scope, receive, send):
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None or not self._plain(scope["headers"]):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        response = await handler(body, scope.get("query_string", b""))
        if response is not None:
            return await response(scope, receive, send)
        await self.app(scope, replay_body(body, receive), send)

    def _plain(self, headers) -> bool:
        content_type = authorization = None
        for name, value in headers:
            if name == b"content-type":
                if content_type is not None:
                    return False
                content_type = value
            elif name == b"authorization":
                if authorization is not None:
                    return False
                authorization = value
        if content_type != b"application/json":
            return False
        if self.authorization is None:
            return True
        return authorization is not None and hmac.compare_digest(authorization, self.authorization)


def score_within_budget(scorer: Scorer, groups: list[ScoreRequest], budget_s: float) -> list[ScoreResponse]:
    """Score `groups` with `budget_s` seconds of LaTeX answer evaluation for the whole request."""
    with answer_budget(budget_s):
        return scorer.score(groups)


def check_limits(groups: list[ScoreRequest], settings: ServiceSettings, *, texts: bool = True) -> None:
    if len(groups) > settings.max_batch_groups:
        raise HTTPException(422, f"{len(groups)} groups in one batch; the limit is {settings.max_batch_groups}")
    for group in groups:
        if len(group.trajectories) > settings.max_group_size:
            raise HTTPException(
                422,
                f"question {group.question_id!r}: {len(group.trajectories)} trajectories; "
                f"the limit is {settings.max_group_size}",
            )
        for k, trajectory in enumerate(group.trajectories):
            if texts and len(trajectory.text) > settings.max_text_chars:
                raise HTTPException(
                    422,
                    f"question {group.question_id!r}, trajectory {k}: {len(trajectory.text)} characters; "
                    f"the limit is {settings.max_text_chars} (looper serve --max-text-chars; training clients "
                    "send /v1/score/batch?overlong=truncate to have long texts scored bounded)",
                )


Cut = set[tuple[int, int]]  # (group, trajectory) positions whose text was bounded


def bound_groups(groups: list[ScoreRequest], limit: int) -> tuple[list[ScoreRequest], Cut]:
    """Each text over `limit` characters replaced by its bounded form (`bounded_text`), and where they were."""
    bounded, cut = [], set()
    for g, group in enumerate(groups):
        long = [k for k, t in enumerate(group.trajectories) if len(t.text) > limit]
        if long:
            trajectories = list(group.trajectories)
            for k in long:
                trajectories[k] = Trajectory(
                    arm_name=trajectories[k].arm_name, text=bounded_text(trajectories[k].text, limit)
                )
                cut.add((g, k))
            group = group.model_copy(update={"trajectories": trajectories})
        bounded.append(group)
    return bounded, cut


def flag_truncated(results: list[ScoreResponse], cut: Cut) -> list[ScoreResponse]:
    results = list(results)
    for g in {g for g, _ in cut}:
        trajectories = [
            t.model_copy(update={"truncated": True}) if (g, k) in cut else t
            for k, t in enumerate(results[g].trajectories)
        ]
        results[g] = results[g].model_copy(update={"trajectories": trajectories})
    return results


# Special tokens a response may end with: OpenRLHF decodes prompt + response with skip_special_tokens=False.
_END_TOKEN = re.compile(r"(?:<\|[^|<>\s]{1,40}\|>|<\uff5c[^\uff5c<>\s]{1,40}\uff5c>|</s>)\Z")


def strip_end_tokens(text: str) -> str:
    """Drop trailing special tokens and whitespace (linear: each search looks at a short tail only)."""
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        match = _END_TOKEN.search(text, max(0, end - 48), end)
        if match is None:
            return text[:end]
        end = match.start()


def openrlhf_groups(
    request: OpenRLHFRewardRequest, settings: ServiceSettings
) -> tuple[list[ScoreRequest], list[tuple[int, int]], Cut]:
    """OpenRLHF's samples as Regime W groups, one per (prompt, label), each sample's (group, index) in them, and
    the samples whose solution was bounded.

    A sample's solution is its query after the prompt (the whole query when the prompt is not in it, as after
    OpenRLHF truncated a long prompt), less trailing special tokens. A solution over max_text_chars (a long
    reasoning trace) is scored bounded, never refused: a training step must not fail on one long sample.
    """
    members: dict[tuple[str, str | None], list[int]] = {}
    for i, (prompt, label) in enumerate(zip(request.prompts, request.labels, strict=True)):
        gold = None if label is None or (isinstance(label, str) and not label.strip()) else gold_text(label)
        members.setdefault((prompt, gold), []).append(i)
    if len(members) > settings.max_batch_groups:
        raise HTTPException(
            422, f"{len(members)} distinct prompts in one call; the limit is {settings.max_batch_groups}"
        )
    groups, positions, cut = [], [(0, 0)] * len(request.query), set()
    for g, ((prompt, gold), indices) in enumerate(members.items()):
        if gold is None and len(indices) == 1 and not settings.allow_label_free_singletons:
            message = (  # the remedy within the first 200 characters: all that OpenRLHF's log shows
                f"sample {indices[0]}: no label and no other sample of its prompt, so no label-free score. Set "
                "OpenRLHF's --label_key, or send a prompt's samples together. (Its own answer would be its "
                "pseudo-label: always correct; `looper serve --allow-label-free-singletons` scores it anyway.)"
            )
            log_once_a_minute("label-free-singleton", message)
            raise HTTPException(422, message)
        if len(indices) > settings.max_group_size:
            raise HTTPException(
                422,
                f"{len(indices)} samples of one prompt (sample {indices[0]}); the limit is {settings.max_group_size}",
            )
        trajectories = []
        for k, i in enumerate(indices):
            query = request.query[i]
            start = query.find(prompt)  # 0 as a rule; later when the decode added a BOS marker in front
            solution = strip_end_tokens(query[start + len(prompt) :] if start >= 0 else query)
            if len(solution) > settings.max_text_chars:
                solution = bounded_text(solution, settings.max_text_chars)
                cut.add((g, k))
            trajectories.append(Trajectory(arm_name=f"sample_{k}", text=solution))
            positions[i] = (g, k)
        question_id = "openrlhf-" + hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        groups.append(
            ScoreRequest(question_id=question_id, question=prompt, gold_answer=gold, trajectories=trajectories)
        )
    return groups, positions, cut


_last_logged: dict[str, float] = {}


def log_once_a_minute(kind: str, message: str) -> None:
    now = time.monotonic()
    if now - _last_logged.get(kind, -60.0) >= 60.0:
        _last_logged[kind] = now
        log.warning("%s (logged once a minute)", message)


def openrlhf_response(results: list[ScoreResponse], positions: list[tuple[int, int]]) -> OpenRLHFRewardResponse:
    samples = [results[g].trajectories[k] for g, k in positions]
    correct = [1.0 if t.correct else 0.0 for t in samples]
    return OpenRLHFRewardResponse(
        rewards=[t.reward for t in samples],
        scores=correct,
        extra_logs=OpenRLHFExtraLogs(
            s_end=[t.s_end for t in samples],
            s_path=[t.s_path for t in samples],
            s_cf=[t.s_cf for t in samples],
            s_wm=[t.coherence for t in samples],
            correct=correct,
        ),
    )


def bearer_auth(settings: ServiceSettings):
    scheme = HTTPBearer(auto_error=False, description="LOOPER_SERVICE_TOKEN")
    if not settings.require_auth:

        async def open_access() -> None:
            return None

        return open_access
    expected = settings.token.get_secret_value().encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(403, "invalid bearer token")

    return check


def create_app(settings: ServiceSettings, scorer: Scorer | None = None) -> FastAPI:
    scorer = scorer or build_scorer(settings)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(scorer.load)
        state["ready"] = True
        log.info(
            "scorer %s (%s) ready (path mode %s, auth %s)",
            scorer.name, scorer.version, scorer.path_mode, settings.require_auth,
        )  # fmt: skip
        yield

    app = FastAPI(
        title="Looper reward service",
        version=scorer.version,
        description="Regime W multi-path coherence scoring for grade-school math rollouts.",
        lifespan=lifespan,
    )
    auth = [Depends(bearer_auth(settings))]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers an undecodable body (bytes that are not UTF-8) with an undocumented 400.
        if exc.status_code == 400:
            return JSONResponse({"detail": "request body is not valid JSON (UTF-8 expected)"}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError) -> Response:
        # ASCII-escaped, so a lone surrogate in an echoed input is still valid JSON
        body = json.dumps({"detail": validation_errors(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception) -> Response:
        """The last resort: a generic answer with an id to find the traceback by in the log, never internals."""
        request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex[:16]
        log.error("internal error %s on %s %s", request_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)

    async def run_scorer(groups: list[ScoreRequest], *, truncate: bool = False, cut: Cut = frozenset()):
        """Score (off the event loop); `truncate`: texts over max_text_chars are scored bounded, not refused;
        `cut`: positions the caller bounded already. Bounded trajectories come back flagged `truncated`."""
        if not state["ready"]:
            raise HTTPException(503, "scorer is still loading")
        check_limits(groups, settings, texts=not truncate)
        if truncate:
            groups, bounded = bound_groups(groups, settings.max_text_chars)
            cut = set(cut) | bounded
        try:
            # Off the event loop in every mode: a slow request must never hold up /healthz or other clients.
            results = await anyio.to_thread.run_sync(score_within_budget, scorer, groups, settings.answer_budget_s)
        except ScoringError as exc:
            raise HTTPException(422, str(exc)) from exc
        metrics.groups.inc(len(groups))
        metrics.trajectories.inc(sum(len(g.trajectories) for g in groups))
        timeouts = sum(t.answer_timeout for r in results for t in r.trajectories)
        if timeouts:
            metrics.answer_timeouts.inc(timeouts)
        if cut:
            metrics.truncated.inc(len(cut))
            results = flag_truncated(results, cut)
        return results

    def json_response(model) -> Response:
        return Response(model.model_dump_json(), media_type="application/json")

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=auth, responses=_ERRORS)
    async def score(request: ScoreRequest) -> Response:
        """Score one question's group of trajectories."""
        (result,) = await run_scorer([request])
        return json_response(result)

    @app.post("/v1/score/batch", response_model=BatchScoreResponse, dependencies=auth, responses=_ERRORS)
    async def score_batch(
        request: BatchScoreRequest,
        overlong: Literal["refuse", "truncate"] = Query(
            "refuse",
            description="A text over the service's max_text_chars: 'refuse' (422) or 'truncate' (scored bounded, "
            "flagged truncated; for training clients, where one long trace must not fail a step).",
        ),
    ) -> Response:
        """Score many groups in one call (throughput); results in request order."""
        results = await run_scorer(request.groups, truncate=overlong == "truncate")
        return json_response(BatchScoreResponse(results=results))

    async def fast_score(body: bytes, query: bytes) -> Response | None:
        if query:
            return None  # the route answers (and validates the query)
        try:
            request = ScoreRequest.model_validate_json(body)
            (result,) = await run_scorer([request])
        except (ValidationError, HTTPException):
            return None  # the route answers (and raises the same HTTPException)
        return json_response(result)

    async def fast_score_batch(body: bytes, query: bytes) -> Response | None:
        if query not in (b"", b"overlong=refuse", b"overlong=truncate"):
            return None
        try:
            request = BatchScoreRequest.model_validate_json(body)
            results = await run_scorer(request.groups, truncate=query == b"overlong=truncate")
        except (ValidationError, HTTPException):
            return None
        return json_response(BatchScoreResponse(results=results))

    @app.post("/v1/openrlhf/reward", response_model=OpenRLHFRewardResponse, dependencies=auth, responses=_ERRORS)
    async def openrlhf_reward(request: OpenRLHFRewardRequest) -> Response:
        """OpenRLHF's remote reward call: samples grouped by prompt, each group scored as one Regime W group."""
        groups, positions, cut = openrlhf_groups(request, settings)
        return json_response(openrlhf_response(await run_scorer(groups, cut=cut), positions))

    async def fast_openrlhf_reward(body: bytes, query: bytes) -> Response | None:
        if query:
            return None
        try:
            request = OpenRLHFRewardRequest.model_validate_json(body)
            groups, positions, cut = openrlhf_groups(request, settings)
            results = await run_scorer(groups, cut=cut)
        except (ValidationError, HTTPException):
            return None
        return json_response(openrlhf_response(results, positions))

    @app.get("/v1/arms", response_model=ArmSet, dependencies=auth, responses=_ERRORS)
    async def arms() -> Response:
        """The arm specs: prompts, temperature, top_p, seed per arm."""
        return json_response(scorer.arm_set())

    @app.get("/v1/scorers", response_model=ScorersResponse, dependencies=auth, responses=_ERRORS)
    async def scorers() -> Response:
        """The scorers this service can run, the active one, and the weights each one's rewards read."""
        return json_response(scorer.scorers())

    @app.post("/v1/prompts", response_model=PromptsResponse, dependencies=auth, responses=_ERRORS)
    async def prompts(request: PromptsRequest) -> Response:
        """Every arm's rendered prompts for each question (the rephrase probe's paraphrase included)."""
        if len(request.questions) > settings.max_batch_groups:
            raise HTTPException(422, f"{len(request.questions)} questions; the limit is {settings.max_batch_groups}")
        return json_response(scorer.prompts(request.questions))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return JSONResponse({"detail": "scorer is still loading"}, status_code=503)
        return JSONResponse(
            {"status": "ready", "scorer": scorer.name, "scorer_version": scorer.version, "path_mode": scorer.path_mode}
        )

    @app.get("/metrics", response_class=Response)
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    metrics = Metrics(scorer)
    routes = {r.path for r in app.routes}
    fast_routes = {
        "/v1/score": fast_score,
        "/v1/score/batch": fast_score_batch,
        "/v1/openrlhf/reward": fast_openrlhf_reward,
    }
    token = settings.token.get_secret_value() if settings.require_auth else None
    app.add_middleware(ScoringFastPath, handlers=fast_routes, token=token)
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    app.state.settings = settings
    app.state.scorer = scorer
    return app
