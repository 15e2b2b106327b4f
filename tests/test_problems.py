"""The embedded problem generator (trainer.problems): every solution re-executes, for every template and seed."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

from shared_schemas.answers import parse_gold
from trainer.problems import TEMPLATES, Problem, counterfactual_twin, generate, safe_eval, to_record, verify

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    """2,000 problems over all templates and several seeds."""
    return [p for seed in SEEDS for p in generate(500, seed=seed)]


def test_every_solution_verifies(problems):
    assert len(problems) == 2000
    bad = [p.id for p in problems if not verify(p)]
    assert not bad


def test_answers_are_positive_integers_that_parse_gold_reads(problems):
    for p in problems:
        assert isinstance(p.final, int) and p.final > 0
        assert p.answer.splitlines()[-1] == f"#### {p.final}"
        assert parse_gold(p.answer) == str(p.final)


def test_steps_in_range_and_one_annotation_per_solution_line(problems):
    for p in problems:
        lines = p.answer.splitlines()[:-1]
        assert 1 <= p.steps <= 6 and p.steps in TEMPLATES[p.template][1]
        assert p.steps == len(re.findall(r"<<[^>]*>>", p.answer)) == len(lines)
        assert all(line.count("<<") == 1 for line in lines)


def test_annotations_look_like_gsm8k(problems):
    annotation = re.compile(r"(\S[^=<]*?) = <<([^=<>]+)=(\d+)>>(\d+)")
    for p in problems:
        for line in p.answer.splitlines()[:-1]:
            shown, expr, value, repeated = annotation.search(line).groups()
            assert shown.replace(" ", "").endswith(expr) and value == repeated


def test_every_template_and_step_count_is_hit(problems):
    assert len(TEMPLATES) >= 8
    assert set(Counter(p.template for p in problems)) == set(TEMPLATES)
    assert {p.steps for p in problems} == set(range(1, 7))


def test_ids_and_questions_are_unique(problems):
    assert len({p.id for p in problems}) == len(problems)
    for seed in SEEDS:
        questions = [p.question for p in problems if p.id.startswith(f"gen-{seed}-")]
        assert len(set(questions)) == len(questions) == 500
    assert len({p.question for p in problems}) > 0.99 * len(problems)  # seeds rarely repeat each other either
    assert [p.id for p in problems[:2]] == ["gen-0-000000", "gen-0-000001"]


def test_deterministic_per_seed():
    assert generate(50, seed=7) == generate(50, seed=7)
    assert [p.question for p in generate(50, seed=7)] != [p.question for p in generate(50, seed=8)]


def test_template_and_step_filters():
    for p in generate(100, seed=5, templates=["ages", "fraction_of"], min_steps=2, max_steps=4):
        assert p.template in ("ages", "fraction_of") and 2 <= p.steps <= 4
    assert {p.steps for p in generate(100, seed=5, min_steps=6)} == {6}
    with pytest.raises(ValueError):
        generate(1, seed=0, templates=["no_such_template"])
    with pytest.raises(ValueError):
        generate(1, seed=0, templates=["percent_of"], min_steps=5)


def test_counterfactual_twins(problems):
    changed = 0
    for p in problems[:400]:
        twin = counterfactual_twin(p, seed=1)
        assert verify(twin)
        assert (twin.template, twin.steps, twin.params["word_seed"]) == (p.template, p.steps, p.params["word_seed"])
        assert twin.question != p.question and twin.id != p.id
        assert twin == counterfactual_twin(p, seed=1)
        changed += twin.final != p.final
    assert changed > 0.8 * 400


def test_twin_keeps_the_story():
    p = generate(1, seed=3, templates=["shopping"])[0]
    twin = counterfactual_twin(p, seed=0)
    assert re.sub(r"\d+", "#", twin.question) == re.sub(r"\d+", "#", p.question)


def test_to_record():
    p = generate(1, seed=0)[0]
    assert to_record(p) == {"id": p.id, "question": p.question, "answer": p.answer}


def test_verify_catches_wrong_solutions(problems):
    p = problems[0]
    wrong_final = dataclasses.replace(p, answer=p.answer.rsplit("#### ", 1)[0] + f"#### {p.final + 1}")
    assert not verify(wrong_final)
    assert not verify(dataclasses.replace(p, final=p.final + 1))
    assert not verify(dataclasses.replace(p, steps=p.steps + 1))
    assert not verify(dataclasses.replace(p, answer="2 + 2 = <<2+2=5>>5 apples.\n#### 5", steps=1, final=5))
    assert verify(dataclasses.replace(p, answer="2 + 2 = <<2+2=4>>4 apples.\n#### 4", steps=1, final=4))


def test_safe_eval():
    assert safe_eval("3*4") == 12
    assert safe_eval("120*2/3") == 80
    assert safe_eval("2*(12+8)") == 40
    assert safe_eval("7//2 + 7%2 + 2**3 - -1") == 13
    assert safe_eval("0.1+0.2") * 10 == 3  # exact, no float error
    for bad in [
        "__import__('os')",
        "x",
        "os.system('ls')",
        "abs(-3)",
        "[1, 2]",
        "1 if 1 else 2",
        "3 < 4",
        "'a'",
        "True + 1",
    ]:
        with pytest.raises(ValueError):
            safe_eval(bad)
    for bad in ["1/0", "9**999999", "10**10**10", "2**0.5", "", "1+"]:
        with pytest.raises(ValueError):
            safe_eval(bad)
