"""Writes jobs/data/tiny.jsonl: the small prompt set of the embedded default.

Half are arithmetic word problems generated from a fixed seed, with exact
answers (verifiable); half are short open instructions.
Run: python -m jobs.data.build_tiny
"""

import json
import random
from pathlib import Path

INSTRUCTIONS = [
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about autumn leaves.",
    "Give three tips for learning a new language.",
    "What is the difference between weather and climate?",
    "Write a short, polite email declining a meeting invitation.",
    "Explain what a prime number is to a ten-year-old.",
    "List three healthy breakfast ideas.",
    "Write a Python function that returns the largest of three numbers.",
    "Why do we have seasons on Earth?",
    "Suggest a name for a small bakery and explain your choice.",
    "Summarise the water cycle in one paragraph.",
    "What should I pack for a one-day hike?",
    "Explain the difference between a list and a tuple in Python.",
    "Write a two-line poem about the sea.",
    "How can I improve my sleep?",
    "Describe a cat to someone who has never seen one.",
    "Give an example of a renewable energy source and explain how it works.",
    "What are the main causes of traffic jams in cities?",
    "Write a short thank-you note to a teacher.",
    "Explain what photosynthesis is in simple words.",
]

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jules"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]


def arithmetic(rng: random.Random) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(10, 60), rng.randint(5, 40), rng.randint(2, 9)
        return (f"{name} has {a} {item}, buys {b} more, then gives away {c}. "
                f"How many {item} does {name} have now? Answer with a number."), a + b - c
    if kind == 1:
        a, b = rng.randint(3, 12), rng.randint(4, 15)
        return (f"{name} packs {a} boxes with {b} {item} in each box. "
                f"How many {item} are there in total? Answer with a number."), a * b
    a, b = rng.randint(11, 29), rng.randint(11, 29)
    return f"What is {a} * {b}? Answer with a number.", a * b


def main() -> None:
    rng = random.Random(20261123)
    rows = [{"prompt": p} for p in INSTRUCTIONS]
    seen = set()
    while len(rows) < 2 * len(INSTRUCTIONS):
        q, a = arithmetic(rng)
        if q not in seen:
            seen.add(q)
            rows.append({"prompt": q, "answer": str(a)})
    out = Path(__file__).with_name("tiny.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
