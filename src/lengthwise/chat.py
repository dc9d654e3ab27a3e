"""The one way lengthwise renders a prompt through a model's chat template."""
from __future__ import annotations

from .errors import LengthwiseError

ROLES = ("system", "user", "assistant", "tool")


def is_conversation(p) -> bool:
    """A prompt given as chat messages: a list of dicts."""
    return isinstance(p, (list, tuple)) and len(p) > 0 and all(isinstance(m, dict) for m in p)


def messages(prompt, system: str | None = None, index: int = 0, where: str | None = None) -> list[dict]:
    """A prompt as checked chat messages: a string is one user turn, after the system turn if one is given; a
    list of {"role", "content"} dicts is checked as it is (system= then adds its first turn). where: how an
    error names the prompt (default: "prompt {index}")."""
    where = where or f"prompt {index}"
    if system is not None and not isinstance(system, str):
        raise LengthwiseError(f"system must be a string, got {type(system).__name__}")
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = list(prompt)
        for k, m in enumerate(msgs):
            at = f"message {k} of {where}"
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise LengthwiseError(f'{at} is not a {{"role": ..., "content": ...}} dict: got {str(m)[:60]}')
            if m["role"] not in ROLES:
                raise LengthwiseError(f"{at} has role {m['role']!r}: roles are {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise LengthwiseError(f"{at}: content must be a string, not {type(m['content']).__name__}")
        if system is not None and msgs[0]["role"] == "system":
            raise LengthwiseError(f"{where} has its own system turn and system= gives another: keep one")
    return ([{"role": "system", "content": system}] if system is not None else []) + msgs


def _template_kw(msgs: list[dict]) -> dict:
    # a conversation that ends with the assistant's turn is continued; any other opens the assistant's turn
    last = msgs[-1]["role"] == "assistant"
    return {"add_generation_prompt": not last, "continue_final_message": last}


def _need_template(tok, name: str):
    if not tok.chat_template:
        raise LengthwiseError(f"{name} has no chat template: drop --chat and --system, or pass plain text")


def chat_text(tok, prompt, name: str = "this model", system: str | None = None, index: int = 0) -> str:
    """The prompt rendered by the tokenizer's chat template, as text (what apply_chat_template renders)."""
    _need_template(tok, name)
    msgs = messages(prompt, system, index)
    return tok.apply_chat_template(msgs, tokenize=False, **_template_kw(msgs))


def chat_ids(tok, prompt, name: str = "this model", system: str | None = None, index: int = 0) -> list[int]:
    """The prompt (a string: one user turn; or a list of messages) through the tokenizer's chat template,
    opening the assistant's turn -> token ids."""
    _need_template(tok, name)
    msgs = messages(prompt, system, index)
    return list(tok.apply_chat_template(msgs, tokenize=True, return_dict=True, **_template_kw(msgs))["input_ids"])
