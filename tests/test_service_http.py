"""The reward service over real HTTP: `looper serve` child processes, every route, auth and every limit."""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from looper.samples import REGIME_W_ARM_NAMES, sample_group
from shared_schemas.answers import extract_answer, majority_answer
from shared_schemas.models import ArmSet, BatchScoreResponse, PromptsResponse, ScoreResponse

PROTECTED = [("POST", "/v1/score"), ("POST", "/v1/score/batch"), ("GET", "/v1/arms"), ("POST", "/v1/prompts")]
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def group(seed: int = 0, question_id: str = "q0", words: int = 60, **kwargs) -> dict:
    return sample_group(random.Random(seed), question_id, words=words, **kwargs).model_dump(mode="json")


def body_for(path: str) -> dict | None:
    return {
        "/v1/score": group(),
        "/v1/score/batch": {"groups": [group()]},
        "/v1/prompts": {"questions": [{"question_id": "q", "question": "What is 2 + 3?"}]},
    }.get(path)


def metric_samples(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The status, a JSON error body, and each fragment in its message; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    message = detail if isinstance(detail, str) else json.dumps(detail)
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- extra services with specific flags (module-scoped: each starts once) -------------------------


@pytest.fixture(scope="module")
def limited_service(start_service):
    extra = ["--max-body-bytes", "4096", "--max-group-size", "4"]
    with start_service("limited", stub=False, extra_args=extra) as service:
        yield service


@pytest.fixture(scope="module")
def open_service(start_service):
    with start_service("open", stub=True, token=None) as service:
        yield service


@pytest.fixture(scope="module")
def chatty_service(start_service, tmp_path_factory):
    """Debug logging and access log on, token from --token-file (it wins over the environment's)."""
    file_token = secrets.token_urlsafe(32)
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(file_token + "\n")
    env_token = secrets.token_urlsafe(32)
    extra = ["--log-level", "debug", "--access-log", "--token-file", str(token_file)]
    with start_service("chatty", stub=False, token=env_token, extra_args=extra) as service:
        yield service, file_token, env_token


# --- health, readiness, metrics, docs --------------------------------------------------------------


def test_healthz_and_readyz_need_no_token(service):
    with httpx.Client(base_url=service.url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    expected = ("regime-w/", "lexical") if service.name == "regime_w" else ("stub-", "none")
    assert body["scorer_version"].startswith(expected[0])
    assert body["path_mode"] == expected[1]


def test_metrics_count_a_score_call(service):
    with service.client() as client:
        before = metric_samples(client)
        request = group(seed=3, question_id="metrics")
        assert client.post("/v1/score", json=request).status_code == 200
        after = metric_samples(client)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("looper_groups_scored_total") == 1
    assert delta("looper_trajectories_scored_total") == len(request["trajectories"])
    assert delta("looper_http_requests_total", route="/v1/score", status="200") == 1
    assert delta("looper_http_request_seconds_count", route="/v1/score") == 1
    version = [labels for name, labels in after if name == "looper_scorer_info"]
    assert len(version) == 1 and dict(version[0])["scorer_version"].startswith(("regime-w/", "stub-"))


def test_openapi_and_docs_are_served(service):
    with httpx.Client(base_url=service.url) as client:
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert {"/v1/score", "/v1/score/batch", "/v1/arms", "/v1/prompts", "/healthz", "/readyz"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_unknown_route_and_wrong_method_are_client_errors(service):
    with service.client() as client:
        assert client.get("/v1/nope").status_code == 404
        assert client.get("/v1/score").status_code == 405


# --- arms and prompts -----------------------------------------------------------------------------


def test_regime_w_serves_its_eleven_arms(regime_w_service):
    with regime_w_service.client() as client:
        arm_set = ArmSet.model_validate_json(client.get("/v1/arms").content)
    arms = {arm.name: arm for arm in arm_set.arms}
    assert [arm.name for arm in arm_set.arms] == list(REGIME_W_ARM_NAMES)
    assert arm_set.scorer_version.startswith("regime-w/")
    for k, temperature in enumerate((0.2, 0.3, 0.4, 0.5)):
        wolfram, maudlin = arms[f"wolfram_{k}"], arms[f"maudlin_{k}"]
        assert (wolfram.role, wolfram.temperature, wolfram.top_p, wolfram.seed) == (
            "compute",
            temperature,
            0.95,
            42 + k,
        )
        assert (maudlin.role, maudlin.temperature, maudlin.top_p, maudlin.seed) == (
            "reflective",
            temperature,
            0.9,
            100 + k,
        )
    probes = {"wolfram_standard": ("probe_standard", 1000), "wolfram_rephrase": ("probe_rephrase", 1001)}
    probes["maudlin_cf1"] = ("probe_counterfactual", 2000)
    for name, (role, seed) in probes.items():
        assert (arms[name].role, arms[name].seed) == (role, seed)
        assert arms[name].temperature <= 0.2  # "low"
    assert all("{question}" in arm.user_template for arm in arm_set.arms)
    assert all("Answer: <number>" in arm.system_prompt for arm in arm_set.arms)
    assert arms["wolfram_0"].system_prompt != arms["maudlin_0"].system_prompt
    assert "wrong" in arms["maudlin_cf1"].user_template


def test_stub_serves_generic_arms(stub_service):
    with stub_service.client() as client:
        arm_set = ArmSet.model_validate_json(client.get("/v1/arms").content)
    assert arm_set.scorer_version.startswith("stub-")
    assert len(arm_set.arms) == 11
    assert {arm.role for arm in arm_set.arms} == {"sample"}
    assert not {arm.name for arm in arm_set.arms} & set(REGIME_W_ARM_NAMES)
    assert len({arm.seed for arm in arm_set.arms}) == 11  # distinct seeds: reproducible yet different samples


def test_prompts_render_every_arm_for_every_question(service):
    questions = [
        {"question_id": "a", "question": "Tom buys 3 apples for $2 each. How much does he spend in total?"},
        {"question_id": "b", "question": "A train travels 60 miles each day for 7 days. How far does it go?"},
    ]
    with service.client() as client:
        arm_names = [arm["name"] for arm in client.get("/v1/arms").json()["arms"]]
        response = client.post("/v1/prompts", json={"questions": questions})
    assert response.status_code == 200, response.text
    prompts = PromptsResponse.model_validate_json(response.content)
    assert [q.question_id for q in prompts.questions] == ["a", "b"]
    for question, rendered in zip(questions, prompts.questions, strict=True):
        assert [p.arm_name for p in rendered.prompts] == arm_names
        by_arm = {p.arm_name: p for p in rendered.prompts}
        for name, prompt in by_arm.items():
            assert prompt.system
            if name != "wolfram_rephrase":
                assert question["question"] in prompt.user
        if service.name == "regime_w":
            standard, rephrase = by_arm["wolfram_standard"].user, by_arm["wolfram_rephrase"].user
            assert rephrase != standard
            assert question["question"] not in rephrase
            assert Counter(NUMBER.findall(rephrase)) == Counter(NUMBER.findall(standard))
            assert Counter(NUMBER.findall(rephrase)) == Counter(NUMBER.findall(question["question"]))


def test_prompts_keep_braces_and_unicode_in_questions(service):
    question = "Set {x} has 5 items; {question} costs €3 each. What do 2 of them cost?"
    with service.client() as client:
        response = client.post("/v1/prompts", json={"questions": [{"question_id": "q", "question": question}]})
    assert response.status_code == 200, response.text
    users = [p["user"] for p in response.json()["questions"][0]["prompts"]]
    assert sum(question in user for user in users) >= len(users) - 1


# --- scoring --------------------------------------------------------------------------------------


def test_score_answers_in_request_order_with_arm_names(service):
    request = group(seed=5, question_id="order")
    request["trajectories"].reverse()
    with service.client() as client:
        response = client.post("/v1/score", json=request)
    assert response.status_code == 200, response.text
    result = ScoreResponse.model_validate_json(response.content)
    assert result.question_id == "order"
    assert [t.arm_name for t in result.trajectories] == [t["arm_name"] for t in request["trajectories"]]
    answers = [extract_answer(t["text"]) for t in request["trajectories"]]
    assert [t.answer for t in result.trajectories] == answers
    assert result.label_source == "gold" and result.reference_answer == request["gold_answer"]
    assert [t.correct for t in result.trajectories] == [a == request["gold_answer"] for a in answers]
    assert result.any_correct == any(t.correct for t in result.trajectories)
    assert [t.words for t in result.trajectories] == [len(t["text"].split()) for t in request["trajectories"]]
    assert result.scorer_version.startswith("regime-w/" if service.name == "regime_w" else "stub-")
    assert result.weights.s_end == 0.4


def test_batch_answers_in_order_and_equals_single_calls(service):
    groups = [group(seed=s, question_id=f"batch-{s}", words=40 + 30 * s) for s in range(4)]
    groups[2]["gold_answer"] = None
    with service.client() as client:
        batch = client.post("/v1/score/batch", json={"groups": groups})
        singles = [client.post("/v1/score", json=g) for g in groups]
    assert batch.status_code == 200, batch.text
    results = BatchScoreResponse.model_validate_json(batch.content).results
    assert [r.question_id for r in results] == [g["question_id"] for g in groups]
    assert [r.model_dump() for r in results] == [
        ScoreResponse.model_validate_json(s.content).model_dump() for s in singles
    ]


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch"])
def test_every_content_type_spelling_gets_the_same_answer(service, path):
    """`application/json` and `application/json; charset=utf-8` (and a lower-case scheme) answer alike."""
    body = json.dumps(group(seed=8) if path == "/v1/score" else {"groups": [group(seed=8), group(seed=2)]})
    token = service.token or ""
    variants = [
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        {"Content-Type": "application/json; charset=utf-8", "Authorization": f"Bearer {token}"},
        {"Content-Type": "application/json", "Authorization": f"bearer {token}"},
    ]
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        answers = [client.post(path, content=body, headers=headers) for headers in variants]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert answers[1].content == answers[0].content == answers[2].content


def test_scores_do_not_depend_on_the_order_of_trajectories(service):
    request = group(seed=9, question_id="perm", words=80)
    permutation = list(range(len(request["trajectories"])))
    random.Random(4).shuffle(permutation)
    shuffled = request | {"trajectories": [request["trajectories"][k] for k in permutation]}
    with service.client() as client:
        original = client.post("/v1/score", json=request).json()
        permuted = client.post("/v1/score", json=shuffled).json()
    for key in ("s_end", "s_path", "s_cf", "s_wm", "group_reward", "mean_words"):
        assert permuted[key] == pytest.approx(original[key], abs=1e-12), key
    assert permuted["reference_answer"] == original["reference_answer"]
    for position, k in enumerate(permutation):
        mine, theirs = permuted["trajectories"][position], original["trajectories"][k]
        assert mine["arm_name"] == theirs["arm_name"]
        assert mine == {key: pytest.approx(value, abs=1e-12) for key, value in theirs.items()}


def test_label_free_group_uses_the_majority_answer(service):
    request = group(seed=7, question_id="label-free") | {"gold_answer": None}
    with service.client() as client:
        response = client.post("/v1/score", json=request)
    assert response.status_code == 200, response.text
    result = ScoreResponse.model_validate_json(response.content)
    answers = [extract_answer(t["text"]) for t in request["trajectories"]]
    assert result.label_source == "majority"
    assert result.reference_answer == majority_answer(answers)
    assert [t.correct for t in result.trajectories] == [a == result.reference_answer for a in answers]
    assert 0.0 < result.s_end <= 1.0


def test_group_without_any_answer_is_scored_not_refused(service):
    request = {
        "question_id": "no-answers",
        "question": "How many?",
        "trajectories": [{"arm_name": "wolfram_0", "text": "I am not sure."}, {"arm_name": "maudlin_0", "text": ""}],
    }
    with service.client() as client:
        response = client.post("/v1/score", json=request)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["label_source"] == "none" and result["reference_answer"] is None
    assert not result["any_correct"] and result["s_end"] == 0.0


def test_gsm8k_gold_solution_and_hash_answers_are_accepted(service):
    request = {
        "question_id": "gsm8k",
        "question": "Sam has 1,000 marbles and gets 200 more. How many now?",
        "gold_answer": "Sam has 1000 + 200 = <<1000+200=1200>>1200 marbles.\n#### 1,200",
        "trajectories": [
            {"arm_name": "wolfram_0", "text": "1000 + 200 = 1200\n#### 1200"},
            {"arm_name": "maudlin_0", "text": "So he has 1,200.0 marbles.\nAnswer: 1,200.0"},
            {"arm_name": "maudlin_1", "text": "Answer: 1100"},
        ],
    }
    with service.client() as client:
        result = client.post("/v1/score", json=request).json()
    assert result["reference_answer"] == "1200"
    assert [t["answer"] for t in result["trajectories"]] == ["1200", "1200", "1100"]
    assert [t["correct"] for t in result["trajectories"]] == [True, True, False]


# --- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", PROTECTED)
def test_auth_missing_wrong_and_basic(service, method, path):
    body = body_for(path)
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        missing = client.request(method, path, json=body)
        wrong = client.request(method, path, json=body, headers={"Authorization": f"Bearer {'x' * 43}"})
        basic = client.request(method, path, json=body, headers={"Authorization": f"Basic {service.token}"})
        empty = client.request(method, path, json=body, headers={"Authorization": "Bearer"})
        right = client.request(method, path, json=body, headers=service.headers)
    assert_error(missing, 401, "missing bearer token")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(wrong, 403, "invalid bearer token")
    assert_error(basic, 401)
    assert basic.headers["www-authenticate"] == "Bearer"
    assert empty.status_code == 401
    assert right.status_code == 200, right.text


def test_token_prefix_or_extension_is_refused(regime_w_service):
    token = regime_w_service.token
    with httpx.Client(base_url=regime_w_service.url) as client:
        for candidate in (token[:-1], token + "x", token.upper() if token.upper() != token else token.lower()):
            assert client.get("/v1/arms", headers={"Authorization": f"Bearer {candidate}"}).status_code == 403


def test_insecure_no_auth_service_accepts_requests_without_a_token(open_service):
    assert open_service.token is None
    with httpx.Client(base_url=open_service.url, timeout=30.0) as client:
        assert client.get("/v1/arms").status_code == 200
        response = client.post("/v1/score", json=group(seed=1))
    assert response.status_code == 200, response.text
    assert len(response.json()["trajectories"]) == len(REGIME_W_ARM_NAMES)
    assert "WITHOUT authentication" in open_service.log()


def test_token_file_wins_and_no_token_reaches_the_logs(chatty_service):
    service, file_token, env_token = chatty_service
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        ok = client.post("/v1/score", json=group(), headers={"Authorization": f"Bearer {file_token}"})
        refused = client.get("/v1/arms", headers={"Authorization": f"Bearer {env_token}"})
        client.get("/v1/arms", headers={"Authorization": f"Basic {file_token}"})
        client.post("/v1/score", content=b"{bad", headers={"Authorization": f"Bearer {file_token}x"})
    assert ok.status_code == 200
    assert refused.status_code == 403
    log = service.log()
    assert "/v1/score" in log and "Application startup complete" in log  # the capture works
    assert file_token not in log and env_token not in log


# --- limits ---------------------------------------------------------------------------------------


def test_body_over_the_limit_with_content_length_is_413(limited_service):
    body = json.dumps(group(words=400)).encode()
    assert len(body) > 4096
    with limited_service.client() as client:
        response = client.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
        assert_error(response, 413, "4096")
        assert client.get("/readyz").status_code == 200


def test_streamed_body_over_the_limit_is_413(limited_service):
    body = json.dumps(group(words=400)).encode()

    def chunks():
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    with limited_service.client() as client:
        response = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_error(response, 413, "4096")


def test_long_streamed_body_is_cut_off_with_413(limited_service):
    def chunks():
        yield b'{"question_id": "q", "question": "'
        for _ in range(64):
            yield b"x" * 65536

    with limited_service.client() as client:
        response = client.post("/v1/score/batch", content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(response, 413, "4096")
        assert client.get("/readyz").status_code == 200


def test_streamed_body_under_the_limit_is_scored(limited_service):
    request = group(words=20)
    request["trajectories"] = request["trajectories"][:3]
    body = json.dumps(request).encode()
    assert len(body) < 4096

    def chunks():
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    with limited_service.client() as client:
        response = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert [t["arm_name"] for t in response.json()["trajectories"]] == ["wolfram_0", "wolfram_1", "wolfram_2"]


def test_group_over_the_size_limit_is_422_naming_the_limit(limited_service):
    request = group(words=5)
    request["trajectories"] = request["trajectories"][:5]
    with limited_service.client() as client:
        single = client.post("/v1/score", json=request)
        batch = client.post("/v1/score/batch", json={"groups": [group(words=5, arms=["a"]), request]})
        at_limit = client.post("/v1/score", json=request | {"trajectories": request["trajectories"][:4]})
    assert_error(single, 422, "the limit is 4", "5 trajectories")
    assert_error(batch, 422, "the limit is 4", "q0")
    assert at_limit.status_code == 200


def test_over_long_text_is_422_naming_the_limit(start_service):
    request = group(words=5)
    request["trajectories"][1]["text"] = "word " * 3200 + "x\nAnswer: 3"
    with start_service("short-texts", extra_args=["--max-text-chars", "16000"]) as service, service.client() as client:
        response = client.post("/v1/score", json=request)
        assert_error(response, 422, "trajectory 1", "the limit is 16000", "--max-text-chars", "overlong=truncate")
        line = "POST /v1/score -> 422: question 'q0', trajectory 1: 16011 characters"
        assert line in service.log_with(line)


def test_text_over_the_contract_cap_is_422(regime_w_service):
    request = group(words=5)
    request["trajectories"][0]["text"] = "x" * 70_000
    with regime_w_service.client() as client:
        response = client.post("/v1/score", json=request)
    assert_error(response, 422, "string_too_long")


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda r: r.update(extra_field=1), "extra_forbidden"),
        (lambda r: r["trajectories"][0].update(answer="3"), "extra_forbidden"),
        (lambda r: r.update(trajectories=[]), "too_short"),
        (lambda r: r.pop("question"), "missing"),
        (lambda r: r["trajectories"][0].update(arm_name="bad name!"), "string_pattern_mismatch"),
        (lambda r: r.update(question_id=7), "string_type"),
    ],
    ids=["extra-field", "nested-extra-field", "empty-group", "missing-question", "bad-arm-name", "wrong-type"],
)
def test_invalid_requests_are_422(service, mutate, fragment):
    request = group(words=5)
    mutate(request)
    with service.client() as client:
        response = client.post("/v1/score", json=request)
    assert_error(response, 422, fragment)


@pytest.mark.parametrize("body", [b"{bad", b"", b"[1, 2]", b"\xff\xfe", b"\x80C", b'{"groups": "x"}'])
def test_malformed_bodies_are_422(service, body):
    with service.client() as client:
        for path in ("/v1/score", "/v1/score/batch", "/v1/prompts"):
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (path, response.text)


def test_gold_without_a_number_is_422_with_a_message(service):
    with service.client() as client:
        single = client.post("/v1/score", json=group(question_id="nogold") | {"gold_answer": "no idea"})
        groups = [group(seed=1, question_id="fine"), group(seed=2, question_id="broken") | {"gold_answer": "#### ?"}]
        batch = client.post("/v1/score/batch", json={"groups": groups})
    assert_error(single, 422, "'nogold'", "no number")
    assert_error(batch, 422, "'broken'", "no number")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_power_tower_answer_leaves_no_runaway_work(start_service):
    with start_service("power-tower", stub=True) as service:
        pid = service.local.process.pid
        try:
            body = group(words=5, arms=["a"]) | {"gold_answer": None}
            body["trajectories"][0]["text"] = "So the count is huge.\nAnswer: 9^{9^{9^{9}}}"
            with service.client(timeout=20.0) as client:
                assert client.post("/v1/score", json=body).status_code == 200
            before = cpu_seconds(pid)
            time.sleep(2.0)
            assert cpu_seconds(pid) - before < 0.5  # an idle service uses next to no CPU
        finally:
            service.local.process.kill()  # a busy service may ignore SIGTERM for long


def test_no_request_in_this_session_got_a_server_error(
    regime_w_service, stub_service, limited_service, open_service, chatty_service
):
    """Runs last in this module: every request above (and earlier modules) answered without a 5xx."""
    for service in (regime_w_service, stub_service, limited_service, open_service, chatty_service[0]):
        with httpx.Client(base_url=service.url) as client:
            samples = metric_samples(client)
        statuses = {dict(labels)["status"] for name, labels in samples if name == "looper_http_requests_total"}
        assert statuses, service.name
        assert not {s for s in statuses if s.startswith("5")}, (service.name, statuses)
        assert "Traceback" not in service.log(), service.name
