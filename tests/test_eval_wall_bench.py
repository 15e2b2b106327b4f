"""bench/eval_wall_bench.py on a CPU (HF engine, tiny model): its arms, each warmed then timed, and its figure."""

import json
import os

import pytest
from helpers import eval_bench_inputs, load_script


def test_the_eval_wall_bench_times_every_arm_after_a_warm_up_and_records_the_fastest(format_model, tmp_path):
    bench = load_script("bench/eval_wall_bench.py")
    questions, figures = eval_bench_inputs(tmp_path, 3, seed=4)
    work = tmp_path / "work"
    args = ["--model", str(format_model), "--data-file", str(questions), "--engine", "hf", "--max-new-tokens", "8",
            "--warm-questions", "1", "--work-dir", str(work), "--out", str(tmp_path / "r.json"),
            "--figures", str(figures)]  # fmt: skip
    result = bench.main(args)

    rows = result["rows"]
    assert [(r["name"], r["max_num_seqs"], r["chunk_size"]) for r in rows] == [
        ("vllm-default", "vllm", 256),
        ("cap-512-one-call", 512, 3),  # every question in one engine call
        ("startup-plan", 512, 3),
        ("in-process", 512, 3),
        ("plan-in-process", 512, 3),
    ]
    assert rows[4]["env"] == {"VLLM_ENABLE_STARTUP_PLAN": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert "VLLM_ENABLE_STARTUP_PLAN" not in os.environ  # each arm's variables are its own
    for r in rows:
        assert r["questions"] == 3 and r["wall_s"] > r["engine_start_s"] > 0 and r["cold_start_s"] > 0
        warm = json.loads((work / r["name"] / "warm" / "summary.json").read_text())
        assert warm["questions"] == 1  # the warm-up is a short eval of the same settings
        settings = json.loads((work / r["name"] / "timed" / "eval_settings.json").read_text())
        assert settings["max_num_seqs"] == (None if r["max_num_seqs"] == "vllm" else 512)
    assert len({r["outputs_sha256"] for r in rows}) == 1  # the same answers, however batched (HF, fp32 here)
    recorded = {f["name"]: f for f in json.loads(figures.read_text())}
    assert set(recorded) == {"kept", "platinum_eval_wall_s"}
    fastest = min(rows, key=lambda r: r["wall_s"])
    assert recorded["platinum_eval_wall_s"]["value"] == fastest["wall_s"]
    assert recorded["platinum_eval_wall_s"]["baseline"]["value"] == rows[0]["wall_s"]
    assert recorded["platinum_eval_wall_s"]["setting"]["arm"] == fastest["name"]
    assert recorded["platinum_eval_wall_s"]["setting"]["first_start_on_machine_s"] == rows[0]["cold_start_s"]

    # the figure comes back from the results file alone, unchanged
    again = tmp_path / "again.json"
    bench.main(
        ["--model", "m", "--data-file", "d", "--from-results", str(tmp_path / "r.json"), "--figures", str(again)]
    )
    assert json.loads(again.read_text()) == [recorded["platinum_eval_wall_s"]]

    # a subset of the arms, in the order given: the first is the baseline; an unknown arm is refused
    some = bench.main([*args, "--arms", "in-process,cap-512-one-call", "--figures", str(again)])
    assert [r["name"] for r in some["rows"]] == ["in-process", "cap-512-one-call"]
    assert json.loads(again.read_text())[0]["baseline"]["what"] == "the same eval as in-process, same run"
    with pytest.raises(SystemExit):
        bench.main([*args, "--arms", "cap-512,nope"])
