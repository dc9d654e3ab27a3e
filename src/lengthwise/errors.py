class LengthwiseError(Exception):
    """A problem with the user's input or files. The CLI prints it as one line and exits non-zero."""


class InputTooLong(LengthwiseError):
    """Input `index` of a call is longer than the model takes; the CLI maps the index to a line."""

    def __init__(self, index: int, n_tokens: int, limit: int, what: str, hint: str):
        self.index, self.n_tokens, self.limit = index, n_tokens, limit
        self.detail = f"has {n_tokens} tokens, over the {limit} that {what}"
        super().__init__(f"input {index} {self.detail}: {hint}")
