"""`python -m lengthwise.integrations.lm_eval ...`: the harness's own `lm_eval` command, with the `lengthwise`
model registered. A lengthwise error (a --model_args typo, a bad positions= spec) is one line, exit status 2."""
import sys

from lm_eval.__main__ import cli_evaluate

from ...errors import LengthwiseError
from . import LengthwiseLM  # noqa: F401  registers "lengthwise"


def main() -> None:
    try:
        cli_evaluate()
    except LengthwiseError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
