"""Online RL with the reward over HTTP: TRL's GRPO or RLOO (PPO-style clipped policy gradients).

Each prompt's generations form one group that the reward service scores as one Regime W group, so
s_end, s_path and s_cf see the whole group, even when TRL spreads a group over several processes: the
reward function gathers every process's completions, the main process scores whole groups, and each
process takes back its own slice. A service that stays down fails the run with a clear message; it is
never read as a reward of 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from looper_common.config import help_text
from looper_common.jsonl import write_json
from looper_common.token import TOKEN_ENV, read_token
from rollout_worker.client import ClientConfig, ServiceClient, ServiceError, ServiceUnavailable
from shared_schemas.models import MAX_TEXT_CHARS, ScoreRequest, ScoreResponse, Trajectory, bounded_text
from shared_schemas.prompts import build_prompt
from trainer.adapters import load_policy, save_stacked_adapter
from trainer.data import read_jsonl
from trainer.sft import LORA_TARGETS, file_sha256, lora_config, stage_training_args, versions

log = logging.getLogger("looper.rl")
SAMPLER_STATE = "variant_sampler.json"
RewardMode = Literal["regime_w", "correctness", "label_free"]
# scorers whose responses carry the robustness score u that advantage modulation reads
ROBUSTNESS_SCORERS = ("regime_w_v2", "random_tiebreak")
# GRPO's settings unless given (README, "Online RL"): std-scaling over the whole batch, not per group, so a group
# whose answers are all right or all wrong never has tiny reward differences blown up into a full advantage;
# DAPO's token-level loss normalisation, which has no per-sequence length bias
GRPO_DEFAULTS = {"scale_rewards": "batch", "loss_type": "dapo"}


@dataclass
class RLStageConfig:
    model: str = field(default="", metadata=help_text("the SFT model: adapter dir, merged dir, local dir or hub id"))
    train_file: str = field(default="", metadata=help_text("JSONL of {id, question, answer} prompts"))
    output_dir: str = "runs/rl"
    algo: Literal["grpo", "rloo"] = "grpo"
    reward: RewardMode = field(
        default="regime_w",
        metadata=help_text("regime_w: per-trajectory Regime W; correctness: 1.0/-0.5 only (ablation); "
                       "label_free: no gold, majority pseudo-labels"),
    )  # fmt: skip
    service_url: str = "http://127.0.0.1:8000"
    token_file: str | None = field(default=None, metadata=help_text(f"bearer token file (default: ${TOKEN_ENV})"))
    service_retries: int = field(default=5, metadata=help_text("retries (exponential backoff) before the run fails"))
    service_timeout_s: float = 120.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    learning_rate: float = 5e-6
    num_generations: int = field(default=8, metadata=help_text("completions per prompt: one scored group"))
    per_device_train_batch_size: int = field(
        default=32, metadata=help_text("completions per optimizer step (mini-batch)")
    )
    steps_per_generation: int = field(
        default=4, metadata=help_text("optimizer steps per generation round: 4 x 32 = 128 completions = 16 prompts x 8")
    )
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 384
    temperature: float = 1.0
    beta: float = field(default=0.04, metadata=help_text("initial KL coefficient"))
    target_kl: float | None = field(default=0.1, metadata=help_text("adapt beta towards this KL (None: fixed beta)"))
    kl_horizon: int = field(default=10, metadata=help_text("steps over which beta moves towards the target"))
    max_steps: int = -1
    num_train_epochs: float = 1.0
    max_prompts: int | None = None
    seed: int = 0
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int = 2
    max_nonfinite_steps: int = 10
    gradient_checkpointing: bool = field(default=False, metadata=help_text("trade compute for memory"))
    scale_rewards: Literal["group", "batch", "none"] | None = field(
        default=None,
        metadata=help_text("GRPO advantage scaling: batch (default), group (TRL's default) or none; RLOO: unset"),
    )
    loss_type: str | None = field(
        default=None, metadata=help_text("GRPO loss aggregation: dapo (default), dr_grpo, grpo, bnpo...; RLOO: unset")
    )
    mask_truncated_completions: bool = field(
        default=False, metadata=help_text("leave completions cut at max_completion_length out of the loss")
    )
    epsilon_high: float | None = field(
        default=None, metadata=help_text("upper clipping bound (DAPO: 0.28); None: the same as the lower")
    )
    scorer: str | None = field(
        default=None,
        metadata=help_text("the service scorer every response must come from (checked); None: whichever it runs"),
    )
    advantage_modulation: Literal["none", "sign_preserving"] = field(
        default="none",
        metadata=help_text("sign_preserving: A + sign(A) sign(u) min(beta |u|, |A| / kappa), u from a v2 scorer"),
    )
    modulation_beta: float = field(default=0.1, metadata=help_text("sign-preserving modulation: beta"))
    modulation_kappa: float = field(
        default=10.0, metadata=help_text("sign-preserving modulation: a change is at most |A| / kappa")
    )
    variants_file: str | None = field(
        default=None,
        metadata=help_text("design B (looper variants): a question whose group comes back all correct has its "
                           "verifiable variants sampled in the next round instead of fresh questions"),
    )  # fmt: skip
    variant_share: float = field(default=0.5, metadata=help_text("the most of a round's groups variants may take"))
    use_vllm: bool = field(default=False, metadata=help_text("generate with vLLM (TRL colocate mode on one GPU)"))
    vllm_gpu_memory_utilization: float = 0.3
    vllm_max_model_length: int | None = field(
        default=None,
        metadata=help_text("vLLM's context window in colocate mode; None: the longest training prompt plus "
                           "max_completion_length (the model's own window, 131,072 tokens for the R1 distills, "
                           "needs more KV cache than a colocated share holds)"),
    )  # fmt: skip
    report_to: str = field(default="none", metadata=help_text("none, tensorboard or wandb"))

    def __post_init__(self):
        if not self.model or not self.train_file:
            raise ValueError("model and train_file are required")
        if self.target_kl and self.beta <= 0:
            raise ValueError("an adaptive KL target needs an initial beta > 0")
        if self.scale_rewards not in (None, "group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none, not {self.scale_rewards!r}")
        if self.algo == "grpo":
            for name, value in GRPO_DEFAULTS.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        else:
            given = [name for name in GRPO_DEFAULTS if getattr(self, name) is not None]
            if given or self.advantage_modulation != "none":
                raise ValueError(
                    f"{', '.join(given) or 'advantage_modulation'} applies to GRPO only; RLOO normalises its own "
                    "advantages: leave it unset or use --algo grpo"
                )
        if self.variants_file is not None and not 0.0 < self.variant_share <= 1.0:
            raise ValueError(f"variant_share must be in (0, 1], not {self.variant_share}")
        if self.advantage_modulation != "none":
            if self.scorer not in ROBUSTNESS_SCORERS:
                raise ValueError(
                    f"advantage modulation reads the robustness score u, which only {' and '.join(ROBUSTNESS_SCORERS)} "
                    "return: pass --scorer with one of them (and serve it)"
                )
            if self.modulation_beta < 0 or self.modulation_kappa <= 1:
                raise ValueError("modulation needs beta >= 0 and kappa > 1 (kappa > 1 keeps every advantage's sign)")


class RewardServiceFailure(RuntimeError):
    pass


def group_requests(question_ids, questions, golds, completions, mode: RewardMode) -> tuple[list[ScoreRequest], list]:
    """One ScoreRequest per question (its completions in order), and where each completion went."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, qid in enumerate(question_ids):
        members[qid].append(i)
    requests, placement = [], [None] * len(completions)
    for g, (qid, indices) in enumerate(members.items()):
        first = indices[0]
        requests.append(
            ScoreRequest(
                question_id=qid,
                question=questions[first],
                gold_answer=None if mode == "label_free" else golds[first],
                trajectories=[
                    Trajectory(arm_name=f"policy_{k}", text=bounded_text(completions[i], MAX_TEXT_CHARS))
                    for k, i in enumerate(indices)
                ],
            )
        )
        for k, i in enumerate(indices):
            placement[i] = (g, k)
    return requests, placement


def rewards_from(results: list[ScoreResponse], placement, mode: RewardMode) -> list[float]:
    rewards = []
    for g, k in placement:
        scored = results[g].trajectories[k]
        if mode == "correctness":
            w = results[g].weights
            rewards.append(w.correct_base if scored.correct else w.incorrect_base)
        else:
            rewards.append(scored.reward)
    return rewards


def robustness_from(results: list[ScoreResponse], placement) -> list[float]:
    """Each completion's robustness u (0 where the scorer gives none: wrong answers)."""
    return [results[g].trajectories[k].robustness or 0.0 for g, k in placement]


def batch_metrics(results: list[ScoreResponse], rewards: list[float], mode: RewardMode) -> dict[str, float]:
    """Means of the group scores, accuracy, how many groups carry no signal (all rewards equal) and how many no
    correctness signal (all right or all wrong); with the service's reward, how many of those still have unequal
    rewards (signal that is not about correctness) and each term's mean share of the reward spread in the others."""
    n = len(results)
    flat = [t for r in results for t in r.trajectories]
    no_signal = sum(len({round(t.reward, 9) for t in r.trajectories}) == 1 for r in results)
    is_uniform = [len({t.correct for t in r.trajectories}) == 1 for r in results]
    uniform = [r for r, flag in zip(results, is_uniform, strict=True) if flag]
    metrics = {
        "s_end": sum(r.s_end for r in results) / n,
        "s_path": sum(r.s_path for r in results) / n,
        "s_cf": sum(r.s_cf for r in results) / n,
        "s_wm": sum(r.s_wm for r in results) / n,
        "accuracy": sum(t.correct for t in flat) / len(flat),
        "truncated": sum(t.truncated for t in flat) / len(flat),  # scored bounded: longer than the service's cap
        "groups_without_signal": no_signal / n,
        "groups_without_correctness_signal": len(uniform) / n,
        "reward_mean": sum(rewards) / len(rewards),
    }
    if mode != "correctness":
        # uniform groups whose rewards still differ: signal that is not about correctness (v1's failure)
        metrics["groups_with_phantom_signal"] = (
            sum(len({round(t.reward, 9) for t in r.trajectories}) > 1 for r in uniform) / n
        )
        mixed = [r for r, flag in zip(results, is_uniform, strict=True) if not flag and r.reward_spread]
        for name in sorted({name for r in mixed for name in r.reward_spread}):
            metrics[f"spread_mixed/{name}"] = sum(r.reward_spread.get(name, 0.0) for r in mixed) / len(mixed)
    return metrics


def group_sizes(results: list[ScoreResponse]) -> dict[str, int]:
    sizes = [len(r.trajectories) for r in results]
    return {"groups": len(sizes), "min_group_size": min(sizes), "max_group_size": max(sizes)}


class ServiceReward:
    """TRL reward function: every prompt's group scored by the service as one group.

    Synchronous on purpose: TRL calls a synchronous reward function in the training thread, where each rank's
    CUDA device is current, so the gather and broadcast across ranks run on the right device. (TRL runs an
    async reward function on an event-loop thread of its own, where the current device is cuda:0 on every
    rank; collectives from such a thread are also known to hang, pytorch#115861.)"""

    def __init__(
        self,
        client_config: ClientConfig,
        mode: RewardMode,
        log_path: Path | None = None,
        chunk: int = 32,
        scorer: str | None = None,
    ):
        self.client_config, self.mode, self.log_path, self.chunk = client_config, mode, log_path, chunk
        self.scorer = scorer
        self.__name__ = mode  # TRL names the logged reward column after this
        self.last_robustness: list[float] = []  # this process's completions of the last call, in order
        self.last_correct: list[bool] = []

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResponse]:
        chunks = [requests[i : i + self.chunk] for i in range(0, len(requests), self.chunk)]
        try:
            async with ServiceClient(self.client_config) as client:
                scored = await asyncio.gather(*(client.score_batch(c, truncate=True) for c in chunks))
        except (ServiceUnavailable, ServiceError) as exc:
            raise RewardServiceFailure(
                f"{exc}. Stopping the run rather than training on missing rewards; "
                "restart the service and rerun to resume from the last checkpoint."
            ) from None
        results = [r for chunk in scored for r in chunk]
        self.check_scorer({r.scorer for r in results})
        return results

    def check_scorer(self, answered: set) -> None:
        other = answered - {self.scorer}
        if self.scorer is not None and other:
            raise RewardServiceFailure(
                f"the run expects rewards from scorer {self.scorer!r}, but the service answered with "
                f"{', '.join(map(repr, sorted(map(str, other))))}: start it with `looper serve --scorer "
                f"{self.scorer}` (or point --service-url at one that does)"
            )

    async def preflight(self) -> None:
        """Before any model loads: the service answers, and with the scorer the run expects."""
        try:
            async with ServiceClient(self.client_config) as client:
                self.check_scorer({(await client.scorers()).active})
        except (ServiceUnavailable, ServiceError) as exc:
            raise RewardServiceFailure(f"the reward service, checked before training: {exc}") from None

    def __call__(self, prompts, completions, question_id, question, gold_answer, log_metric=None, **kwargs):
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list, gather_object

        state = PartialState()
        local = list(zip(question_id, question, gold_answer, completions, strict=True))
        everyone = gather_object(local) if state.num_processes > 1 else local
        sizes = gather_object([len(local)]) if state.num_processes > 1 else [len(local)]
        payload = [None]
        if state.is_main_process:
            ids, questions, golds, texts = (list(column) for column in zip(*everyone, strict=True))
            requests, placement = group_requests(ids, questions, golds, texts, self.mode)
            results = asyncio.run(self.score(requests))
            rewards = rewards_from(results, placement, self.mode)
            robustness = robustness_from(results, placement)
            correct = [results[g].trajectories[k].correct for g, k in placement]
            payload = [(rewards, robustness, correct, batch_metrics(results, rewards, self.mode), group_sizes(results))]
        if state.num_processes > 1:
            broadcast_object_list(payload)
        rewards, robustness, correct, metrics, sizes_scored = payload[0]
        if log_metric is not None:
            for name, value in metrics.items():
                log_metric(f"service/{name}", value)
        if self.log_path is not None and state.is_main_process:
            with self.log_path.open("a") as f:
                f.write(json.dumps({"completions": len(rewards), **sizes_scored, **metrics}) + "\n")
        start = sum(sizes[: state.process_index])
        self.last_robustness = robustness[start : start + len(local)]
        self.last_correct = correct[start : start + len(local)]
        return rewards[start : start + len(local)]


def modulated_advantages(advantages, robustness, beta: float, kappa: float):
    """Design C: A' = A + sign(A) sign(u) min(beta |u|, |A| / kappa), elementwise over torch tensors.

    Zero where A is zero (a group with no correctness signal stays without signal), and |A' - A| <= |A| / kappa
    with kappa > 1, so no advantage changes sign: a correct answer is never pushed below a wrong one."""
    import torch

    change = torch.minimum(beta * robustness.abs(), advantages.abs() / kappa)
    return advantages + torch.sign(advantages) * torch.sign(robustness) * change


def modulating_trainer(base_cls, reward: ServiceReward, beta: float, kappa: float):
    """`base_cls` (TRL's GRPOTrainer) whose advantages are modulated by the service's robustness score after TRL
    has formed (and scaled) them, before any loss sees them."""
    import torch

    class ModulatedGRPOTrainer(base_cls):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            advantages = output["advantages"]
            u = torch.tensor(reward.last_robustness, dtype=advantages.dtype, device=advantages.device)
            if u.shape != advantages.shape:
                raise RuntimeError(
                    f"{u.numel()} robustness scores for {advantages.numel()} advantages: the reward function and "
                    "the trainer disagree on this process's completions"
                )
            output["advantages"] = modulated_advantages(advantages, u, beta, kappa)
            self._metrics["train"]["advantage_modulation/mean_abs_change"].append(
                (output["advantages"] - advantages).abs().mean().item()
            )
            return output

    return ModulatedGRPOTrainer


def dynamic_sampling_trainer(base_cls, reward: ServiceReward, sampler, group: int):
    """`base_cls` whose training rounds swap fresh questions for the variants of all-correct groups (design B):
    before a round generates, queued variants take their slots; after it is scored, its all-correct groups
    queue theirs. Logged as variants/* (how many groups were variants, how many of those came back mixed)."""

    class DynamicSamplingGRPOTrainer(base_cls):
        def _generate_and_score_completions(self, inputs):
            if not self.model.training:
                return super()._generate_and_score_completions(inputs)
            inputs = sampler.swap(inputs, group)
            output = super()._generate_and_score_completions(inputs)
            for name, value in sampler.observe(inputs, reward.last_correct, group).items():
                self._metrics["train"][f"variants/{name}"].append(value)
            return output

    return DynamicSamplingGRPOTrainer


def sampler_state_callback(sampler, checkpoints: Path):
    """Saves the dynamic sampler's queue beside each checkpoint, so a resumed run continues it."""
    from transformers import TrainerCallback

    class SamplerState(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = checkpoints / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                write_json(folder / SAMPLER_STATE, sampler.state_dict())

    return SamplerState()


def adaptive_kl_callback(target: float, horizon: int):
    """Ziegler et al.'s adaptive KL controller: nudge beta so the measured KL tracks the target."""
    from transformers import TrainerCallback

    class AdaptiveKL(TrainerCallback):
        trainer = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.trainer is None or not logs or "kl" not in logs:
                return
            error = max(-0.2, min(0.2, logs["kl"] / target - 1.0))
            self.trainer.beta *= 1.0 + error * args.logging_steps / horizon
            logs["beta"] = self.trainer.beta
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                # kept in the trainer state, so every checkpoint holds the beta to resume with
                state.log_history[-1]["beta"] = self.trainer.beta

    return AdaptiveKL()


def resumed_beta(checkpoint: str | None) -> float | None:
    """The adaptive KL beta a checkpoint was saved with (None: no checkpoint, or no beta logged yet)."""
    if checkpoint is None:
        return None
    history = json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("log_history", [])
    return next((row["beta"] for row in reversed(history) if "beta" in row), None)


def rl_training_args(config: RLStageConfig, output_dir: str, **overrides):
    """TRL's GRPOConfig or RLOOConfig for this stage (`overrides` replace any field: the bench turns saving off)."""
    if config.algo == "grpo":
        from trl import GRPOConfig as AlgoConfig
    else:
        from trl import RLOOConfig as AlgoConfig

    fields = dict(
        **stage_training_args(AlgoConfig, config, output_dir),
        num_generations=config.num_generations,
        steps_per_generation=config.steps_per_generation,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        use_vllm=config.use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_max_model_length=config.vllm_max_model_length,
        mask_truncated_completions=config.mask_truncated_completions,
        epsilon_high=config.epsilon_high,
    )
    if config.algo == "grpo":
        fields.update(scale_rewards=config.scale_rewards, loss_type=config.loss_type)
    return AlgoConfig(**{**fields, **overrides})


def colocate_context(config: RLStageConfig, prompts: Iterable[str], tokenizer) -> int | None:
    """The context window the colocated vLLM engine gets: the configured one, else room for the longest prompt
    and a full completion (None where vLLM is not used). `prompts` is read only in that last case."""
    if not config.use_vllm or config.vllm_max_model_length is not None:
        return config.vllm_max_model_length
    longest = max(len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"])
    return longest + config.max_completion_length


def prompt_item(record: dict, tokenizer) -> dict:
    """One training prompt as the trainer and the reward function read it."""
    return {"prompt": build_prompt(record["question"], tokenizer), "question_id": record["id"],
            "question": record["question"], "gold_answer": record["answer"]}  # fmt: skip


def run_rl(config: RLStageConfig, callbacks=()) -> Path:
    from datasets import Dataset

    from looper_common.modeling import load_tokenizer
    from trainer.callbacks import JsonlMetrics, NonFiniteGuard, assert_finite_weights, last_complete_checkpoint

    if config.algo == "grpo":
        from trl import GRPOTrainer as AlgoTrainer
    else:
        from trl import RLOOTrainer as AlgoTrainer

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    records = read_jsonl(config.train_file, required=("id", "question", "answer"))[: config.max_prompts]
    tokenizer = load_tokenizer(config.model)
    tokenizer.padding_side = "left"
    dataset = Dataset.from_list([prompt_item(r, tokenizer) for r in records])
    client = ClientConfig(
        url=config.service_url,
        token=read_token(config.token_file),
        timeout_s=config.service_timeout_s,
        max_retries=config.service_retries,
    )
    reward = ServiceReward(client, config.reward, out / "rewards.jsonl", scorer=config.scorer)
    asyncio.run(reward.preflight())
    if config.advantage_modulation == "sign_preserving":
        AlgoTrainer = modulating_trainer(AlgoTrainer, reward, config.modulation_beta, config.modulation_kappa)
    sampler = None
    if config.variants_file is not None:
        from accelerate import PartialState

        from trainer.variants import DynamicSampler, read_variants

        if config.algo != "grpo" or PartialState().num_processes > 1:
            raise ValueError("variants (dynamic sampling) run with GRPO in one process: use --algo grpo on one GPU")
        sampler = DynamicSampler(read_variants(config.variants_file), config.variant_share,
                                 lambda row: prompt_item(row, tokenizer))  # fmt: skip
        AlgoTrainer = dynamic_sampling_trainer(AlgoTrainer, reward, sampler, config.num_generations)
    variants = sampler.variants.values() if sampler is not None else ()
    prompts = itertools.chain(
        (item["prompt"] for item in dataset), (sampler.to_item(row)["prompt"] for row in variants)
    )
    args = rl_training_args(
        config, str(checkpoints), vllm_max_model_length=colocate_context(config, prompts, tokenizer)
    )
    guard = NonFiniteGuard(config.max_nonfinite_steps)
    kl_control = adaptive_kl_callback(config.target_kl, config.kl_horizon) if config.target_kl else None
    # the KL controller adds beta to the logs, so it runs before the metrics writer
    extra = [*callbacks, guard, *([kl_control] if kl_control else []), JsonlMetrics(out / "metrics.jsonl")]
    if sampler is not None:
        extra.append(sampler_state_callback(sampler, checkpoints))
    policy, source = load_policy(config.model)
    trainer = AlgoTrainer(
        model=policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=extra,
    )
    resume = last_complete_checkpoint(checkpoints)
    if kl_control is not None:
        kl_control.trainer = trainer
        trainer.beta = resumed_beta(resume) or trainer.beta  # a resumed run goes on with the adapted beta
    if sampler is not None and resume is not None:
        saved = Path(resume) / SAMPLER_STATE
        if saved.is_file():
            sampler.load_state_dict(json.loads(saved.read_text()))
        else:
            log.warning("%s has no %s: the dynamic sampler starts with an empty queue", resume, SAMPLER_STATE)
    initial_beta = getattr(trainer, "beta", None)
    result = trainer.train(resume_from_checkpoint=resume)

    assert_finite_weights(trainer.model)
    fold = save_stacked_adapter(trainer, out, source, "rl_delta")
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out)
    manifest = {
        "stage": f"rl-{config.algo}",
        "config": dataclasses.asdict(config),
        "train_file_sha256": file_sha256(config.train_file),
        "prompts": len(records),
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "nonfinite_skipped": guard.skipped,
        "initial_beta": initial_beta,
        "final_beta": getattr(trainer, "beta", None),
        "resumed_from": resume,
        "adapter_fold": fold,
        "variants": None if sampler is None else sampler.state_dict()["totals"],
        "versions": versions(),
    }
    (out / "looper_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
