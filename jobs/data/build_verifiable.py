"""Writes jobs/data/verifiable_train.jsonl and verifiable_heldout.jsonl: tasks with exact answers.

Every response to these prompts can be checked against the reference answer
(``orchestrator/answers.py``), so the label precision of every preference
pair and the accuracy of every model are measurable. Kinds (each row carries
its ``kind``):

- easy ones SmolLM2-135M gets right some of the time (measured at
  temperature 0.8: single-digit sums ~40%, single-digit products ~30%,
  small word-problem sums ~15%, letter counts ~10%), so most prompts get a
  mix of correct and incorrect responses;
- harder ones: multi-step arithmetic, word problems with differences and
  products, unit conversions, counting a letter in a word, the larger of two
  numbers, and one-word string tasks (last letter, a word backwards).

Each kind's distinct prompts are shuffled with a fixed seed and split into a
held-out part (``HELDOUT_PER_KIND``) and a train part, so the splits never
share a prompt; neither contains a prompt of tiny.jsonl.
Run: python -m jobs.data.build_verifiable
"""

import json
import random
from collections.abc import Callable
from pathlib import Path

from jobs.data.build_tiny import ITEMS, NAMES

TRAIN_PER_KIND = 50
HELDOUT_PER_KIND = 12
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
Task = tuple[str, int | str]


def single_digit_sum(rng: random.Random) -> Task:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} + {b}? Answer with a number.", a + b


def single_digit_product(rng: random.Random) -> Task:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} times {b}? Answer with a number.", a * b


def word_sum(rng: random.Random) -> Task:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now? Answer with a number.", a + b


def letter_count(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    return f"How many letters are in the word '{w}'? Answer with a number.", len(w)


def multi_step(rng: random.Random) -> Task:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    if rng.random() < 0.5:
        return f"What is {a} + {b} * {c}? Answer with a number.", a + b * c
    return f"What is ({a} + {b}) * {c}? Answer with a number.", (a + b) * c


def word_difference(rng: random.Random) -> Task:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(8, 20)
    b = rng.randint(2, a - 1)
    return f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left? Answer with a number.", a - b


def word_product(rng: random.Random) -> Task:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 6), rng.randint(2, 9)
    return f"{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy? Answer with a number.", a * b


def unit_conversion(rng: random.Random) -> Task:
    big, small, factor, lo, hi = rng.choice(UNITS)
    n = rng.randint(lo, hi)
    return f"How many {small} are in {n} {big}? Answer with a number.", n * factor


def count_letter(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    c = rng.choice(sorted(set(w)))
    return f"How many times does the letter '{c}' appear in the word '{w}'? Answer with a number.", w.count(c)


def larger_number(rng: random.Random) -> Task:
    a, b = rng.sample(range(10, 100), 2)
    return f"Which number is larger, {a} or {b}? Answer with the number.", max(a, b)


def last_letter(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    return f"What is the last letter of the word '{w}'? Answer with the letter only.", w[-1]


def backwards(rng: random.Random) -> Task:
    w = rng.choice(SHORT_WORDS)
    return f"Write the word '{w}' backwards. Answer with the reversed word only.", w[::-1]


KINDS: list[Callable[[random.Random], Task]] = [
    single_digit_sum, single_digit_product, word_sum, letter_count, multi_step, word_difference, word_product,
    unit_conversion, count_letter, larger_number, last_letter, backwards,
]


def build() -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows), deterministic; each kind split into disjoint parts."""
    rng = random.Random(20261124)
    train, heldout = [], []
    for kind in KINDS:
        pool: dict[str, str] = {}
        attempts = 0
        while len(pool) < TRAIN_PER_KIND + HELDOUT_PER_KIND and attempts < 20_000:
            q, a = kind(rng)
            pool.setdefault(q, str(a))
            attempts += 1
        rows = [{"prompt": q, "answer": a, "kind": kind.__name__} for q, a in pool.items()]
        rng.shuffle(rows)
        heldout += rows[:HELDOUT_PER_KIND]
        train += rows[HELDOUT_PER_KIND:]
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def main() -> None:
    train, heldout = build()
    for name, rows in (("verifiable_train.jsonl", train), ("verifiable_heldout.jsonl", heldout)):
        out = Path(__file__).with_name(name)
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
