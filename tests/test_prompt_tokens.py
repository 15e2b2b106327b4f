"""One prompt, one token sequence: SFT, DPO, GRPO/RLOO, the HF engine and the vLLM engine feed the same ids.

A Llama-3 chat template writes `<|begin_of_text|>` and its tokenizer adds another by default; each path used
to choose for itself whether to add special tokens, so some fed `<bos><bos>`. The tokenizers here are built
offline in both layouts: Qwen's (no BOS) and Llama-3's (a BOS in the template and one added by default).
"""

from __future__ import annotations

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from looper.tiny_model import build_tiny_model
from rollout_worker.engines import GenerationRequest, HFEngine, vllm_token_prompts
from shared_schemas.prompts import TUTOR_SYSTEM, USER_TEMPLATE, build_prompt, prompt_token_ids

QUESTION = "Tom has 3 bags of 4 apples. How many apples does he have?"


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def tiny(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(request.param) / "model", layers=1,
                            tokenizer_style=request.param)  # fmt: skip


def template_text(tokenizer) -> str:
    messages = [
        {"role": "system", "content": TUTOR_SYSTEM},
        {"role": "user", "content": USER_TEMPLATE.format(question=QUESTION)},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def expected_ids(tokenizer) -> list[int]:
    """The chat template's own ids: its text tokenized with nothing added (one BOS where the template has one)."""
    ids = tokenizer(template_text(tokenizer), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    assert ids.count(bos) == (1 if bos is not None else 0)
    return ids


def test_the_llama3_layout_would_double_its_bos_and_the_prompt_does_not(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", layers=1, tokenizer_style="llama3"))
    bos = tokenizer.bos_token_id
    assert tokenizer(template_text(tokenizer))["input_ids"][:2] == [bos, bos]  # the hazard every path had to avoid
    prompt = build_prompt(QUESTION, tokenizer)
    assert prompt == template_text(tokenizer).removeprefix(tokenizer.bos_token)
    assert prompt_token_ids([prompt], tokenizer) == [expected_ids(tokenizer)]


def test_the_hf_engine_feeds_the_prompt_ids(tiny):
    engine = HFEngine(str(tiny))
    expected = expected_ids(engine.tokenizer)
    fed = []
    generate = engine.model.generate

    def spy(**kwargs):
        fed.extend(
            row[mask.bool()].tolist() for row, mask in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True)
        )
        return generate(**kwargs)

    engine.model.generate = spy
    engine.generate([GenerationRequest(build_prompt(QUESTION, engine.tokenizer), 0.7, 0.95, 0, 4)])
    assert fed == [expected]


def test_the_vllm_engine_is_given_the_prompt_ids(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert vllm_token_prompts([build_prompt(QUESTION, tokenizer)], tokenizer) == [
        {"prompt_token_ids": expected_ids(tokenizer)}
    ]


def cpu_args(config_class, tmp_path, **fields):
    return config_class(output_dir=str(tmp_path), report_to=[], max_steps=1, use_cpu=True, bf16=False, **fields)


def test_sft_and_dpo_train_on_the_prompt_ids(tiny, tmp_path):
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompt, expected = build_prompt(QUESTION, tokenizer), expected_ids(tokenizer)
    sft = SFTTrainer(
        model=str(tiny),
        args=cpu_args(SFTConfig, tmp_path / "sft"),
        train_dataset=Dataset.from_list([{"prompt": prompt, "completion": "3 x 4 = 12\nAnswer: 12"}]),
        processing_class=tokenizer,
    )
    assert sft.train_dataset[0]["input_ids"][: len(expected)] == expected
    dpo = DPOTrainer(
        model=str(tiny),
        args=cpu_args(DPOConfig, tmp_path / "dpo"),
        train_dataset=Dataset.from_list([{"prompt": prompt, "chosen": "Answer: 12", "rejected": "Answer: 7"}]),
        processing_class=tokenizer,
    )
    assert dpo.train_dataset[0]["prompt_ids"] == expected


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_online_rl_generates_from_the_prompt_ids(tiny, tmp_path, algo):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if algo == "grpo" else (RLOOConfig, RLOOTrainer)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompt, expected = build_prompt(QUESTION, tokenizer), expected_ids(tokenizer)
    trainer = trainer_class(
        model=str(tiny),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=cpu_args(config_class, tmp_path, per_device_train_batch_size=2, num_generations=2),
        train_dataset=Dataset.from_list([{"prompt": prompt}] * 2),
        processing_class=tokenizer,
    )
    prompt_ids, _, _ = trainer._tokenize_prompts([prompt])
    assert list(prompt_ids[0]) == expected
