"""Checking a free-text response against a prompt's exact reference answer.

The bundled verifiable tasks have numeric answers. ``extract_answer`` reads
the response's final answer: the number after the last explicit answer cue
("answer is", "answer:", "final answer") when one exists, otherwise the
last number in the text. Numbers may carry a sign, thousands separators
("1,234"), a decimal part, or a trailing unit or period ("42 apples.",
"$12"). ``is_correct`` compares numerically when both sides are numbers and
falls back to a case- and space-insensitive string match otherwise.
"""

from __future__ import annotations

import re

_NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?"
_NUMBER_RE = re.compile(rf"(?<![\w.])({_NUMBER})(?![\d])")
_CUE_RE = re.compile(
    rf"answer\**\s*(?:is|:|=)\s*\**\s*[$€£]?\s*({_NUMBER})(?![\d])", re.IGNORECASE
)


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def extract_answer(response: str) -> str | None:
    """The final answer in ``response`` as a plain number string (no separators), or None if it has no number."""
    cues = _CUE_RE.findall(response)
    found = cues[-1] if cues else (_NUMBER_RE.findall(response) or [None])[-1]
    if found is None:
        return None
    value = _to_number(found)
    if value is None:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def is_correct(response: str, answer: str) -> bool:
    """Whether ``response``'s final answer equals the reference ``answer``."""
    expected = _to_number(answer.strip())
    if expected is None:
        return " ".join(answer.split()).lower() in " ".join(response.split()).lower()
    got = extract_answer(response)
    return got is not None and abs(float(got) - expected) < 1e-9
