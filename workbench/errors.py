"""The one exception type that means "the user gave us something wrong".

The CLI turns it into a one-line message and exit code 2; anything else is a bug (exit 1).
Messages name the file and the problem, e.g. "configs/x.toml:12: [train] steps: must be >= 1".
"""


class BadInput(Exception):
    """Bad config, data or checkpoint: reported as one line, exit code 2, no traceback."""


def first_line(error: BaseException) -> str:
    """An exception as one short line for a BadInput message."""
    lines = str(error).splitlines()
    return lines[0][:200] if lines else type(error).__name__
