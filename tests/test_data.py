import json
from pathlib import Path

import pytest

from shared_schemas.prompts import build_prompt, solution_target
from trainer.data import DataError, load_split, platinum_records, prepare_data, read_jsonl, split_train_dev

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared GSM8K data not present beside the repo")


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_jsonl_names_the_bad_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "#### 1"})
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        read_jsonl(write(tmp_path / "a.jsonl", [good, "{oops"]))
    with pytest.raises(DataError, match=r"line 3: missing or non-string field\(s\) answer"):
        read_jsonl(write(tmp_path / "b.jsonl", [good, "", json.dumps({"question": "q"})]))
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_a_later_stage_skips_a_torn_last_line_and_leaves_the_file_alone(tmp_path, caplog):
    from looper_common.jsonl import read_rows
    from shared_schemas.models import PreferencePair

    rows = [json.dumps({"k": i}) for i in range(3)]
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(rows) + "\n" + rows[0][:5])  # a kill cut the fourth line short
    before = path.read_bytes()
    assert read_rows(path) == [{"k": 0}, {"k": 1}, {"k": 2}]
    assert "skipping a torn last line of 5 bytes" in caplog.text and path.read_bytes() == before
    # a whole last line without its newline (written by hand) is a row, not a torn one
    path.write_text("\n".join(rows))
    assert len(read_rows(path)) == 3
    # anywhere else, a bad line is an error naming the line and what was expected
    path.write_text("\n".join([rows[0], "{oops", rows[1]]) + "\n")
    with pytest.raises(DataError, match=r"run.jsonl, line 2: not a JSON object \(Expecting"):
        read_rows(path)
    path.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: not a preference pair \(question_id: Field required\)"):
        read_rows(path, PreferencePair.model_validate_json, "preference pair")
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    # a whole last line of the wrong shape is not torn: it is an error, like any other line
    path.write_text(json.dumps({"prompt": "p"}))
    with pytest.raises(DataError, match=r"line 1: not a preference pair"):
        read_rows(path, PreferencePair.model_validate_json, "preference pair")


def test_a_resuming_run_reads_back_model_text_with_unicode_line_separators(tmp_path):
    """Rows are written with ensure_ascii=False: U+2028, U+0085 and U+001C inside a string stay raw in the file,
    and only a newline ends a row."""
    from looper_common.jsonl import append_lines, complete_lines, read_complete_lines

    path = tmp_path / "spool.jsonl"
    rows = [{"text": "a\u2028b\u0085c\x1cd"}, {"text": "e"}]
    append_lines(path, [json.dumps(r, ensure_ascii=False) for r in rows])
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert len(complete_lines(path)) == 2 and read_complete_lines(path) == rows


def test_hub_id_while_offline_says_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="pass a local JSONL file"):
        load_split("openai/gsm8k-does-not-exist", "train", config="main")


def test_split_is_seeded_disjoint_and_complete():
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(100)]
    train, dev = split_train_dev(rows, 0.2, seed=3)
    again_train, again_dev = split_train_dev(rows, 0.2, seed=3)
    other_train, _ = split_train_dev(rows, 0.2, seed=4)
    assert (train, dev) == (again_train, again_dev)
    assert [r["id"] for r in train] != [r["id"] for r in other_train]
    assert len(dev) == 20 and len(train) == 80
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in dev})
    assert dev[0]["id"].startswith("gsm8k-train-")


def test_platinum_drops_rows_marked_bad():
    rows = [
        {"question": "a", "answer": "#### 1", "cleaning_status": "consensus"},
        {"question": "b", "answer": "#### 2", "cleaning_status": "bad"},
        {"question": "c", "answer": "#### 3", "cleaning_status": "revised"},
    ]
    kept = platinum_records(rows)
    assert [r["id"] for r in kept] == ["platinum-0000", "platinum-0002"]
    assert kept[1]["cleaning_status"] == "revised"


@needs_shared
def test_prepare_real_gsm8k_and_platinum(tmp_path):
    manifest = prepare_data(
        tmp_path, gsm8k=str(SHARED / "gsm8k"), platinum=str(SHARED / "gsm8k_platinum" / "test.jsonl"), seed=0
    )
    files = manifest["files"]
    assert files["train"]["rows"] + files["dev"]["rows"] == 7473
    assert files["dev"]["rows"] == round(7473 * 0.2)
    assert files["platinum"]["rows"] == 1209
    first = json.loads((tmp_path / "platinum.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "question", "answer", "cleaning_status"}


def test_generated_eval_never_repeats_training_questions(tmp_path):
    prepare_data(tmp_path, generated=200, generated_eval=50, seed=1)
    train = {r["question"] for r in read_jsonl(tmp_path / "generated_train.jsonl")}
    held_out = read_jsonl(tmp_path / "generated_eval.jsonl")
    assert len(held_out) == 50 and not train & {r["question"] for r in held_out}


def test_generated_problems_keep_to_the_step_range(tmp_path):
    manifest = prepare_data(tmp_path, generated=120, generated_eval=60, generated_max_steps=2, seed=3)
    assert manifest["generated_steps"] == [1, 2]
    for name in ("generated_train", "generated_eval"):
        # one solution line per step, then '#### N'
        steps = [len(r["answer"].split("\n")) - 1 for r in read_jsonl(tmp_path / f"{name}.jsonl")]
        assert set(steps) == {1, 2}
    prepare_data(tmp_path, generated=40, generated_min_steps=5, seed=3)
    assert {len(r["answer"].split("\n")) - 1 for r in read_jsonl(tmp_path / "generated_train.jsonl")} == {5, 6}
    with pytest.raises(DataError, match="no template makes 7-9 steps"):
        prepare_data(tmp_path, generated=4, generated_min_steps=7, generated_max_steps=9)


def test_solution_target_strips_calculator_and_ends_with_answer_line():
    gold = "He has 3*4=<<3*4=12>>12 apples.\n#### 1,200"
    assert solution_target(gold) == "He has 3*4=12 apples.\nAnswer: 1200"


def test_prompt_uses_the_chat_template_when_there_is_one():
    class Plain:
        chat_template = None

    plain = build_prompt("How many?", Plain())
    assert plain.startswith("You are a careful math tutor.") and "Problem: How many?" in plain
    assert plain.endswith("Solution:\n")
