class LengthwiseError(Exception):
    """A problem with the user's input or files. The CLI prints it as one line and exits non-zero."""
