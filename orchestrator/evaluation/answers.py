"""Grading a free-text response against a prompt's exact reference answer.

``grade(response, answer, prompt, kind)`` returns a ``Grade``: whether the
response is correct, whether it is gradable at all, the final answer it
committed to, and the rule that found it (the ``grade_rule`` column of
rewards and eval). Outcomes:

- **correct**: the response's final answer equals the reference (numbers
  numerically, words case-insensitively);
- **incorrect**: it commits to another answer, to none ("the answer is
  neither 66 nor 65"), or to two different answers at once ("4 or 45",
  "either 5 or 6", "'e' or 'a'": rule ``two_answers``);
- **ungradable**: no final answer can be found (a refusal, an off-topic or
  garbled reply, the question or the instruction restated). Incorrect for
  accuracy; for label precision it decides nothing (``gradable`` is False).

Rules, in order:

1. ``explicit``: an explicit answer statement, the form the bundled prompts
   ask for (``Answer: <value>``, on its own line or inline), or "the answer
   (to ...) is", "X is the answer", "final answer", "the result is",
   ``\\boxed{}``, a ``####`` line. The *last* one wins (self-corrections:
   "the answer is 5, no wait, the answer is 7" is 7). A statement's value
   runs to the end of its sentence or the next statement; inside it, an
   equation's result counts ("Answer: 2 + 4 = 6" is 6). A template
   placeholder ("<number>", "[reserved]"), a statement without a value, a
   clock time ("12:59:30") where a number is wanted, or "the answer to <some
   other quoted question> is ..." is no answer.
2. Without one, fallbacks validated for the task ``kind`` (the bundled kinds
   of ``jobs/data/build_verifiable.py``, against the hand-labelled gold set
   in ``tests/orchestrator/evaluation/grading/``); a prompt without a kind gets none,
   so only explicit statements grade it:

   - ``bare`` (numeric kinds): the reply is just a number ("14.", "fifty-six");
   - ``comparative`` (larger_number): "X is larger than Y", "Y is smaller
     than X", "X is the larger number", "the larger number is X", "X > Y";
   - ``counted_noun`` (word problems, unit conversions, letter counts): the
     last number followed by the noun the question counts ("How many
     *minutes*": "there are 300 minutes"; "appears 2 times", "twice");
   - ``result`` (arithmetic, and the kinds above when theirs fail): the last
     stated result, a number after "=", "is", "equals", "makes" that does not
     start another expression ("5 + 4 = 9", "9 times 9 is 81"); else the last
     number in digits that is not one of the prompt's operands, a list
     marker or part of a clock time ("48 is the product of 8 and 6");
   - ``bare`` (last_letter, backwards): the reply is just a word ("nomel.");
   - ``claim`` (last_letter, backwards): the last sentence that names the
     answer as such: "the last letter of 'castle' is 'e'", "'e' is the last
     letter", "ends with e"; "'rain' backwards is 'niar'", "'niar' is 'rain'
     written backwards", "it reads niar".
3. Otherwise ``ungradable``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

NUMERIC_KINDS = ("single_digit_sum", "single_digit_product", "word_sum", "letter_count", "multi_step", "word_difference",
                 "word_product", "unit_conversion", "count_letter", "larger_number")
WORD_KINDS = ("last_letter", "backwards")
KINDS = NUMERIC_KINDS + WORD_KINDS
UNGRADABLE = "ungradable"
TWO_ANSWERS = "two_answers"
NONE_ANSWER = "none"  # what a response that answers "neither" / "not ..." commits to


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one response (see the module docstring)."""

    correct: bool  # for accuracy: an ungradable response is incorrect
    gradable: bool  # False: no final answer was found; it cannot decide a preference pair
    extracted: str | None  # the normalised final answer ("4 | 45" for two answers)
    rule: str  # which rule graded it


# --- numbers ----------------------------------------------------------------------

_NUM = r"[-\u2212]?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-\u2212]?\$?\d+(?:\.\d+)?"
# Not part of a longer token, a version ("v2.3") or a clock time / ratio ("2:00", "12:59:30").
_NUM_RE = re.compile(rf"(?<![\w.])(?<!\d:)({_NUM})(?!\.?\d)(?!:\d)")
_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_WORD_NUM_RE = re.compile(
    r"\b(minus\s+|negative\s+)?(?:(" + "|".join(_TENS) + r")(?:[-\s](" + "|".join(k for k, v in _UNITS.items() if 0 < v < 10)
    + r"))?|(" + "|".join(_UNITS) + r"))(\s+hundred)?\b",
    re.IGNORECASE,
)
_TIMES_WORDS = {"once": 1, "twice": 2, "thrice": 3}
_LIST_MARKER_RE = re.compile(r"^[ \t]*\d+[.)][ \t]", re.MULTILINE)
_OPERATOR_AFTER_RE = re.compile(r"\s*[-+*/\u00d7x^]\s*[\d(]")


@dataclass(frozen=True)
class _Num:
    value: float
    start: int
    end: int
    digits: bool = True


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("\u2212", "-").replace("$", ""))
    except ValueError:
        return None


def _numbers(text: str, words: bool = True) -> list[_Num]:
    """Every number in ``text`` (digits, and with ``words`` English number words), in order of position."""
    found = [_Num(v, m.start(), m.end()) for m in _NUM_RE.finditer(text) if (v := _to_float(m.group(1))) is not None]
    if words:
        for m in _WORD_NUM_RE.finditer(text):
            sign, tens, unit_after_tens, unit, hundred = m.groups()
            value = _TENS[tens.lower()] + (_UNITS[unit_after_tens.lower()] if unit_after_tens else 0) if tens else _UNITS[unit.lower()]
            value *= 100 if hundred else 1
            found.append(_Num(float(-value if sign else value), m.start(), m.end(), digits=False))
    return sorted(found, key=lambda n: n.start)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


# --- the prompt's own features --------------------------------------------------------

_QUOTE_OPEN, _QUOTE_CLOSE = "['\"`\u2018\u201c*]+", "['\"`\u2019\u201d*]+"
_QUOTED_RE = re.compile(rf"{_QUOTE_OPEN}([A-Za-z0-9]+){_QUOTE_CLOSE}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9]+")
_HOW_MANY_RE = re.compile(r"\bhow\s+many\s+([A-Za-z]+)", re.IGNORECASE)
_FORM_RE = re.compile(r"End your reply with a line of the form .*$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class _Task:
    question: str  # the prompt without the answer-form instruction
    operands: frozenset[float]  # numbers the question states
    own_words: frozenset[str]  # words the question quotes ('castle' in "the last letter of 'castle'")
    noun: str | None  # what "How many X" counts


def _task(prompt: str) -> _Task:
    question = _FORM_RE.sub("", prompt)
    noun = _HOW_MANY_RE.search(question)
    return _Task(question, frozenset(n.value for n in _numbers(question)),
                 frozenset(w.lower() for w in _QUOTED_RE.findall(question)), noun.group(1).lower() if noun else None)


def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


# --- rule 1: explicit answer statements -----------------------------------------------

_FORWARD_CUE_RE = re.compile(
    r"\\boxed\{(?P<boxed>[^{}]*)\}"
    r"|^[ \t]*####[ \t]*"
    r"|\b(?:final\s+answer|answer(?P<to>\s+to\s+(?:\"[^\"\n]*\"|'[^'\n]*'|[^.!?\n\"']){0,120}?)?|result)"
    r"\**[ \t]*(?:is|was|would\s+be|=|:)[ \t]*:?\**[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
# Answer-first: "86 is the answer", "The number 44 is answer", "4.45 is an answer".
_BACKWARD_CUE_RE = re.compile(
    r"(?P<before>[^\s.!?:]+(?:[ \t]+[^\s.!?:]+){0,3})[ \t]+is[ \t]+(?:the[ \t]+|an?[ \t]+|my[ \t]+|our[ \t]+)?"
    r"(?:final[ \t]+|correct[ \t]+|right[ \t]+)?answer\b",
    re.IGNORECASE,
)
# A value ends at a sentence end (a period not inside a number), a line end, or the next statement.
_SENTENCE_END_RE = re.compile(r"\n|[.!?](?=\s|$|[\"'\u201d)*])")
_ECHO_RE = re.compile(r"\bof\s+the\s+form\W*$", re.IGNORECASE)
_PLACEHOLDER_RE = re.compile(r"^\W*(?:<[^<>]*>|\[\s*[A-Za-z][^\[\]]*\])")
# "neither 66 nor 65", "none of them": an answer that none is right (incorrect). "not determined" is no answer.
_NEGATION_RE = re.compile(r"^\W*(?:neither|none)\b", re.IGNORECASE)
_NO_VALUE_RE = re.compile(r"^\W*not\b", re.IGNORECASE)
# Two answers at once: "4 or 45", "5, or maybe 6", "5 to 6", "5/6", "between 5 and 6", "5, but 6 also works".
_ALTERNATIVE_RE = re.compile(r"^\W{0,3}(?:or|/|to|and|but)\b\W{0,3}(?:(?:maybe|perhaps|possibly|probably)\b\W*)?$|^\s*/\s*$",
                             re.IGNORECASE)


def _explicit_values(response: str, task: _Task) -> list[str]:
    """The value text of every explicit answer statement, in order of position."""
    found: list[tuple[int, str]] = []
    forward = list(_FORWARD_CUE_RE.finditer(response))
    for i, m in enumerate(forward):
        if m.group("boxed") is not None:
            found.append((m.start(), m.group("boxed")))
            continue
        if _ECHO_RE.search(response[max(0, m.start() - 40) : m.start()]):
            continue  # "... a line of the form 'Answer: <number>'": the instruction quoted, not an answer
        quoted = re.search(r"[\"']([^\"'\n]*\?)[\"']", m.group("to") or "")
        if quoted and _letters(quoted.group(1)) not in _letters(task.question):
            continue  # "the answer to the question 'Which is the toughest plant?' is ...": not this question
        stop = forward[i + 1].start() if i + 1 < len(forward) else len(response)
        text = response[m.end() : stop]
        end = _SENTENCE_END_RE.search(text)
        found.append((m.start(), text[: end.start()] if end else text))
    found += [(m.start(), m.group("before")) for m in _BACKWARD_CUE_RE.finditer(response)]
    return [value for _, value in sorted(found)]


def _statement_value(text: str, task: _Task, numeric: bool) -> tuple[str, ...] | None:
    """What an explicit statement's value commits to; None when it is no answer (a placeholder, "not ...")."""
    if _PLACEHOLDER_RE.match(text) or _NO_VALUE_RE.match(text):
        return None
    if _NEGATION_RE.match(text):
        return (NONE_ANSWER,)
    return _number_value(text) if numeric else _word_value(text, task)


def _number_value(text: str) -> tuple[str, ...] | None:
    """The number(s) an answer value commits to: one, or two for alternatives; None when it holds no number."""
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    nums = _numbers(text)
    if not nums:
        return None
    return _with_alternative(text, nums, 0)


def _with_alternative(text: str, nums: list[_Num], i: int) -> tuple[str, ...]:
    """nums[i], or it and a neighbour when the text offers them as alternatives ("either 54 or 56")."""
    for j in (i - 1, i + 1):
        if 0 <= j < len(nums):
            a, b = sorted((nums[i], nums[j]), key=lambda n: n.start)
            if a.value != b.value and _ALTERNATIVE_RE.match(text[a.end : b.start]):
                return (_fmt(a.value), _fmt(b.value))
    return (_fmt(nums[i].value),)


_FILLER = {
    "the", "a", "an", "is", "it", "its", "word", "words", "letter", "letters", "last", "final", "reversed", "backwards",
    "backward", "reads", "read", "spelled", "written", "of", "in", "as", "answer", "would", "be", "that", "this", "so",
    "which", "when", "gives", "becomes", "you", "get", "we", "i", "my", "here", "just", "only", "and",
}


def _word_value(text: str, task: _Task) -> tuple[str, ...] | None:
    """The word(s) an answer value commits to: quoted ones first, then plain ones; the prompt's own words and filler
    words only when nothing else is there ("Answer: kite" for "kite" backwards commits to kite)."""
    tokens = [w.lower() for w in _QUOTED_RE.findall(text)] or [w.lower() for w in _TOKEN_RE.findall(text)]
    if not tokens:
        return None
    preferred = ([w for w in tokens if w not in task.own_words and w not in _FILLER]
                 or [w for w in tokens if w not in _FILLER] or tokens[-1:])
    first = preferred[0]
    second = next((w for w in preferred[1:] if w != first), None)
    if second and re.search(rf"\b{re.escape(first)}\b\W*(?:or|/)\W*(?:maybe\W+)?\b{re.escape(second)}\b", text, re.IGNORECASE):
        return (first, second)
    return (first,)


# --- rule 2: fallbacks per kind ----------------------------------------------------------

Fallback = Callable[[str, "_Task"], "tuple[str, ...] | None"]


def _bare_number(response: str, task: _Task) -> tuple[str, ...] | None:
    nums = _numbers(response)
    rest = response
    for n in reversed(nums):
        rest = rest[: n.start] + rest[n.end :]
    if len(nums) == 1 and not re.sub(r"[\W_]", "", rest):
        return (_fmt(nums[0].value),)
    return None


def _bare_word(response: str, task: _Task) -> tuple[str, ...] | None:
    tokens = _TOKEN_RE.findall(response)
    return (tokens[0].lower(),) if len(tokens) == 1 else None


_LARGER = r"(?:larger|bigger|greater|higher)"
_SMALLER = r"(?:smaller|less|lower)"
_N = r"(\d+)"
_COMPARATIVES = [
    (re.compile(rf"{_N}\s+is\s+(?:the\s+)?{_LARGER}\b(?!\s+than)", re.IGNORECASE), 1),
    (re.compile(rf"{_N}\s+is\s+(?:\d+\s+)?(?:{_LARGER}|more)\s+than\s+{_N}", re.IGNORECASE), 1),
    (re.compile(rf"{_N}\s+is\s+(?:\d+\s+)?{_SMALLER}\s+than\s+{_N}", re.IGNORECASE), 2),
    (re.compile(rf"\bthe\s+{_LARGER}\s+(?:number|one|of\s+the\s+two)?\s*(?:is|would\s+be)\s*:?\s*{_N}", re.IGNORECASE), 1),
    (re.compile(rf"{_N}\s*>\s*{_N}"), 1),
    (re.compile(rf"{_N}\s*<\s*{_N}"), 2),
]


def _comparative(response: str, task: _Task) -> tuple[str, ...] | None:
    hits = [(m.start(), m.group(g)) for pattern, g in _COMPARATIVES for m in pattern.finditer(response)]
    if hits:
        return (_fmt(float(max(hits)[1])),)
    named = {n.value for n in _numbers(response)}
    return (_fmt(named.pop()),) if len(named) == 1 and named <= task.operands else None  # "Aerius: 28" picks 28


def _noun_forms(noun: str) -> list[str]:
    stem = noun[:-1] if noun.endswith("s") else noun
    forms = {noun, stem, stem + "s", stem + "es"}
    for word in list(forms):  # British and American spellings of the metric units
        if word.endswith(("tre", "tres")):
            forms.add(word.replace("tre", "ter"))
    return sorted(forms, key=len, reverse=True)


def _counted_noun(response: str, task: _Task) -> tuple[str, ...] | None:
    if task.noun is None:
        return None
    forms = "|".join(map(re.escape, _noun_forms(task.noun)))
    nums = _numbers(response)
    found = None
    for i, n in enumerate(nums):
        if re.match(rf"\s*(?:[A-Za-z-]+\s+)?(?:{forms})\b", response[n.end :], re.IGNORECASE):
            found = i
    best = None if found is None else (nums[found].start, _with_alternative(response, nums, found))
    if task.noun == "times":
        for m in re.finditer(r"\b(once|twice|thrice)\b", response, re.IGNORECASE):
            if best is None or m.start() > best[0]:
                best = (m.start(), (_fmt(float(_TIMES_WORDS[m.group(1).lower()])),))
    return None if best is None else best[1]


_RESULT_RE = re.compile(r"(?:=|\b(?:is|are|equals?|makes|gives|comes\s+to)\b)[ \t]*(?:equal\s+to[ \t]+|a\s+total\s+of[ \t]+)?",
                        re.IGNORECASE)
_NOT_A_RESULT_AFTER = re.compile(r"\s*(?:less|more|fewer|times|greater|smaller|larger|bigger)\b", re.IGNORECASE)


_EXAMPLE_RE = re.compile(r"[^.!?\n]*\b(?:such\s+as|for\s+example|for\s+instance|e\.g\.)[^.!?\n]*(?:[.!?]|$)", re.IGNORECASE)


def _result(response: str, task: _Task) -> tuple[str, ...] | None:
    response = _EXAMPLE_RE.sub(lambda m: " " * len(m.group(0)), response)  # "such as 15 + 2 * 3 = 30" is no answer
    nums = _numbers(response)
    starts = {n.start: i for i, n in enumerate(nums)}
    for m in reversed(list(_RESULT_RE.finditer(response))):
        i = starts.get(m.end())
        if i is None or not nums[i].digits:  # "there are two operations" states no result
            continue
        after = response[nums[i].end :]
        if not _OPERATOR_AFTER_RE.match(after) and not _NOT_A_RESULT_AFTER.match(after):
            return _with_alternative(response, nums, i)
    markers = {m.end() - 1 for m in _LIST_MARKER_RE.finditer(response)}
    fresh = [i for i, n in enumerate(nums) if n.digits and n.value not in task.operands
             and not any(n.start <= e < n.end + 2 for e in markers)]
    return _with_alternative(response, nums, fresh[-1]) if fresh else None


# The value a claim names: quoted, or a bare token ending its clause (after the cue) / a word (before it).
_ANSWER_TOKEN = rf"(?:{_QUOTE_OPEN}(?P<q>[A-Za-z0-9]+){_QUOTE_CLOSE}|(?P<t>[A-Za-z0-9]+)(?=[ \t]*(?:[.,!?;:)\n]|$)))"
_VALUE_FIRST = rf"(?:{_QUOTE_OPEN}(?P<q>[A-Za-z0-9]+){_QUOTE_CLOSE}|\b(?P<t>[A-Za-z0-9]+))"
_CLAIMS = {
    "last_letter": [
        rf"last\s+letter\b[^.!?\n]{{0,80}}?\b(?:is|was|will\s+be|would\s+be|=|:)\s*(?:the\s+letter\s+)?{_ANSWER_TOKEN}",
        rf"{_VALUE_FIRST}\s+is\s+the\s+last\s+letter\b",
        rf"\bends?\s+(?:with|in)\s+(?:the\s+letter\s+)?{_ANSWER_TOKEN}",
    ],
    "backwards": [
        rf"(?:backwards?|reversed|in\s+reverse)\b[^.!?\n]{{0,60}}?\b(?:is|reads|spells|becomes|gives|would\s+be|=|:)\s*"
        rf"(?:the\s+word\s+)?{_ANSWER_TOKEN}",
        rf"{_VALUE_FIRST}\s+is\s+(?:{_QUOTE_OPEN}[A-Za-z]+{_QUOTE_CLOSE}|the\s+word\s+\S+)\s+"
        rf"(?:written\s+|spelled\s+|read\s+)?(?:backwards?|reversed|in\s+reverse)\b",
        rf"\b(?:reversed|backwards?|final|new|resulting)\s+word\b[^.!?\n]{{0,40}}?\b(?:is|as|would\s+be|=|:)\s*{_ANSWER_TOKEN}",
        rf"\breads\s+{_ANSWER_TOKEN}",
    ],
}
_NOT_A_NAME = {"answer", "letter", "word", "the", "is", "not"}  # "Last Letter: Answer: <letter>" names nothing
_CLAIM_RES = {kind: [re.compile(p, re.IGNORECASE) for p in patterns] for kind, patterns in _CLAIMS.items()}


def _claim(kind: str) -> Fallback:
    def named(response: str, task: _Task) -> tuple[str, ...] | None:
        hits = [(m.start(), value) for p in _CLAIM_RES[kind] for m in p.finditer(response)
                if (value := (m.group("q") or m.group("t")).lower()) not in _NOT_A_NAME]
        return (max(hits)[1],) if hits else None

    return named


_NUMBER_FALLBACKS: list[tuple[str, Fallback]] = [("bare", _bare_number), ("counted_noun", _counted_noun), ("result", _result)]
_FALLBACKS: dict[str, list[tuple[str, Fallback]]] = {
    "larger_number": [("bare", _bare_number), ("comparative", _comparative), ("result", _result)],
    **{k: _NUMBER_FALLBACKS for k in ("word_sum", "word_difference", "word_product", "unit_conversion", "letter_count",
                                      "count_letter")},
    **{k: [("bare", _bare_number), ("result", _result)] for k in ("single_digit_sum", "single_digit_product", "multi_step")},
    **{k: [("bare", _bare_word), ("claim", _claim(k))] for k in WORD_KINDS},
}


# --- grading ------------------------------------------------------------------------------


# A number with its thousands grouped by spaces, the SI way ("1 234", "12 345 678.5"; a space, no-break space,
# thin or narrow no-break space between groups).
_SI_GROUPED = re.compile(r"[-\u2212]?\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?:\.\d+)?")


def _reference_value(answer: str) -> float | None:
    """A reference answer's number: digits as the responses write them, or grouped in the SI way."""
    text = answer.strip()
    if _SI_GROUPED.fullmatch(text):
        text = re.sub(r"[ \u00a0\u2009\u202f]", "", text)
    return _to_float(text)


def is_numeric(answer: str) -> bool:
    """Whether a reference answer is a number (compared numerically)."""
    return _reference_value(answer) is not None


def _same(got: str, answer: str, numeric: bool) -> bool:
    if numeric:
        value, expected = _to_float(got), _reference_value(answer)
        return value is not None and expected is not None and abs(value - expected) < 1e-9
    return got == answer.strip().lower()


def grade(response: str, answer: str, prompt: str = "", kind: str | None = None) -> Grade:
    """Grade ``response`` against the reference ``answer`` of ``prompt`` (see the module docstring).

    ``kind``: the task kind, which enables that kind's fallback rules; None
    (or an unknown kind) grades by explicit answer statements only.
    """
    numeric = is_numeric(answer)
    task = _task(prompt)
    committed: tuple[str, ...] | None = None
    rule = UNGRADABLE
    for value in reversed(_explicit_values(response, task)):
        committed = _statement_value(value, task, numeric)
        if committed is not None:
            rule = "explicit"
            break
    if committed is None:
        for name, fallback in _FALLBACKS.get(kind or "", []):
            committed = fallback(response, task)
            if committed is not None:
                rule = name
                break
    if committed is None:
        return Grade(False, False, None, UNGRADABLE)
    if len(committed) > 1:
        return Grade(False, True, " | ".join(committed), TWO_ANSWERS)
    return Grade(_same(committed[0], answer, numeric), True, committed[0], rule)
