"""Writes jobs/data/verifiable.jsonl: short tasks with exact numeric answers.

The recipes run on this set so that every response can be checked against
its reference answer and the label precision of every pair is measurable.
The task kinds are ones SmolLM2-135M gets right some of the time (measured at
temperature 0.8: single-digit sums ~40%, single-digit products ~30%, small
word-problem sums ~15%, letter counts ~10%), so most prompts get a mix of
correct and incorrect responses. Deterministic (fixed seed); disjoint from
tiny.jsonl. Run: python -m jobs.data.build_verifiable
"""

import json
import random
from pathlib import Path

from jobs.data.build_tiny import ITEMS, NAMES

PER_KIND = 50
WORDS = [
    "cat", "house", "tree", "garden", "apple", "river", "moon", "pencil", "window", "bird", "orange", "table",
    "chair", "sun", "mountain", "ocean", "book", "flower", "cloud", "road", "bread", "candle", "basket", "mirror",
    "planet", "rabbit", "guitar", "lemon", "forest", "bridge", "castle", "dragon", "island", "jacket", "kitten",
    "ladder", "market", "needle", "pepper", "rocket", "silver", "tomato", "violin", "wallet", "yellow", "zebra",
    "anchor", "button", "camera", "dinner", "engine", "finger", "hammer", "insect", "jungle",
]


def single_digit_sum(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} + {b}? Answer with a number.", a + b


def single_digit_product(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} times {b}? Answer with a number.", a * b


def word_sum(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now? Answer with a number.", a + b


def letter_count(rng: random.Random) -> tuple[str, int]:
    w = rng.choice(WORDS)
    return f"How many letters are in the word '{w}'? Answer with a number.", len(w)


def main() -> None:
    rng = random.Random(20261124)
    rows, seen = [], set()
    for kind in (single_digit_sum, single_digit_product, word_sum, letter_count):
        made = 0
        while made < PER_KIND:
            q, a = kind(rng)
            if q not in seen:
                seen.add(q)
                rows.append({"prompt": q, "answer": str(a)})
                made += 1
    rng.shuffle(rows)
    out = Path(__file__).with_name("verifiable.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
