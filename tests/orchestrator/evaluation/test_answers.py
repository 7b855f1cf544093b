"""The grader against hand-labelled real responses (gold.jsonl) and curated hard phrasings (adversarial.jsonl).

How the sets were made and the labelling rules: tests/orchestrator/evaluation/grading/README.md.
"""

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from orchestrator.evaluation.answers import KINDS, TWO_ANSWERS, UNGRADABLE, grade, is_numeric

HERE = Path(__file__).parent / "grading"


def _load(name):
    return [json.loads(line) for line in (HERE / name).read_text().splitlines()]


def outcome(g) -> str:
    return "correct" if g.correct else "incorrect" if g.gradable else "ungradable"


def test_grader_agrees_with_the_hand_labelled_gold_set():
    gold = _load("gold.jsonl")
    assert len(gold) >= 300 and {r["kind"] for r in gold} == set(KINDS)
    per_kind: dict[str, list[bool]] = defaultdict(list)
    misses = []
    for r in gold:
        g = grade(r["response"], r["answer"], r["prompt"], r["kind"])
        agree = outcome(g) == r["label"]
        per_kind[r["kind"]].append(agree)
        if not agree:
            misses.append((r["id"], r["label"], outcome(g), g.extracted, r["response"][:120]))
    overall = sum(sum(v) for v in per_kind.values()) / len(gold)
    assert overall >= 0.99, misses
    for kind, agrees in per_kind.items():
        assert sum(agrees) / len(agrees) >= 0.97, (kind, misses)


def test_gold_labels_cover_every_outcome():
    counts = Counter(r["label"] for r in _load("gold.jsonl"))
    assert all(counts[k] >= 20 for k in ("correct", "incorrect", "ungradable")), counts


@pytest.mark.parametrize("case", _load("adversarial.jsonl"), ids=lambda c: c["response"][:50])
def test_grader_on_every_adversarial_phrasing(case):
    g = grade(case["response"], case["answer"], case["prompt"], case["kind"])
    assert (outcome(g), g.extracted) == (case["outcome"], case["extracted"])


def test_rules_are_recorded():
    q = "What is 4 + 9? End your reply with a line of the form 'Answer: <number>'."
    assert grade("Answer: 13", "13", q, "single_digit_sum").rule == "explicit"
    assert grade("4 + 9 = 13", "13", q, "single_digit_sum").rule == "result"
    assert grade("4 + 9 = 13", "13", q, None).rule == UNGRADABLE  # no kind: no validated fallback
    assert grade("It is 13 or 14.", "13", q, "single_digit_sum").rule == TWO_ANSWERS
    larger = "Which number is larger, 57 or 94? End your reply with a line of the form 'Answer: <number>'."
    assert grade("94 is larger than 57.", "94", larger, "larger_number").rule == "comparative"
    units = "How many minutes are in 5 hours? End your reply with a line of the form 'Answer: <number>'."
    assert grade("There are 300 minutes in 5 hours.", "300", units, "unit_conversion").rule == "counted_noun"
    back = "Write the word 'rain' backwards. End your reply with a line of the form 'Answer: <word>'."
    assert grade("'rain' backwards is 'niar'.", "niar", back, "backwards").rule == "claim"
    assert grade("nomel.", "nomel", back, "backwards").rule == "bare"
    assert grade("14.", "14", q, "single_digit_sum").rule == "bare"


def test_ungradable_is_incorrect_but_decides_nothing():
    g = grade("I'm here to help!", "13", "What is 4 + 9?", "single_digit_sum")
    assert (g.correct, g.gradable, g.extracted, g.rule) == (False, False, None, UNGRADABLE)


def test_numbers_compare_numerically_and_words_case_insensitively():
    assert grade("Answer: 2,000", "2000").correct and grade("Answer: 2.50", "2.5").correct
    assert grade("Answer: E", "e").correct and not grade("Answer: p", "e").correct
    assert is_numeric(" -4 ") and is_numeric("1,000") and not is_numeric("tac")
