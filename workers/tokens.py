"""The one tokenization both the engines and the trainer use.

Log-probs under the engine and under the trainer must be of the same token
ids, so prompt and response are encoded here and nowhere else.
"""

from __future__ import annotations

from typing import Any


class TokenizerError(ValueError):
    """The tokenizer cannot be used (e.g. it has no chat template)."""


def prompt_token_ids(tokenizer: Any, user_message: str) -> list[int]:
    """Chat-template ids of a single user turn, ending with the assistant header.

    Raises TokenizerError when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError(
            f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
            "an instruct model with a chat template is required"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def response_token_ids(tokenizer: Any, response: str, finish_reason: str) -> list[int]:
    """Ids of a response; a response that stopped naturally ends with the EOS token."""
    ids = list(tokenizer(response, add_special_tokens=False).input_ids)
    if finish_reason == "stop":
        ids.append(tokenizer.eos_token_id)
    return ids
