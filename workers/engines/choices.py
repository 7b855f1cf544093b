"""Reading a forced choice: the ids of a line's options, and their probabilities renormalised over them.

An engine answers a ``ChoiceRequest`` (a judge's score digit, a pairwise winner) by reading the
log-probs of each option's single token after the line; what the options mean is the judge's business.
"""

from __future__ import annotations

import math


def choice_token_ids(tokenizer: object, line: str, options: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """(ids of ``line`` before the option, one id per option) for ``tokenizer``.

    Found by encoding "<line> <option>" for every option: their common prefix
    is the line, and each must then end in exactly one token, the option's.
    Raises ValueError for a tokenizer where an option is not one token there.
    """
    encoded = [list(tokenizer(f"{line} {o}", add_special_tokens=False).input_ids) for o in options]
    n = 0
    while all(len(e) > n for e in encoded) and len({e[n] for e in encoded}) == 1:
        n += 1
    if any(len(e) != n + 1 for e in encoded):
        raise ValueError(f"tokenizer splits the options {options} into several tokens after {line!r}: {encoded}")
    return encoded[0][:n], [e[n] for e in encoded]


def renormalise(logprobs: list[float]) -> list[float]:
    """Probabilities of the options from their log-probs, renormalised over them."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]
