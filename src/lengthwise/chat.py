"""The one way lengthwise renders a prompt through a model's chat template."""
from __future__ import annotations

from .errors import LengthwiseError


def chat_ids(tok, prompt: str, name: str = "this model") -> list[int]:
    """One user turn through the tokenizer's chat template, opening the assistant's turn -> token ids."""
    if not tok.chat_template:
        raise LengthwiseError(f"{name} has no chat template: drop --chat")
    return list(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"])
