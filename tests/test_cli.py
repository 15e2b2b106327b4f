"""`looper` as a user runs it: clear errors for bad configuration, a served weights file echoed back."""

import json
import os
import subprocess
import sys

import httpx
import pytest

from looper_common.local_service import local_service
from shared_schemas.models import ScoreRequest, Trajectory


def run_looper(*args, env_token=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "LOOPER_SERVICE_TOKEN"}
    if env_token is not None:
        env["LOOPER_SERVICE_TOKEN"] = env_token
    return subprocess.run(
        [sys.executable, "-m", "looper.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_serve_refuses_to_start_closed_without_a_token():
    result = run_looper("serve", "--port", "1")
    assert result.returncode != 0
    assert "LOOPER_SERVICE_TOKEN" in result.stderr and "--insecure-no-auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_short_token():
    result = run_looper("serve", "--port", "1", env_token="short")
    assert result.returncode != 0
    assert "at least 16 characters" in result.stderr


def test_serve_names_a_missing_token_file(tmp_path):
    result = run_looper("serve", "--port", "1", "--token-file", str(tmp_path / "nope"))
    assert result.returncode != 0
    assert "does not exist" in result.stderr


def test_serve_rejects_unknown_weights(tmp_path):
    weights = tmp_path / "w.yaml"
    weights.write_text("s_end: 0.5\nnot_a_weight: 1\n")
    result = run_looper("serve", "--port", "1", "--insecure-no-auth", "--weights", str(weights))
    assert result.returncode != 0
    assert "not_a_weight" in result.stderr


def test_weights_file_is_used_and_echoed(tmp_path):
    weights = tmp_path / "w.yaml"
    weights.write_text("s_end: 0.6\ns_path: 0.2\ns_cf: 0.2\ngroup_coherence: 0.5\n")
    token_file = tmp_path / "token"
    token_file.write_text("t" * 32 + "\n")
    request = ScoreRequest(
        question_id="q",
        question="2+2?",
        gold_answer="4",
        trajectories=[Trajectory(arm_name="wolfram_0", text="2 + 2 = 4\nAnswer: 4")] * 2,
    )
    with local_service(token=None, extra_args=["--weights", str(weights)]) as service:
        body = httpx.post(f"{service.url}/v1/score", json=request.model_dump(mode="json")).json()
    assert body["weights"]["s_end"] == 0.6 and body["weights"]["group_coherence"] == 0.5
    # s_end = 1, s_path = 1, s_cf = s_end fallback = 1 -> s_wm = 1; group reward = 1.0 + 0.5 * 1
    assert body["s_wm"] == 1.0 and body["group_reward"] == 1.5


def test_schema_command_writes_every_contract_model(tmp_path):
    result = run_looper("schema", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    written = {p.name for p in tmp_path.iterdir()}
    assert {"ScoreRequest.schema.json", "ScoreResponse.schema.json", "ArmSpec.schema.json"} <= written
    schema = json.loads((tmp_path / "ScoreRequest.schema.json").read_text())
    assert schema["additionalProperties"] is False


def test_data_command_keeps_generated_problems_to_the_step_range(tmp_path):
    result = run_looper("data", "--out", str(tmp_path), "--generated", "20", "--generated-max-steps", "1")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "generated_train.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(r["answer"].count("\n") == 1 for r in rows)  # one step, then '#### N'
    result = run_looper("data", "--out", str(tmp_path), "--generated", "5", "--generated-min-steps", "7")
    assert result.returncode != 0 and "no template makes 7-6 steps" in result.stderr


def test_a_taken_port_is_one_clear_line_and_a_non_zero_exit():
    with local_service(stub=True, token=None) as taken:
        port = taken.url.rsplit(":", 1)[1]
        for workers in ("1", "2"):
            result = run_looper("serve", "--stub", "--insecure-no-auth", "--port", port, "--workers", workers)
            assert result.returncode != 0
            assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr
            assert "pass another --port" in result.stderr and "Traceback" not in result.stderr


def test_every_option_shows_its_default():
    from looper.cli import DefaultsHelpFormatter, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert len(commands) >= 15
    for name, command in commands.items():
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                shown = DefaultsHelpFormatter(name)._get_help_string(action)
                assert "default" in shown, f"looper {name} {action.option_strings[0]}: {shown!r}"
    # the training commands' flags default to None (a config file may set them): each says its field's default
    help_text = run_looper("rollouts", "--help").stdout
    assert "(default: 600.0)" in " ".join(help_text.split())  # --service-wait-s, the example


def test_sigterm_lets_a_request_in_flight_finish_then_exits_promptly():
    import signal
    import socket
    import time

    body = (
        ScoreRequest(
            question_id="q",
            question="2 + 2?",
            gold_answer="4",
            trajectories=[Trajectory(arm_name="a", text="Answer: 4")],
        )
        .model_dump_json()
        .encode()
    )
    with local_service(stub=True, token=None) as service:
        host, port = service.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = f"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body[:10])  # the request is in flight: half its body sent
            time.sleep(0.5)
            stopping = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            sock.sendall(body[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b'"correct":true' in answer
        service.process.wait(timeout=15)
        assert time.monotonic() - stopping < 12  # the README's bound: 10 s for requests in flight


def test_every_command_reads_the_token_file_one_way(tmp_path):
    from looper_common.token import TokenFileError, read_token

    empty = tmp_path / "empty"
    empty.write_text("\n")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "q", "question": "2 + 2?", "answer": "#### 4"}\n')
    for path, message in ((tmp_path / "missing", "does not exist"), (empty, "is empty")):
        with pytest.raises(TokenFileError, match=message):
            read_token(path)
        for command in (["serve"], ["rollouts", "--questions-file", str(questions), "--model", "no-model"]):
            result = run_looper(*command, "--token-file", str(path))
            assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
