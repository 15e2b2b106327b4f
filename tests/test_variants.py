"""Design B: counterfactual twins replayed from calculator annotations, paraphrases, selection by arm agreement,
and the dynamic sampler that gives all-correct groups' variants the next round's slots."""

import json
import re
from collections import Counter
from fractions import Fraction

import pytest

from looper.cli import main
from trainer.data import DataError, write_jsonl
from trainer.problems import generate, safe_eval
from trainer.variants import (
    DynamicSampler,
    Unverifiable,
    VariantsConfig,
    counterfactual_twin,
    question_variants,
    write_variants,
)

SHARE = {
    "id": "q1",
    "question": "Ana picks 14 apples and buys 6 more. She gives half of them to her brother. How many does she keep?",
    "answer": "She has 14+6=<<14+6=20>>20 apples.\nShe keeps 20/2=<<20/2=10>>10.\n#### 10",
}


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def check_replayed(solution: str) -> Fraction:
    """Every annotation of a twin's solution evaluates to the value it states; returns the last one."""
    value = None
    for expr, stated in re.findall(r"<<([^=]*)=([^>]*)>>", solution):
        value = safe_eval(expr)
        assert value == Fraction(stated)
    assert solution.endswith(f"#### {value}")
    return value


@pytest.mark.parametrize("seed", range(5))
def test_a_twin_changes_the_numbers_and_recomputes_the_answer(seed):
    question, solution, answer = counterfactual_twin(SHARE["question"], SHARE["answer"], seed)
    picked, bought = numbers(question)
    assert (picked, bought) != (14, 6) and answer == (picked + bought) / 2 and answer != 10
    assert "half" in question and check_replayed(solution) == answer


def test_an_unwritten_number_that_equals_a_written_one_stays_as_it_is():
    """'2 parents' is never written; '2 suitcases' is. The 2 used twice must not change, or the twin's answer
    would count 3 parents."""
    question = ("Each of Lily's 4 brothers packs 2 suitcases, and her parents pack 3 suitcases each. "
                "How many suitcases does the family pack?")  # fmt: skip
    solution = "4*2=<<4*2=8>>8\n2*3=<<2*3=6>>6\n8+6=<<8+6=14>>14\n#### 14"
    for seed in range(5):
        twin, replayed, answer = counterfactual_twin(question, solution, seed)
        brothers, per_brother, per_parent = numbers(twin)
        assert per_brother == 2 and answer == brothers * 2 + 2 * per_parent
        check_replayed(replayed)


def test_a_percent_written_as_a_whole_number_is_replayed_as_its_fraction():
    question = "A shop sells a 40 dollar coat at 20% off. What does the coat cost?"
    solution = "40*.2=<<40*.2=8>>8 off\n40-8=<<40-8=32>>32\n#### 32"
    twin, replayed, answer = counterfactual_twin(question, solution, 0)
    price, percent = numbers(twin)
    assert Fraction(answer) == price - Fraction(price * percent, 100)
    check_replayed(replayed)


@pytest.mark.parametrize(
    ("question", "solution", "reason"),
    [
        ("Tom runs 3 laps of 400 meters. How far?", "3*400=<<3*400=1300>>1300\n#### 1300", "wrong_step"),
        ("Tom has 5 pens and buys some more. How many now?", "5+17=<<5+17=22>>22\n#### 22", "unknown_number"),
        ("Tom has 5 pens.", "He has 5 pens.\n#### 5", "no_steps"),
        ("Tom has 5 pens and 4 more, then 9 pencils. Total?", "5+4=<<5+4=9>>9\n9+9=<<9+9=18>>18\n#### 18",
         "ambiguous_number"),
        ("A class has 12 boys and 12 girls, so 24 children, and 3 leave. How many stay?",
         "12+12=<<12+12=24>>24\n24-3=<<24-3=21>>21\n#### 21", "ambiguous_number"),
        ("It rains for 15 minutes, stops, then rains the remaining 15 minutes of the 30. Pails fill at 2 a minute. "
         "How many pails?", "15*2=<<15*2=30>>30\n15*2=<<15*2=30>>30\n30+30=<<30+30=60>>60\n#### 60",
         "ambiguous_number"),
        ("A tap fills 3 cups a minute. After 15 minutes it doubles its speed for the remaining 15 of the 30 "
         "minutes. How many cups?",
         "15*3=<<15*3=45>>45\n3*2=<<3*2=6>>6\n15*6=<<15*6=90>>90\n45+90=<<45+90=135>>135\n#### 135",
         "related_numbers"),
        ("Ann is 30. How old is she in a year?", "30+1=<<30+1=31>>31\n#### 31", "nothing_to_change"),
        ("A fair has 50 pupils from one school and 3/5 as many from another. Twice both came from a third. How many "
         "in all?", "50+30=<<50+30=80>>80\n2*80=<<2*80=160>>160\n80+160=<<80+160=240>>240\n#### 240",
         "unknown_number"),  # 30 = 3/5 of 50, computed unannotated: no month here lets it pass as a constant
        ("Ann has 8 cakes and eats 3. How many are left?", "8-3=<<8-3=5>>5\n#### 6", "final_not_last_step"),
    ],
)  # fmt: skip
def test_a_twin_that_cannot_be_replayed_with_certainty_is_dropped_with_its_reason(question, solution, reason):
    with pytest.raises(Unverifiable) as info:
        counterfactual_twin(question, solution, 0)
    assert info.value.reason == reason


def test_twins_of_the_projects_generated_problems_replay_exactly():
    """On the generator's GSM8K-style solutions: most problems get a twin, and every twin's chain checks out."""
    drops: Counter = Counter()
    problems = generate(60, seed=5)
    made = 0
    for p in problems:
        rows = question_variants({"id": p.id, "question": p.question, "answer": p.answer}, 1, drops)
        assert rows[0]["kind"] == "paraphrase" and rows[0]["answer"] == f"#### {p.final}"
        for row in rows[1:]:
            made += 1
            assert row["question"] != p.question and check_replayed(row["answer"]) != p.final
    assert made + sum(drops.values()) == len(problems) and made >= len(problems) // 3


def scored_rollouts(path, answers_by_question: dict[str, list[str]]):
    write_jsonl(path, [{"question_id": q, "question": "?", "gold_answer": "#### 1",
                        "trajectories": [{"arm_name": f"a{i}", "answer": a} for i, a in enumerate(answers)]}
                       for q, answers in answers_by_question.items()])  # fmt: skip


def test_arm_agreement_picks_the_questions_that_get_variants_and_the_cli_reports_yield(tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    write_jsonl(train, [SHARE, {**SHARE, "id": "q2"}, {**SHARE, "id": "q3"}])
    rollouts = tmp_path / "rollouts.jsonl"
    scored_rollouts(rollouts, {"q1": ["10"] * 10 + ["9"], "q2": ["10"] * 6 + ["9"] * 5, "q3": ["10"] * 9 + [None] * 2})
    out = tmp_path / "variants.jsonl"
    main(["variants", "--train-file", str(train), "--rollouts-file", str(rollouts), "--output-file", str(out),
          "--min-agreement", "0.8", "--twins", "2"])  # fmt: skip
    assert "2 of 3 questions" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["source_id"] for r in rows} == {"q1", "q3"}  # 10/11 and 9/11 agree; q2's 6/11 does not
    assert {r["kind"] for r in rows} == {"paraphrase", "counterfactual"}
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["questions_with_variants"] == 2 and stats["twins_tried"] == 4
    assert stats["twins_made"] + sum(stats["twins_dropped"].values()) == 4

    scored_rollouts(rollouts, {"other": ["1"] * 11})
    with pytest.raises(DataError, match="none of the 1 agreeing questions"):
        write_variants(VariantsConfig(train_file=str(train), rollouts_file=str(rollouts), output_file=str(out)))
    with pytest.raises(ValueError, match="min_agreement"):
        VariantsConfig(train_file=str(train), min_agreement=1.5)


def item(row):
    return {"prompt": row["question"], "question_id": row["id"], "question": row["question"], "gold_answer": row["answer"]}


def variants_of(*sources):
    return {s: [{"id": f"{s}~para", "source_id": s, "kind": "paraphrase", "question": f"{s}?", "answer": "#### 1"},
                {"id": f"{s}~cf1", "source_id": s, "kind": "counterfactual", "question": f"{s}'", "answer": "#### 2"}]
            for s in sources}  # fmt: skip


def round_of(*qids, group=2):
    return [{"prompt": q, "question_id": q, "question": q, "gold_answer": "#### 1"} for q in qids for _ in range(group)]


def test_the_sampler_gives_all_correct_groups_variants_the_next_rounds_slots_up_to_its_share():
    sampler = DynamicSampler(variants_of("a", "b"), share=0.5, to_item=item)
    first = round_of("a", "b", "c", "d")
    assert sampler.swap(first, 2) == first  # nothing queued yet
    counts = sampler.observe(first, [True, True, True, False, True, True, False, False], 2)
    assert counts["all_correct_groups"] == 2 and counts["queued"] == 2 and sampler.queue == ["a~para", "a~cf1"]
    second = sampler.swap(round_of("e", "f", "g", "h"), 2)
    assert [x["question_id"] for x in second] == ["e", "e", "f", "f", "a~para", "a~para", "a~cf1", "a~cf1"]
    counts = sampler.observe(second, [True, True, True, False, True, False, True, True], 2)
    assert counts["variant_groups"] == 2 and counts["variant_groups_mixed"] == 1 and counts["queued"] == 0  # a used
    assert counts["counterfactual_correct"] == 1.0 and counts["paraphrase_correct"] == 0.5
    third = sampler.swap(round_of("i", "j"), 2)  # share 0.5 of 2 groups: one slot
    assert [x["question_id"] for x in third] == ["i", "i", "j", "j"]  # the queue is empty: b was never all correct

    state = sampler.state_dict()
    again = DynamicSampler(variants_of("a", "b"), share=0.5, to_item=item)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.state_dict() == state
    with pytest.raises(ValueError, match="lacks"):
        DynamicSampler(variants_of("b"), share=0.5, to_item=item).load_state_dict(state)
    with pytest.raises(ValueError, match="variant_share"):
        DynamicSampler({}, share=0.0, to_item=item)
    with pytest.raises(RuntimeError, match="3 correctness flags for 4"):
        sampler.observe(round_of("x", "y"), [True] * 3, 2)
