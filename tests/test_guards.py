"""The non-finite guard of every stage, through the real trainers: a NaN gradient forced into a LoRA weight
is skipped and counted, too many abort the run, and an adapter with non-finite weights is never saved."""

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from looper_common.modeling import load_tokenizer
from shared_schemas.models import PreferencePair, RolloutRecord, RolloutTrajectory, ScoringWeights
from shared_schemas.prompts import build_prompt
from trainer.callbacks import NonFiniteError
from trainer.data import generated_records, write_jsonl
from trainer.dpo import DPOStageConfig, run_dpo
from trainer.rft import RFTStageConfig, run_rft
from trainer.sft import SFTStageConfig, run_sft

TRAINING = dict(
    learning_rate=1e-2,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
    max_length=256,
    lora_r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    warmup_steps=0,
    logging_steps=1,
    save_steps=1000,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ForceNaN(TrainerCallback):
    """Before the optimizer steps in `steps` (1-based; "all" for every one), sets one LoRA gradient entry to NaN;
    records which steps changed the trainable weights. Passed before the guard, so it runs first."""

    def __init__(self, steps="all", nan_weights_at_step: int | None = None):
        self.steps = steps
        self.nan_weights_at_step = nan_weights_at_step
        self.injected: list[int] = []
        self.changed: dict[int, bool] = {}
        self._before: dict[str, torch.Tensor] = {}

    @staticmethod
    def _trainable(model):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        params = self._trainable(model)
        self._before = {n: p.detach().clone() for n, p in params.items()}
        if self.steps == "all" or step in self.steps:
            grad = next(p.grad for n, p in params.items() if "lora_B" in n and p.grad is not None)
            grad.view(-1)[0] = float("nan")
            self.injected.append(step)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = self._trainable(model)
        self.changed[state.global_step + 1] = any(not torch.equal(p, self._before[n]) for n, p in params.items())

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.nan_weights_at_step:
            with torch.no_grad():
                next(p for n, p in self._trainable(model).items() if "lora_A" in n).view(-1)[0] = float("nan")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("guards") / "train.jsonl"
    write_jsonl(path, generated_records(4, seed=5))
    return path


def sft(tiny_model, train_file, out, **overrides) -> SFTStageConfig:
    return SFTStageConfig(
        model=str(tiny_model), train_file=str(train_file), output_dir=str(out), **TRAINING | overrides
    )


def assert_nothing_saved(out: Path):
    assert not (out / "adapter_model.safetensors").exists() and not (out / "looper_manifest.json").exists()


def test_sft_skips_and_counts_a_nan_gradient_step_and_leaves_the_weights_alone(tiny_model, train_file, tmp_path):
    nan = ForceNaN(steps={2})
    out = run_sft(sft(tiny_model, train_file, tmp_path / "sft", max_steps=4), callbacks=[nan])
    assert nan.injected == [2]
    assert nan.changed == {1: True, 2: False, 3: True, 4: True}
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["nonfinite_skipped"] == 1 and manifest["global_step"] == 4
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["nonfinite_skipped"] for row in logged if "loss" in row] == [0, 1, 1, 1]


def test_sft_aborts_past_the_limit_and_saves_nothing(tiny_model, train_file, tmp_path):
    nan = ForceNaN()
    config = sft(tiny_model, train_file, tmp_path / "sft", max_steps=10, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteError, match=r"3 optimizer steps had non-finite gradients \(limit 2\)"):
        run_sft(config, callbacks=[nan])
    assert nan.injected == [1, 2, 3] and not any(nan.changed.values())
    assert_nothing_saved(tmp_path / "sft")


def test_sft_never_saves_an_adapter_with_non_finite_weights(tiny_model, train_file, tmp_path):
    nan = ForceNaN(steps=(), nan_weights_at_step=2)
    with pytest.raises(NonFiniteError, match="refusing to save: non-finite weights"):
        run_sft(sft(tiny_model, train_file, tmp_path / "sft", max_steps=2), callbacks=[nan])
    assert_nothing_saved(tmp_path / "sft")


def test_rft_shares_the_guard(tiny_model, tmp_path):
    trajectories = [
        RolloutTrajectory(
            arm_name="wolfram_0", text="3 x 4 = 12\nAnswer: 12", answer="12", correct=True, reward=1.1, quality=0.5,
            coherence=0.5,
        )
    ]  # fmt: skip
    record = RolloutRecord(
        question_id="q0", question="Tom has 3 bags of 4 apples. How many apples?", gold_answer="#### 12",
        trajectories=trajectories, s_end=1, s_path=1, s_cf=1, s_wm=1, group_reward=1.2, label_source="gold",
        scorer_version="test", weights=ScoringWeights(), model="tiny", engine="hf",
    )  # fmt: skip
    write_jsonl(tmp_path / "rollouts.jsonl", [record.model_dump(mode="json")])
    config = RFTStageConfig(
        model=str(tiny_model), rollouts_file=str(tmp_path / "rollouts.jsonl"), output_dir=str(tmp_path / "rft"),
        max_steps=5, max_nonfinite_steps=1, **TRAINING,
    )  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"\(limit 1\)"):
        run_rft(config, callbacks=[ForceNaN()])
    assert_nothing_saved(tmp_path / "rft")


def test_dpo_skips_and_counts_a_nan_gradient_step(tiny_model, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model))
    pairs = [
        PreferencePair(
            question_id=f"q{i}",
            prompt=build_prompt(f"Tom has {i + 3} bags of 4 apples. How many apples?", tokenizer),
            chosen=f"{i + 3} x 4 = {4 * i + 12}\nAnswer: {4 * i + 12}",
            rejected=f"{i + 3} + 4 = {i + 7}\nAnswer: {i + 7}",
            pair_type="correctness",
            chosen_reward=1.1,
            rejected_reward=-0.4,
            chosen_arm="wolfram_0",
            rejected_arm="maudlin_0",
        ).model_dump(mode="json")
        for i in range(4)
    ]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    nan = ForceNaN(steps={2})
    config = DPOStageConfig(
        model=str(tiny_model), pairs_file=str(tmp_path / "pairs.jsonl"), output_dir=str(tmp_path / "dpo"),
        max_steps=3, zero_grad_steps=1, **TRAINING | {"learning_rate": 5e-3},
    )  # fmt: skip
    out = run_dpo(config, callbacks=[nan])
    assert nan.changed == {1: True, 2: False, 3: True}
    manifest = json.loads((out / "looper_manifest.json").read_text())
    assert manifest["nonfinite_skipped"] == 1 and manifest["global_step"] == 3
