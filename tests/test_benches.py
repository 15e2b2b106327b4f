"""bench/train_bench.py and bench/qlora_memory_bench.py: their timers, the bare-vs-project config equivalence,
and the QLoRA bench's model building and main path on a tiny shape (CPU, a few seconds)."""

import json

import pytest
from helpers import load_script

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_bench(name: str):
    return load_script(f"bench/{name}.py")


@pytest.fixture(scope="module")
def train_bench():
    return load_bench("train_bench")


@pytest.fixture(scope="module")
def qlora_bench():
    return load_bench("qlora_memory_bench")


# --- train_bench: timing helpers ----------------------------------------------------------------------------


def test_step_timer_times_each_step_and_the_phases_inside_it(train_bench):
    ticks = iter([0.0, 1.0, 1.0, 3.0, 3.0, 6.0])
    timer = train_bench.StepTimer(clock=lambda: next(ticks), sync=lambda: None)
    for _ in range(3):
        timer.on_step_begin(None, None, None)
        timer.on_step_end(None, None, None)
    assert timer.durations(warmup=1) == [2.0, 3.0]

    calls = [
        ("_generate_and_score_completions", 1.1, 2.1),
        ("_generate", 1.2, 1.8),
        ("_calculate_rewards", 1.9, 2.0),
        ("_generate_and_score_completions", 3.5, 4.5),
        ("_generate", 3.6, 4.0),
        ("_calculate_rewards", 4.1, 4.4),
    ]
    rows = train_bench.split_steps(timer.steps[1:], calls)
    assert rows[0]["step"] == 2.0 and rows[0]["_generate"] == pytest.approx(0.6)
    phases = train_bench.grpo_phases(rows)
    assert phases["generate_s"] == pytest.approx((0.6 + 0.4) / 2)
    assert phases["reward_s"] == pytest.approx((0.1 + 0.3) / 2)
    assert phases["optimise_s"] == pytest.approx((1.0 + 2.0) / 2)


def test_config_differences_ignore_bookkeeping_only(train_bench):
    project = {"output_dir": "a", "save_steps": 5, "learning_rate": 1e-5, "beta": 0.1}
    bare = {"output_dir": "b", "save_steps": 500, "learning_rate": 2e-5, "beta": 0.1}
    assert train_bench.config_differences(project, bare) == {"learning_rate": [1e-5, 2e-5]}


def test_bare_reward_is_the_services_correctness(train_bench):
    assert train_bench.correctness_reward(["x\nAnswer: 12", "Answer: 13", "no number"], ["#### 12"] * 3) == [
        1.0,
        -0.5,
        -0.5,
    ]


# --- train_bench: the bare side's training arguments are the project's ------------------------------------------


def test_train_bench_runs_both_sides_with_identical_settings(train_bench, tiny_model, tmp_path):
    """The real bench, both stages, project and bare TRL in their own processes, at the smallest size."""
    out = tmp_path / "train_bench.json"
    argv = ["--model", str(tiny_model), "--max-steps", "3", "--timing-warmup", "1", "--threads", "1"]
    argv += ["--num-generations", "2", "--per-device-train-batch-size", "2", "--max-completion-length", "16"]
    train_bench.main([*argv, "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["config_differences"] == {"dpo": {}, "grpo": {}}
    rows = {(r["stage"], r["side"]): r for r in result["rows"]}
    assert set(rows) == {(s, side) for s in ("dpo", "grpo") for side in ("project", "bare")}
    for row in rows.values():
        assert row["step_s_median"] > 0 and row["peak_rss_gib"] > 0
    assert rows[("grpo", "project")]["reward"].startswith("service")
    assert set(rows[("grpo", "bare")]["phases"]) >= {"generate_s", "reward_s", "optimise_s"}


# --- qlora_memory_bench ---------------------------------------------------------------------------------------


def test_the_model_is_nf4_without_meta_tensors(qlora_bench):
    import bitsandbytes as bnb
    import torch

    shape = dict(qlora_bench.TINY, layers=1)
    model = qlora_bench.build_qlora_model(
        qlora_bench.llama_config(shape, 64, torch.bfloat16), torch.device("cpu"), torch.bfloat16
    )
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 7  # q, k, v, o, gate, up, down; the LM head stays bf16
    assert all(m.weight.quant_type == "nf4" and m.weight.compress_statistics for m in linears)
    assert model.is_loaded_in_4bit and not any(p.is_meta for p in model.parameters())
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, shape["vocab"]) and torch.isfinite(logits).all()


def test_qlora_bench_runs_a_tiny_grid_through_the_sft_stage(qlora_bench, tmp_path):
    import bitsandbytes as bnb

    out = tmp_path / "q.json"
    argv = ["--layers", "1", "--lora-ranks", "4", "--checkpointing", "on,off", "--seq-lens", "32", "--batch-sizes", "2"]
    result = qlora_bench.main([*argv, "--steps", "1", "--timing-warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    assert [(r["status"], r["checkpointing"]) for r in result["rows"]] == [("ok", True), ("ok", False)]
    assert all(r["tokens_per_s"] > 0 and r["trainable_params"] > 0 for r in result["rows"])
    assert result["versions"]["bitsandbytes"] == bnb.__version__


def test_restore_takes_the_lora_off_the_base(qlora_bench):
    import torch
    from peft import LoraConfig, get_peft_model

    model = qlora_bench.build_qlora_model(
        qlora_bench.llama_config(dict(qlora_bench.TINY, layers=1), 64, torch.float32),
        torch.device("cpu"),
        torch.float32,
    )
    names = {n for n, _ in model.named_parameters()}
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    qlora_bench.restore(model)
    assert {n for n, _ in model.named_parameters()} == names


# --- multi_gpu_bench: 1 vs 2 ranks / replicas, on 2 CPU processes ----------------------------------------------


@pytest.fixture(scope="module")
def multi_gpu_bench():
    return load_bench("multi_gpu_bench")


def test_curve_comparison_judges_against_the_one_rank_noise(multi_gpu_bench):
    one = {"steps": [1, 2, 3, 4], "loss": [0.69, 0.60, 0.66, 0.58]}
    two = {"steps": [1, 2, 3, 4], "loss": [0.69, 0.61, 0.66, 0.58]}
    c = multi_gpu_bench.compare_curves(one, two)
    assert c["max_abs_diff"] == pytest.approx(0.01) and c["mean_abs_diff"] == pytest.approx(0.0025)
    assert (
        c["noise_1_rank"] == pytest.approx(multi_gpu_bench.step_noise([0.69, 0.60, 0.66, 0.58])) and c["within_noise"]
    )
    assert not multi_gpu_bench.compare_curves(one, {"steps": [1, 2, 3, 4], "loss": [0.9, 0.9, 0.9, 0.9]})[
        "within_noise"
    ]


def test_multi_gpu_bench_dpo_two_cpu_ranks_follow_the_one_rank_curve(
    multi_gpu_bench, tiny_model, tmp_path, monkeypatch
):
    """`accelerate launch` 1 rank (accumulation 4) vs 2 gloo ranks (2 each): same pairs per step, so in fp32 the
    curves differ only by the order gradients are summed in (~1e-7 measured), far below the 1e-4 allowed."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "dpo.json"
    argv = ["dpo", "--model", str(tiny_model), "--max-steps", "4", "--learning-rate", "5e-3", "--max-length", "256"]
    argv += ["--gradient-accumulation-steps", "2", "--pair-questions", "16", "--work-dir", str(tmp_path / "work")]
    multi_gpu_bench.main([*argv, "--out", str(out)])
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [(r["ranks"], r["gradient_accumulation_steps"], r["global_batch"]) for r in runs] == [(1, 4, 8), (2, 2, 8)]
    assert all(r["optimizer_steps"] == 4 and r["samples_per_s"] > 0 and r["train_runtime_s"] > 0 for r in runs)
    c = result["comparison"]
    assert c["steps"] == [1, 2, 3, 4] and max(c["loss_1_rank"]) - min(c["loss_1_rank"]) > 1e-3  # the curve moves
    assert c["max_abs_diff"] < 1e-4 and c["within_noise"] and c["samples_per_s_ratio"] > 0


def test_multi_gpu_bench_rollouts_two_replicas_write_what_one_writes(
    multi_gpu_bench, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "rollouts.json"
    argv = ["rollouts", "--model", str(tiny_model), "--questions", "6", "--max-new-tokens", "16", "--batch-size", "4"]
    multi_gpu_bench.main([*argv, "--stub", "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads(out.read_text())
    assert [(r["data_parallel_size"], r["records"]) for r in result["runs"]] == [(1, 6), (2, 6)]
    assert all(r["completion_tokens"] > 0 and r["generate_tokens_per_s"] > 0 for r in result["runs"])
    c = result["comparison"]
    assert c["files_identical"] and c["same_arms"] and c["trajectories_identical"] == c["trajectories"] == 66
    assert c["generate_tokens_per_s_ratio"] > 0 and c["wall_tokens_per_s_ratio"] > 0


# --- rollout_engines_bench: K engines on one GPU against one, through the real rollouts and service ---------


def test_generation_span_runs_from_the_first_batch_start_to_the_last_batch_end():
    bench = load_bench("rollout_engines_bench")
    metrics = [
        {"finished_at": 12.0, "generate_seconds": 2.0},  # engine 0: 10 -> 12
        {"finished_at": 15.0, "generate_seconds": 4.0},  # engine 1: 11 -> 15
    ]
    assert bench.generation_span(metrics) == 5.0


def test_rollout_engine_arms_are_compared_by_their_median_over_repeats():
    bench = load_bench("rollout_engines_bench")
    rows = [
        {"engines": 1, "max_num_seqs": "vllm", "generation_tok_s": 100.0},
        {"engines": 1, "max_num_seqs": 512, "generation_tok_s": 150.0},
        {"engines": 1, "max_num_seqs": "vllm", "generation_tok_s": 120.0},
        {"engines": 1, "max_num_seqs": 512, "generation_tok_s": 90.0},
        {"engines": 1, "max_num_seqs": "vllm", "generation_tok_s": 110.0},
        {"engines": 1, "max_num_seqs": 512, "generation_tok_s": 130.0},
    ]
    assert bench.arm_medians(rows) == {(1, "vllm"): 110.0, (1, 512): 130.0}
    rate, ratio = bench.figures_from(rows, "cmd")
    assert rate["value"] == 130.0 and rate["setting"] == {"engines_per_gpu": 1, "max_num_seqs": 512, "median_of": 3}
    assert ratio["value"] == round(130 / 110, 2) and ratio["baseline"]["value"] == 110.0


def test_rollout_engines_bench_runs_each_engine_count_and_cap_and_records_its_figures(
    tiny_model, tmp_path, monkeypatch
):
    from looper_common.jsonl import write_jsonl
    from trainer.data import generated_records

    bench = load_bench("rollout_engines_bench")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # both engines of K=2 on one "GPU" (the HF engine stays on CPU)
    questions = tmp_path / "q.jsonl"
    write_jsonl(questions, generated_records(4, seed=3))
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps([{"name": "platinum_eval_wall_s", "value": 1.0}]))
    out = tmp_path / "bench.json"
    result = bench.main([
        "--model", str(tiny_model), "--questions", str(questions), "--engines", "2,1", "--engine", "hf",
        "--max-num-seqs", "vllm,4", "--max-questions", "4", "--batch-size", "2", "--max-new-tokens", "8", "--stub",
        "--workdir", str(tmp_path / "work"), "--out", str(out), "--figures", str(figures),
    ])  # fmt: skip
    rows = result["rows"]
    assert [(r["engines"], r["max_num_seqs"]) for r in rows] == [(1, "vllm"), (1, 4), (2, "vllm"), (2, 4)]
    assert all(r["questions"] == 4 and r["preemptions"] is None for r in rows)  # the HF engine counts none
    assert len({r["completion_tokens"] for r in rows}) == 1 and rows[0]["completion_tokens"] > 0  # same work
    assert json.loads(out.read_text())["rows"] == rows
    recorded = {f["name"]: f for f in json.loads(figures.read_text())}
    assert set(recorded) == {"platinum_eval_wall_s", "rollouts_tok_s", "rollouts_vs_single_engine"}
    best = max(rows, key=lambda r: r["generation_tok_s"])
    assert recorded["rollouts_tok_s"]["value"] == best["generation_tok_s"]
    assert recorded["rollouts_vs_single_engine"]["value"] == round(
        best["generation_tok_s"] / rows[0]["generation_tok_s"], 2
    )
    assert {"command", "gpu", "date", "torch", "vllm", "baseline", "unit"} <= set(recorded["rollouts_tok_s"])
    assert recorded["rollouts_tok_s"]["baseline"]["max_num_seqs"] == "vllm"  # the first cap at one engine


def test_rollout_engines_bench_needs_the_single_engine_baseline(tmp_path):
    bench = load_bench("rollout_engines_bench")
    with pytest.raises(SystemExit):
        bench.main(["--model", "m", "--questions", "q", "--engines", "2,3"])
