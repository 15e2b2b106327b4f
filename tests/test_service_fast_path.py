"""The service's speed-ups compute exactly what the plain code computes.

- answer anchors found by keyword (`_anchor_matches`) = `_ANCHORS.finditer`;
- `word_count` = `len(text.split())`, the byte-table tokeniser = `token_set`, the bit-mask Jaccard = `jaccard`;
- the scoring routes' fast path (raw body -> pydantic) answers byte for byte as FastAPI's route does;
- `looper serve --workers 2` serves from two processes and stops cleanly.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from itertools import combinations

import httpx
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looper.samples import sample_group
from reward_service.scoring import _token_sets, jaccard, jaccard_matrix, token_set, word_count
from shared_schemas.answers import _ANCHORS, _anchor_matches

MANY = settings(max_examples=600, deadline=None)

# Pieces that make anchors, near-anchors and the characters IGNORECASE treats specially (long s, dotted
# and dotless i, Kelvin sign) and unicode whitespace.
ANCHOR_BITS = st.sampled_from(
    ["answer", "Answer", "ANSWER", "an\u017fwer", "the", "THE", "The", "final", "Final", "f\u0130nal", "f\u0131nal"]
    + ["####", "#", "is", "Is", ":", " ", "  ", "\n", "\t", "\u00a0", "\u2003", "*", "=", "42", "1,000", "x", "."]
    + ["the answer is", "final answer:", "answers", "thee", "ffinal", "\u00e9", "\u212a", "\\boxed{5}"]
)
TEXT_BITS = st.sampled_from(
    [" ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\x85", "\u00a0", "\u2003", "\u3000"]
    + ["a", "Z", "7", ".", ",", "$", "_", "-", "\x00", "\u00e9", "\u0130", "\u212a", "\u017f", "\u00df", "\u00b2"]
)


@MANY
@given(st.lists(ANCHOR_BITS, max_size=30).map("".join))
def test_anchor_matches_are_finditer(text):
    expected = [(m.span(), m.group("rest")) for m in _ANCHORS.finditer(text)]
    assert [(m.span(), m.group("rest")) for m in _anchor_matches(text)] == expected


@MANY
@given(st.lists(TEXT_BITS, max_size=40).map("".join))
def test_word_count_is_len_split(text):
    assert word_count(text) == len(text.split())


@MANY
@given(st.lists(st.lists(TEXT_BITS | ANCHOR_BITS, max_size=25).map("".join), min_size=1, max_size=6))
def test_token_sets_and_jaccard_matrix_equal_the_plain_definitions(texts):
    assert _token_sets(texts) == [set(token_set(t)) for t in texts]
    sim = jaccard_matrix(texts)
    for i, j in combinations(range(len(texts)), 2):
        assert sim[i][j] == sim[j][i] == jaccard(token_set(texts[i]), token_set(texts[j]))
    assert all(sim[i][i] == 1.0 for i in range(len(texts)))


def test_sample_texts_take_the_fast_paths_and_agree():
    for seed in range(5):
        texts = [t.text for t in sample_group(random.Random(seed), "q").trajectories]
        assert all(t.isascii() for t in texts)
        assert [word_count(t) for t in texts] == [len(t.split()) for t in texts]
        assert [m.span() for t in texts for m in _anchor_matches(t)] == [
            m.span() for t in texts for m in _ANCHORS.finditer(t)
        ]


def test_samples_are_varied_like_real_solutions():
    texts = [t.text for seed in range(10) for t in sample_group(random.Random(seed), "q").trajectories]
    distinct = [len(token_set(t)) for t in texts]
    assert 120 <= sum(distinct) / len(distinct) <= 180
    assert len(set(texts)) == len(texts)


# --- the HTTP fast path: the same bytes as FastAPI's route ------------------------------------------------


def post(service, path: str, body: bytes, content_type: str = "application/json", scheme: str = "Bearer"):
    headers = {"Content-Type": content_type}
    if service.token:
        headers["Authorization"] = f"{scheme} {service.token}"
    return httpx.post(f"{service.url}{path}", content=body, headers=headers, timeout=30)


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
    assert a.content == b.content


BODIES = {
    "group": lambda g: g,
    "label-free": lambda g: {**g, "gold_answer": None},
    "no number in gold": lambda g: {**g, "gold_answer": "none"},
    "unknown field": lambda g: {**g, "extra": 1},
    "no trajectories": lambda g: {**g, "trajectories": []},
    "bad arm name": lambda g: {**g, "trajectories": [{"arm_name": "a b", "text": "Answer: 1"}]},
    "number id": lambda g: {**g, "question_id": 5},
    "over-long text": lambda g: {**g, "trajectories": [{"arm_name": "a", "text": "x" * 20_000}]},
    "unicode": lambda g: {
        **g,
        "question_id": "q\u00e9\U0001f600",
        "trajectories": [{"arm_name": "a", "text": "K\u212a"}],
    },
}


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch"])
def test_fast_path_answers_as_the_route_does(regime_w_service, name, path):
    """'Bearer' + application/json takes the fast path; 'bearer' and a charset parameter take FastAPI's."""
    group = BODIES[name](sample_group(random.Random(3), "q3", words=80).model_dump(mode="json"))
    body = json.dumps({"groups": [group]} if path.endswith("batch") else group).encode()
    fast = post(regime_w_service, path, body)
    same_answer(fast, post(regime_w_service, path, body, scheme="bearer"))
    same_answer(fast, post(regime_w_service, path, body, content_type="application/json; charset=utf-8"))


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b"null", b'{"question_id": "\xff"}', b"\xef\xbb\xbf{}", b'{"a": "x\ny"}', b'{"a": 1} x'],
)
def test_fast_path_leaves_bad_json_to_the_route(regime_w_service, body):
    for path in ("/v1/score", "/v1/score/batch"):
        same_answer(post(regime_w_service, path, body), post(regime_w_service, path, body, scheme="bearer"))


def test_fast_path_never_skips_authentication(regime_w_service):
    body = sample_group(random.Random(1), "q1", words=60).model_dump_json().encode()
    wrong = httpx.post(
        f"{regime_w_service.url}/v1/score",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {regime_w_service.token}x"},
    )
    assert wrong.status_code == 403
    missing = httpx.post(f"{regime_w_service.url}/v1/score", content=body, headers={"Content-Type": "application/json"})
    assert missing.status_code == 401


# --- looper serve --workers -------------------------------------------------------------------------------


def test_two_workers_serve_and_stop(start_service):
    body = sample_group(random.Random(2), "q2", words=60).model_dump_json().encode()
    with start_service("workers", extra_args=["--workers", "2"]) as service:
        parent = psutil.Process(service.local.process.pid)
        deadline = time.monotonic() + 30
        while len(parent.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = parent.children()
        assert len(workers) == 2
        answers = [post(service, "/v1/score", body) for _ in range(20)]
        assert all(a.status_code == 200 for a in answers)
        assert len({a.content for a in answers}) == 1
        service.local.process.send_signal(signal.SIGTERM)
        assert service.local.process.wait(timeout=20) == 0
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive
        assert service.token not in service.log()


def test_workers_flag_must_be_positive():
    command = [sys.executable, "-m", "looper.cli", "serve", "--insecure-no-auth", "--workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--workers" in result.stderr
