"""Realistic sample groups of trajectories (seeded), for the demo, the benchmark and tests.

Each trajectory is a worked solution of a two-step shopping problem in the voice of its arm (terse
computation for the compute persona, explanatory prose for the reflective one), followed by the kind of
checking and re-deriving models write, drawn without repetition from a varied pool, to about the
requested length; some arms slip and get the answer wrong. A 300-word solution has 120-180 distinct
tokens, like real model output (a pool of a handful of sentences would make every text nearly the same).
"""

from __future__ import annotations

import random

from shared_schemas.models import ScoreRequest, Trajectory

REGIME_W_ARM_NAMES = (
    *(f"wolfram_{k}" for k in range(4)),
    *(f"maudlin_{k}" for k in range(4)),
    "wolfram_standard",
    "wolfram_rephrase",
    "maudlin_cf1",
)

_NAMES = ("Maya", "Liam", "Priya", "Noah", "Sofia", "Mateo", "Aisha", "Ethan", "Hana", "Omar", "Chloe", "Diego")
# (container plural, container singular, item singular, item plural)
_GOODS = (
    ("packs", "pack", "marker", "markers"),
    ("boxes", "box", "crayon", "crayons"),
    ("bags", "bag", "apple", "apples"),
    ("crates", "crate", "orange", "oranges"),
    ("cartons", "carton", "egg", "eggs"),
    ("sheets", "sheet", "sticker", "stickers"),
    ("rolls", "roll", "stamp", "stamps"),
    ("trays", "tray", "cupcake", "cupcakes"),
    ("bundles", "bundle", "pencil", "pencils"),
    ("jars", "jar", "candle", "candles"),
)

# Sentences a solution adds after its main computation. Placeholders: {name} {packs} {per_pack} {price}
# {items} (count) {total} {pack_cost} (price of one container) {c}/{cs} (containers) {i}/{isg} (items).
_COMPUTE_CHECKS = (
    "Check: {items} / {per_pack} = {packs}, which matches the number of {c}.",
    "Alternative order: one {cs} costs {per_pack} x ${price} = ${pack_cost}.",
    "Then {packs} x ${pack_cost} = ${total}, the same total.",
    "Units: ({i}) x (dollars per {isg}) = dollars. Consistent.",
    "Estimate: roughly {packs} x 10 x {price} gives the right order of magnitude.",
    "No tax, discount or shipping is mentioned, so nothing else is added.",
    "Every given quantity ({packs}, {per_pack}, {price}) was used exactly once.",
    "Recompute {items} by repeated addition of {per_pack}: the running sum ends at {items}.",
    "Result is a whole number of dollars, as expected for integer prices.",
    "Sanity bound: the total must exceed {items} dollars because each {isg} costs at least $1.",
    "Intermediate values: {items} {i}, ${pack_cost} per {cs}.",
    "Final verification complete; no arithmetic slip detected in either multiplication.",
    "Cross-check by place value: {items} x {price} = {tens_part} + {ones_part} = {items_price}.",
    "Known: {c} = {packs}; {i} per {cs} = {per_pack}; price = ${price}.",
    "Unknown: total spending in dollars.",
    "Method: two multiplications, count first, then cost.",
)
_REFLECTIVE_CHECKS = (
    "Before moving on, I want to make sure I read the problem correctly, since these questions often "
    "hide a small twist.",
    "The fragile step here is the price: it is given per {isg}, not per {cs}, so multiplying {packs} by "
    "{price} directly would be a mistake.",
    "Another way to see it is to price one {cs} first: {per_pack} {i} at ${price} each cost ${pack_cost}, "
    "and {packs} such {c} cost ${total}.",
    "Both routes lead to the same number, which gives me some confidence.",
    "Let me also picture it concretely: if {name} laid all the {i} out on a table, there would be {items} of them.",
    "Nothing in the question suggests a discount, a coupon or sales tax, so I should not invent one.",
    "I notice I could easily have confused the number of {c} with the number of {i}; rereading settles it.",
    "A rough estimate helps catch slips: the answer should be a few hundred dollars at most for a problem like this.",
    "Suppose the obvious approach were wrong; what else could the question mean? I cannot find a "
    "reasonable alternative reading.",
    "It is worth saying explicitly that every number in the problem has now been used once.",
    "Students sometimes add instead of multiply here, which would give {wrong_sum}, clearly too small.",
    "So the reasoning holds together from the count of {i} through to the money spent.",
    "I am fairly confident in this result, though I double-checked the multiplication just in case.",
    "To summarise the logic: count the {i}, then multiply by the unit price.",
    "If the shop had charged per {cs} instead, the computation would be different, but it does not.",
    "This kind of careful reading matters more than the arithmetic itself.",
)
_COMMON_CHECKS = (
    "Re-reading the question once more, it asks only for the money {name} spends.",
    "Working backwards from ${total}: dividing by ${price} gives {items} {i}, and dividing by {per_pack} "
    "gives {packs} {c}.",
    "The units work out: {i} times dollars per {isg} gives dollars.",
    "Multiplication is commutative, so the order of the two steps does not change the result.",
    "I verified the product {items} x {price} a second time by splitting it into tens and ones.",
    "There is no leftover or partial {cs} to worry about.",
)


def _goods(packs: int, per_pack: int, price: int) -> tuple[str, str, str, str, str]:
    """The question's name and goods, derived from its numbers so question and solutions agree."""
    key = packs * 131 + per_pack * 17 + price * 7
    return (_NAMES[key % len(_NAMES)], *_GOODS[(key // len(_NAMES)) % len(_GOODS)])


def sample_question(rng: random.Random) -> tuple[str, int, int, int]:
    packs, per_pack, price = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 15)
    name, c, cs, isg, i = _goods(packs, per_pack, price)
    question = (
        f"{name} buys {packs} {c} of {i}. Each {cs} holds {per_pack} {i} and "
        f"each {isg} costs ${price}. How much does {name} spend on {i}?"
    )
    return question, packs, per_pack, price


def sample_solution(
    rng: random.Random, arm: str, packs: int, per_pack: int, price: int, words: int, wrong: bool
) -> str:
    name, c, cs, isg, i = _goods(packs, per_pack, price)
    items = packs * per_pack
    total = items * price + (rng.choice((-price, price, per_pack)) if wrong else 0)
    values = {
        "name": name,
        "packs": packs,
        "per_pack": per_pack,
        "price": price,
        "items": items,
        "total": total,
        "pack_cost": per_pack * price,
        "wrong_sum": packs + per_pack + price,
        "tens_part": items * (price // 10 * 10),
        "ones_part": items * (price % 10),
        "items_price": items * price,
        "c": c,
        "cs": cs,
        "i": i,
        "isg": isg,
    }
    if arm.startswith("wolfram"):
        lines = [
            f"{i.capitalize()}: {packs} x {per_pack} = {items}.",
            f"Cost: {items} x ${price} = ${total}.",
        ]
        pool = [*_COMPUTE_CHECKS, *_COMMON_CHECKS]
    else:
        lines = [
            f"{name} has {packs} {c} and every {cs} holds {per_pack} {i}, so there are {packs} times {per_pack}, "
            f"which is {items} {i} in all.",
            f"Each {isg} costs ${price}, so the total cost is {items} times ${price}, that is ${total}.",
        ]
        pool = [*_REFLECTIVE_CHECKS, *_COMMON_CHECKS]
    body = " ".join(lines)
    target = round(words * rng.uniform(0.9, 1.1)) - 3
    order: list[str] = []
    while len(body.split()) < target:
        if not order:
            order = rng.sample(pool, len(pool))
        body += " " + order.pop().format(**values)
    return f"{body}\nAnswer: {total}"


def sample_group(
    rng: random.Random, question_id: str, words: int = 300, arms=REGIME_W_ARM_NAMES, wrong_rate: float = 0.25
) -> ScoreRequest:
    question, packs, per_pack, price = sample_question(rng)
    trajectories = [
        Trajectory(
            arm_name=arm, text=sample_solution(rng, arm, packs, per_pack, price, words, rng.random() < wrong_rate)
        )
        for arm in arms
    ]
    return ScoreRequest(
        question_id=question_id, question=question, gold_answer=str(packs * per_pack * price), trajectories=trajectories
    )
