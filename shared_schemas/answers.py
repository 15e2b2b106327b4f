"""Final-answer extraction and numeric normalisation.

Part of the contract: the service reports answers as normalised number strings ("1234.5", "-15"), and the
evaluator must parse outputs exactly the way the service does, so both use this module.

Normalisation: commas, currency signs and percent signs dropped, fractions evaluated, rounded to 6
decimals, trailing zeros removed. Two answers are equal iff their normalised strings are equal, so
"1,000" = "1000" = "1000.0" and equality is transitive and hashable.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from decimal import Context, Decimal, InvalidOperation
from typing import Literal

AnswerMode = Literal["strict", "flexible"]

_MAX_INT_DIGITS = 30
_QUANTUM = Decimal("0.000001")
_CONTEXT = Context(prec=_MAX_INT_DIGITS + 10)

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_SIGNED_NUM = re.compile(rf"(?P<sign>[-\u2212])?\s*(?:\\?\$\s*)?(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+)(?![\d.]))?")
_FRAC = re.compile(r"(?P<sign>-)?\s*(?P<whole>\d+)?\s*\\d?frac\s*\{\s*(?P<num>-?\d+)\s*\}\s*\{\s*(?P<den>-?\d+)\s*\}")
# LaTeX thousands separators between digit groups: 1{,}000, 10,\!000, 10\,000 (read as 1,000 / 10,000).
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!|\\,)(?=\d{3}(?!\d))")
_ANCHORS = re.compile(
    r"(?:(?:final\s+)?answer\s*(?:is)?\s*:|the\s+(?:final\s+)?answer\s+is\b|####)[ \t*]*\n?[ \t]*(?P<rest>[^\n]{0,120})",
    re.IGNORECASE,
)
# Every _ANCHORS match contains the keyword "answer" or "####", preceded inside the match only by
# "the\s+(final\s+)?", "final\s+" or nothing: _anchor_matches tries the pattern at those few places
# instead of at every character of a long solution (the same matches as _ANCHORS.finditer).
_ANCHOR_KEYWORD = re.compile(r"(?=answer|####)", re.IGNORECASE)
_THE = re.compile("the", re.IGNORECASE)
_FINAL = re.compile("final", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_NOISE = re.compile(r"\\text\{[^}]*\}|\\mathrm\{[^}]*\}|\\[,;!: ]|\\left|\\right|\\\(|\\\)|\\\[|\\\]")
_NEEDS_LATEX = re.compile(r"\\(?!d?frac\b)[A-Za-z]+|\^")
_ALL_NUMBERS = re.compile(rf"[-\u2212]?(?:{_NUM})")

_log = logging.getLogger(__name__)


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
    """The answer inside an anchored segment: after the last '=', the first number or fraction."""
    segment = _LATEX_NOISE.sub(" ", _LATEX_THOUSANDS.sub(",", segment)).replace("\u2212", "-")
    if "=" in segment:
        segment = segment.rsplit("=", 1)[1]
    frac = _FRAC.search(segment)
    number = _SIGNED_NUM.search(segment)
    if frac is not None and (number is None or frac.start() <= number.start()):
        return _from_frac(frac)
    if number is None:
        return None
    return _from_match(number)


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


def extract_answer(text: str, mode: AnswerMode = "strict") -> str | None:
    """The final answer of a generated solution, normalised, or None.

    strict: the last explicit final answer: 'Answer: N', 'The answer is N', '#### N' or '\\boxed{N}'.
    flexible: strict, else the last number in the text (lm-evaluation-harness's flexible-extract).
    """
    candidates: list[tuple[int, str]] = [(m.start(), m.group("rest")) for m in _anchor_matches(text)]
    candidates += _boxed_contents(text)
    for _, segment in sorted(candidates, reverse=True):
        if _NEEDS_LATEX.search(_LATEX_NOISE.sub(" ", segment)):
            answer = _latex_value(segment)
        else:
            answer = _first_number(segment)
        if answer is not None:
            return answer
    if mode == "flexible":
        for raw in reversed(_ALL_NUMBERS.findall(text.replace("\u2212", "-"))):
            answer = normalise_number(raw)
            if answer is not None:
                return answer
    return None


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


# --- math-verify fallback for LaTeX the regexes do not cover (\sqrt, nested fractions, ...) ---------

_LATEX_TIMEOUT_S = 1.0
_LATEX_MAX_CHARS = 120
_executor: ThreadPoolExecutor | None = None


_EXPONENT = re.compile(r"\^\s*(\{[^{}]*\}|[^\s{])")
_LONG_NUMBER = re.compile(r"\d{13,}")


def _cheap_to_evaluate(segment: str) -> bool:
    """Refuse what can make sympy compute for ever (power towers, huge powers, factorials): a thread
    cannot be killed, and a runaway one would hold the GIL for the whole process."""
    if "!" in segment.replace("\\!", "") or _LONG_NUMBER.search(segment) or segment.count("^") > 1:
        return False
    for exponent in _EXPONENT.findall(segment):
        digits = exponent.strip("{} ").lstrip("-")
        if not digits.isdigit() or int(digits) > 64:
            return False
    return True


def warm_up() -> None:
    """Import math-verify and parse once, so the first real answer does not pay for it under a deadline."""
    _math_verify_value("\\frac{1}{2}")


def _latex_value(segment: str) -> str | None:
    """Evaluate a short LaTeX answer with math-verify, under a deadline of our own.

    math-verify's own timeout uses signal.alarm, which fails in any non-main thread (a web server's
    worker threads), so it is disabled and the call runs in a helper thread we stop waiting for.
    """
    if len(segment) > _LATEX_MAX_CHARS or not _cheap_to_evaluate(segment):
        return None
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="math-verify")
    try:
        return _executor.submit(_math_verify_value, segment).result(timeout=_LATEX_TIMEOUT_S)
    except FutureTimeout:
        _log.warning("math-verify gave no answer within %.1fs", _LATEX_TIMEOUT_S)
        return None


def _math_verify_value(segment: str) -> str | None:
    try:
        from math_verify import parse
    except ImportError:
        return None
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        parsed = parse(f"${segment}$", parsing_timeout=None)
        if not parsed:
            return None
        expr = parsed[0]
        if not getattr(expr, "is_number", False) or not expr.is_real:
            return None
        return _format(Decimal(str(expr.evalf(30))))
    except Exception:  # noqa: BLE001 - any parser failure means "no answer", never a crash
        return None
