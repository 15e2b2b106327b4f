"""Online RL for real: TRL GRPO/RLOO on a tiny model, rewards from the real service on 127.0.0.1."""

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from looper_common.local_service import free_port
from looper_common.modeling import load_model
from rollout_worker.client import ClientConfig
from shared_schemas.models import ScoringWeights
from trainer.data import generated_records, write_jsonl
from trainer.rl import (
    RewardServiceFailure,
    RLStageConfig,
    ServiceReward,
    group_requests,
    modulated_advantages,
    run_rl,
)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rl") / "prompts.jsonl"
    write_jsonl(path, generated_records(16, seed=31))
    return path


def rl_config(model, prompts, out, service, **overrides) -> RLStageConfig:
    values = dict(
        model=str(model),
        train_file=str(prompts),
        output_dir=str(out),
        service_url=service.url,
        learning_rate=5e-3,
        num_generations=4,
        per_device_train_batch_size=8,
        steps_per_generation=1,
        max_completion_length=48,
        max_steps=3,
        lora_r=8,
        lora_dropout=0.0,
        beta=0.04,
        save_steps=1000,
        service_retries=1,
    )
    values.update(overrides)
    return RLStageConfig(**values)


@pytest.fixture
def service_token(monkeypatch, regime_w_service):
    monkeypatch.setenv("LOOPER_SERVICE_TOKEN", regime_w_service.token)
    return regime_w_service


def lora_b_total(adapter_dir) -> float:
    model = load_model(str(adapter_dir))
    return sum(float(p.abs().sum()) for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_a_few_steps_change_the_adapter_with_varied_rewards(algo, format_model, prompts_file, service_token, tmp_path):
    out = run_rl(rl_config(format_model, prompts_file, tmp_path / algo, service_token, algo=algo))
    assert lora_b_total(out) > 0  # LoRA B starts at zero: any change means the policy moved
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["global_step"] == 3 and manifest["stage"] == f"rl-{algo}"
    rewards = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    assert len(rewards) >= 3 and all(r["completions"] == 8 for r in rewards)
    assert {"s_end", "s_path", "s_cf", "s_wm", "accuracy", "groups_without_signal"} <= set(rewards[0])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("reward_std", 0) > 0 for row in logged)  # rewards vary: there is a learning signal
    assert any("service/s_wm" in row for row in logged)
    if algo == "grpo":
        assert any("beta" in row for row in logged)  # the adaptive KL controller ran


def test_a_resumed_run_keeps_the_adapted_kl_beta(format_model, prompts_file, service_token, tmp_path):
    config = rl_config(format_model, prompts_file, tmp_path / "kl", service_token, max_steps=2, save_steps=1,
                       logging_steps=1, target_kl=0.001)  # fmt: skip
    first = json.loads((run_rl(config) / "looper_manifest.json").read_text())
    assert first["initial_beta"] == config.beta and first["final_beta"] != config.beta
    resumed = json.loads((run_rl(dataclasses.replace(config, max_steps=3)) / "looper_manifest.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 3
    assert resumed["initial_beta"] == first["final_beta"]


def test_rl_on_an_sft_adapter_saves_one_adapter_over_the_base(format_model, prompts_file, service_token, tmp_path):
    """Trained on an SFT adapter: the saved adapter folds SFT + RL over the base, the bare RL LoRA is kept."""
    from trainer.sft import SFTStageConfig, run_sft

    sft = run_sft(
        SFTStageConfig(
            model=str(format_model), train_file=str(prompts_file), output_dir=str(tmp_path / "sft"),
            max_steps=2, lora_r=4, per_device_train_batch_size=2, gradient_accumulation_steps=1, save_steps=1000,
        )
    )  # fmt: skip
    out = run_rl(rl_config(sft, prompts_file, tmp_path / "rl", service_token, max_steps=2))
    # the stage's adapter is one LoRA over the original base (vLLM and merge take it as it is) ...
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(format_model)
    # ... equal to the bare RL LoRA stacked on the SFT adapter it was trained on
    assert json.loads((out / "rl_delta" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        folded = load_model(str(out)).eval()(input_ids=ids).logits
        stacked = load_model(str(out / "rl_delta")).eval()(input_ids=ids).logits
    assert torch.allclose(folded, stacked, atol=1e-4)


def test_groups_are_scored_whole_and_rewards_come_back_in_order(regime_w_service):
    ids = ["q1", "q2", "q1", "q2", "q1"]
    questions = ["2+2?", "4+4?", "2+2?", "4+4?", "2+2?"]
    golds = ["4", "8", "4", "8", "4"]
    texts = ["Answer: 4", "Answer: 9", "Answer: 4", "Answer: 8", "Answer: 5"]
    requests, placement = group_requests(ids, questions, golds, texts, "regime_w")
    assert [len(r.trajectories) for r in requests] == [3, 2]
    assert placement == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]

    config = ClientConfig(url=regime_w_service.url, token=regime_w_service.token)
    logged = {}
    for mode in ("regime_w", "correctness", "label_free"):
        reward = ServiceReward(config, mode)
        rewards = reward(None, texts, ids, questions, golds, log_metric=logged.__setitem__)
        logged[mode] = rewards
    w = ScoringWeights()
    assert logged["correctness"] == [w.correct_base, w.incorrect_base, w.correct_base, w.correct_base, w.incorrect_base]
    regime = logged["regime_w"]
    assert regime[0] > regime[4] and regime[3] > regime[1]  # correct above wrong
    assert len(set(logged["regime_w"])) > 2
    assert "service/s_wm" in logged


def test_a_service_killed_mid_run_fails_the_run_clearly(format_model, prompts_file, start_service, tmp_path):
    class KillServiceAfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            service.local.process.kill()
            service.local.process.wait()

    with start_service("rl-victim", stub=True) as service:
        os.environ["LOOPER_SERVICE_TOKEN"] = service.token
        try:
            config = rl_config(format_model, prompts_file, tmp_path / "rl", service, max_steps=4)
            with pytest.raises(RewardServiceFailure, match="Stopping the run rather than training on missing rewards"):
                run_rl(config, callbacks=[KillServiceAfterFirstStep()])
        finally:
            del os.environ["LOOPER_SERVICE_TOKEN"]
    assert not (tmp_path / "rl" / "adapter_model.safetensors").exists()
    assert len((tmp_path / "rl" / "rewards.jsonl").read_text().splitlines()) == 1  # scored once, then failed


def test_a_group_split_across_two_processes_is_scored_whole(tiny_model, prompts_file, regime_w_service, tmp_path):
    """2 ranks x 2 completions, 4 generations per prompt: every group spans both ranks, yet the service
    sees groups of 4 (the reward function gathers, scores whole groups on rank 0, and scatters)."""
    out = tmp_path / "rl"
    args = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "looper.cli", "rl"]
    args += ["--model", str(tiny_model), "--train-file", str(prompts_file), "--output-dir", str(out)]
    args += ["--service-url", regime_w_service.url, "--num-generations", "4", "--per-device-train-batch-size", "2"]
    args += ["--steps-per-generation", "1", "--max-completion-length", "16", "--max-steps", "2", "--lora-r", "4"]
    args += ["--save-steps", "1000", "--service-retries", "1"]
    env = {**os.environ, "LOOPER_SERVICE_TOKEN": regime_w_service.token, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), *args[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    assert len(logged) == 2
    assert all(row["completions"] == 4 and row["groups"] == 1 and row["min_group_size"] == 4 for row in logged)


RANK_SCRIPT = """
import json, sys
from accelerate import PartialState
from rollout_worker.client import ClientConfig
from trainer.rl import ServiceReward

state = PartialState(cpu=True)  # as TRL's trainer sets it up on CPU (use_cpu): gloo
url, token, out = sys.argv[1:4]
# one question, gold 42: rank 0 holds a right then a wrong answer, rank 1 a wrong then a right one
texts = [["Answer: 42", "Answer: 41"], ["Answer: 40", "Answer: 42"]][state.process_index]
reward = ServiceReward(ClientConfig(url=url, token=token), "correctness")
rewards = reward(None, texts, ["q"] * 2, ["6 * 7?"] * 2, ["42"] * 2)
with open(f"{out}/rank{state.process_index}.json", "w") as f:
    json.dump({"rewards": rewards}, f)
state.wait_for_everyone()
state.destroy_process_group()  # a gloo group left alive aborts the process at exit
"""


def test_each_rank_gets_the_rewards_of_its_own_completions(stub_service, tmp_path):
    """2 ranks (gloo) score one group together; rank k must get rank k's slice back, in its own order."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script)]
    args += [stub_service.url, stub_service.token, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    w = ScoringWeights()
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert ranks[0]["rewards"] == [w.correct_base, w.incorrect_base]
    assert ranks[1]["rewards"] == [w.incorrect_base, w.correct_base]


def sampled_answers(model_dir, rows: list[dict], n: int, temperature: float):
    """Each row with the answers (None: none given) of n samples of the model at this temperature, seeded."""
    from looper_common.modeling import load_tokenizer
    from shared_schemas.answers import extract_answer
    from shared_schemas.prompts import build_prompt

    tokenizer, model = load_tokenizer(str(model_dir)), load_model(str(model_dir)).eval()
    torch.manual_seed(0)
    for row in rows:
        ids = tokenizer(build_prompt(row["question"], tokenizer), return_tensors="pt").input_ids.repeat(n, 1)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature,
                                 max_new_tokens=48, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        yield row, [extract_answer(tokenizer.decode(o[ids.shape[1] :], skip_special_tokens=True)) for o in out]


@pytest.fixture(scope="module")
def mixed_prompts_file(format_model, tmp_path_factory) -> Path:
    """Questions whose gold is the answer the model itself samples most often at temperature 0.5 (twice or more
    of 8): groups of right and wrong answers, the only groups a correctness reward (and its modulation) gives a
    signal in."""
    rows = []
    for row, sampled in sampled_answers(format_model, generated_records(24, seed=32), 8, 0.5):
        answers = Counter(sampled)
        answers.pop(None, None)
        if answers and answers.most_common(1)[0][1] >= 2:
            rows.append({**row, "answer": f"#### {answers.most_common(1)[0][0]}"})
    assert len(rows) >= 4, "too few questions with a repeated answer"
    path = tmp_path_factory.mktemp("rl-mixed") / "prompts.jsonl"
    write_jsonl(path, rows)
    return path


def test_grpo_on_the_v2_scorer_with_modulated_advantages(
    format_model, mixed_prompts_file, v2_service, monkeypatch, tmp_path
):
    """Design C for real: correctness rewards, each advantage nudged by v2's robustness u without changing sign."""
    monkeypatch.setenv("LOOPER_SERVICE_TOKEN", v2_service.token)
    config = rl_config(format_model, mixed_prompts_file, tmp_path / "c", v2_service, max_steps=2, temperature=0.5, reward="correctness",
                       scorer="regime_w_v2", advantage_modulation="sign_preserving")  # fmt: skip
    assert (config.scale_rewards, config.loss_type) == ("batch", "dapo")  # the RL stage's defaults
    out = run_rl(config)
    assert lora_b_total(out) > 0  # mixed groups: correctness gave a signal
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    changes = [
        row["advantage_modulation/mean_abs_change"] for row in logged if "advantage_modulation/mean_abs_change" in row
    ]
    assert len(changes) == 2 and min(changes) >= 0  # modulated every step (u needs 3+ right answers in a group)


def test_robustness_comes_back_in_completion_order_and_modulates_without_a_sign_change(v2_service):
    ids = ["q1", "q1", "q2", "q1", "q1", "q2"]
    questions = ["6 * 7?", "6 * 7?", "2+2?", "6 * 7?", "6 * 7?", "2+2?"]
    golds = ["42", "42", "4", "42", "42", "4"]
    texts = [
        "6 * 7 = 42\nAnswer: 42",
        "Six sevens: 6 * 7 = 42, since 6 * 5 = 30 and 30 + 12 = 42\nAnswer: 42",
        "Answer: 4",
        "Answer: 41",
        "7 * 6 = 42, and 42 / 6 = 7 checks it\nAnswer: 42",
        "Answer: 5",
    ]
    reward = ServiceReward(
        ClientConfig(url=v2_service.url, token=v2_service.token), "correctness", scorer="regime_w_v2"
    )
    rewards = reward(None, texts, ids, questions, golds)
    assert rewards == [1.0, 1.0, 1.0, -0.5, 1.0, -0.5]  # correctness rewards; u travels beside them
    u = reward.last_robustness
    assert len(u) == 6 and u[3] == u[5] == 0.0 and u[2] == 0.0  # wrong answers, a group with one right answer
    assert any(x != 0.0 for x in (u[0], u[1], u[4]))  # three right answers of q1: a residual to rank them by
    advantages = torch.tensor([0.6, 0.6, 0.5, -1.8, 0.6, -0.5])
    modulated = modulated_advantages(advantages, torch.tensor(u), beta=0.1, kappa=10.0)
    assert torch.equal(torch.sign(modulated), torch.sign(advantages)) and not torch.equal(modulated, advantages)
    assert torch.all((modulated - advantages).abs() <= advantages.abs() / 10 + 1e-7)


def test_a_run_against_another_scorer_stops_before_training(format_model, prompts_file, service_token, tmp_path):
    config = rl_config(format_model, prompts_file, tmp_path / "mismatch", service_token, scorer="regime_w_v2")
    with pytest.raises(RewardServiceFailure, match="expects rewards from scorer 'regime_w_v2'.*looper serve --scorer"):
        run_rl(config)
    assert not (tmp_path / "mismatch" / "metrics.jsonl").exists()  # no model was trained


@pytest.fixture(scope="module")
def settled_prompts_file(format_model, tmp_path_factory) -> Path:
    """Questions whose gold is the answer the model gives every time at temperature 0.05: groups it gets all right,
    which carry no signal and whose variants design B samples instead."""
    rows = []
    for row, sampled in sampled_answers(format_model, generated_records(16, seed=33), 4, 0.05):
        answers = set(sampled)
        if len(answers) == 1 and None not in answers:
            rows.append({**row, "gold_solution": row["answer"], "answer": f"#### {answers.pop()}"})
    assert len(rows) >= 4, "too few questions the model answers the same way every time"
    path = tmp_path_factory.mktemp("rl-settled") / "prompts.jsonl"
    write_jsonl(path, rows)
    return path


def test_grpo_samples_the_variants_of_all_correct_groups_and_a_resumed_run_keeps_their_queue(
    format_model, settled_prompts_file, service_token, tmp_path
):
    """Design B for real: rounds whose groups all come back right queue those questions' paraphrases and
    counterfactual twins (replayed from the generator's annotated solutions), and the next round samples them."""
    from trainer.data import read_jsonl
    from trainer.variants import question_variants

    rows = [row for r in read_jsonl(settled_prompts_file)
            for row in question_variants({**r, "answer": r["gold_solution"]}, 1, Counter())]  # fmt: skip
    variants = tmp_path / "variants.jsonl"
    write_jsonl(variants, rows)
    config = rl_config(format_model, settled_prompts_file, tmp_path / "b", service_token, reward="correctness",
                       temperature=0.05, max_steps=2, save_steps=1, variants_file=str(variants))  # fmt: skip
    out = run_rl(config)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [row for row in logged if "variants/groups" in row]
    assert len(rounds) == 2 and rounds[0]["variants/all_correct_groups"] >= 1 and rounds[0]["variants/queued"] >= 1
    assert rounds[0]["variants/variant_groups"] == 0 and rounds[1]["variants/variant_groups"] == 1  # share 0.5 of 2
    saved = json.loads((out / "checkpoints" / "checkpoint-2" / "variant_sampler.json").read_text())
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["variants"] == saved["totals"] and saved["totals"]["variant_groups"] == 1

    resumed = run_rl(dataclasses.replace(config, max_steps=3))  # continues from checkpoint-2 with its queue
    again = json.loads((resumed / "looper_manifest.json").read_text())
    assert again["global_step"] == 3 and again["resumed_from"].endswith("checkpoint-2")
    assert again["variants"]["groups"] == saved["totals"]["groups"] + 2  # the saved counts, plus one more round
    with pytest.raises(ValueError, match="GRPO in one process"):
        run_rl(
            dataclasses.replace(config, algo="rloo", scale_rewards=None, loss_type=None, output_dir=str(tmp_path / "r"))
        )


def test_the_colocated_engine_gets_room_for_the_longest_prompt_not_the_models_window(
    tiny_model, prompts_file, tmp_path
):
    from looper_common.modeling import load_tokenizer
    from trainer.rl import colocate_context, rl_training_args

    tokenizer = load_tokenizer(str(tiny_model))
    prompts = ["short", "a much longer prompt " * 20]
    base = dict(model=str(tiny_model), train_file=str(prompts_file), output_dir=str(tmp_path), max_completion_length=48)
    longest = len(tokenizer(prompts[1], add_special_tokens=False)["input_ids"])

    colocated = RLStageConfig(**base, use_vllm=True)
    assert colocate_context(colocated, prompts, tokenizer) == longest + 48
    assert (
        colocate_context(RLStageConfig(**base, use_vllm=True, vllm_max_model_length=4096), prompts, tokenizer) == 4096
    )
    assert colocate_context(RLStageConfig(**base), prompts, tokenizer) is None  # plain generate: no engine to size
    args = rl_training_args(colocated, str(tmp_path), vllm_max_model_length=longest + 48, report_to="none")
    assert args.vllm_max_model_length == longest + 48 and args.use_vllm and args.vllm_mode == "colocate"
