"""Realistic sample groups of trajectories (seeded), for the demo, the benchmark and tests.

Each trajectory is a worked solution of a two-step shopping problem in the voice of its arm, padded with
the kind of checking prose models write, to about the requested length; some arms slip and get the
answer wrong.
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

_CHECKS = (
    "Let me double-check this step by recomputing the product in a different order.",
    "This step is easy to get wrong because the price is given per item, not per pack.",
    "I verify that the units match: items times dollars per item gives dollars.",
    "Re-reading the problem, nothing else is bought, so no other cost needs to be added.",
    "A quick estimate confirms the size of the result is reasonable for a grade-school problem.",
    "The counterfactual check: if the obvious approach were wrong, the totals would not add up.",
    "Checking again, the discount applies only after the subtotal is computed.",
    "So far every quantity has been used exactly once, which is a good sign.",
)


def sample_question(rng: random.Random) -> tuple[str, int, int, int]:
    packs, per_pack, price = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 15)
    question = (
        f"Maya buys {packs} packs of markers. Each pack holds {per_pack} markers and each marker costs "
        f"${price}. How much does Maya spend on markers?"
    )
    return question, packs, per_pack, price


def sample_solution(
    rng: random.Random, arm: str, packs: int, per_pack: int, price: int, words: int, wrong: bool
) -> str:
    markers = packs * per_pack
    total = markers * price + (rng.choice((-price, price, per_pack)) if wrong else 0)
    if arm.startswith("wolfram"):
        lines = [
            f"Markers: {packs} x {per_pack} = {markers}.",
            f"Cost: {markers} x ${price} = ${total}.",
        ]
    else:
        lines = [
            f"Maya has {packs} packs and every pack holds {per_pack} markers, so she has {packs} times {per_pack}, "
            f"which is {markers} markers in all.",
            f"Each marker costs ${price}, so the total cost is {markers} times ${price}, that is ${total}.",
        ]
    body = " ".join(lines)
    while len(body.split()) < words - 3:
        body += " " + rng.choice(_CHECKS)
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
