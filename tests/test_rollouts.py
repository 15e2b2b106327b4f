"""The rollout worker for real: HF engine on a tiny model, the real service on 127.0.0.1, kills and outages."""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from looper_common.jsonl import read_complete_lines
from looper_common.local_service import free_port, local_service
from rollout_worker import worker
from rollout_worker.engines import GenerationRequest, HFEngine
from rollout_worker.worker import RolloutConfig, run_rollouts
from trainer.data import generated_records, read_jsonl, write_jsonl

REGIME_W_ARMS = [
    *(f"wolfram_{k}" for k in range(4)),
    *(f"maudlin_{k}" for k in range(4)),
    "wolfram_standard",
    "wolfram_rephrase",
    "maudlin_cf1",
]


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    write_jsonl(path, generated_records(40, seed=11))
    return path


def rollout_args(model, questions, output, url, n, extra=()):
    return [
        sys.executable, "-m", "looper.cli", "rollouts", "--engine", "hf", "--model", str(model),
        "--questions-file", str(questions), "--output-file", str(output), "--service-url", url,
        "--max-questions", str(n), "--batch-size", "2", "--max-new-tokens", "48", *extra,
    ]  # fmt: skip


def records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_arm_of_every_question_is_scored(format_model, questions, regime_w_service, tmp_path):
    config = RolloutConfig(
        questions_file=str(questions),
        output_file=str(tmp_path / "rollouts.jsonl"),
        model=str(format_model),
        engine="hf",
        service_url=regime_w_service.url,
        token_file=None,
        max_questions=12,
        batch_size=6,
        max_new_tokens=200,
    )
    os.environ["LOOPER_SERVICE_TOKEN"] = regime_w_service.token
    try:
        summary = run_rollouts(config)
    finally:
        del os.environ["LOOPER_SERVICE_TOKEN"]
    records = records_of(tmp_path / "rollouts.jsonl")
    assert summary["records"] == 12 and len(records) == 12
    for record in records:
        assert [t["arm_name"] for t in record["trajectories"]] == REGIME_W_ARMS
        assert record["scorer_version"].startswith("regime-w") and record["engine"] == "hf"
        assert all(t["sampling"]["seed"] is not None and t["completion_tokens"] > 0 for t in record["trajectories"])
    assert len({r["s_path"] for r in records}) > 1
    assert len({r["s_cf"] for r in records}) > 1
    assert any(t["answer"] is not None for r in records for t in r["trajectories"])
    metrics = read_complete_lines(tmp_path / "rollouts.jsonl.metrics.jsonl")
    assert sum(m["questions"] for m in metrics) == 12 and all(m["tokens_per_second"] > 0 for m in metrics)


def test_hf_engine_batches_by_sampling_settings_and_is_reproducible(tiny_model):
    engine = HFEngine(str(tiny_model), max_batch_size=4)
    requests = [GenerationRequest(f"Problem {i}: 3 + {i} =", 0.7, 0.9, 42 + i % 2, 12) for i in range(6)]
    requests.append(GenerationRequest("Greedy: 1 + 1 =", 0.0, 1.0, 0, 12))
    first, second = engine.generate(requests), engine.generate(requests)
    assert [g.text for g in first] == [g.text for g in second]
    assert len(first) == 7 and all(0 < g.completion_tokens <= 12 for g in first)


def test_a_killed_run_resumes_without_losing_or_redoing_work(tiny_model, questions, stub_service, tmp_path):
    output = tmp_path / "rollouts.jsonl"
    env = {**os.environ, "LOOPER_SERVICE_TOKEN": stub_service.token, "HF_HUB_OFFLINE": "1"}
    args = rollout_args(tiny_model, questions, output, stub_service.url, 30)
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (output.exists() and len(output.read_text().splitlines()) >= 4):
        assert process.poll() is None, "finished before it could be killed: make the run longer"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written_before = len(read_complete_lines(output))
    assert 4 <= written_before < 30

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # stderr is a pipe, not a terminal: plain progress lines, no progress bar redrawn over the log lines
    assert "\r" not in resumed.stderr and re.search(r"rollouts: \d+/\d+ questions, [\d.]+ q/s", resumed.stderr)
    ids = [r["question_id"] for r in records_of(output)]
    assert len(ids) == 30 and len(set(ids)) == 30
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["generated"] + summary["scored_from_earlier_spool"] <= 30 - written_before + 2


class Killed(BaseException):
    """The process dying at an exact point (raised by a fault-injection hook, caught by nothing)."""


def test_a_kill_between_the_output_append_and_the_spool_rewrite_writes_no_record_twice(
    tiny_model, questions, stub_service, tmp_path, monkeypatch
):
    output = tmp_path / "rollouts.jsonl"
    monkeypatch.setenv("LOOPER_SERVICE_TOKEN", stub_service.token)
    config = RolloutConfig(
        model=str(tiny_model), engine="hf", questions_file=str(questions), output_file=str(output),
        service_url=stub_service.url, max_questions=4, batch_size=2, max_new_tokens=16,
    )  # fmt: skip
    engine = HFEngine(str(tiny_model))
    real_rewrite = worker.rewrite_lines

    def die_after_the_append(path, rows):
        raise Killed  # the records are in the output (fsynced); the spool still holds their groups

    monkeypatch.setattr(worker, "rewrite_lines", die_after_the_append)
    with pytest.raises(Killed):
        run_rollouts(config, engine=engine)
    first = [r["question_id"] for r in records_of(output)]
    spool = tmp_path / "rollouts.jsonl.spool"
    assert len(first) == 2 and {g["request"]["question_id"] for g in read_complete_lines(spool)} >= set(first)

    monkeypatch.setattr(worker, "rewrite_lines", real_rewrite)
    summary = run_rollouts(config, engine=engine)
    ids = [r["question_id"] for r in records_of(output)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4 and ids[:2] == first
    assert summary["records"] == 4 and summary["generated"] + summary["scored_from_earlier_spool"] == 2
    assert read_complete_lines(spool) == []


def test_a_service_outage_mid_run_loses_nothing(tiny_model, questions, tmp_path):
    output = tmp_path / "rollouts.jsonl"
    port, token = free_port(), "outage-test-token-0123456789"
    env = {**os.environ, "LOOPER_SERVICE_TOKEN": token, "HF_HUB_OFFLINE": "1"}
    args = rollout_args(tiny_model, questions, output, f"http://127.0.0.1:{port}", 24, ["--service-wait-s", "120"])
    with local_service(stub=True, port=port, token=token):
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (output.exists() and len(output.read_text().splitlines()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    down = time.time()
    spool = tmp_path / "rollouts.jsonl.spool"
    metrics = tmp_path / "rollouts.jsonl.metrics.jsonl"
    deadline = time.monotonic() + 120
    while len(read_complete_lines(metrics)) < 12:  # every batch generated while the service is down
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    assert read_complete_lines(spool)  # spooled, waiting for the service
    # scoring retried in the background (5 retries, ~15 s of backoff each time): generation kept its pace
    finished = [row["finished_at"] for row in read_complete_lines(metrics)]
    gaps = [b - a for a, b in itertools.pairwise(finished) if b > down]
    assert gaps and max(gaps) < 5.0, gaps
    with local_service(stub=True, port=port, token=token):
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    ids = Counter(r["question_id"] for r in records_of(output))
    assert len(ids) == 24 and set(ids.values()) == {1}
    assert read_complete_lines(spool) == []


def test_per_row_sampling_gives_each_row_its_own_temperature_and_top_p():
    import torch

    from rollout_worker.engines import PerRowSampling

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    out = PerRowSampling(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 0.7, 1.0]))(None, scores.clone())
    assert torch.isfinite(out[0]).tolist() == [True, False, False, False]  # greedy: the argmax alone
    assert torch.isfinite(out[1]).tolist() == [True, True, False, False]  # 0.5 + 0.3 covers top_p 0.7
    assert torch.allclose(out[2], scores[2] / 2.0)  # temperature 2, no truncation


# --- data parallel: N worker processes, a shard of the questions each ------------------------------------------


def test_hf_sampling_of_a_request_does_not_depend_on_its_batch(tiny_model):
    """Per-row seeded streams: the same request gives the same text alone, or anywhere in a larger batch."""
    engine = HFEngine(str(tiny_model), max_batch_size=8)
    target = GenerationRequest("Problem: 3 + 4 =", 0.9, 0.95, 7, 12)
    others = [
        GenerationRequest(f"Another, longer problem {i}: {i} x 12 =", 0.5 + 0.1 * i, 0.9, i, 12) for i in range(3)
    ]
    alone = engine.generate([target])[0]
    assert engine.generate([others[0], target, *others[1:]])[1] == alone
    assert engine.generate([*others, target])[3] == alone
    other_seed = [GenerationRequest(target.prompt, 0.9, 0.95, seed, 12) for seed in range(8, 12)]
    assert any(g.text != alone.text for g in engine.generate(other_seed))  # the seed does matter


def test_shard_devices_pin_each_shard_to_its_own_gpus():
    from rollout_worker.parallel import DataParallelError, shard_devices

    assert shard_devices(2, environ={"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert shard_devices(2, 2, environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == ["0,1", "2,3"]
    assert shard_devices(2, environ={"CUDA_VISIBLE_DEVICES": ""}) == [None, None]  # no GPU: the CPU, unpinned
    with pytest.raises(DataParallelError, match="needs 4 GPUs; 2 visible"):
        shard_devices(2, 2, environ={"CUDA_VISIBLE_DEVICES": "0,1"})


def test_engines_per_gpu_share_each_gpu_in_order():
    from rollout_worker.parallel import DataParallelError, shard_devices

    assert shard_devices(4, environ={"CUDA_VISIBLE_DEVICES": "0"}, engines_per_gpu=4) == ["0"] * 4
    assert shard_devices(4, environ={"CUDA_VISIBLE_DEVICES": "5,6"}, engines_per_gpu=2) == ["5", "5", "6", "6"]
    assert shard_devices(3, environ={"CUDA_VISIBLE_DEVICES": "0,1"}, engines_per_gpu=2) == ["0", "0", "1"]
    assert shard_devices(2, 2, environ={"CUDA_VISIBLE_DEVICES": "0,1"}, engines_per_gpu=2) == ["0,1", "0,1"]
    with pytest.raises(DataParallelError, match="at 2 engines per GPU needs 3 GPUs"):
        shard_devices(6, environ={"CUDA_VISIBLE_DEVICES": "0,1"}, engines_per_gpu=2)


def test_more_engines_per_gpu_than_engines_is_refused(tmp_path, questions):
    with pytest.raises(ValueError, match="pass it at least engines_per_gpu"):
        RolloutConfig(questions_file=str(questions), model="m", data_parallel_size=1, engines_per_gpu=2)


def test_engines_sharing_a_gpu_start_one_after_another_and_write_what_one_process_writes(
    tiny_model, questions, stub_service, tmp_path, monkeypatch
):
    monkeypatch.setenv("LOOPER_SERVICE_TOKEN", stub_service.token)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one = run_rollouts(dp_config(tiny_model, questions, tmp_path / "dp1.jsonl", stub_service.url, 6, 1))
    # both shards pinned to "GPU 0" (the HF engine still runs on this CPU): the second waits for the first's engine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    config = dp_config(tiny_model, questions, tmp_path / "dp2.jsonl", stub_service.url, 6, 2, engines_per_gpu=2)
    two = run_rollouts(config)
    assert (tmp_path / "dp2.jsonl").read_bytes() == (tmp_path / "dp1.jsonl").read_bytes()
    assert two["records"] == one["records"] == 6 and len(two["shards"]) == 2
    logs = [(tmp_path / f"dp2.jsonl.shard-{k}-of-2.jsonl.log").read_text() for k in (0, 1)]

    def logged_at(log: str, event: str) -> str:
        return next(line for line in log.splitlines() if event in line)[:23]  # asctime, to the millisecond

    assert logged_at(logs[1], "building its engine") >= logged_at(logs[0], "engine built")
    left = sorted(p.name for p in tmp_path.iterdir() if ".shard-" in p.name)
    assert left == ["dp2.jsonl.shard-0-of-2.jsonl.log", "dp2.jsonl.shard-1-of-2.jsonl.log"]  # no .ready left


def test_data_parallel_in_one_engine_is_refused_with_what_to_do_instead(tmp_path):
    """vLLM's offline LLM raises for data_parallel_size > 1 (0.26: "not supported for single-process usage");
    the engine and eval say so before vLLM is even imported."""
    from rollout_worker.engines import VLLMEngine
    from trainer.evaluate import EvalConfig

    with pytest.raises(ValueError, match="one replica per process.*--data-parallel-size N"):
        VLLMEngine("any/model", data_parallel_size=2)
    with pytest.raises(ValueError, match="one `looper eval` per GPU"):
        EvalConfig(model="m", data_file="d.jsonl", data_parallel_size=2)


def test_vllm_batch_cap_and_graph_sizes_are_set_together():
    """A running batch never outgrows the captured CUDA graphs: vLLM's LLM class otherwise runs up to 1,024
    sequences on a large GPU but captures graphs only up to 512. A bad cap is refused before vLLM's import."""
    from rollout_worker.engines import DEFAULT_MAX_NUM_SEQS, VLLMEngine, batch_limits

    assert batch_limits(DEFAULT_MAX_NUM_SEQS, enforce_eager=False) == {
        "max_num_seqs": 512,
        "compilation_config": {"max_cudagraph_capture_size": 512},
    }
    assert batch_limits(96, enforce_eager=True) == {"max_num_seqs": 96}  # no graphs to size
    assert batch_limits(None, enforce_eager=False) == {}  # vLLM's own defaults
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1, got 0"):
        VLLMEngine("any/model", max_num_seqs=0)


def dp_config(model, questions, output, url, n, dp, **kwargs):
    return RolloutConfig(
        questions_file=str(questions), output_file=str(output), model=str(model), engine="hf", service_url=url,
        max_questions=n, batch_size=3, max_new_tokens=24, data_parallel_size=dp, **kwargs,
    )  # fmt: skip


def test_two_shards_write_what_one_process_writes(tiny_model, questions, stub_service, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPER_SERVICE_TOKEN", stub_service.token)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one = run_rollouts(dp_config(tiny_model, questions, tmp_path / "dp1.jsonl", stub_service.url, 8, 1))
    two = run_rollouts(dp_config(tiny_model, questions, tmp_path / "dp2.jsonl", stub_service.url, 8, 2))
    # shards 0 and 1 batch questions (0, 2, 4), (6) and (1, 3, 5), (7); one process (0, 1, 2), (3, 4, 5), (6, 7)
    assert (tmp_path / "dp2.jsonl").read_bytes() == (tmp_path / "dp1.jsonl").read_bytes()
    assert [r["question_id"] for r in records_of(tmp_path / "dp2.jsonl")] == [
        q["id"] for q in read_jsonl(questions)[:8]
    ]
    assert two["records"] == one["records"] == 8 and two["generated"] == 8 and two["data_parallel_size"] == 2
    assert two["completion_tokens"] == one["completion_tokens"] and len(two["shards"]) == 2
    metrics = read_complete_lines(tmp_path / "dp2.jsonl.metrics.jsonl")
    assert {m["shard"] for m in metrics} == {0, 1} and sum(m["questions"] for m in metrics) == 8
    left = sorted(p.name for p in tmp_path.iterdir() if ".shard-" in p.name)
    assert left == ["dp2.jsonl.shard-0-of-2.jsonl.log", "dp2.jsonl.shard-1-of-2.jsonl.log"]  # only the logs stay
    # rerun: nothing to do, nothing started
    again = run_rollouts(dp_config(tiny_model, questions, tmp_path / "dp2.jsonl", stub_service.url, 8, 2))
    assert again["generated"] == 0 and again["shards"] == [] and again["records"] == 8
    assert (tmp_path / "dp2.jsonl").read_bytes() == (tmp_path / "dp1.jsonl").read_bytes()


def test_unfinished_shards_are_not_overrun_by_a_run_of_another_size(tiny_model, questions, tmp_path):
    from rollout_worker.parallel import DataParallelError

    output = tmp_path / "rollouts.jsonl"
    (tmp_path / "rollouts.jsonl.shard-1-of-2.jsonl").write_text("")
    for dp in (1, 3):
        with pytest.raises(DataParallelError, match="rerun with data_parallel_size 2"):
            run_rollouts(dp_config(tiny_model, questions, output, "http://127.0.0.1:9", 4, dp))


def test_a_killed_sharded_run_resumes_without_losing_or_redoing_work(tiny_model, questions, stub_service, tmp_path):
    output = tmp_path / "rollouts.jsonl"
    env = {**os.environ, "LOOPER_SERVICE_TOKEN": stub_service.token, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = rollout_args(tiny_model, questions, output, stub_service.url, 30, ["--data-parallel-size", "2"])
    shards = [tmp_path / f"rollouts.jsonl.shard-{k}-of-2.jsonl" for k in range(2)]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while sum(len(read_complete_lines(s)) for s in shards if s.exists()) < 6:
        assert process.poll() is None, "finished before it could be killed: make the run longer"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # the parent only: its shard processes follow it (parent-death signal)
    process.wait()
    written_before = sum(len(read_complete_lines(s)) for s in shards)
    assert 6 <= written_before < 30 and not output.exists()

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = [r["question_id"] for r in records_of(output)]
    assert ids == [q["id"] for q in read_jsonl(questions)[:30]]  # each once, in question order
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["generated"] + summary["scored_from_earlier_spool"] <= 30 - written_before + 4
    assert not any(s.exists() for s in shards)
