"""DPO for real on the tiny model: the DPO loss falls, the margin grows, the guards fail loudly, adapters fold."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from looper.cli import main
from looper_common.modeling import load_model, load_tokenizer, resolve_source
from shared_schemas.models import RolloutRecord, RolloutTrajectory, ScoringWeights
from shared_schemas.prompts import build_prompt
from trainer.data import DataError, generated_records, write_jsonl
from trainer.dpo import AdapterUnchangedError, DPOStageConfig, ZeroGradientError, read_pairs, run_dpo
from trainer.prefs import PrefsConfig, build_pairs
from trainer.sft import SFTStageConfig, run_sft

BETA = 0.1


def _record(i: int) -> RolloutRecord:
    a, b = 3 + i, 4 + 2 * i
    right, wrong = a * b, a * b + 1 + i

    def traj(arm, text, correct, reward):
        answer = str(right if correct else wrong)
        return RolloutTrajectory(
            arm_name=arm, text=text, answer=answer, correct=correct, reward=reward, quality=0.5, coherence=0.5
        )

    return RolloutRecord(
        question_id=f"q{i}",
        question=f"Tom has {a} bags of {b} apples. How many apples?",
        gold_answer=f"#### {right}",
        trajectories=[
            traj("wolfram_0", f"{a} x {b} = {right}\nAnswer: {right}", True, 1.15),
            traj("maudlin_0", f"{a} bags of {b} is {right} apples.\nAnswer: {right}", True, 1.08),
            traj("wolfram_1", f"{a} + {b} = {a + b}\nAnswer: {wrong}", False, -0.40),
            traj("maudlin_cf1", f"{b} - {a} = {b - a}\nAnswer: {wrong}", False, -0.45),
        ],
        s_end=0.5,
        s_path=0.5,
        s_cf=0.5,
        s_wm=0.5,
        group_reward=1.3,
        label_source="gold",
        scorer_version="test",
        weights=ScoringWeights(),
        model="tiny",
        engine="hf",
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs_file(tiny_model, tmp_path_factory) -> Path:
    tokenizer = load_tokenizer(str(tiny_model))
    config = PrefsConfig(rollouts_file="unused", model=str(tiny_model))
    pairs, stats = build_pairs([_record(i) for i in range(4)], lambda q: build_prompt(q, tokenizer), config)
    assert stats["pairs_by_type"] == {"correctness": 16, "coherence": 4}
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, [p.model_dump(mode="json") for p in pairs])
    return path


def dpo_config(model, pairs_file, out, **overrides) -> DPOStageConfig:
    values = dict(
        model=str(model),
        pairs_file=str(pairs_file),
        output_dir=str(out),
        learning_rate=5e-3,
        max_steps=10,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        beta=BETA,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        warmup_steps=0,
        logging_steps=1,
        save_steps=1000,
        zero_grad_steps=2,
    )
    values.update(overrides)
    return DPOStageConfig(**values)


def completion_logps(model, tokenizer, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """Per row: the sum of the completion's token log-probs after its prompt, tokenised as TRL does (EOS added)."""
    rows, starts = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        starts.append(
            next((i for i, (x, y) in enumerate(zip(prompt_ids, full, strict=False)) if x != y), len(prompt_ids))
        )
        rows.append(full)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # position j predicts j + 1
    position = torch.arange(width - 1)[None]
    lengths = torch.tensor([len(r) for r in rows])[:, None]
    completion = (position >= torch.tensor(starts)[:, None] - 1) & (position < lengths - 1)
    return (logps * completion).sum(-1)


def dpo_loss_and_margin(policy, reference, tokenizer, pairs) -> tuple[float, float]:
    """Mean DPO (sigmoid) loss and mean implicit-reward margin of `policy` against `reference` on `pairs`."""
    prompts = [p.prompt for p in pairs]

    def logratio(texts):
        return completion_logps(policy, tokenizer, prompts, texts) - completion_logps(
            reference, tokenizer, prompts, texts
        )

    margins = BETA * (logratio([p.chosen for p in pairs]) - logratio([p.rejected for p in pairs]))
    return float(-F.logsigmoid(margins).mean()), float(margins.mean())


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_on_a_base_model_lowers_the_dpo_loss_and_widens_the_margin(tiny_model, pairs_file, tmp_path):
    out = run_dpo(dpo_config(tiny_model, pairs_file, tmp_path / "dpo"))
    tokenizer = load_tokenizer(str(out))
    pairs = read_pairs(pairs_file)
    reference = load_model(str(tiny_model)).eval()
    before = dpo_loss_and_margin(reference, reference, tokenizer, pairs)
    assert before == (pytest.approx(math.log(2)), pytest.approx(0.0))  # the policy starts as the reference
    policy = load_model(str(out)).eval()
    loss, margin = dpo_loss_and_margin(policy, reference, tokenizer, pairs)
    assert loss < math.log(2) - 0.1 and margin > 0.2, (loss, margin)

    logged = [row for row in metrics(out) if "rewards/margins" in row]
    assert len(logged) == 10 and all(row["grad_norm"] > 0 for row in logged)
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"] + 0.2
    assert logged[-1]["loss"] < logged[0]["loss"] and logged[-1]["rewards/accuracies"] > 0.5

    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["pairs_by_type"] == {"correctness": 16, "coherence": 4} and manifest["global_step"] == 10
    assert manifest["adapter_change"]["tensors_changed"] == manifest["adapter_change"]["tensors"] > 0
    assert manifest["adapter_change"]["lora_B_norm"] > 0 and len(manifest["pairs_file_sha256"]) == 64
    assert manifest["metrics"]["rewards/margins"]["last"] > 0 and manifest["folded"] is None
    assert manifest["config"]["lora_r"] == 8 and manifest["versions"]["trl"]
    assert resolve_source(str(out)).base == str(tiny_model)


def test_dpo_on_an_sft_adapter_trains_over_the_merged_sft_model_and_saves_one_folded_adapter(
    tiny_model, pairs_file, tmp_path
):
    train_file = tmp_path / "train.jsonl"
    write_jsonl(train_file, generated_records(8, seed=5))
    sft = run_sft(
        SFTStageConfig(
            model=str(tiny_model),
            train_file=str(train_file),
            output_dir=str(tmp_path / "sft"),
            learning_rate=1e-2,
            max_steps=4,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            max_length=256,
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            warmup_steps=0,
            logging_steps=1,
            save_steps=1000,
        )
    )
    out = run_dpo(dpo_config(sft, pairs_file, tmp_path / "dpo"))
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["model_source"]["kind"] == "adapter"
    assert manifest["folded"]["rank"] == 4 + 8 and manifest["folded"]["base"] == str(tiny_model)
    assert resolve_source(str(out)).base == str(tiny_model)  # loads like any adapter: over the original base

    from peft import PeftModel

    tokenizer = load_tokenizer(str(out))
    sft_model = load_model(str(sft)).merge_and_unload().eval()  # the reference: the frozen SFT model
    trained = PeftModel.from_pretrained(load_model(str(sft)).merge_and_unload(), str(out / "dpo_delta")).eval()
    folded = load_model(str(out)).eval()
    ids = tokenizer([build_prompt("Sam has 5 pens and buys 7 more. How many pens?", tokenizer)], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(folded(**ids).logits, trained(**ids).logits, atol=1e-4)
        assert not torch.allclose(folded(**ids).logits, sft_model(**ids).logits, atol=1e-3)

    pairs = read_pairs(pairs_file)
    assert dpo_loss_and_margin(sft_model, sft_model, tokenizer, pairs) == (pytest.approx(math.log(2)), 0.0)
    loss, margin = dpo_loss_and_margin(folded, sft_model, tokenizer, pairs)
    assert loss < math.log(2) - 0.1 and margin > 0.2, (loss, margin)


def test_zero_gradients_abort_the_run_and_nothing_is_saved(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "dpo"
    # beta = 0 makes the DPO loss the constant log 2: every gradient is exactly zero
    with pytest.raises(ZeroGradientError, match="gradient was exactly zero in each of the first 2 optimizer steps"):
        run_dpo(dpo_config(tiny_model, pairs_file, out, beta=0.0))
    assert not list(out.glob("adapter_model.*")) and not (out / "looper_manifest.json").exists()


def test_an_adapter_that_did_not_move_is_never_saved(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "dpo"
    with pytest.raises(AdapterUnchangedError, match="unchanged after training"):
        run_dpo(dpo_config(tiny_model, pairs_file, out, learning_rate=0.0, max_steps=3))
    assert not list(out.glob("adapter_model.*")) and not (out / "looper_manifest.json").exists()


def test_pairs_rendered_with_another_prompt_format_are_refused(tiny_model, pairs_file, tmp_path):
    foreign = tmp_path / "foreign.jsonl"
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    write_jsonl(foreign, [{**row, "prompt": "Q: " + row["prompt"]} for row in rows])
    with pytest.raises(DataError, match="rebuild the pairs"):
        run_dpo(dpo_config(tiny_model, foreign, tmp_path / "dpo"))


def test_the_cli_resumes_dpo_from_its_last_checkpoint(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "dpo"
    args = ["dpo", "--model", str(tiny_model), "--pairs-file", str(pairs_file), "--output-dir", str(out)]
    args += ["--learning-rate", "5e-3", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "1"]
    args += ["--lora-r", "4", "--warmup-steps", "0", "--logging-steps", "1", "--save-steps", "2"]
    args += ["--pair-types", "correctness"]
    main([*args, "--max-steps", "4"])
    main([*args, "--max-steps", "6"])
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-4") and manifest["global_step"] == 6
    assert manifest["pairs_by_type"] == {"correctness": 16} and manifest["config"]["beta"] == 0.1


def test_defaults_are_the_specs():
    config = DPOStageConfig(model="m", pairs_file="p")
    assert (config.learning_rate, config.num_train_epochs, config.beta) == (5e-5, 3.0, 0.1)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (2, 2)
    assert (config.lora_r, config.lora_alpha) == (16, 32)
