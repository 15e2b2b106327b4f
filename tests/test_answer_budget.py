"""LaTeX answers can never poison the service: a bound on the work, killable worker processes, a budget per request.

The poison is real: `\\binom{999999999999}{499999999999}` keeps sympy busy for hours. Where a test needs it to
reach a worker, it lifts the work bound (the first defence) to prove the second one, the kill at the deadline.
"""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal

import httpx
import pytest
from helpers import InProcessService
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looper.samples import sample_group
from shared_schemas import latex
from shared_schemas.answers import AnswerReading, read_answer
from shared_schemas.latex import AnswerTimeout, LatexPool, answer_budget, within_work_bound

POISON = r"\binom{999999999999}{499999999999}"
TOWER = r"9^{9^{9^{9}}}"


@pytest.fixture
def pool(monkeypatch):
    """A private pool of real workers as the module's pool, killed after the test."""
    fresh = LatexPool(workers=2)
    monkeypatch.setattr(latex, "_pool", fresh)
    monkeypatch.setattr(latex, "_cache", latex.OrderedDict())
    assert fresh.wait_ready(), "no LaTeX worker started"
    yield fresh
    fresh.close()


@pytest.fixture
def unbounded(monkeypatch):
    """Every segment reaches a worker, the poison included."""
    monkeypatch.setattr(latex, "within_work_bound", lambda segment: True)


def test_the_work_bound_refuses_the_poisons_and_passes_ordinary_answers():
    for poison in (POISON, TOWER, r"2^{2^{100}}", r"100000!", r"(5+5)!", r"10^{1000}", "9" * 16, r"\sqrt[1000]{2}",
                   r"\frac{\frac{\frac{\frac{\frac{\frac{1}{2}}{2}}{2}}{2}}{2}}{2}", r"\binom{2000}{1000}",
                   r"\int_0^1 x dx", r"\choose", r"2^{x}", "1" + "+1" * 100,
                   r"\sqrt{\sqrt{3^86011850}}"):  # fmt: skip  (the last: a bare exponent of 8 digits, found by the fuzz)
        assert not within_work_bound(poison), poison
    for ordinary in (r"\sqrt{16}", r"2^{10}", r"\binom{5}{2}", r"5!", r"\frac{3}{4} \times 8", r"2^3 + 3^2",
                     r"\sqrt[3]{27}", r"\text{48}", r"12 \cdot 4", r"\pi"):  # fmt: skip
        assert within_work_bound(ordinary), ordinary


def test_a_runaway_worker_is_killed_at_its_deadline_and_replaced(pool):
    start = time.monotonic()
    with pytest.raises(AnswerTimeout):
        pool.call(POISON, timeout=0.5)
    assert time.monotonic() - start < 1.5
    assert pool.killed == 1
    assert Decimal(pool.call(r"\sqrt{16}", timeout=60.0)) == 4  # the other worker, or the fresh one
    for _ in range(4):  # both workers answer: none is left computing the poison
        assert Decimal(pool.call(r"2^{10}", timeout=60.0)) == 1024


def test_the_budget_is_for_the_whole_request_not_per_answer(pool, unbounded):
    texts = [f"Answer: {POISON}"] * 6
    start = time.monotonic()
    with answer_budget(1.0) as budget:
        readings = [read_answer(text) for text in texts]
    elapsed = time.monotonic() - start
    assert all(r.answer is None and r.timed_out for r in readings)
    assert elapsed < 2.0, elapsed  # six candidates, one budget: not six deadlines
    assert budget.timeouts == 6
    with answer_budget(30.0):
        later = read_answer(r"\boxed{\sqrt{16}}")
    assert later.answer == "4" and not later.timed_out


def test_without_a_budget_an_answer_times_out_on_its_own_deadline(pool, unbounded, monkeypatch):
    monkeypatch.setattr(latex, "DEFAULT_CALL_TIMEOUT_S", 0.3)
    assert read_answer(rf"\boxed{{{POISON}}}") == AnswerReading(None, timed_out=True)
    assert read_answer(r"Answer: \sqrt{81}").answer == "9"


# ---- the real app under uvicorn: poison bodies, /healthz while they are scored, and the request after


def poison_group(question_id: str, lines: int = 1) -> dict:
    body = sample_group(random.Random(0), question_id, words=10, arms=["a", "b", "c"]).model_dump(mode="json")
    body["gold_answer"] = "4"
    for trajectory in body["trajectories"]:
        trajectory["text"] = "It is large.\n" + "\n".join(f"Answer: {POISON}" for _ in range(lines))
    return body


def ordinary_group(question_id: str) -> dict:
    body = poison_group(question_id)
    body["trajectories"][0]["text"] = r"Two squared is four, so $\boxed{\sqrt{16}}$"
    body["trajectories"][1]["text"] = r"The final answer is: $\boxed{2^{2}}$"
    body["trajectories"][2]["text"] = "Answer: 5"
    return body


def counter(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("stub", [False, True], ids=["regime_w", "stub"])
def test_a_poison_body_times_out_and_the_next_body_scores_right(pool, unbounded, stub):
    with InProcessService(stub=stub, answer_budget_s=1.0) as service, httpx.Client(base_url=service.url) as client:
        for k in range(3):  # more poison requests than there are workers
            response = client.post("/v1/score", json=poison_group(f"poison-{k}"), timeout=30)
            assert response.status_code == 200, response.text
            scored = response.json()["trajectories"]
            assert [(t["answer"], t["answer_timeout"], t["correct"]) for t in scored] == [(None, True, False)] * 3
        assert counter(client, "looper_answer_timeouts_total") == 9
        response = client.post("/v1/score", json=ordinary_group("after"), timeout=30)
        assert response.status_code == 200, response.text
        scored = response.json()["trajectories"]
        assert [(t["answer"], t["correct"], t["answer_timeout"]) for t in scored] == [
            ("4", True, False), ("4", True, False), ("5", False, False),
        ]  # fmt: skip
        assert counter(client, "looper_answer_timeouts_total") == 9


def test_healthz_answers_at_once_while_a_poison_body_is_scored(pool, unbounded):
    with InProcessService(answer_budget_s=3.0) as service, httpx.Client(base_url=service.url) as client:
        batch = {"groups": [poison_group(f"p{k}", lines=40) for k in range(20)]}
        result = {}

        def score():
            result["response"] = httpx.post(f"{service.url}/v1/score/batch", json=batch, timeout=60)

        scoring = threading.Thread(target=score)
        scoring.start()
        time.sleep(0.3)  # the batch is being scored
        latencies = []
        while scoring.is_alive() and len(latencies) < 20:
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
        scoring.join(60)
        assert len(latencies) >= 10, "the batch finished before /healthz could be timed"
        assert max(latencies) < 0.1, latencies
        response = result["response"]
        assert response.status_code == 200
        elapsed = response.elapsed.total_seconds()
        assert elapsed < 3.0 + 2.0, elapsed  # 60 trajectories x 40 poison answers: one 3 s budget
        assert all(t["answer_timeout"] for g in response.json()["results"] for t in g["trajectories"])


# ---- the fuzz: whatever LaTeX a policy writes, the bound keeps it cheap and it never changes a later answer

_ATOM = st.one_of(
    st.integers(0, 10**20).map(str),
    st.sampled_from(["x", r"\pi", "0.5", "1,000", "{,}"]),
)


def _compose(inner):
    return st.one_of(
        st.tuples(inner, inner).map(lambda p: rf"\frac{{{p[0]}}}{{{p[1]}}}"),
        st.tuples(inner, inner).map(lambda p: rf"\binom{{{p[0]}}}{{{p[1]}}}"),
        inner.map(lambda a: rf"\sqrt{{{a}}}"),
        st.tuples(st.integers(1, 10**6), inner).map(lambda p: rf"\sqrt[{p[0]}]{{{p[1]}}}"),
        inner.map(lambda a: f"{a}!"),
        inner.map(lambda a: f"({a})!"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}^{{{p[1]}}}"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]}^{p[1]}"),
        st.tuples(inner, inner, st.sampled_from(["+", "-", r"\times", r"\cdot", r"\div", "="])).map(
            lambda p: f"{p[0]} {p[2]} {p[1]}"
        ),
        inner.map(lambda a: rf"\text{{{a}}}"),
    )


LATEX = st.recursive(_ATOM, _compose, max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LATEX)
def test_fuzz_latex_stays_within_the_budget_and_leaves_later_answers_alone(segment):
    start = time.monotonic()
    with answer_budget(2.0):
        read_answer(rf"The final answer is $\boxed{{{segment}}}$")
    assert time.monotonic() - start < 2.0 + 1.0
    if within_work_bound(segment):  # what the bound lets through is cheap: it never needs the budget
        with answer_budget(30.0):
            assert not read_answer(rf"\boxed{{{segment}}}").timed_out, segment
    with answer_budget(30.0):
        assert read_answer(r"\boxed{\sqrt{16}}").answer == "4"
