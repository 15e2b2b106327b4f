"""No body gets a 5xx: hostile JSON against every POST route of a real `looper serve` (beyond schemathesis,
which only sends standard JSON).

Hypothesis generates raw bytes, JSON-like texts with the constants only Python's json module reads (NaN,
Infinity), duplicate keys, huge numbers, lone surrogates and deep nesting, and valid bodies with one field made
hostile or one byte made invalid UTF-8. Each goes through the fast path (`application/json`) or FastAPI's
(`application/json; charset=utf-8`). Over 2,000 bodies in all; the last test checks the count and the service.
"""

from __future__ import annotations

import json
import random
import time

import httpx
import pytest
from helpers import InProcessService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looper.samples import sample_group

ROUTES = ("/v1/score", "/v1/score/batch", "/v1/openrlhf/reward")
BODIES_PER_ROUTE = 700
SENT = {"bodies": 0, "seconds": 0.0, "statuses": {}}
HOLE = "\u0000hole\u0000"


def valid_bodies() -> dict[str, dict]:
    group = sample_group(random.Random(3), "fuzz", words=12).model_dump(mode="json")
    rl = {"query": ["Q: 2+2? A: Answer: 4", "Q: 2+2? A: Answer: 5"], "prompts": ["Q: 2+2? A:"] * 2, "labels": ["4"] * 2}
    return {"/v1/score": group, "/v1/score/batch": {"groups": [group]}, "/v1/openrlhf/reward": rl}


VALID = valid_bodies()


def field_paths(value, path=()):
    """Every path to a value inside a body (dict keys and list indices)."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from field_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:2]):
            yield from field_paths(child, (*path, index))


def with_hole(value, path):
    if not path:
        return HOLE
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = with_hole(value[head], rest)
    return copy


SCALARS = st.one_of(
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "-NaN",
            "null",
            "true",
            "false",
            "-0",
            "1e400",
            "-1e400",
            "1" + "0" * 500,
            "0." + "0" * 400 + "1",
            '"\\ud800"',
            '"x\\udfff"',
            '"\\u0000"',
            '""',
            "{}",
            "[]",
            '"NaN"',
            '"Infinity"',
            "12",
            "12.5",
            "-3",
        ]
    ),  # fmt: skip
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=30).map(json.dumps),
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "question_id",
            "question",
            "gold_answer",
            "trajectories",
            "arm_name",
            "text",
            "groups",
            "query",
            "prompts",
            "labels",
        ]
    ),  # fmt: skip
    st.text(max_size=6),
)


def _compose(children):
    return st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        # a list of pairs, not a dict: keys may repeat
        st.lists(st.tuples(KEYS, children), max_size=5).map(
            lambda pairs: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"
        ),
    )


JSONISH = st.recursive(SCALARS, _compose, max_leaves=16).map(str.encode)


def one_hostile_field(route: str):
    body = VALID[route]
    paths = list(field_paths(body))
    return st.tuples(st.sampled_from(paths), SCALARS).map(
        lambda p: json.dumps(with_hole(body, p[0])).replace(json.dumps(HOLE), p[1]).encode("utf-8", "surrogatepass")
    )


def one_bad_byte(route: str):
    text = json.dumps(VALID[route]).encode()
    return st.tuples(
        st.integers(0, len(text)), st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\"])
    ).map(lambda p: text[: p[0]] + p[1] + text[p[0] :])


DEEP = st.tuples(st.integers(1, 200_000), st.sampled_from(["[", '{"a":', '{"groups":['])).map(
    lambda p: (p[1] * p[0]).encode()
)
DUPLICATES = st.sampled_from(ROUTES).map(
    lambda route: b'{"question_id":"a","question_id":"b",' + json.dumps(VALID[route]).encode()[1:]
)


def bodies(route: str):
    return st.one_of(st.binary(max_size=300), JSONISH, one_hostile_field(route), one_bad_byte(route), DEEP, DUPLICATES)


@pytest.fixture(scope="module")
def client(regime_w_service):
    with regime_w_service.client(timeout=60.0) as client:
        yield client


@pytest.mark.parametrize("route", ROUTES)
def test_no_hostile_body_gets_a_server_error(client, route):
    @settings(max_examples=BODIES_PER_ROUTE, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(body=bodies(route), fast=st.booleans())
    def check(body: bytes, fast: bool):
        content_type = "application/json" if fast else "application/json; charset=utf-8"
        start = time.perf_counter()
        response = client.post(route, content=body, headers={"Content-Type": content_type})
        SENT["seconds"] += time.perf_counter() - start
        SENT["bodies"] += 1
        SENT["statuses"][response.status_code] = SENT["statuses"].get(response.status_code, 0) + 1
        assert response.status_code < 500, (body[:300], response.text[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["detail"], response.text  # a message, never an empty error

    check()


def test_the_bodies_of_the_issue_get_422_with_a_message(client):
    for route, body in (
        ("/v1/score", b'{"question_id":"q","question":"x","gold_answer":NaN,"trajectories":[]}'),
        ("/v1/score/batch", b'{"groups":[{"question_id":"q","question":"x","gold_answer":Infinity,"trajectories":[]}]}'),
        ("/v1/score", b'{"question_id":"q","question":"x","gold_answer":null,'
                      b'"trajectories":[{"arm_name":-Infinity,"text":"Answer: 1"}]}'),
        ("/v1/openrlhf/reward", b'{"query":["a"],"prompts":["a"],"labels":[NaN]}'),
    ):  # fmt: skip
        for content_type in ("application/json", "application/json; charset=utf-8"):
            response = client.post(route, content=body, headers={"Content-Type": content_type})
            assert response.status_code == 422, response.text
            assert "not standard JSON" in response.json()["detail"]


def test_a_gold_answer_may_be_a_json_number(client):
    body = dict(VALID["/v1/score"])
    for gold, expected in ((12, "12"), (12.5, "12.5"), (-3, "-3")):
        response = client.post("/v1/score", json={**body, "gold_answer": gold})
        assert response.status_code == 200, response.text
        assert response.json()["reference_answer"] == expected
    for gold in (True, 10**16, [12], {"n": 12}):
        response = client.post("/v1/score", json={**body, "gold_answer": gold})
        assert response.status_code == 422, response.text
    labels = {**VALID["/v1/openrlhf/reward"], "labels": [4, 4.0]}
    assert client.post("/v1/openrlhf/reward", json=labels).json()["scores"] == [1.0, 0.0]


def test_after_the_fuzz_the_service_is_healthy_and_never_answered_5xx(client, regime_w_service):
    assert SENT["bodies"] >= 2000, SENT
    print(f"\n{SENT['bodies']} hostile bodies in {SENT['seconds']:.1f} s of requests; statuses {SENT['statuses']}")
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/score", json=VALID["/v1/score"]).status_code == 200
    assert "Traceback" not in regime_w_service.log()


class BrokenScorer:
    """The stub scorer with a bug in score(): what the last-resort handler is for."""

    def __init__(self):
        from reward_service.settings import ServiceSettings
        from reward_service.stub import StubScorer

        self._stub = StubScorer(ServiceSettings(stub=True, require_auth=False))
        self.name, self.version, self.path_mode, self.arms = "broken", "broken-1", "none", self._stub.arms

    def __getattr__(self, name):
        return getattr(self._stub, name)

    def score(self, groups):
        raise RuntimeError("secret internals of a bug")


def test_an_unexpected_failure_answers_a_generic_500_with_an_id_to_find_it_by(caplog):
    with InProcessService(scorer=BrokenScorer()) as service, caplog.at_level("ERROR", logger="looper.service"):
        response = httpx.post(f"{service.url}/v1/score", json=VALID["/v1/score"], timeout=30)
    assert response.status_code == 500
    answer = response.json()
    assert answer["detail"] == "internal error" and len(answer["request_id"]) == 16
    assert "secret" not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if answer["request_id"] in r.getMessage()]
    assert logged and "secret internals" in str(logged[0].exc_info[1])
