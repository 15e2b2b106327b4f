"""The HF engine's static-cache path against plain `generate`, on the tiny models in fp32 (compile is CUDA-only
and not needed here), and the generation bench's pure helpers."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest

from rollout_worker.engines import FillerRows, GenerationRequest, HFEngine, bucket_rows, make_engine
from shared_schemas.prompts import build_prompt
from trainer.data import DataError, generated_records, write_jsonl
from trainer.evaluate import SETTINGS, EvalConfig, run_eval

SMOLLM2 = os.environ.get("LOOPER_SMOLLM2")


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "generation_bench.py"
    spec = importlib.util.spec_from_file_location("generation_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def greedy_requests(tokenizer, n: int, max_new_tokens: int) -> list[GenerationRequest]:
    # questions repeated 1-3 times: prompt lengths that fall into different length buckets
    questions = [q["question"] * (1 + i % 3) for i, q in enumerate(generated_records(n, seed=7))]
    return [GenerationRequest(build_prompt(q, tokenizer), 0.0, 1.0, 0, max_new_tokens) for q in questions]


@pytest.fixture(scope="module")
def engines(format_model, one_torch_thread):
    """The plain engine and the static-cache one, configured the way `looper eval` passes its fields."""
    plain = make_engine("hf", str(format_model), dtype="float32", max_batch_size=4)
    config = EvalConfig(model=str(format_model), data_file="unused.jsonl", engine="hf", dtype="float32")
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("model", "engine")}
    tuned = make_engine("hf", str(format_model), **{**options, "max_batch_size": 4, "static_cache": True})
    return plain, tuned


def test_static_cache_greedy_outputs_equal_plain_generate_token_for_token(engines):
    plain, tuned = engines
    assert tuned.static_cache and tuned.compile_config is None and not plain.static_cache
    requests = greedy_requests(plain.tokenizer, 7, 40)  # chunks of 4 and 3: the second padded with a filler row
    expected, got = plain.generate(requests), tuned.generate(requests)
    assert [g.text for g in got] == [g.text for g in expected]
    assert [g.completion_tokens for g in got] == [g.completion_tokens for g in expected]
    assert len({g.text for g in got}) > 1


def test_static_cache_keeps_per_row_sampling_and_its_reproducibility(engines):
    plain, tuned = engines
    greedy = greedy_requests(plain.tokenizer, 3, 24)
    mixed = [GenerationRequest(r.prompt, t, p, 42, 24) for r in greedy for t, p in ((0.0, 1.0), (1.5, 0.95))]
    first, second = tuned.generate(mixed), tuned.generate(mixed)
    assert [g.text for g in first] == [g.text for g in second]
    assert [g.text for g in first[::2]] == [g.text for g in tuned.generate(greedy)]  # greedy rows stay greedy
    assert [g.text for g in first[1::2]] != [g.text for g in first[::2]]  # hot rows sample


@pytest.mark.parametrize("which", ["plain", "tuned"])
def test_a_batch_stops_as_soon_as_every_row_has_emitted_a_stop_token(engines, which):
    engine = dict(zip(("plain", "tuned"), engines, strict=True))[which]
    requests = greedy_requests(engine.tokenizer, 4, 200)
    calls = []
    hook = engine.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        generations = engine.generate(requests)
    finally:
        hook.remove()
    longest = max(g.completion_tokens for g in generations)
    assert longest < 200  # every row ended on a stop token (the format model's answers are short)...
    assert len(calls) == longest + 1  # ...and decoding stopped at the last one: one forward per token, stop included


def test_filler_rows_finish_after_their_first_token(format_model, one_torch_thread):
    import torch
    from transformers import StoppingCriteriaList

    engine = HFEngine(str(format_model), dtype=torch.float32)
    prompts = [r.prompt for r in greedy_requests(engine.tokenizer, 3, 1)]
    batch = engine.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    filler = torch.tensor([False, True, True])
    output = engine.model.generate(
        **batch,
        do_sample=False,
        max_new_tokens=12,
        stopping_criteria=StoppingCriteriaList([FillerRows(filler)]),
        eos_token_id=engine.stop_ids,
        pad_token_id=engine.tokenizer.pad_token_id,
    )
    new = output[:, batch["input_ids"].shape[1] :]
    assert (new[1:, 1:] == engine.tokenizer.pad_token_id).all()  # filler rows: one token, then padding
    assert (new[0, 1:] != engine.tokenizer.pad_token_id).any()  # the real row goes on


def test_looper_eval_with_the_static_cache_gives_plain_answers_and_resumes_older_evals(format_model, tmp_path):
    data = tmp_path / "eval.jsonl"
    write_jsonl(data, generated_records(6, seed=11))
    options = dict(engine="hf", dtype="float32", max_new_tokens=24, chunk_size=4, max_batch_size=4)
    plain = EvalConfig(model=str(format_model), data_file=str(data), output_dir=str(tmp_path / "plain"), **options)
    tuned = dataclasses.replace(plain, output_dir=str(tmp_path / "tuned"), static_cache=True)
    expected, got = run_eval(plain), run_eval(tuned)
    assert got["outputs_sha256"] == expected["outputs_sha256"]

    # an eval started before the static-cache settings existed resumes with their defaults
    settings = json.loads((tmp_path / "plain" / SETTINGS).read_text())
    del settings["static_cache"], settings["torch_compile"]
    (tmp_path / "plain" / SETTINGS).write_text(json.dumps(settings))
    assert run_eval(plain)["outputs_sha256"] == expected["outputs_sha256"]
    with pytest.raises(DataError, match="static_cache: False -> True"):
        run_eval(dataclasses.replace(plain, static_cache=True))


def test_batches_are_padded_to_powers_of_two_up_to_the_batch_limit():
    assert [bucket_rows(n, 64) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    assert [bucket_rows(n, 48) for n in (17, 33, 48)] == [32, 48, 48]


def test_torch_compile_needs_the_static_cache_and_a_cuda_device(tiny_model):
    with pytest.raises(ValueError, match="set static_cache too"):
        HFEngine(str(tiny_model), torch_compile=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        HFEngine(str(tiny_model), device="cpu", static_cache=True, torch_compile=True)


# --- bench/generation_bench.py ------------------------------------------------------------------------


def test_roofline_is_batch_times_bandwidth_over_weight_bytes():
    bench = load_bench()
    assert bench.roofline_tokens_per_s(1, 1000.0, 10**9) == pytest.approx(1000.0)
    assert bench.roofline_tokens_per_s(256, 4800.0, 269_030_016) == pytest.approx(256 * 4.8e12 / 269_030_016)


def test_agreement_counts_identical_completions_and_identical_final_answers():
    bench = load_bench()
    reference = ["3 + 4 = 7\nAnswer: 7", "Answer: 1,000", "no number given", "Answer: 5"]
    candidate = ["3 + 4 = 7\nAnswer: 7", "so 1000\nAnswer: 1000", "still nothing", "Answer: 6"]
    assert bench.agreement(reference, candidate) == {"prompts": 4, "identical": 0.25, "same_answer": 0.75}
    with pytest.raises(ValueError):
        bench.agreement(reference, candidate[:2])


def test_weight_bytes_skip_an_untied_input_embedding(tiny_model):
    import torch

    from looper_common.modeling import load_model

    bench = load_bench()
    model = load_model(str(tiny_model), dtype=torch.float32)
    embedding = model.get_input_embeddings().weight.numel()
    expected = 4 * (sum(p.numel() for p in model.parameters()) - embedding)
    assert bench.decode_weight_bytes(model, 4) == expected
    assert bench.weight_bytes_of(str(tiny_model), "float32") == expected  # from the config, on the meta device


@pytest.mark.skipif(not SMOLLM2, reason="LOOPER_SMOLLM2 (SmolLM2-135M-Instruct dir) not set")
def test_weight_bytes_of_smollm2_count_its_tied_embedding_once():
    assert load_bench().weight_bytes_of(SMOLLM2, "bfloat16") == 2 * 134_515_008


def test_vllm_lora_rank_rounds_up_to_a_rank_vllm_accepts():
    from rollout_worker.engines import vllm_lora_rank

    assert vllm_lora_rank(4) == 16  # vLLM's own default floor
    assert vllm_lora_rank(64) == 64
    assert vllm_lora_rank(64 + 16) == 128  # an SFT adapter folded with a DPO one
    assert vllm_lora_rank(300) == 320
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_lora_rank(1024)
