"""`looper eval` for real: the HF engine on the tiny models, rows of GSM8K-Platinum, resume and determinism."""

import json
import shutil
from pathlib import Path

import pytest

from rollout_worker.engines import make_engine
from shared_schemas.answers import parse_gold
from trainer.compare import CompareError, run_compare
from trainer.data import DataError, generated_records, write_jsonl
from trainer.evaluate import EvalConfig, chunk_plan, load_questions, run_eval, score_row

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PLATINUM = DATA / "gsm8k_platinum" / "test.jsonl"
needs_platinum = pytest.mark.skipif(not PLATINUM.is_file(), reason=f"GSM8K-Platinum not found at {PLATINUM}")

N = 12


# --- scoring: what eval does with the shared parser ------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "gold", "strict", "flexible", "correct_strict", "correct_flexible"),
    [
        ("3 + 4 = 7 eggs.\nAnswer: 7", "#### 7", "7", "7", True, True),
        ("She makes 9 * 2 = 18 dollars", "#### 18", None, "18", False, True),  # no final answer: flexible only
        ("Total: $1,000.\nAnswer: $1,000.00", "#### 1,000", "1000", "1000", True, True),
        ("The answer is 5.\nWith 13 more that makes 18", "#### 18", "5", "5", False, False),  # strict answer wins
        ("I do not know.", "#### 3", None, None, False, False),
        ("#### -10", "#### -10", "-10", "-10", True, True),
    ],
)
def test_correct_flags_in_both_modes(output, gold, strict, flexible, correct_strict, correct_flexible):
    record = {"id": "q", "question": "?", "gold": parse_gold(gold)}
    row = score_row(record, "prompt", output, completion_tokens=5, max_new_tokens=10)
    assert (row["parsed_strict"], row["parsed_flexible"]) == (strict, flexible)
    assert (row["correct_strict"], row["correct_flexible"]) == (correct_strict, correct_flexible)
    assert row["truncated"] is False and "cleaning_status" not in row
    assert score_row(record, "p", output, 10, 10)["truncated"] is True


def test_questions_get_stable_ids_and_gold_answers(tmp_path):
    rows = [
        {"question": "a?", "answer": "x\n#### 1,200", "cleaning_status": "consensus"},
        {"question": "b?", "answer": "#### 2", "cleaning_status": "bad"},  # dropped, as SPEC step 1 says
        {"question": "c?", "answer": "#### 3", "cleaning_status": "revised"},
    ]
    write_jsonl(tmp_path / "p.jsonl", rows)
    records, info = load_questions(tmp_path / "p.jsonl")
    assert [(r["id"], r["gold"], r["cleaning_status"]) for r in records] == [
        ("platinum-0000", "1200", "consensus"),
        ("platinum-0002", "3", "revised"),
    ]
    assert info["rows_in_file"] == 3 and info["skipped_rows"] == {"bad": 1}

    write_jsonl(
        tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 4"}, {"id": "x", "question": "r", "answer": "5"}]
    )
    assert [r["id"] for r in load_questions(tmp_path / "g.jsonl")[0]] == ["row-00000", "x"]
    assert len(load_questions(tmp_path / "g.jsonl", max_questions=1)[0]) == 1

    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no final line"}])
    with pytest.raises(DataError, match="no parseable gold"):
        load_questions(tmp_path / "bad.jsonl")


def test_the_chunk_plan_is_a_fixed_partition_sorted_by_length():
    prompts = ["ccc", "a", "bb", "dddd", "a", "ee"]
    plan = chunk_plan(prompts, 4)
    assert plan == [[1, 4, 2, 5], [0, 3]]
    assert plan == chunk_plan(list(prompts), 4)


# --- end to end on the tiny models -----------------------------------------------------------------------


class CountingEngine:
    """The real engine, counting calls; `fail_after` raises mid-run like a kill would."""

    def __init__(self, engine, fail_after=None):
        self.engine, self.calls, self.fail_after = engine, 0, fail_after
        self.name, self.tokenizer, self.model = engine.name, engine.tokenizer, engine.model

    def generate(self, requests):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return self.engine.generate(requests)


@pytest.fixture(scope="module")
def format_engine(format_model):
    return make_engine("hf", str(format_model), dtype="float32", max_batch_size=4)


def eval_config(model, out, **kwargs) -> EvalConfig:
    options = dict(max_questions=N, max_new_tokens=48, chunk_size=4, max_batch_size=4, engine="hf", dtype="float32")
    return EvalConfig(model=str(model), data_file=str(PLATINUM), output_dir=str(out), **{**options, **kwargs})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_platinum
def test_eval_writes_per_question_rows_and_a_summary_and_reruns_identically(format_model, format_engine, tmp_path):
    summary = run_eval(eval_config(format_model, tmp_path / "a", repeat=2), engine=format_engine)
    rows = lines(tmp_path / "a" / "predictions.jsonl")
    assert [r["id"] for r in rows] == [f"platinum-{i:04d}" for i in range(N)]  # data order, every row
    keys = {"id", "prompt", "output", "parsed_strict", "parsed_flexible", "gold", "correct_strict"}
    assert keys | {"correct_flexible", "completion_tokens", "cleaning_status"} <= set(rows[0])
    assert rows[0]["gold"] == "18" and all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)
    assert any(r["parsed_strict"] is not None for r in rows)  # the format model answers 'Answer: N'

    on_disk = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert on_disk == summary
    assert summary["questions"] == N and summary["rows_in_file"] == 1209 and summary["max_questions"] == N
    assert summary["correct_strict"] == sum(r["correct_strict"] for r in rows)
    assert summary["accuracy_flexible"] == pytest.approx(sum(r["correct_flexible"] for r in rows) / N)
    by_status = summary["by_cleaning_status"]
    assert sum(b["questions"] for b in by_status.values()) == N and "consensus" in by_status
    assert summary["engine"] == "hf" and summary["dtype"] == "float32" and summary["max_batch_size"] == 4
    assert summary["completion_tokens"]["total"] == sum(r["completion_tokens"] for r in rows)
    assert summary["seconds"] > 0 and summary["questions_per_second"] > 0
    assert summary["deterministic"] and summary["nondeterministic_ops"] == []  # no op fell back to a warning

    repeat = summary["repeat"]  # fp32 on CPU with a fixed batch composition: no noise at all
    assert repeat["runs"] == 2 and repeat["outputs_differ"] == 0 and repeat["strict"]["noise_floor_points"] == 0
    assert lines(tmp_path / "a" / "predictions.repeat-2.jsonl") == rows

    # a fresh run into another dir, with a freshly loaded engine: the same answers, byte for byte
    again = run_eval(eval_config(format_model, tmp_path / "b"))
    assert again["answers_sha256"] == summary["answers_sha256"]
    assert again["outputs_sha256"] == summary["outputs_sha256"]
    assert lines(tmp_path / "b" / "predictions.jsonl") == rows


@needs_platinum
def test_an_interrupted_eval_resumes_skipping_done_ids(format_model, format_engine, tmp_path):
    reference = run_eval(eval_config(format_model, tmp_path / "ref"), engine=format_engine)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_eval(eval_config(format_model, out), engine=CountingEngine(format_engine, fail_after=1))
    written = lines(out / "predictions.jsonl")
    assert len(written) == 4  # the first chunk, flushed before the kill
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"id": "platinum-00')  # a torn last line, cut off on resume

    counting = CountingEngine(format_engine)
    resumed = run_eval(eval_config(format_model, out), engine=counting)
    assert counting.calls == N // 4 - 1  # the finished chunk is not generated again
    assert resumed["answers_sha256"] == reference["answers_sha256"]
    assert lines(out / "predictions.jsonl") == lines(tmp_path / "ref" / "predictions.jsonl")

    counting = CountingEngine(format_engine)
    run_eval(eval_config(format_model, out), engine=counting)
    assert counting.calls == 0  # all done: nothing generated

    with pytest.raises(DataError, match="max_new_tokens"):
        run_eval(eval_config(format_model, out, max_new_tokens=16), engine=format_engine)
    settings = json.loads((out / "eval_settings.json").read_text())
    for key, other in (("versions", {**settings["versions"], "torch": "0.0"}), ("device", "another GPU")):
        (out / "eval_settings.json").write_text(json.dumps({**settings, key: other}))
        with pytest.raises(DataError, match=key):  # other kernels: the finished rows would not be comparable
            run_eval(eval_config(format_model, out), engine=format_engine)


@needs_platinum
def test_compare_two_models_renders_a_report(tiny_model, format_model, format_engine, tmp_path):
    run_eval(eval_config(tiny_model, tmp_path / "tiny", repeat=2))
    run_eval(eval_config(format_model, tmp_path / "format", repeat=2), engine=format_engine)
    result = run_compare([str(tmp_path / "tiny"), str(tmp_path / "format")], tmp_path / "cmp", n_resamples=500)

    assert [m["name"] for m in result["models"]] == ["tiny", "format"]
    pair = result["pairs"][0]
    assert pair["noise_floor_points"] == 0.0 and 0 <= pair["mcnemar_p"] <= 1
    low, high = pair["bootstrap_ci95_points"]
    assert low <= pair["diff_points"] <= high
    assert set(result["by_cleaning_status"]) <= {"consensus", "verified", "revised"}

    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| tiny vs format |" in report and "![accuracy" in report and "## By cleaning_status" in report
    png = (tmp_path / "cmp" / "accuracy.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    # another question set (the first 8 rows only): refused, saying how many ids differ
    run_eval(eval_config(format_model, tmp_path / "short", max_questions=8), engine=format_engine)
    with pytest.raises(CompareError, match="4 ids differ"):
        run_compare([str(tmp_path / "format"), str(tmp_path / "short")], tmp_path / "bad")


@needs_platinum
def test_cli_eval_and_compare(format_model, tmp_path, capsys):
    from looper.cli import main

    args = ["--data-file", str(PLATINUM), "--max-questions", "4", "--max-new-tokens", "16", "--engine", "hf"]
    main(["eval", "--model", str(format_model), "--output-dir", str(tmp_path / "a"), *args])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c"), "--names", "a,b"])
    out = capsys.readouterr().out
    assert "accuracy strict" in out and "a - b: +0.00 pts" in out and (tmp_path / "c" / "report.md").is_file()

    (tmp_path / "b" / "predictions.jsonl").write_text(
        (tmp_path / "a" / "predictions.jsonl").read_text().replace('"gold": "18"', '"gold": null')
    )
    with pytest.raises(SystemExit, match="no gold answer"):
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])


# --- several models in one engine (eval_many, `looper eval --model A --model B`) -------------------------


def tiny_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter over `base` that changes its answers (peft starts B at zero: random B instead)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    lora.save_pretrained(str(out))
    return out


MANY = dict(max_new_tokens=24, chunk_size=4, max_batch_size=4, engine="hf", dtype="float32")
TIMING = ("seconds", "questions_per_second", "tokens_per_second", "versions", "run_s", "engine_start_s")


def test_eval_many_writes_what_separate_runs_write(format_model, tmp_path, capsys):
    from looper.cli import main

    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, generated_records(6, seed=3))
    a = tiny_adapter(format_model, tmp_path / "adapter-a", seed=1)
    b = tiny_adapter(format_model, tmp_path / "lora-b", seed=2)
    flags = ["--engine", "hf", "--dtype", "float32", "--max-new-tokens", "24", "--chunk-size", "4"]
    flags += ["--max-batch-size", "4", "--data-file", str(questions), "--output-dir", str(tmp_path / "many")]
    # --model repeated: NAME=PATH, or a bare path named after its dir; each into OUTPUT_DIR/NAME
    main(["eval", "--model", f"base={format_model}", "--model", f"a={a}", "--model", str(b), *flags])
    assert capsys.readouterr().out.count("accuracy strict") == 3

    outputs = {}
    for name, model in (("base", format_model), ("a", a), ("lora-b", b)):
        single = tmp_path / "single" / name
        run_eval(EvalConfig(model=str(model), data_file=str(questions), output_dir=str(single), name=name, **MANY))
        many = tmp_path / "many" / name
        assert lines(many / "predictions.jsonl") == lines(single / "predictions.jsonl")
        drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
        assert drop(lines(many / "metrics.jsonl")) == drop(lines(single / "metrics.jsonl"))
        summary, alone = (json.loads((d / "summary.json").read_text()) for d in (many, single))
        assert summary["name"] == name and summary["model"] == str(model)
        # HF loads each model in turn, timed as a single eval is; it keeps no preemption count
        assert summary["engine_start_s"] > 0 and alone["engine_start_s"] > 0 and alone["preemptions"] is None
        assert {k: v for k, v in summary.items() if k not in TIMING} == {
            k: v for k, v in alone.items() if k not in TIMING
        }
        outputs[name] = summary["outputs_sha256"]
    assert len(set(outputs.values())) == 3  # the adapters were applied: three models, three sets of answers


def test_eval_many_refuses_what_one_engine_cannot_serve(tiny_model, format_model, tmp_path):
    from looper.cli import main
    from trainer.evaluate import eval_many, shared_engine_plan

    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, generated_records(2, seed=3))
    over_format = tiny_adapter(format_model, tmp_path / "over-format", seed=1)
    over_tiny = tiny_adapter(tiny_model, tmp_path / "over-tiny", seed=2)

    def config(model, name, **kwargs):
        return EvalConfig(model=str(model), data_file=str(questions), output_dir=str(tmp_path / name), **MANY | kwargs)

    plan = shared_engine_plan([config(format_model, "b"), config(over_format, "a")])
    assert plan == {"base": str(format_model), "ranks": {str(over_format): 4}}
    # an adapter recorded over another base, a different model outright: refused before any engine starts
    with pytest.raises(ValueError, match=r"over-tiny is a LoRA adapter over .*, not the shared base"):
        eval_many([config(format_model, "b"), config(over_format, "a"), config(over_tiny, "t")])
    with pytest.raises(ValueError, match="is another model, not the shared base"):
        eval_many([config(format_model, "b"), config(tiny_model, "t")])
    with pytest.raises(ValueError, match="need the same dtype"):
        eval_many([config(format_model, "b"), config(over_format, "a", dtype="bfloat16")])
    with pytest.raises(ValueError, match="same output dir"):
        eval_many([config(format_model, "b"), config(over_format, "b")])
    assert not (tmp_path / "b").exists()
    # the command line says so too, and wants a name per model
    flags = ["--data-file", str(questions), "--engine", "hf", "--output-dir", str(tmp_path / "cli")]
    with pytest.raises(SystemExit, match="not the shared base"):
        main(["eval", "--model", str(format_model), "--model", str(over_tiny), *flags])
    with pytest.raises(SystemExit, match="two models are named 'model'"):
        main(["eval", "--model", str(format_model), "--model", str(tiny_model), *flags])
    with pytest.raises(SystemExit, match="--name names one model"):
        main(["eval", "--model", str(format_model), "--model", f"a={over_format}", "--name", "x", *flags])
