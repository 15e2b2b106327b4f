"""Probes as verifiable prompts (Regime W v2, design B): a question's variants whose answers are known.

Two kinds per question, both scored by plain correctness when GRPO samples them:
- the paraphrase: the rephrase probe's text (`shared_schemas.prompts.paraphrase`), numbers untouched, so the
  gold answer stands;
- counterfactual twins: the question's numbers changed and the answer recomputed by replaying the GSM8K
  solution's calculator annotations `<<expr=value>>` with the new numbers.

A twin is kept only if the replay is unambiguous and checks out; every other one is dropped and counted by
reason. The replay reads each number of an annotation as exactly one of: a number of the question (changed
or kept), the value of an earlier annotation, or an unwritten constant the question vouches for: 1, 2 and
1/2 anywhere, a number word's value ("four dozen": 4 and 12), a unit's (60 only beside minutes or hours, 100
beside a percent). A number that could be two of these, or none, drops the twin: a value the solution computed
in its text without an annotation would otherwise stay stale. Numbers that a number word of the question could
also mean ("twice" and a written 2), unit constants (60, 100, ...), the parts of a written fraction ("2/3")
and numbers with decimals or thousands separators are never changed. A twin must keep every integer step an
integer, every step non-negative, and end on a whole answer other than the original.

Which questions get variants is picked by arm agreement: with a scored rollouts file, the questions whose arms
agree on one answer at least `min_agreement` of the time: those a GRPO group is likely to get all right, so
all-wrong-or-all-right groups carry no signal and their variants are what the round samples instead (see
`trainer.rl`, dynamic sampling).

    looper variants --train-file runs/data/train.jsonl --output-file runs/variants.jsonl \
        [--rollouts-file runs/rollouts/rollouts.jsonl --min-agreement 0.8] [--twins 2]
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from looper_common.config import help_text
from looper_common.jsonl import DataError, read_jsonl, write_json, write_jsonl
from shared_schemas.answers import majority_answer, parse_gold
from shared_schemas.prompts import paraphrase
from trainer.problems import safe_eval

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")
_NUMBER = re.compile(r"\d*\.\d+|\d+")  # "800*.2" holds 0.2, not 2
# a number of the question: digits with optional thousands separators and decimals, not inside a longer token
_QUESTION_NUMBER = re.compile(
    r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])\d+(?:\.\d+)?(?![\w]|[.,]\d)"
)
_WRITTEN_FRACTION = re.compile(r"(?<![\d.])(\d+)/(\d+)(?![\d.])")  # "2/3 of them": kept (a twin's "2/2" reads badly)
_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
# numbers word problems use without writing them: number words, and units (days, hours, percent, ...)
UNIT_CONSTANTS = frozenset({7, 12, 24, 30, 31, 52, 60, 100, 365, 1000})
NUMBER_WORDS = {
    "half": 2, "twice": 2, "double": 2, "two": 2, "both": 2, "pair": 2, "triple": 3, "thrice": 3, "three": 3,
    "third": 3, "four": 4, "quarter": 4, "fourth": 4, "five": 5, "fifth": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12, "once": 1, "one": 1,
}  # fmt: skip
_WORD = re.compile(r"[a-z]+")
# the words that let an unwritten unit constant into a replay (a 30 with no month in sight is more likely a value
# the solution computed in its text, unannotated, which a twin would leave stale)
UNIT_WORDS = {
    7: ("week",), 12: ("dozen", "month", "year", "foot", "feet", "inch"), 24: ("day", "hour"), 30: ("month",),
    31: ("month",), 52: ("week", "year"), 60: ("minute", "hour", "second"), 100: ("%", "percent", "cent", "meter"),
    365: ("year",), 1000: ("thousand", "kilo", "liter", "litre", "meter", "gram"),
}  # fmt: skip
# unwritten everywhere: halves, doubles, pairs, "her parents"
ALWAYS_ALLOWED = frozenset({Fraction(1), Fraction(2), Fraction(1, 2)})


class Unverifiable(ValueError):
    """A twin that cannot be replayed with certainty; `reason` is one of a few short keys, counted in stats."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Step:
    expr: str
    value: Fraction


def annotated_steps(solution: str) -> list[Step]:
    """The solution's calculator steps, each checked: its expression must evaluate to the value it states."""
    steps = []
    for expr, stated in _ANNOTATION.findall(solution):
        try:
            value, computed = Fraction(stated.strip().replace(",", "")), safe_eval(expr)
        except (ValueError, ZeroDivisionError):
            raise Unverifiable("unparsable_step", f"<<{expr}={stated}>>") from None
        if computed != value:
            raise Unverifiable("wrong_step", f"<<{expr}={stated}>> evaluates to {computed}")
        steps.append(Step(expr, value))
    if not steps:
        raise Unverifiable("no_steps")
    return steps


@dataclass(frozen=True)
class QuestionNumbers:
    values: set[Fraction]  # every number the question writes
    written: Counter  # its plain integers (no separators, no decimals), with how often each is written
    words: set[int]  # the values its number words mean ("twice": 2)
    changeable: set[int]  # those a twin may change


def question_numbers(question: str) -> QuestionNumbers:
    """The question's numbers. A twin may change plain integers that are not part of a written fraction, not unit
    constants and not a value one of the question's number words also means."""
    values, written = set(), Counter()
    for match in _QUESTION_NUMBER.finditer(question):
        text = match.group(0)
        values.add(Fraction(text.replace(",", "")))
        if text.isdigit():
            written[int(text)] += 1
    words = {NUMBER_WORDS[w] for w in _WORD.findall(question.lower()) if w in NUMBER_WORDS}
    in_fraction = {int(n) for m in _WRITTEN_FRACTION.finditer(question) for n in m.groups()}
    fixed = UNIT_CONSTANTS | words | in_fraction
    changeable = {n for n in written if n not in fixed and n > 0}
    return QuestionNumbers(values, written, words, changeable)


def _tokens(expr: str) -> list[tuple[int, int, Fraction]]:
    return [(m.start(), m.end(), Fraction(m.group(0))) for m in _NUMBER.finditer(expr)]


def plan_replay(question: str, numbers: QuestionNumbers, steps: list[Step]) -> list[list[tuple[str, object]]]:
    """What each number of each step is: ("input", n) a question number, ("percent", n) a written n% as its
    fraction, ("step", i) an earlier step's value, ("const", c) an unwritten constant the question vouches for.
    Raises Unverifiable where that is ambiguous or unknown."""
    lowered = question.lower()
    units = {Fraction(n) for n, names in UNIT_WORDS.items() if any(name in lowered for name in names)}
    constants = ALWAYS_ALLOWED | {Fraction(w) for w in numbers.words} | units
    plan = []
    for i, step in enumerate(steps):
        roles = []
        for _, _, number in _tokens(step.expr):
            earlier = [j for j in range(i) if steps[j].value == number]
            in_question = number in numbers.values
            if earlier and in_question:
                raise Unverifiable("ambiguous_number", f"{number} is both in the question and step {earlier[-1] + 1}")
            if earlier:
                roles.append(("step", earlier[-1]))
            elif in_question:
                roles.append(("input", number))
            elif number * 100 in numbers.values and number < 1:  # "20%" written, 0.2 computed with
                roles.append(("percent", number * 100))
            elif number in constants:
                roles.append(("const", number))
            else:
                raise Unverifiable("unknown_number", f"{number} in <<{step.expr}>>")
        plan.append(roles)
    return plan


def replay(steps: list[Step], plan, new_inputs: dict[int, int]) -> list[tuple[str, Fraction]]:
    """Each step's expression with the new numbers, and its new value."""
    out: list[tuple[str, Fraction]] = []
    for step, roles in zip(steps, plan, strict=True):
        expr, shift = step.expr, 0
        for (start, end, number), (role, what) in zip(_tokens(step.expr), roles, strict=True):
            if role == "step":
                new = out[what][1]
            elif role == "input" and number.denominator == 1 and int(number) in new_inputs:
                new = Fraction(new_inputs[int(number)])
            elif role == "percent" and what.denominator == 1 and int(what) in new_inputs:
                new = Fraction(new_inputs[int(what)], 100)
            else:
                new = number
            text = _fraction_text(new)
            expr = expr[: start + shift] + text + expr[end + shift :]
            shift += len(text) - (end - start)
        try:
            out.append((expr, safe_eval(expr)))
        except ValueError:
            raise Unverifiable("unreplayable", expr) from None
    return out


def _fraction_text(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    decimal = float(value)
    if Fraction(repr(decimal)) != value:
        raise Unverifiable("inexact_value", str(value))
    return repr(decimal)


def _new_value(n: int, rng: random.Random) -> int:
    """Another number of the same kind: near n (within ~30%), a multiple of 10 or 5 where n is one."""
    step = 10 if n % 10 == 0 else 5 if n % 5 == 0 else 1
    span = max(1, round(0.3 * n / step))
    candidates = [n + k * step for k in range(-span, span + 1) if k and n + k * step > 0]
    return rng.choice(candidates)


@dataclass(frozen=True)
class TwinRecipe:
    """A question's replay, worked out once: its steps, what each number of them is, and the numbers to change.
    `draw(seed)` makes one twin from it."""

    question: str
    steps: list[Step]
    plan: list
    inputs: list[int]

    @classmethod
    def of(cls, question: str, solution: str) -> TwinRecipe:
        """Raises Unverifiable (with the reason) when no twin of this question can be replayed with certainty."""
        final = _FINAL.search(solution.strip())
        if final is None:
            raise Unverifiable("no_final_answer")
        steps = annotated_steps(solution)
        if Fraction(final.group(1).replace(",", "")) != steps[-1].value:
            raise Unverifiable("final_not_last_step")  # the answer comes from text the annotations do not replay
        numbers = question_numbers(question)
        plan = plan_replay(question, numbers, steps)
        uses = Counter(int(what) for roles in plan for role, what in roles if role in ("input", "percent")
                       and what.denominator == 1)  # fmt: skip
        # a small number used more often than the question writes it may also be an unwritten one ("2 parents"
        # beside "2 suitcases"): it stays as it is
        inputs = sorted(n for n in numbers.changeable & set(uses) if n > 12 or uses[n] <= numbers.written[n])
        if not inputs:
            raise Unverifiable("nothing_to_change")
        kept = {n for n in numbers.written if n not in inputs}
        if any(a + b in kept or a * b in kept for a in inputs for b in inputs):
            # "after 15 minutes ... the remaining 15 minutes ... the 30 minutes": a relation between numbers that
            # no annotation states, which new numbers would break
            raise Unverifiable("related_numbers")
        return cls(question, steps, plan, inputs)

    def draw(self, seed: int, tries: int = 50) -> tuple[str, str, int]:
        """(twin question, its replayed solution ending in `#### N`, N). Raises Unverifiable with the reason."""
        rng = random.Random(f"{self.question}/{seed}")
        for _ in range(tries):
            new_inputs = {n: _new_value(n, rng) for n in self.inputs}
            try:
                replayed = replay(self.steps, self.plan, new_inputs)
            except (Unverifiable, ZeroDivisionError):
                continue
            values = [v for _, v in replayed]
            if any(v < 0 for v in values) or any(
                old.value.denominator == 1 and v.denominator != 1 for old, v in zip(self.steps, values, strict=True)
            ):
                continue
            answer = values[-1]
            if answer.denominator != 1 or answer == self.steps[-1].value:
                continue
            twin = _QUESTION_NUMBER.sub(lambda m, new=new_inputs: _renumber(m.group(0), new), self.question)
            texts = [(expr, _fraction_text(v)) for expr, v in replayed]
            lines = [f"{expr} = <<{expr}={text}>>{text}" for expr, text in texts]
            return twin, "\n".join([*lines, f"#### {answer.numerator}"]), answer.numerator
        raise Unverifiable("no_valid_numbers", f"{tries} draws")


def counterfactual_twin(question: str, solution: str, seed: int, tries: int = 50) -> tuple[str, str, int]:
    """(twin question, its replayed solution ending in `#### N`, N). Raises Unverifiable with the reason."""
    return TwinRecipe.of(question, solution).draw(seed, tries)


def _renumber(text: str, new_inputs: dict[int, int]) -> str:
    return str(new_inputs.get(int(text), text)) if text.isdigit() else text


def agreement_by_question(records: list[dict]) -> dict[str, float]:
    """For each question of a scored rollouts file: the share of its arms that give the arms' majority answer."""
    shares = {}
    for record in records:
        answers = [t.get("answer") for t in record["trajectories"]]
        label = majority_answer(answers)
        shares[record["question_id"]] = 0.0 if label is None else sum(a == label for a in answers) / len(answers)
    return shares


def question_variants(record: dict, twins: int, drops: Counter) -> list[dict]:
    """The paraphrase and up to `twins` counterfactual twins of one {id, question, answer} record."""
    gold = parse_gold(record["answer"])
    rows = [{"id": f"{record['id']}~para", "source_id": record["id"], "kind": "paraphrase",
             "question": paraphrase(record["question"]), "answer": f"#### {gold}"}] if gold is not None else []  # fmt: skip
    seen = {record["question"]}
    try:
        recipe = TwinRecipe.of(record["question"], record["answer"])
    except Unverifiable as exc:  # every try would fail the same way: counted as that many drops
        drops[exc.reason] += twins
        return rows
    for k in range(twins):
        try:
            question, solution, _ = recipe.draw(seed=k)
        except Unverifiable as exc:
            drops[exc.reason] += 1
            continue
        if question in seen:
            drops["duplicate"] += 1
            continue
        seen.add(question)
        rows.append({"id": f"{record['id']}~cf{k + 1}", "source_id": record["id"], "kind": "counterfactual",
                     "question": question, "answer": solution})  # fmt: skip
    return rows


@dataclass
class VariantsConfig:
    train_file: str = field(default="", metadata=help_text("JSONL of {id, question, answer}: GSM8K-style solutions"))
    output_file: str = "runs/variants.jsonl"
    rollouts_file: str | None = field(
        default=None, metadata=help_text("scored rollouts: pick questions by arm agreement (None: every question)")
    )
    min_agreement: float = field(default=0.8, metadata=help_text("the share of arms on the majority answer"))
    twins: int = field(default=2, metadata=help_text("counterfactual twins tried per question"))
    max_questions: int | None = None

    def __post_init__(self):
        if not self.train_file:
            raise ValueError("train_file is required")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], not {self.min_agreement}")
        if self.twins < 0:
            raise ValueError("twins must be >= 0")


def write_variants(config: VariantsConfig) -> dict:
    """The variants as JSONL at output_file, their statistics beside it (<output>.stats.json)."""
    records = read_jsonl(config.train_file, required=("id", "question", "answer"))[: config.max_questions]
    picked = None
    if config.rollouts_file:
        from trainer.consensus import read_rollouts

        agreement = agreement_by_question(read_rollouts(config.rollouts_file))
        picked = {qid for qid, share in agreement.items() if share >= config.min_agreement}
        unknown = picked - {r["id"] for r in records}
        if picked and unknown == picked:
            raise DataError(
                f"none of the {len(picked)} agreeing questions of {config.rollouts_file} is in {config.train_file}: "
                "pass the rollouts of these training questions"
            )
    drops: Counter = Counter()
    rows = [
        row for r in records if picked is None or r["id"] in picked for row in question_variants(r, config.twins, drops)
    ]
    chosen = len(records) if picked is None else sum(r["id"] in picked for r in records)
    made = sum(r["kind"] == "counterfactual" for r in rows)
    stats = {
        "train_file": config.train_file,
        "rollouts_file": config.rollouts_file,
        "min_agreement": config.min_agreement if picked is not None else None,
        "questions": len(records),
        "questions_with_variants": chosen,
        "paraphrases": sum(r["kind"] == "paraphrase" for r in rows),
        "twins_tried": chosen * config.twins,
        "twins_made": made,
        "twin_yield": round(made / (chosen * config.twins), 4) if chosen and config.twins else None,
        "twins_dropped": dict(sorted(drops.items(), key=lambda kv: -kv[1])),
    }
    out = Path(config.output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    write_json(out.with_suffix(".stats.json"), stats)
    return stats


def read_variants(path: str | Path) -> dict[str, list[dict]]:
    """A variants file, grouped by the question each variant came from."""
    by_source: dict[str, list[dict]] = {}
    for row in read_jsonl(path, required=("id", "source_id", "question", "answer")):
        by_source.setdefault(row["source_id"], []).append(row)
    return by_source


class DynamicSampler:
    """DAPO-style dynamic sampling with verifiable variants, for one training process.

    A group that comes back all correct carries no advantage. Its question's unused variants are queued, and the
    next round gives them the slots of fresh questions: up to `share` of the round's groups, so fresh questions
    keep flowing (the ones displaced are not seen in this pass, as with any step-bound run). A variant's own
    all-correct group queues the rest of its question's variants. Each variant is used once.

    `to_item` turns a variant row into the trainer's dataset item (prompt, question_id, question, gold_answer)."""

    def __init__(self, variants_by_source: dict[str, list[dict]], share: float, to_item):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"variant_share must be in (0, 1], not {share}")
        self.share, self.to_item = share, to_item
        self.variants = {row["id"]: row for rows in variants_by_source.values() for row in rows}
        self.by_source = {source: [row["id"] for row in rows] for source, rows in variants_by_source.items()}
        self.queue: list[str] = []
        self.used: set[str] = set()
        self.totals = Counter()

    def source_of(self, question_id: str) -> str:
        row = self.variants.get(question_id)
        return row["source_id"] if row else question_id

    def swap(self, inputs: list[dict], group: int) -> list[dict]:
        """The round's items with the last groups' questions replaced by queued variants (each `group` times)."""
        groups = [inputs[i : i + group] for i in range(0, len(inputs), group)]
        n = min(len(self.queue), int(self.share * len(groups)))
        taken, self.queue = self.queue[:n], self.queue[n:]
        items = [self.to_item(self.variants[vid]) for vid in taken]
        groups[len(groups) - n :] = [[dict(item) for _ in range(group)] for item in items]
        return [item for g in groups for item in g]

    def observe(self, inputs: list[dict], correct: list[bool], group: int) -> dict[str, float]:
        """Queue the variants of every all-correct group; this round's counts (and running totals)."""
        if len(correct) != len(inputs):
            raise RuntimeError(f"{len(correct)} correctness flags for {len(inputs)} completions")
        round_counts = Counter()
        for i in range(0, len(inputs), group):
            qid, flags = inputs[i]["question_id"], correct[i : i + group]
            is_variant = qid in self.variants
            round_counts["groups"] += 1
            round_counts["variant_groups"] += is_variant
            round_counts["variant_groups_mixed"] += is_variant and 0 < sum(flags) < len(flags)
            if is_variant:
                round_counts[f"{self.variants[qid]['kind']}_groups"] += 1
                round_counts[f"{self.variants[qid]['kind']}_correct"] += sum(flags) / len(flags)
            if all(flags):
                round_counts["all_correct_groups"] += 1
                fresh = [v for v in self.by_source.get(self.source_of(qid), []) if v not in self.used]
                self.used.update(fresh)
                self.queue += fresh
                round_counts["queued"] += len(fresh)
        self.totals.update(round_counts)
        return {**{k: float(v) for k, v in round_counts.items()}, "queue": float(len(self.queue)),
                "variants_used_total": float(self.totals["variant_groups"])}  # fmt: skip

    def state_dict(self) -> dict:
        return {"queue": list(self.queue), "used": sorted(self.used), "totals": dict(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        unknown = [v for v in [*state["queue"], *state["used"]] if v not in self.variants]
        if unknown:
            raise ValueError(f"the saved sampler names {len(unknown)} variants this variants file lacks: "
                             f"{unknown[:3]}; resume with the variants file the run started with")  # fmt: skip
        self.queue, self.used, self.totals = list(state["queue"]), set(state["used"]), Counter(state["totals"])
