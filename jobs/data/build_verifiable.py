"""Writes jobs/data/verifiable_train.jsonl and verifiable_heldout.jsonl: tasks with exact answers.

Every response to these prompts can be checked against the reference answer
(``orchestrator/evaluation/answers.py``), so the label precision of every preference
pair and the accuracy of every model are measurable. Each prompt asks for a
fixed final-answer form, a last line ``Answer: <value>`` (SmolLM2-135M keeps
this form in about a third of its replies; the grader reads it first and
falls back to rules validated per kind). Each row carries its ``kind`` and
its ``signature``.

Kinds: single-digit sums and products, word-problem sums, differences and
products, multi-step arithmetic, unit conversions, letters in a word, a
letter's count in a word, the larger of two numbers, a word's last letter,
a word backwards.

**Signatures.** A task's signature is its operation and operands: names and
items of word problems are ignored, and operands are sorted where the
operation is commutative, so "What is 4 + 9?" and "What is 9 + 4?" share
one, and so do a single-digit sum and a word-problem sum of the same two
numbers (both ``add``; likewise both products are ``mul``). Held-out
signatures are chosen first, a distinct one per held-out prompt; no training
prompt has a held-out signature, so the splits share no task, not even a
near-duplicate.

Run: python -m jobs.data.build_verifiable
"""

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

TRAIN_PER_KIND = 50
HELDOUT_PER_KIND = 12
# Kinds with thousands of distinct tasks hold out more, appended after the first 144 (which, like the training set,
# stay as they were), so the held-out set reaches 200 prompts while every kind keeps its 50 training prompts.
HELDOUT_EXTRA = {"larger_number": 14, "multi_step": 14, "word_difference": 14, "unit_conversion": 14, "count_letter": 14}
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jules"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]
WORDS = [
    "cat", "house", "tree", "garden", "apple", "river", "moon", "pencil", "window", "bird", "orange", "table",
    "chair", "sun", "mountain", "ocean", "book", "flower", "cloud", "road", "bread", "candle", "basket", "mirror",
    "planet", "rabbit", "guitar", "lemon", "forest", "bridge", "castle", "dragon", "island", "jacket", "kitten",
    "ladder", "market", "needle", "pepper", "rocket", "silver", "tomato", "violin", "wallet", "yellow", "zebra",
    "anchor", "button", "camera", "dinner", "engine", "finger", "hammer", "insect", "jungle", "banana", "letter",
    "coffee", "summer", "balloon", "bottle", "puzzle", "marble", "pillow", "carrot", "cherry", "parrot",
]
SHORT_WORDS = [
    "cat", "dog", "sun", "moon", "tree", "bird", "book", "road", "lamp", "milk", "rain", "star", "fish", "frog",
    "cake", "door", "ship", "king", "gold", "sand", "wind", "ring", "leaf", "nest", "coat", "boat", "drum", "kite",
    "rose", "pear", "plum", "snow", "seed", "wolf", "bear", "lion", "salt", "corn", "bell", "desk", "apple", "lemon",
    "river", "cloud", "bread", "tiger", "horse", "chair", "glass", "stone", "plant", "water", "light", "house",
    "mouse", "train", "piano", "table", "candy", "smile", "queen", "grape", "storm", "beach", "clock", "dream",
]
UNITS = [
    ("hours", "minutes", 60, 2, 12), ("minutes", "seconds", 60, 2, 15), ("metres", "centimetres", 100, 2, 20),
    ("kilograms", "grams", 1000, 2, 9), ("days", "hours", 24, 2, 10), ("weeks", "days", 7, 2, 20),
    ("dozens of eggs", "eggs", 12, 2, 12), ("kilometres", "metres", 1000, 2, 9), ("litres", "millilitres", 1000, 2, 9),
]


class Task(NamedTuple):
    prompt: str
    answer: int | str
    signature: str


def ask(question: str, value: str = "number") -> str:
    """The question with the final-answer form every bundled verifiable prompt asks for."""
    return f"{question} End your reply with a line of the form 'Answer: <{value}>'."


def _both(a: int, b: int) -> str:
    """Operands of a commutative operation, in canonical order."""
    return f"{min(a, b)},{max(a, b)}"


def single_digit_sum(rng: random.Random) -> Task:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return Task(ask(f"What is {a} + {b}?"), a + b, f"add:{_both(a, b)}")


def single_digit_product(rng: random.Random) -> Task:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return Task(ask(f"What is {a} times {b}?"), a * b, f"mul:{_both(a, b)}")


def word_sum(rng: random.Random) -> Task:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return Task(ask(f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"), a + b,
                f"add:{_both(a, b)}")


def letter_count(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    return Task(ask(f"How many letters are in the word '{w}'?"), len(w), f"len:{w}")


def multi_step(rng: random.Random) -> Task:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    if rng.random() < 0.5:
        return Task(ask(f"What is {a} + {b} * {c}?"), a + b * c, f"a+b*c:{a}|{_both(b, c)}")
    return Task(ask(f"What is ({a} + {b}) * {c}?"), (a + b) * c, f"(a+b)*c:{_both(a, b)}|{c}")


def word_difference(rng: random.Random) -> Task:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(8, 20)
    b = rng.randint(2, a - 1)
    return Task(ask(f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"), a - b,
                f"sub:{a},{b}")


def word_product(rng: random.Random) -> Task:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 6), rng.randint(2, 9)
    return Task(ask(f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?"), a * b,
                f"mul:{_both(a, b)}")


def unit_conversion(rng: random.Random) -> Task:
    big, small, factor, lo, hi = rng.choice(UNITS)
    n = rng.randint(lo, hi)
    return Task(ask(f"How many {small} are in {n} {big}?"), n * factor, f"convert:{big}>{small}:{n}")


def count_letter(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    c = rng.choice(sorted(set(w)))
    return Task(ask(f"How many times does the letter '{c}' appear in the word '{w}'?"), w.count(c), f"count:{c}:{w}")


def larger_number(rng: random.Random) -> Task:
    a, b = rng.sample(range(10, 100), 2)
    return Task(ask(f"Which number is larger, {a} or {b}?"), max(a, b), f"max:{_both(a, b)}")


def last_letter(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    return Task(ask(f"What is the last letter of the word '{w}'?", "letter"), w[-1], f"last:{w}")


def backwards(rng: random.Random) -> Task:
    w = rng.choice(SHORT_WORDS)
    return Task(ask(f"Write the word '{w}' backwards.", "word"), w[::-1], f"reverse:{w}")


KINDS: list[Callable[[random.Random], Task]] = [
    single_digit_sum, single_digit_product, word_sum, letter_count, multi_step, word_difference, word_product,
    unit_conversion, count_letter, larger_number, last_letter, backwards,
]
KIND_NAMES = tuple(k.__name__ for k in KINDS)


def _pool(kind: Callable[[random.Random], Task], rng: random.Random, attempts: int = 4000) -> list[Task]:
    """The distinct prompts ``attempts`` draws of a kind give, in first-drawn order."""
    seen: dict[str, Task] = {}
    for _ in range(attempts):
        task = kind(rng)
        seen.setdefault(task.prompt, task)
    return list(seen.values())


def build() -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows), deterministic and signature-disjoint (see the module docstring)."""
    rng = random.Random(20261124)
    pools = {kind.__name__: _pool(kind, rng) for kind in KINDS}
    heldout: list[dict] = []
    held_signatures: set[str] = set()
    for name, pool in pools.items():
        rng.shuffle(pool)
        picked = 0
        for task in pool:
            if picked < HELDOUT_PER_KIND and task.signature not in held_signatures:
                held_signatures.add(task.signature)
                heldout.append({"prompt": task.prompt, "answer": str(task.answer), "kind": name,
                                "signature": task.signature})
                picked += 1
    train: list[dict] = []
    for name, pool in pools.items():
        rows = [{"prompt": t.prompt, "answer": str(t.answer), "kind": name, "signature": t.signature}
                for t in pool if t.signature not in held_signatures]
        train += rows[:TRAIN_PER_KIND]
    rng.shuffle(train)
    rng.shuffle(heldout)
    used = held_signatures | {r["signature"] for r in train}
    extra = []
    for name, wanted in HELDOUT_EXTRA.items():
        fresh = [t for t in pools[name] if t.signature not in used][:wanted]
        used |= {t.signature for t in fresh}
        extra += [{"prompt": t.prompt, "answer": str(t.answer), "kind": name, "signature": t.signature} for t in fresh]
    random.Random(20261207).shuffle(extra)
    return train, heldout + extra


def main() -> None:
    train, heldout = build()
    for name, rows in (("verifiable_train.jsonl", train), ("verifiable_heldout.jsonl", heldout)):
        out = Path(__file__).with_name(name)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
