"""The one tokenization both the engines and the trainer use.

Log-probs under the engine and under the trainer must be of the same token
ids, so prompt and response are encoded here and nowhere else.
"""

from __future__ import annotations

from typing import Any


class TokenizerError(ValueError):
    """The tokenizer cannot be used (e.g. it has no chat template)."""


# Stands for the message text while the chat template is rendered (private-use characters: no template adds them).
_SLOT = "\ue000selfreward-message\ue001"


def prompt_token_ids(tokenizer: Any, user_message: str) -> list[int]:
    """Chat-template ids of a single user turn, ending with the assistant header.

    The message is untrusted text (a prompt from a data set, a response inside
    a judge prompt): special-token strings in it, such as a fake
    ``<|im_end|>`` followed by a fake assistant turn, are encoded as plain
    text, never as the template's control tokens. Raises TokenizerError when
    the tokenizer has no chat template, or one that rewrites the message text.
    """
    head, tail = _template_ids(tokenizer)
    return head + _ids(tokenizer, user_message, split=True) + tail


def template_tokens(tokenizer: Any) -> int:
    """Tokens the chat template adds around a user message (``prompt_token_ids`` less the message's own)."""
    head, tail = _template_ids(tokenizer)
    return len(head) + len(tail)


def most_tokens(tokenizer: Any, text: str) -> int | None:
    """An upper bound on the tokens of ``text`` as ``prompt_token_ids`` encodes a message, without encoding it: the
    bytes of the text as the tokenizer normalises it (every token of a byte-level BPE, SentencePiece or WordPiece
    vocabulary covers at least one byte), plus one for the word-start mark a pre-tokenizer may put before it. None
    for a tokenizer without a Rust backend (then only encoding tells)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    normalizer = backend.normalizer
    return 1 + len((normalizer.normalize_str(text) if normalizer is not None else text).encode("utf-8", "surrogatepass"))


_TEMPLATES: dict[int, tuple[Any, list[int], list[int]]] = {}


def _template_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids of the chat template before and after the user message (rendered once per tokenizer)."""
    known = _TEMPLATES.get(id(tokenizer))
    if known is not None and known[0] is tokenizer:
        return known[1], known[2]
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError(
            f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
            "an instruct model with a chat template is required"
        )
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SLOT}], add_generation_prompt=True, tokenize=False)
    if text.count(_SLOT) != 1:
        raise TokenizerError(f"the chat template of {getattr(tokenizer, 'name_or_path', '?')} rewrites the message text; "
                             "it cannot be used with untrusted prompts")
    head, tail = text.split(_SLOT)
    ids = (_ids(tokenizer, head, split=False), _ids(tokenizer, tail, split=False))
    _TEMPLATES[id(tokenizer)] = (tokenizer, *ids)
    return ids


def _ids(tokenizer: Any, text: str, split: bool) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=split).input_ids)


def response_token_ids(tokenizer: Any, response: str, finish_reason: str) -> list[int]:
    """Ids of a response (special-token strings in it as plain text); a response that stopped naturally ends with EOS."""
    ids = _ids(tokenizer, response, split=True)
    if finish_reason == "stop":
        ids.append(tokenizer.eos_token_id)
    return ids
