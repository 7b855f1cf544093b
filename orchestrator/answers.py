"""Checking a free-text response against a prompt's exact reference answer.

The bundled verifiable tasks have numeric answers (sums, products, unit
conversions, counts) or one-word answers (a letter, a reversed word).

``extract_answer(response, numeric)`` reads the response's *final* answer, in
this order of precedence:

1. an explicit final-answer marker: ``\\boxed{...}`` or a ``#### ...`` line
   (the last one);
2. the last answer cue: "answer is", "answer:", "answer =", "final answer",
   "result is" (markdown bold around the cue is ignored), followed by the
   value;
3. numeric answers: the last number in the text; one-word answers: the last
   quoted word ('x', "x", `x`), else the last word.

Numbers may carry a sign, thousands separators ("1,234"), a decimal part, a
currency sign or a trailing unit or period ("$12", "42 apples."); a number
written as an English word ("twelve", "forty-two", "minus three") counts when
the text has no digits. Answers are returned normalised: numbers as plain
integers or floats without separators ("1234", "12.5"), words lower-cased
without quotes or punctuation.

``is_correct`` compares numerically when the reference is a number and
case-insensitively otherwise.
"""

from __future__ import annotations

import re

_NUMBER = r"[-\u2212]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-\u2212]?\d+(?:\.\d+)?"
_NUMBER_RE = re.compile(rf"(?<![\w.])({_NUMBER})(?![\d])")
_CUE = r"(?:final\s+answer|answer|result)\**\s*(?:is\s*:?|:|=)\s*\**\s*"
_CUE_RE = re.compile(_CUE + r"(.*)", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_HASHES_RE = re.compile(r"^\s*####\s*(.+)$", re.MULTILINE)
_QUOTED_RE = re.compile(r"""['"`\u2018\u201c]([A-Za-z]+)['"`\u2019\u201d]""")
_WORD_RE = re.compile(r"[A-Za-z]+")

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_NUMBER_WORD_RE = re.compile(
    r"\b(minus\s+|negative\s+)?(?:(" + "|".join(_TENS) + r")(?:[-\s](" + "|".join(k for k in _UNITS if _UNITS[k] < 10)
    + r"))?|(" + "|".join(_UNITS) + r"))(\s+hundred)?\b",
    re.IGNORECASE,
)


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("\u2212", "-"))
    except ValueError:
        return None


def _number_words(text: str) -> list[float]:
    out = []
    for m in _NUMBER_WORD_RE.finditer(text):
        sign, tens, unit_after_tens, unit, hundred = m.groups()
        value = _TENS[tens.lower()] + (_UNITS[unit_after_tens.lower()] if unit_after_tens else 0) if tens else _UNITS[unit.lower()]
        if hundred:
            value *= 100
        out.append(-value if sign else value)
    return out


def _last_number(text: str) -> str | None:
    found = _NUMBER_RE.findall(text)
    if found:
        value = _to_number(found[-1])
        return None if value is None else _format_number(value)
    words = _number_words(text)
    return _format_number(float(words[-1])) if words else None


def _first_number(text: str) -> str | None:
    m = _NUMBER_RE.search(text.lstrip(" $\u20ac\u00a3"))
    if m and m.start() == 0:
        value = _to_number(m.group(1))
        return None if value is None else _format_number(value)
    words = list(_NUMBER_WORD_RE.finditer(text))
    if words and not text[: words[0].start()].strip(" $*'\""):
        return _format_number(float(_number_words(words[0].group(0))[0]))
    return None


def _first_word(text: str) -> str | None:
    m = _WORD_RE.search(text)
    return m.group(0).lower() if m and not text[: m.start()].strip(" *'\"`\u2018\u201c") else None


def extract_answer(response: str, numeric: bool = True) -> str | None:
    """The final answer in ``response``, normalised (see the module docstring); None when there is none.

    ``numeric``: whether a number is expected (else a single word).
    """
    first = _first_number if numeric else _first_word
    marked = _BOXED_RE.findall(response) + _HASHES_RE.findall(response)
    for candidate in reversed(marked):
        value = first(candidate.strip())
        if value is not None:
            return value
    cues = [m.group(1) for m in _CUE_RE.finditer(response)]
    for candidate in reversed(cues):
        value = first(candidate)
        if value is not None:
            return value
    if numeric:
        return _last_number(response)
    quoted = _QUOTED_RE.findall(response)
    if quoted:
        return quoted[-1].lower()
    words = _WORD_RE.findall(response)
    return words[-1].lower() if words else None


def is_numeric(answer: str) -> bool:
    """Whether a reference answer is a number (compared numerically)."""
    return _to_number(answer.strip()) is not None


def is_correct(response: str, answer: str) -> bool:
    """Whether ``response``'s final answer equals the reference ``answer``."""
    expected = _to_number(answer.strip())
    if expected is not None:
        got = extract_answer(response, numeric=True)
        return got is not None and abs(float(got) - expected) < 1e-9
    got = extract_answer(response, numeric=False)
    return got is not None and got == answer.strip().lower()
