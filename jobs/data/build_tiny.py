"""Writes jobs/data/tiny.jsonl: the small prompt set of the embedded default.

Half are short open instructions; half are verifiable tasks with exact
answers, taken from verifiable_train.jsonl (two or one of each of its 12
kinds), so the held-out verifiable set never holds one of their signatures.
Run: python -m jobs.data.build_tiny
"""

import json
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

VERIFIABLE_PER_KIND = 2  # of the 12 kinds; 4 kinds get one fewer, so the set has 20


def verifiable() -> list[dict]:
    """20 tasks of verifiable_train.jsonl, spread over its kinds (so never a held-out task)."""
    from jobs.data.build_verifiable import KIND_NAMES, build

    train, _ = build()
    rows = []
    for k, kind in enumerate(KIND_NAMES):
        of_kind = [r for r in train if r["kind"] == kind]
        rows += of_kind[: VERIFIABLE_PER_KIND - (k >= 8)]
    return rows


def build() -> list[dict]:
    """The rows of tiny.jsonl: the instructions, then the verifiable tasks."""
    return [{"prompt": p} for p in INSTRUCTIONS] + verifiable()


def main() -> None:
    rows = build()
    out = Path(__file__).with_name("tiny.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
