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
    return (_ids(tokenizer, head, split=False) + _ids(tokenizer, user_message, split=True)
            + _ids(tokenizer, tail, split=False))


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
