"""The Regime W ablation's design: its eval sets, its arms (each pair differs in one field), its six models."""

EVAL_SETS = ("platinum", "dev")

# the arms: each pair differs in the one field set here
DPO_ARMS = {"dpo_regime_w": ["correctness", "coherence"], "dpo_correctness": ["correctness"]}
RL_ARMS = {"grpo_regime_w": "regime_w", "grpo_correctness": "correctness"}
PREFS_OF = {"dpo_regime_w": "prefs_regime_w", "dpo_correctness": "prefs_correctness"}
MODELS = ("base", "sft", *DPO_ARMS, *RL_ARMS)
DESCRIPTION = {
    "base": "the base model as released",
    "sft": "LoRA SFT on GSM8K train",
    "dpo_regime_w": "SFT + DPO, Regime W pairs (correctness + coherence)",
    "dpo_correctness": "SFT + DPO, correctness-only pairs",
    "grpo_regime_w": "SFT + GRPO, Regime W reward",
    "grpo_correctness": "SFT + GRPO, correctness reward (1.0 / -0.5)",
}
HEAD_TO_HEAD = (
    ("dpo_regime_w", "dpo_correctness", "DPO: Regime W pairs − correctness-only pairs"),
    ("grpo_regime_w", "grpo_correctness", "GRPO: Regime W reward − correctness reward"),
)
