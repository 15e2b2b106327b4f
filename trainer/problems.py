"""Embedded grade-school math problems: a seeded generator of GSM-style word problems with worked solutions.

The project's own default data, written from scratch, so the pipeline runs without any download.

Each template is one small function `template(words, nums, steps) -> (question, solution_lines, final)`:
`words` (a random.Random) picks the story (names, objects, which variant) and `nums` picks the numbers. They
are separate streams, so a counterfactual twin replays the same `words` with fresh `nums`: same story, other
numbers, recomputed answer.

Solutions follow GSM8K: one line per reasoning step, each with exactly one calculator annotation,
`She spends 3 * 4 = <<3*4=12>>12 dollars.`, then `#### N`. So `problem.steps` == number of annotations ==
number of solution lines before `#### N`. Numbers are chosen so every division is exact and no quantity goes
negative; the final answer is a positive integer. `verify` re-executes a solution with a safe evaluator.
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

# --- the problem record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # the worked solution, GSM8K style, ending in "#### N"
    final: int
    template: str
    steps: int
    params: dict = field(default_factory=dict)  # word_seed, num_seed (to replay it) and the question's numbers


def to_record(problem: Problem) -> dict:
    """The project's data record: {"id", "question", "answer"}."""
    return {"id": problem.id, "question": problem.question, "answer": problem.answer}


# --- helpers the templates share ---------------------------------------------------------------------------


class Person(NamedTuple):
    name: str
    he: str  # "he" or "she"

    @property
    def He(self) -> str:  # starts a sentence
        return self.he.capitalize()

    @property
    def his(self) -> str:
        return "his" if self.he == "he" else "her"


SHE = "Maya Aisha Sofia Priya Chloe Elena Fatima Grace Hana Ines Julia Keiko Lucia Nia Rosa"
HE = "Liam Omar Mateo Ravi Noah Jamal Kenji Lucas Diego Ethan Felix Hugo Ivan Tariq Yusuf"
PEOPLE = [Person(n, "she") for n in SHE.split()] + [Person(n, "he") for n in HE.split()]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth"]


def calc(expr: str, value: int) -> str:
    """'3 * 4', 12 -> '3 * 4 = <<3*4=12>>12'. The template computes value itself; verify() checks the two agree."""
    return f"{expr} = <<{expr.replace(' ', '')}={value}>>{value}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def listing(items: list) -> str:
    """[a, b, c] -> 'a, b and c'."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plus(values: list[int]) -> str:
    return " + ".join(str(v) for v in values)


# --- templates: one function each --------------------------------------------------------------------------

VEHICLES = [  # (verb, unit, slowest, fastest speed per hour)
    ("drives", "miles", 30, 70),
    ("cycles", "kilometers", 10, 25),
    ("walks", "kilometers", 3, 6),
    ("jogs", "kilometers", 6, 12),
    ("rides a horse", "miles", 6, 20),
    ("rides a scooter", "kilometers", 12, 30),
    ("sails", "miles", 5, 15),
]


def travel(words, nums, steps):
    """Distance = speed * time over 1-3 legs of a trip, then the total: 1, 3 or 4 steps."""
    p = words.choice(PEOPLE)
    verb, unit, slow, fast = words.choice(VEHICLES)
    legs = 1 if steps == 1 else steps - 1
    speeds = [nums.randint(slow, fast) for _ in range(legs)]
    hours = [nums.randint(1, 8) for _ in range(legs)]
    parts = [f"at {s} {unit} per hour for {plural(h, 'hour')}" for s, h in zip(speeds, hours, strict=True)]
    total = " in total" if legs > 1 else ""
    question = f"{p.name} {verb} {', then '.join(parts)}. How many {unit} does {p.he} travel{total}?"
    lines, dists = [], []
    for i, (s, h) in enumerate(zip(speeds, hours, strict=True)):
        dists.append(s * h)
        where = f"In the {ORDINALS[i]} part of the trip {p.he}" if legs > 1 else p.He
        lines.append(f"{where} travels {calc(f'{s} * {h}', s * h)} {unit}.")
    if legs > 1:
        lines.append(f"In total {p.he} travels {calc(plus(dists), sum(dists))} {unit}.")
    return question, lines, sum(dists)


MACHINES = [  # (machine, verb, items, order of b batches of k items, time unit)
    ("printer", "prints", "pages", "to print {b} copies of a {k}-page report", "minute"),
    ("bottling machine", "fills", "bottles", "to fill {b} crates that hold {k} bottles each", "minute"),
    ("bakery oven", "bakes", "rolls", "to bake {b} trays of {k} rolls", "hour"),
    ("packing robot", "packs", "boxes", "to pack {b} pallets of {k} boxes", "hour"),
    ("embroidery machine", "sews", "patches", "to sew patches onto {b} jackets, {k} patches on each", "hour"),
]


def work_rate(words, nums, steps):
    """Time = work / rate, with one machine (2 steps) or two working together (3 steps)."""
    p = words.choice(PEOPLE)
    machine, verb, items, order, unit = words.choice(MACHINES)
    while True:
        b, k = nums.randint(2, 20), nums.randint(4, 40)
        rates = [r for r in range(4, 61) if b * k % r == 0 and 2 <= b * k // r <= 120]
        if rates:
            break
    rate, work = nums.choice(rates), b * k
    if steps == 2:
        setup = f"A {machine} {verb} {rate} {items} per {unit}."
    else:
        r1 = nums.randint(max(2, rate // 4), rate - max(2, rate // 4))
        setup = f"One {machine} {verb} {r1} {items} per {unit} and a second one {verb} {rate - r1} {items} per {unit}."
    together = f" if both {machine}s work together" if steps == 3 else ""
    question = f"{setup} {p.name} needs {order.format(b=b, k=k)}. How many {unit}s will it take{together}?"
    lines = []
    if steps == 3:
        lines.append(f"Together they make {calc(f'{r1} + {rate - r1}', rate)} {items} per {unit}.")
    lines.append(f"{p.name} needs {calc(f'{b} * {k}', work)} {items}.")
    lines.append(f"It takes {calc(f'{work} / {rate}', work // rate)} {unit}s.")
    return question, lines, work // rate


FRACTION_WORDS = {(1, 2): "half", (1, 3): "a third", (2, 3): "two thirds", (1, 4): "a quarter"}
FRACTION_WORDS |= {(3, 4): "three quarters", (1, 5): "a fifth", (2, 5): "two fifths", (3, 5): "three fifths"}
COLLECTIONS = ["stickers", "marbles", "baseball cards", "seashells", "stamps", "beads", "coins"]
FRACTION_ACTIONS = [  # (what the question says, what the solution says)
    ("gives {f} of {them} to {friend}", "gives away"),
    ("uses {f} of {them} for an art project", "uses"),
    ("trades {f} of {them} with {friend}", "trades away"),
    ("loses {f} of {them} on a school trip", "loses"),
]


def fraction_of(words, nums, steps):
    """Take a fraction away, 1-3 times in a row: 2, 4 or 6 steps."""
    p, *friends = words.sample(PEOPLE, 1 + steps // 2)
    items = words.choice(COLLECTIONS)
    actions = words.sample(FRACTION_ACTIONS, steps // 2)
    fracs = [nums.choice(list(FRACTION_WORDS)) for _ in actions]
    scale = math.prod(d for _, d in fracs)  # a multiple of every denominator on the way, so each part is whole
    count = scale * nums.randint(max(1, 12 // scale), max(1, 600 // scale))
    question = f"{p.name} has {count} {items}."
    lines = []
    for i, ((said, done), (n, d), friend) in enumerate(zip(actions, fracs, friends, strict=True)):
        them = "them" if i == 0 else f"the remaining {items}"
        question += (
            f" {'Then ' + p.he if i else p.He} {said.format(f=FRACTION_WORDS[n, d], them=them, friend=friend.name)}."
        )
        part = count * n // d
        expr = f"{count} / {d}" if n == 1 else f"{count} * {n}/{d}"
        lines.append(f"{p.He} {done} {calc(expr, part)} {items}.")
        lines.append(f"{p.He} has {calc(f'{count} - {part}', count - part)} {items} left.")
        count -= part
    question += f" How many {items} does {p.name} have left?"
    return question, lines, count


GOODS = [  # (plural, cheapest, dearest price in dollars)
    ("notebooks", 2, 6),
    ("pens", 1, 3),
    ("sandwiches", 4, 9),
    ("T-shirts", 8, 20),
    ("paperback books", 6, 15),
    ("coffee mugs", 5, 12),
    ("toy cars", 3, 8),
    ("cupcakes", 2, 4),
    ("packs of batteries", 4, 10),
    ("potted plants", 5, 14),
    ("pairs of socks", 3, 7),
    ("bags of apples", 3, 6),
]
SHOPS = ["the school store", "a bookstore", "the farmers' market", "a garage sale", "the mall", "a craft fair"]


def shopping(words, nums, steps):
    """Buy 1-3 kinds of goods (a cost each, then the total), pay, get change: 2, 4 or 5 steps."""
    p = words.choice(PEOPLE)
    shop = words.choice(SHOPS)
    goods = words.sample(GOODS, 1 if steps == 2 else steps - 2)
    counts = [nums.randint(2, 6) for _ in goods]
    prices = [nums.randint(lo, hi) for _, lo, hi in goods]
    costs = [c * q for c, q in zip(counts, prices, strict=True)]
    total = sum(costs)
    bill = next((b for b in (10, 20, 50, 100) if b > total), 100 * (total // 100 + 1))
    paid = f"a ${bill} bill" if bill <= 100 else f"${bill}"
    bought = listing([f"{c} {g} for ${q} each" for c, (g, _, _), q in zip(counts, goods, prices, strict=True)])
    question = (
        f"At {shop}, {p.name} buys {bought}. {p.He} pays with {paid}. How many dollars of change does {p.he} get?"
    )
    lines = [
        f"The {g} cost {calc(f'{c} * {q}', c * q)} dollars."
        for c, (g, _, _), q in zip(counts, goods, prices, strict=True)
    ]
    if len(goods) > 1:
        lines.append(f"Altogether {p.he} spends {calc(plus(costs), total)} dollars.")
    lines.append(f"{p.his.capitalize()} change is {calc(f'{bill} - {total}', bill - total)} dollars.")
    return question, lines, bill - total


AGE_RELATIONS = ["times", "older", "younger", "half"]


def ages(words, nums, steps):
    """A chain of age relations (k times / d years older / younger / half as old as), then maybe N years on or
    back: 1-5 steps."""
    when = words.choice(["later", "ago"]) if steps > 1 and words.random() < 0.6 else None
    relations = []
    for _ in range(steps - (when is not None)):  # never "times" twice in a row, so ages stay human
        relations.append(words.choice([r for r in AGE_RELATIONS if relations[-1:] != ["times"] or r != "times"]))
    people = words.sample(PEOPLE, len(relations) + 1)
    while True:  # numbers until every age is whole and between 1 and 95
        age, years = nums.randint(2, 50), nums.randint(2, 15)
        factors = [nums.randint(2, 4) if r == "times" else nums.randint(2, 20) for r in relations]
        chain, ok = [age], True
        for r, f in zip(relations, factors, strict=True):
            a = chain[-1]
            ok &= r != "half" or a % 2 == 0
            chain.append({"times": a * f, "older": a + f, "younger": a - f, "half": a // 2}[r])
        if when == "later":
            chain.append(chain[-1] + years)
        elif when == "ago":
            chain.append(chain[-1] - years)
        if ok and all(1 <= a <= 95 for a in chain):
            break
    question = f"{people[0].name} is {age} years old."
    lines = []
    for i, (r, f) in enumerate(zip(relations, factors, strict=True)):
        prev, cur, a = people[i].name, people[i + 1].name, chain[i]
        said, expr = {
            "times": (f"{f} times as old as {prev}", f"{f} * {a}"),
            "older": (f"{f} years older than {prev}", f"{a} + {f}"),
            "younger": (f"{f} years younger than {prev}", f"{a} - {f}"),
            "half": (f"half as old as {prev}", f"{a} / 2"),
        }[r]
        question += f" {cur} is {said}."
        lines.append(f"{cur} is {calc(expr, chain[i + 1])} years old.")
    last, a = people[-1], chain[len(relations)]
    if when == "later":
        question += f" How old will {last.name} be in {years} years?"
        lines.append(f"In {years} years {last.name} will be {calc(f'{a} + {years}', chain[-1])} years old.")
    elif when == "ago":
        question += f" How old was {last.name} {years} years ago?"
        lines.append(f"{years} years ago {last.name} was {calc(f'{a} - {years}', chain[-1])} years old.")
    else:
        question += f" How old is {last.name}?"
    return question, lines, chain[-1]


SALE_ITEMS = [  # (singular, plural, cheapest, dearest price)
    ("jacket", "jackets", 40, 160),
    ("pair of shoes", "pairs of shoes", 30, 120),
    ("backpack", "backpacks", 20, 80),
    ("desk lamp", "desk lamps", 20, 90),
    ("board game", "board games", 15, 60),
    ("bike helmet", "bike helmets", 25, 70),
    ("tent", "tents", 60, 300),
    ("blender", "blenders", 30, 150),
]
STORES = ["the department store", "the mall", "a big-box store", "an online shop", "a discount outlet"]


def discount_tax(words, nums, steps):
    """Percent off, optionally for several items (+1 step) and with sales tax (+2 steps): 2-5 steps."""
    p = words.choice(PEOPLE)
    item, items, lo, hi = words.choice(SALE_ITEMS)
    store = words.choice(STORES)
    several, taxed = steps in (3, 5), steps >= 4
    while True:
        price, count = 5 * nums.randint(lo // 5, hi // 5), nums.randint(2, 5) if several else 1
        off, tax = nums.choice([10, 15, 20, 25, 30, 40, 50]), nums.choice([5, 6, 8, 10])
        full = count * price
        sale = full - full * off // 100
        if full * off % 100 == 0 and (not taxed or sale * tax % 100 == 0):
            break
    if several:
        question = f"{p.name} buys {count} {items} at {store}. Each one normally costs ${price}"
    else:
        question = f"{p.name} buys a {item} at {store}. It normally costs ${price}"
    question += f", but this week everything is {off}% off."
    if taxed:
        question += f" A {tax}% sales tax is added to the sale price."
    question += f" How many dollars does {p.he} pay?"
    lines = []
    if several:
        lines.append(f"Without the sale, {count} {items} cost {calc(f'{count} * {price}', full)} dollars.")
    lines.append(f"The discount is {calc(f'{full} * {off}/100', full - sale)} dollars.")
    lines.append(f"The sale price is {calc(f'{full} - {full - sale}', sale)} dollars.")
    if not taxed:
        return question, lines, sale
    lines.append(f"The tax is {calc(f'{sale} * {tax}/100', sale * tax // 100)} dollars.")
    lines.append(f"{p.He} pays {calc(f'{sale} + {sale * tax // 100}', sale + sale * tax // 100)} dollars in total.")
    return question, lines, sale + sale * tax // 100


GROWTH = [  # (setup, question, unit, what changes, period, +1 grows / -1 shrinks)
    ("The town of {town} has {x} residents, and its population grows by {r}% every year.",
     "How many residents will it have after {t}?", "residents", "population", "year", 1),
    ("{name} has {x} followers online, and the number grows by {r}% every month.",
     "How many followers will {he} have after {t}?", "followers", "follower count", "month", 1),
    ("{name} puts ${x} into a savings account that adds {r}% interest at the end of every year.",
     "How many dollars will be in the account after {t}?", "dollars", "balance", "year", 1),
    ("{name} buys a used car for ${x}. Its value drops by {r}% every year.",
     "How many dollars will the car be worth after {t}?", "dollars", "value", "year", -1),
    ("{name}'s pond has {x} lily pads, and the number grows by {r}% every week.",
     "How many lily pads will there be after {t}?", "lily pads", "number of lily pads", "week", 1),
]  # fmt: skip
TOWNS = ["Millbrook", "Cedar Falls", "Riverton", "Oakdale", "Lakeside", "Pine Hill", "Fairview", "Stonebridge"]
TOWNS += ["Maple Grove", "Clearwater", "Westfield", "Silver Lake"]


def percent_growth(words, nums, steps):
    """Compound percentage increase or decrease over 1-3 periods: 2 steps per period."""
    p = words.choice(PEOPLE)
    setup, ask, unit, what, period, sign = words.choice(GROWTH)
    town = words.choice(TOWNS)
    periods = steps // 2
    r = nums.choice([10, 20, 25, 30, 40, 50] if sign > 0 else [10, 20, 25, 30, 40])
    unit_size = (100 // math.gcd(r, 100)) ** periods  # x a multiple of this keeps every change whole
    x = unit_size * nums.randint(max(1, 20 // unit_size), max(1, 20000 // unit_size))
    question = setup.format(town=town, name=p.name, x=x, r=r) + " " + ask.format(he=p.he, t=plural(periods, period))
    lines, cur = [], x
    for i in range(1, periods + 1):
        change = cur * r // 100
        verb, op, new = ("grows", "+", cur + change) if sign > 0 else ("drops", "-", cur - change)
        lines.append(f"In {period} {i} the {what} {verb} by {calc(f'{cur} * {r}/100', change)} {unit}.")
        lines.append(f"After {period} {i} the {what} is {calc(f'{cur} {op} {change}', new)} {unit}.")
        cur = new
    return question, lines, cur


SHARES = [  # (setup, the things, which of them are the part, which are the rest)
    ("There are {n} students in {name}'s grade, and {r}% of them walk to school.",
     "students", "walk to school", "do not walk to school"),
    ("{name} has {n} marbles, and {r}% of them are blue.", "marbles", "are blue", "are not blue"),
    ("Farmer {name} plants {n} trees, and {r}% of them are apple trees.",
     "trees", "are apple trees", "are not apple trees"),
    ("The parking lot at {name}'s office holds {n} cars, and {r}% of them are electric.",
     "cars", "are electric", "are not electric"),
    ("{name}'s library has {n} books, and {r}% of them are novels.", "books", "are novels", "are not novels"),
    ("{name}'s school orchestra has {n} members, and {r}% of them play string instruments.",
     "members", "play string instruments", "do not play string instruments"),
]  # fmt: skip


def percent_of(words, nums, steps):
    """r% of n (1 step), or the rest of it (2 steps)."""
    p = words.choice(PEOPLE)
    setup, things, part, rest = words.choice(SHARES)
    r = nums.choice([10, 20, 25, 30, 40, 60, 70, 75, 80, 90])
    unit_size = 100 // math.gcd(r, 100)
    n = unit_size * nums.randint(max(1, 20 // unit_size), 400 // unit_size)
    k = n * r // 100
    question = setup.format(n=n, r=r, name=p.name) + f" How many {things} {part if steps == 1 else rest}?"
    lines = [f"{calc(f'{n} * {r}/100', k)} {things} {part}."]
    if steps == 1:
        return question, lines, k
    lines.append(f"So {calc(f'{n} - {k}', n - k)} {things} {rest}.")
    return question, lines, n - k


HABITS = [  # (setup, question, small unit, big unit, small units per big one, least and most per day, step)
    ("{name} practices the piano for {x} minutes a day.", "How many {unit} does {he} practice in {t}?",
     "minutes", "hours", 60, 15, 90, 5),
    ("{name}'s bakery uses {x} eggs a day.", "How many {unit} does it use in {t}?",
     "eggs", "dozen eggs", 12, 20, 150, 1),
    ("{name} drinks {x} milliliters of water a day.", "How many {unit} of water does {he} drink in {t}?",
     "milliliters", "liters", 1000, 1000, 3000, 50),
    ("{name}'s puppy eats {x} ounces of food a day.", "How many {unit} of food does it eat in {t}?",
     "ounces", "pounds", 16, 4, 40, 1),
    ("{name}'s pet snail crawls {x} centimeters a day.", "How far does it crawl in {t}, in {unit}?",
     "centimeters", "meters", 100, 10, 150, 1),
]  # fmt: skip


def unit_conversion(words, nums, steps):
    """A daily amount over days (1 step), converted to a bigger unit (+1), with the days given in weeks (+1)."""
    p = words.choice(PEOPLE)
    setup, ask, small, big, per, lo, hi, step = words.choice(HABITS)
    while True:
        x, weeks = step * nums.randint(lo // step, hi // step), nums.randint(2, 8)
        days = 7 * weeks if steps == 3 else nums.randint(2, 30)
        if steps == 1 or x * days % per == 0:
            break
    t = plural(weeks, "week") if steps == 3 else plural(days, "day")
    question = setup.format(name=p.name, x=x) + " " + ask.format(unit=small if steps == 1 else big, he=p.he, t=t)
    lines = []
    if steps == 3:
        lines.append(f"{weeks} weeks is {calc(f'{weeks} * 7', days)} days.")
    lines.append(f"In {days} days that is {calc(f'{x} * {days}', x * days)} {small}.")
    if steps == 1:
        return question, lines, x * days
    lines.append(f"{x * days} {small} is {calc(f'{x * days} / {per}', x * days // per)} {big}.")
    return question, lines, x * days // per


SHOPS_STOCK = [  # (owner, goods)
    ("A toy shop", "toy robots"),
    ("A bakery", "muffins"),
    ("A bookstore", "copies of a new novel"),
    ("A farm stand", "pumpkins"),
    ("A hardware store", "hammers"),
    ("A school cafeteria", "apples"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
RECEIVERS = ["a local school", "a food bank", "a charity drive", "the community center"]


def inventory(words, nums, steps):
    """Stock over a week of sales, deliveries and donations: each event 1 step, a delivery in boxes 2: 1-6 steps."""
    owner, goods = words.choice(SHOPS_STOCK)
    events, left = [], steps
    while left:
        kind = words.choice(["sell", "sell", "deliver", "donate"] + (["boxes"] if left >= 2 else []))
        events.append((kind, words.choice(RECEIVERS)))
        left -= 2 if kind == "boxes" else 1
    stock = nums.randint(70, 200)
    question, lines = f"{owner} has {stock} {goods} on Sunday evening.", []
    for day, (kind, receiver) in zip(DAYS[: len(events)], events, strict=True):
        if kind in ("sell", "donate"):
            x = nums.randint(1, stock // 2)
            said = f"it sells {x}" if kind == "sell" else f"it gives {x} to {receiver}"
            question += f" On {day} {said}."
            lines.append(f"After {day} it has {calc(f'{stock} - {x}', stock - x)} {goods}.")
            stock -= x
        elif kind == "deliver":
            x = nums.randint(5, 60)
            question += f" On {day} a delivery brings {x} more."
            lines.append(f"After {day} it has {calc(f'{stock} + {x}', stock + x)} {goods}.")
            stock += x
        else:
            b, c = nums.randint(2, 8), nums.randint(4, 24)
            question += f" On {day} it receives {b} boxes with {c} {goods} in each."
            lines.append(f"The boxes hold {calc(f'{b} * {c}', b * c)} {goods}.")
            lines.append(f"After {day} it has {calc(f'{stock} + {b * c}', stock + b * c)} {goods}.")
            stock += b * c
    question += f" How many {goods} does it have at the end of {day}?"
    return question, lines, stock


RECORDS = [  # (the values, ask for the average, ask for the next value to reach it, unit, what counts, lowest, highest)
    ("{name} scored {vals} on {his} first {k} math tests.", "What is {his} average score?",
     "What score does {he} need on the next test to average {a} over all {k1} tests?", "points", "tests", 60, 100),
    ("{name} read {vals} pages on the first {k} days of {his} vacation.",
     "On average, how many pages did {he} read per day?",
     "How many pages must {he} read on the next day to average {a} pages a day over {k1} days?",
     "pages", "days", 10, 90),
    ("A lemonade stand sold {vals} cups on the first {k} days of the fair.",
     "What is the average number of cups it sold per day?",
     "How many cups must it sell on the next day to average {a} cups a day over {k1} days?",
     "cups", "days", 20, 150),
    ("{name} bowled {vals} in {his} first {k} games.", "What is {his} average score?",
     "What must {he} score in the next game to average {a} over {k1} games?", "points", "games", 80, 220),
]  # fmt: skip


def average(words, nums, steps):
    """Mean of 3-5 values (sum, divide: 2 steps), or the next value that reaches a target mean (3 steps)."""
    p = words.choice(PEOPLE)
    setup, ask_mean, ask_next, unit, counted, lo, hi = words.choice(RECORDS)
    k = words.randint(3, 5)
    while True:
        vals = [nums.randint(lo, hi) for _ in range(k)]
        target = nums.randint(lo, hi)
        need = target * (k + 1) - sum(vals)
        if (steps == 2 and sum(vals) % k == 0) or (steps == 3 and lo <= need <= hi):
            break
    fill = {"name": p.name, "he": p.he, "his": p.his, "vals": listing(vals), "k": k, "k1": k + 1, "a": target}
    question = setup.format(**fill) + " " + (ask_mean if steps == 2 else ask_next).format(**fill)
    total = sum(vals)
    if steps == 2:
        lines = [
            f"The total is {calc(plus(vals), total)} {unit}.",
            f"The average is {calc(f'{total} / {k}', total // k)} {unit}.",
        ]
        return question, lines, total // k
    lines = [
        f"To average {target} over {k + 1} {counted}, the total must be "
        f"{calc(f'{target} * {k + 1}', target * (k + 1))} {unit}.",
        f"So far the total is {calc(plus(vals), total)} {unit}.",
        f"So the next one needs {calc(f'{target * (k + 1)} - {total}', need)} {unit}.",
    ]
    return question, lines, need


PLOTS = [  # (rectangle, unit, one unit, a square thing inside it)
    ("vegetable garden", "meters", "meter", "pond"),
    ("backyard", "feet", "foot", "patio"),
    ("playground", "meters", "meter", "sandbox"),
    ("parking lot", "meters", "meter", "ticket booth"),
    ("soccer practice field", "yards", "yard", "storage shed"),
]


def area_perimeter(words, nums, steps):
    """Rectangle area (1 step), fence cost (2), area around a square (3), or paint for walls (4)."""
    p = words.choice(PEOPLE)
    plot, unit, one, inner = words.choice(PLOTS)
    if steps == 4:
        return paint_walls(p, words, nums)
    length, width = nums.randint(8, 60), nums.randint(5, 40)
    rect = f"A rectangular {plot} is {length} {unit} long and {width} {unit} wide."
    if steps == 1:
        question = f"{rect} What is its area in square {unit}?"
        return question, [f"The area is {calc(f'{length} * {width}', length * width)} square {unit}."], length * width
    if steps == 2:
        price = nums.randint(2, 15)
        perimeter = 2 * (length + width)
        question = f"{rect} {p.name} puts a fence all around it. Fencing costs ${price} per {one}."
        question += " How many dollars does the fence cost?"
        lines = [
            f"The perimeter is {calc(f'2 * ({length} + {width})', perimeter)} {unit}.",
            f"The fence costs {calc(f'{perimeter} * {price}', perimeter * price)} dollars.",
        ]
        return question, lines, perimeter * price
    side = nums.randint(max(2, min(length, width) // 3), min(length, width) - 1)
    question = f"{rect} A square {inner} with sides of {side} {unit} sits inside it."
    question += f" How many square {unit} of the {plot} are not covered by the {inner}?"
    lines = [
        f"The {plot} covers {calc(f'{length} * {width}', length * width)} square {unit}.",
        f"The {inner} covers {calc(f'{side} * {side}', side * side)} square {unit}.",
        f"Not covered: {calc(f'{length * width} - {side * side}', length * width - side * side)} square {unit}.",
    ]
    return question, lines, length * width - side * side


def paint_walls(p, words, nums):
    """Area of walls -> cans of paint -> cost: 4 steps (part of area_perimeter)."""
    room = words.choice(["bedroom", "garage", "classroom", "kitchen", "living room"])
    while True:
        walls, wide, tall = nums.randint(2, 4), nums.randint(8, 20), nums.randint(8, 10)
        cover, price = nums.choice([20, 25, 40, 50, 80, 100]), nums.randint(10, 40)
        if walls * wide * tall % cover == 0:
            break
    area = wide * tall
    cans = walls * area // cover
    question = (
        f"{p.name} is painting {walls} walls of {p.his} {room}. Each wall is {wide} feet wide and {tall} feet tall. "
        f"One can of paint covers {cover} square feet and costs ${price}. How many dollars will the paint cost?"
    )
    lines = [
        f"Each wall is {calc(f'{wide} * {tall}', area)} square feet.",
        f"The {walls} walls are {calc(f'{walls} * {area}', walls * area)} square feet.",
        f"{p.He} needs {calc(f'{walls * area} / {cover}', cans)} cans of paint.",
        f"The paint costs {calc(f'{cans} * {price}', cans * price)} dollars.",
    ]
    return question, lines, cans * price


BLOCKS = [  # (a block of hours, what to call it, three activities, what the rest is for)
    ("a {h}-hour study session", "session",
     ["doing math homework", "reading for history", "writing an essay"], "a break"),
    ("a {h}-hour shift at the cafe", "shift",
     ["serving customers", "cleaning tables", "restocking shelves"], "lunch"),
    ("{h} hours of free time after school", "free time",
     ["playing soccer", "tidying {his} room", "practicing guitar"], "reading"),
    ("a {h}-hour visit to the museum", "visit",
     ["touring the dinosaur hall", "watching a film", "browsing the gift shop"], "the art wing"),
]  # fmt: skip


def schedule(words, nums, steps):
    """Minutes left in a block of hours: 2 steps with one activity, 3 with several, 4 if one is 'k times as long
    as' another, 5 if the same day repeats."""
    p = words.choice(PEOPLE)
    block, noun, activities, rest = words.choice(BLOCKS)
    activities = [a.format(his=p.his) for a in activities]
    direct = activities[:1] if steps == 2 else activities[:2] if steps >= 4 else activities[: words.randint(2, 3)]
    repeat = words.randint(3, 6)
    while True:
        hours = nums.randint(2, 6)
        mins = [5 * nums.randint(3, 18) for _ in direct]
        times = nums.randint(2, 3)
        spent = mins + ([times * mins[1]] if steps >= 4 else [])
        if 60 * hours - sum(spent) >= 10:
            break
    left = 60 * hours - sum(spent)
    question = f"{p.name} has {block.format(h=hours)}."
    question += f" {p.He} spends {listing([f'{m} minutes {a}' for m, a in zip(mins, direct, strict=True)])}."
    if steps >= 4:
        question += f" {activities[2].capitalize()} takes {times} times as long as {direct[1]}."
    if steps == 5:
        question += f" {p.He} has the same {noun} on {repeat} days."
        question += f" How many minutes are left for {rest} over those {repeat} days?"
    else:
        question += f" How many minutes are left for {rest}?"
    lines = [f"The {noun} lasts {calc(f'{hours} * 60', 60 * hours)} minutes."]
    if steps >= 4:
        lines.append(f"{activities[2].capitalize()} takes {calc(f'{times} * {mins[1]}', times * mins[1])} minutes.")
    if len(spent) > 1:
        lines.append(f"Altogether {p.he} spends {calc(plus(spent), sum(spent))} minutes.")
    lines.append(f"That leaves {calc(f'{60 * hours} - {sum(spent)}', left)} minutes for {rest}.")
    if steps == 5:
        lines.append(f"Over {repeat} days that is {calc(f'{left} * {repeat}', left * repeat)} minutes.")
        return question, lines, left * repeat
    return question, lines, left


# name -> (template function, the step counts it can make)
TEMPLATES = {
    "travel": (travel, (1, 3, 4)),
    "work_rate": (work_rate, (2, 3)),
    "fraction_of": (fraction_of, (2, 4, 6)),
    "shopping": (shopping, (2, 4, 5)),
    "ages": (ages, (1, 2, 3, 4, 5)),
    "discount_tax": (discount_tax, (2, 3, 4, 5)),
    "percent_growth": (percent_growth, (2, 4, 6)),
    "percent_of": (percent_of, (1, 2)),
    "unit_conversion": (unit_conversion, (1, 2, 3)),
    "inventory": (inventory, (1, 2, 3, 4, 5, 6)),
    "average": (average, (2, 3)),
    "area_perimeter": (area_perimeter, (1, 2, 3, 4)),
    "schedule": (schedule, (2, 3, 4, 5)),
}

# --- generation -----------------------------------------------------------------------------------------------


def make_problem(pid: str, template: str, steps: int, word_seed: int, num_seed: int) -> Problem:
    """One problem from its template, step count and two seeds; raises if the template's own solution fails."""
    fn, allowed = TEMPLATES[template]
    if steps not in allowed:
        raise ValueError(f"template {template!r} makes {allowed} steps, not {steps}")
    question, lines, final = fn(random.Random(word_seed), random.Random(num_seed), steps)
    params = {"word_seed": word_seed, "num_seed": num_seed, "numbers": [int(x) for x in re.findall(r"\d+", question)]}
    answer = "\n".join([*lines, f"#### {final}"])
    problem = Problem(pid, question, answer, final, template, steps, params)
    if not verify(problem):
        raise AssertionError(f"template {template!r} made an inconsistent solution:\n{question}\n{answer}")
    return problem


def generate(
    n: int, seed: int, templates: list[str] | None = None, min_steps: int = 1, max_steps: int = 6
) -> list[Problem]:
    """n problems, the same for the same arguments: a template uniformly, then one of its step counts in range."""
    names = list(TEMPLATES) if templates is None else list(templates)
    unknown = [t for t in names if t not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown templates {unknown}; known: {list(TEMPLATES)}")
    choices = {t: [s for s in TEMPLATES[t][1] if min_steps <= s <= max_steps] for t in names}
    choices = {t: s for t, s in choices.items() if s}
    if not choices:
        raise ValueError(f"no template makes {min_steps}-{max_steps} steps")
    rng = random.Random(seed)
    problems, seen, misses = [], set(), 0
    while len(problems) < n:
        template = rng.choice(sorted(choices))
        steps = rng.choice(choices[template])
        word_seed, num_seed = rng.getrandbits(32), rng.getrandbits(32)
        problem = make_problem(f"gen-{seed}-{len(problems):06d}", template, steps, word_seed, num_seed)
        if problem.question in seen:
            misses += 1
            if misses > 10 * n + 1000:
                raise ValueError(f"cannot find {n} distinct problems for these templates and steps")
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


def counterfactual_twin(problem: Problem, seed: int) -> Problem:
    """The same template, story and step count with other numbers: question differs, answer recomputed."""
    rng = random.Random(f"{problem.id}/{problem.params['num_seed']}/{seed}")
    for _ in range(100):
        twin = make_problem(
            f"{problem.id}-cf{seed}", problem.template, problem.steps, problem.params["word_seed"], rng.getrandbits(32)
        )
        if twin.question != problem.question:
            return twin
    raise ValueError(f"{problem.id}: no other numbers found for a twin")


# --- checking a solution by running it ------------------------------------------------------------------------

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>=]*)>>")
_FINAL = re.compile(r"#### (\d+)")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def safe_eval(expr: str) -> Fraction:
    """Exact value of a calculator expression: numbers, + - * / // % ** and parentheses only; ValueError otherwise."""
    if len(expr) > 200:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an expression: {expr!r}") from None
    return _value(tree.body)


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("power too large")
        try:
            return _OPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
    raise ValueError(f"not allowed in a calculator annotation: {type(node).__name__}")


def verify(problem: Problem) -> bool:
    """Run the solution: each line's one <<expr=value>> must evaluate to value (and the text repeat it), there must
    be `steps` such lines, and `#### N` must equal the last value and problem.final."""
    *body, last = problem.answer.split("\n")
    final = _FINAL.fullmatch(last)
    if final is None or len(body) != problem.steps:
        return False
    value = None
    for line in body:
        found = _ANNOTATION.findall(line)
        if len(found) != 1:
            return False
        expr, stated = found[0]
        try:
            value = Fraction(stated)
            if safe_eval(expr) != value:
                return False
        except ValueError:
            return False
        if f"<<{expr}={stated}>>{stated}" not in line:
            return False
    return value is not None and value == int(final.group(1)) == problem.final


if __name__ == "__main__":
    import sys

    n, seed = (int(a) for a in (sys.argv[1:] + ["5", "0"])[:2])
    for prob in generate(n, seed):
        print(f"[{prob.id}] {prob.template}, {prob.steps} steps\n{prob.question}\n{prob.answer}\n")
