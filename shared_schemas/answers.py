"""Final-answer extraction and numeric normalisation.

Part of the contract: the service reports answers as normalised number strings ("1234.5", "-15"), and the
evaluator must parse outputs exactly the way the service does, so both use this module.

Normalisation: commas, currency signs and percent signs dropped, fractions evaluated, rounded to 6
decimals, trailing zeros removed. Two answers are equal iff their normalised strings are equal, so
"1,000" = "1000" = "1000.0" and equality is transitive and hashable.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Literal

from shared_schemas.latex import AnswerTimeout, evaluate_latex, latex_pool, math_verify_available

AnswerMode = Literal["strict", "flexible"]

_MAX_INT_DIGITS = 30
_QUANTUM = Decimal("0.000001")
_CONTEXT = Context(prec=_MAX_INT_DIGITS + 10)

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_SIGNED_NUM = re.compile(rf"(?P<sign>[-\u2212])?\s*(?:\\?\$\s*)?(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+)(?![\d.]))?")
_FRAC = re.compile(r"(?P<sign>-)?\s*(?P<whole>\d+)?\s*\\d?frac\s*\{\s*(?P<num>-?\d+)\s*\}\s*\{\s*(?P<den>-?\d+)\s*\}")
# LaTeX thousands separators between digit groups: 1{,}000, 10,\!000, 10\,000 (read as 1,000 / 10,000).
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!|\\,)(?=\d{3}(?!\d))")
# `[*_]*`: markdown emphasis around the keyword, as in `**Answer**: 42` or `**Final Answer:** 42`
_ANCHORS = re.compile(
    r"(?:(?:final\s+)?answer[*_]*\s*(?:is)?\s*[*_]*\s*:|the\s+(?:final\s+)?answer[*_]*\s+is\b|####)"
    r"[ \t*_]*\n?[ \t]*(?P<rest>[^\n]{0,120})",
    re.IGNORECASE,
)
# Every _ANCHORS match contains the keyword "answer" or "####", preceded inside the match only by
# "the\s+(final\s+)?", "final\s+" or nothing: _anchor_matches tries the pattern at those few places
# instead of at every character of a long solution (the same matches as _ANCHORS.finditer).
_ANCHOR_KEYWORD = re.compile(r"(?=answer|####)", re.IGNORECASE)
_THE = re.compile("the", re.IGNORECASE)
_FINAL = re.compile("final", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# formatting that says nothing about the value: text wrappers are unwrapped (`\text{48}` is 48, and
# `18\text{ dollars}` is 18 dollars), spacing and delimiters become spaces, `\$` and `\%` their characters
_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LATEX_NOISE = re.compile(r"\\[,;!: ]|\\(?:left|right|displaystyle|quad|qquad)\b|\\\(|\\\)|\\\[|\\\]")
_NEEDS_LATEX = re.compile(r"\\(?!d?frac\b)[A-Za-z]+|\^")
# a word of prose (not a LaTeX command, not a lone variable): where a remark after the answer starts
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_DIGIT = re.compile(r"\d")
# a number that runs on in a way no number does: `1,0000`, `1,000,00`: no answer rather than a wrong one
_RUNS_ON = re.compile(r"\d|,\d")
_MIXED = re.compile(r"(?P<sign>[-\u2212])?\s*(?P<whole>\d+)\s+(?P<num>\d+)\s*/\s*(?P<den>\d+)(?![\d.])")
_ALL_NUMBERS = re.compile(rf"[-\u2212]?(?:{_NUM})")


def normalise_number(raw: str) -> str | None:
    """'1,000.50' -> '1000.5', '-3/4' -> '-0.75'; None when raw is not a number of sane size."""
    match = _SIGNED_NUM.fullmatch(raw.strip())
    if match is None:
        return None
    return _from_match(match)


def _from_match(match: re.Match) -> str | None:
    digits = match.group("num").replace(",", "")
    if len(digits.split(".")[0]) > _MAX_INT_DIGITS:
        return None
    try:
        value = Decimal(digits)
        den = match.group("den")
        if den is not None:
            if int(den) == 0 or len(den) > _MAX_INT_DIGITS:
                return None
            value = value / Decimal(den)
    except (InvalidOperation, ValueError):
        return None
    if match.group("sign"):
        value = -value
    return _format(value)


def _format(value: Decimal) -> str | None:
    try:
        value = value.quantize(_QUANTUM, context=_CONTEXT)
    except InvalidOperation:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def _first_number(segment: str) -> str | None:
    """The first number, mixed number or fraction of an answer segment (already cleaned)."""
    frac = _FRAC.search(segment)
    number = _SIGNED_NUM.search(segment)
    if frac is not None and (number is None or frac.start() <= number.start()):
        return _from_frac(frac)
    if number is None:
        return None
    mixed = _MIXED.match(segment, number.start())
    if mixed is not None:  # `3 1/2` is three and a half
        if int(mixed["den"]) == 0 or max(len(mixed["whole"]), len(mixed["num"])) > _MAX_INT_DIGITS:
            return None
        value = Decimal(mixed["whole"]) + Decimal(mixed["num"]) / Decimal(mixed["den"])
        return _format(-value if mixed["sign"] else value)
    if _RUNS_ON.match(segment, number.end()):
        return None
    return _from_match(number)


def _answer_part(segment: str) -> str:
    """The part of an anchored segment that holds the answer: formatting removed, a remark after the answer
    cut off (`20 (which is 5 more than 15 = 3*5)` is 20), and of an equation its last side (`12 * 4 = 48`)."""
    segment = _LATEX_THOUSANDS.sub(",", segment)
    for _ in range(3):  # nested wrappers, innermost first
        segment = _WRAPPERS.sub(r" \1 ", segment)
    segment = _LATEX_NOISE.sub(" ", segment).replace("\\$", "$").replace("\\%", "%").replace("\u2212", "-")
    word = _WORD.search(segment)
    head = segment[: word.start()] if word is not None else segment
    part = head if _DIGIT.search(head) else segment
    return part.rsplit("=", 1)[1] if "=" in part else part


def _segment_value(segment: str) -> str | None:
    """The answer in one candidate segment; AnswerTimeout when its LaTeX ran out of budget."""
    part = _answer_part(segment)
    if not _NEEDS_LATEX.search(part):
        return _first_number(part)
    value = evaluate_latex(part.strip().strip("$").strip())
    if value is None:
        return None
    try:
        return _format(Decimal(value))
    except InvalidOperation:
        return None


def _from_frac(match: re.Match) -> str | None:
    den = int(match.group("den"))
    if den == 0 or len(match.group("num")) > _MAX_INT_DIGITS:
        return None
    value = Decimal(match.group("num")) / Decimal(den)
    if match.group("whole"):
        value += Decimal(match.group("whole"))
    return _format(-value if match.group("sign") else value)


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(position, content) of every \\boxed{...}, with nested braces balanced."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, min(len(text), start + 200)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append((match.start(), text[start:i]))
                    break
    return found


def _keyword_positions(text: str) -> list[int]:
    if text.isascii():  # IGNORECASE on ASCII text is plain lower-casing, and str.find is fast
        lowered, found = text.lower(), []
        for keyword in ("answer", "####"):
            i = lowered.find(keyword)
            while i >= 0:
                found.append(i)
                i = lowered.find(keyword, i + 1)
        return found
    return [m.start() for m in _ANCHOR_KEYWORD.finditer(text)]


def _space_run_start(text: str, i: int) -> int:
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i


def _anchor_starts(text: str, k: int) -> list[int]:
    r"""Every p with text[p:k] matching `the\s+(final\s+)?|final\s+|` (k: a keyword's position)."""
    starts = [k]
    j = _space_run_start(text, k)
    if j < k:
        if j >= 3 and _THE.fullmatch(text, j - 3, j):
            starts.append(j - 3)
        if j >= 5 and _FINAL.fullmatch(text, j - 5, j):
            starts.append(j - 5)
            i = _space_run_start(text, j - 5)
            if 3 <= i < j - 5 and _THE.fullmatch(text, i - 3, i):
                starts.append(i - 3)
    return starts


def _anchor_matches(text: str) -> list[re.Match]:
    """list(_ANCHORS.finditer(text)), the pattern tried only where a match can start."""
    matches, pos = [], 0
    for start in sorted({p for k in _keyword_positions(text) for p in _anchor_starts(text, k)}):
        if start >= pos and (match := _ANCHORS.match(text, start)) is not None:
            matches.append(match)
            pos = match.end()
    return matches


@dataclass(frozen=True)
class AnswerReading:
    """What one text's final answer reads as. `timed_out`: a LaTeX answer could not be evaluated within the
    request's budget, so `answer` is None for want of time, not because the text has no answer."""

    answer: str | None
    timed_out: bool = False


def read_answer(text: str, mode: AnswerMode = "strict") -> AnswerReading:
    """The final answer of a generated solution, normalised, or None; see `extract_answer`."""
    candidates: list[tuple[int, str]] = [(m.start(), m.group("rest")) for m in _anchor_matches(text)]
    candidates += _boxed_contents(text)
    for _, segment in sorted(candidates, reverse=True):
        try:
            answer = _segment_value(segment)
        except AnswerTimeout:
            return AnswerReading(None, timed_out=True)  # no guess from an earlier candidate: it may be stale
        if answer is not None:
            return AnswerReading(answer)
    if mode == "flexible":
        text = text.replace("\u2212", "-")
        for match in reversed(list(_ALL_NUMBERS.finditer(text))):
            glued = match.start() > 0 and text[match.start() - 1].isdigit()
            if glued or _RUNS_ON.match(text, match.end()):
                continue  # a piece of `1,0000`: never read as 1000 or 0
            answer = normalise_number(match.group())
            if answer is not None:
                return AnswerReading(answer)
    return AnswerReading(None)


def extract_answer(text: str, mode: AnswerMode = "strict") -> str | None:
    """The final answer of a generated solution, normalised, or None.

    strict: the last explicit final answer: 'Answer: N', 'The answer is N', '#### N' or '\\boxed{N}'.
    flexible: strict, else the last number in the text (lm-evaluation-harness's flexible-extract).
    """
    return read_answer(text, mode).answer


def answer_agreement(answers: Sequence[str | None]) -> float:
    """The fraction of pairs whose answers are equal (no answer agrees with nothing); 1 answer: 1.0, none: 0.0."""
    n = len(answers)
    if n == 0:
        return 0.0
    if n == 1:
        return 1.0 if answers[0] is not None else 0.0
    counts = Counter(a for a in answers if a is not None)
    agreeing = sum(c * (c - 1) // 2 for c in counts.values())
    return agreeing / (n * (n - 1) // 2)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer; ties go to the smallest number, so the choice is order-invariant."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    return min(counts, key=lambda a: (-counts[a], Decimal(a)))


def parse_gold(gold: str) -> str | None:
    """A gold answer given as a full GSM8K solution ('... #### 72') or as a bare number."""
    bare = normalise_number(gold.replace("$", ""))
    return bare if bare is not None else extract_answer(gold, mode="strict")


def warm_up() -> None:
    """Start the LaTeX workers and wait for one, so the first answer does not pay for their start."""
    if math_verify_available():
        latex_pool().wait_ready()
