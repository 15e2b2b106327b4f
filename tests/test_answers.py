"""Final-answer extraction and gold parsing (shared_schemas.answers): the contract both service and evaluator use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_schemas.answers import extract_answer, normalise_number, parse_gold

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"
PLATINUM_TEST = DATA / "gsm8k_platinum" / "test.jsonl"

# (text, strict answer, flexible answer)
EXTRACTION_CASES = [
    # the arms' own final line
    ("Answer: 42", "42", "42"),
    ("Step 1: 3 + 4 = 7\nAnswer: 7", "7", "7"),
    ("**Answer:** 18", "18", "18"),
    ("Final answer: 10", "10", "10"),
    ("ANSWER: 12", "12", "12"),
    ("Answer: 5 apples", "5", "5"),
    ("Answer: 3 + 4 = 7", "7", "7"),  # after the last '='
    # GSM8K's form
    ("She makes 9 * 2 = $18.\n#### 18", "18", "18"),
    ("#### -3", "-3", "-3"),
    # "The answer is N"
    ("The answer is 7.", "7", "7"),
    ("The final answer is 12", "12", "12"),
    ("The answer is: 18", "18", "18"),
    ("The answer is $18.", "18", "18"),
    # \boxed{}
    (r"\boxed{1.5}", "1.5", "1.5"),
    (r"\boxed{\frac{3}{4}}", "0.75", "0.75"),
    (r"\boxed{\dfrac{1}{4}}", "0.25", "0.25"),
    (r"\boxed{-\frac{1}{2}}", "-0.5", "-0.5"),
    (r"\boxed{\frac{-1}{2}}", "-0.5", "-0.5"),
    (r"\boxed{2\frac{1}{2}}", "2.5", "2.5"),  # mixed number
    (r"\boxed{3\frac12}", "3.5", "3.5"),
    (r"\boxed{\sqrt{16}}", "4", "4"),  # via math-verify
    (r"\boxed{\sqrt{2}}", "1.414214", "1.414214"),  # via math-verify, rounded to 6 decimals
    (r"\boxed{2^3}", "8", "8"),
    (r"\boxed{18\text{ dollars}}", "18", "18"),
    (r"\boxed{50\%}", "50", "50"),
    (r"\boxed{1,000}", "1000", "1000"),
    (r"\boxed{1{,}000}", "1000", "1000"),  # LaTeX thousands separators
    (r"\boxed{10,\!000}", "10000", "10000"),
    (r"Answer: \(\frac{1}{2}\)", "0.5", "0.5"),
    (r"Answer: 3\frac{1}{4}", "3.25", "3.25"),
    # commas, currency
    ("Answer: 1,000", "1000", "1000"),
    ("Answer: 1000.0", "1000", "1000"),
    ("Answer: 1,000,000", "1000000", "1000000"),
    ("Answer: 1,000.5", "1000.5", "1000.5"),
    ("Answer: $1,000.00", "1000", "1000"),
    (r"Answer: \$18", "18", "18"),
    # signs, including the unicode minus
    ("Answer: -5", "-5", "-5"),
    ("Answer: \u22125", "-5", "-5"),
    ("Answer: - 5", "-5", "-5"),
    ("Answer: -$5", "-5", "-5"),
    ("Answer: $-5", "-5", "-5"),
    ("Answer: -1,000", "-1000", "-1000"),
    ("Answer: -0", "0", "0"),
    # decimals
    ("Answer: 3.50", "3.5", "3.5"),
    ("Answer: .5", "0.5", "0.5"),
    ("Answer: 007.50", "7.5", "7.5"),
    ("Answer: 5.", "5", "5"),
    ("Answer: 0.0000001", "0", "0"),  # rounded to 6 decimals
    # percent
    ("Answer: 25%", "25", "25"),
    ("Answer: 12.5%", "12.5", "12.5"),
    # fractions
    ("Answer: 3/4", "0.75", "0.75"),
    ("Answer: 1/3", "0.333333", "0.333333"),
    ("Answer: 2/0", None, "0"),  # division by zero is no answer; flexible takes the last number
    # the last anchor wins
    ("Answer: 3\nOn reflection, no.\nAnswer: 4", "4", "4"),
    ("#### 5\n" + r"\boxed{6}", "6", "6"),
    (r"\boxed{12} then Answer: 13", "13", "13"),
    (r"Answer: 13 then \boxed{12}", "12", "12"),
    # strict needs an anchor; flexible falls back to the last number
    ("I think 12 apples and 15 pears", None, "15"),
    ("Temperatures fell to \u22125 degrees", None, "-5"),
    ("The total is 1,250 dollars.", None, "1250"),
    # no answer at all
    ("no numbers here", None, None),
    ("", None, None),
    ("Answer: unknown", None, None),
    (r"\boxed{}", None, None),
    (r"\boxed{x}", None, None),
    # forms models write that used to read as no answer, or as a wrong one
    (r"Answer: $12 \times 4 = 48$", "48", "48"),
    (r"\boxed{\text{48}}", "48", "48"),
    ("**Answer**: 42", "42", "42"),
    ("Answer: 20 (which is 5 more than 15 = 3*5)", "20", "20"),
    ("Answer: 1,0000", None, None),  # a number that runs on: no answer rather than 1000
    ("Answer: 3 1/2", "3.5", "3.5"),  # a mixed number
    ("Answer: -2 3/4", "-2.75", "-2.75"),
    # absurdly long numbers are no answer
    ("Answer: " + "9" * 40, None, None),
    ("Answer: " + "9" * 500, None, None),
    ("I got " + "9" * 300, None, None),
]


@pytest.mark.parametrize(("text", "strict", "flexible"), EXTRACTION_CASES)
def test_extract_answer(text: str, strict: str | None, flexible: str | None) -> None:
    assert extract_answer(text) == strict
    assert extract_answer(text, mode="strict") == strict
    assert extract_answer(text, mode="flexible") == flexible


# How real models end a GSM8K solution: (ending, strict answer, flexible answer); the answer is 18 throughout.
MODEL_ENDINGS = [
    # Qwen2.5 (-Math) Instruct: \boxed inside display or inline math, often followed by prose
    (r"So she makes $9 \times 2 = 18$ dollars.\n\[\n\boxed{18}\n\]", "18", "18"),
    (r"Therefore, Janet makes \(\boxed{18}\) dollars every day at the farmers' market.", "18", "18"),
    (r"The final answer is \(\boxed{18}\).", "18", "18"),
    (r"Janet makes $\boxed{18}$ dollars per day.", "18", "18"),
    (r"\[\n\boxed{\$18}\n\]", "18", "18"),
    (r"\[\n16 - 3 - 4 = 9 \quad \text{and} \quad 9 \times 2 = \boxed{18}\n\]", "18", "18"),
    # Llama-3 Instruct: "## Step N" and "The final answer is: $\boxed{N}$", or plain dollars
    ("## Step 3: Multiply by the price\n9 * $2 = $18\n\nThe final answer is: $\\boxed{18}$", "18", "18"),
    ("The final answer is $18.", "18", "18"),
    ("**Final Answer:** $18", "18", "18"),
    ("Janet makes $18 every day.\n\n**Answer:** \\$18.00", "18", "18"),
    # DeepSeek-R1-Distill: a think block, then **Final Answer** and a displayed \boxed
    ("<think>\n16 - 3 - 4 = 9, and 9 x 2 = 18.\n</think>\n\n**Final Answer**\n\\[\n\\boxed{18}\n\\]", "18", "18"),
    ("</think>\n\n**Final Answer**\nJanet makes \\boxed{18} dollars every day.", "18", "18"),
    ("**Final Answer**\n\\boxed{18 \\text{ dollars}}", "18", "18"),
    # trailing units, periods, percent and thousands
    ("Answer: 18 dollars.", "18", "18"),
    ("Answer: $18.", "18", "18"),
    ("Answer: 18%.", "18", "18"),
    ("The answer is 18 cm.", "18", "18"),
    (r"Answer: \$18", "18", "18"),
    ("#### 18", "18", "18"),
    # no anchor: only flexible reads a number
    ("So she makes 18 dollars a day.", None, "18"),
]


@pytest.mark.parametrize(("text", "strict", "flexible"), MODEL_ENDINGS)
def test_the_endings_models_write(text: str, strict: str | None, flexible: str | None) -> None:
    assert extract_answer(text, mode="strict") == strict
    assert extract_answer(text, mode="flexible") == flexible


def test_flexible_skips_an_absurd_last_number_for_the_previous_one() -> None:
    assert extract_answer("I got 12 then 15 and " + "9" * 40, mode="flexible") == "15"


@pytest.mark.parametrize("raw", ["1,000", "1000", "1000.0", "1000.000", "$1,000", "1,000.00"])
def test_equal_numbers_normalise_to_one_string(raw: str) -> None:
    assert normalise_number(raw) == "1000"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("-3/4", "-0.75"), ("\u22122.50", "-2.5"), ("0.1", "0.1"), ("12%", None), ("abc", None), ("1/0", None)],
)
def test_normalise_number(raw: str, expected: str | None) -> None:
    assert normalise_number(raw) == expected


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("72", "72"),
        (" 18 ", "18"),
        ("-3", "-3"),
        ("3.50", "3.5"),
        ("1,000", "1000"),
        ("$1,000", "1000"),
        ("0.75", "0.75"),
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 9", "9"),
        ("no number in it", None),
        ("", None),
    ],
)
def test_parse_gold_bare_numbers_and_solutions(gold: str, expected: str | None) -> None:
    assert parse_gold(gold) == expected


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        pytest.skip(f"shared data file {path} is absent (the project reads it from ../shared/data)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize(
    ("row", "expected"),
    [(0, "18"), (201, "114200"), (489, "-10")],  # '#### 18', '#### 114,200', '#### -10'
)
def test_parse_gold_on_real_gsm8k_solutions(row: int, expected: str) -> None:
    solution = _jsonl(GSM8K_TEST)[row]["answer"]
    assert "<<" in solution  # a full worked solution with calculator annotations, not a bare number
    assert parse_gold(solution) == expected


def test_parse_gold_reads_a_number_from_every_gsm8k_platinum_answer() -> None:
    rows = _jsonl(PLATINUM_TEST)
    assert len(rows) == 1209
    unparsed = [i for i, row in enumerate(rows) if parse_gold(row["answer"]) is None]
    assert unparsed == []
    # and it is the number after '####', commas dropped
    wrong = [
        i
        for i, row in enumerate(rows)
        if parse_gold(row["answer"]) != normalise_number(row["answer"].rsplit("####", 1)[1].strip())
    ]
    assert wrong == []
