"""The one exception type that means "the user gave us something wrong".

The CLI turns it into a one-line message and exit code 2; anything else is a bug (exit 1).
Messages name the file and the problem, e.g. "configs/x.toml:12: [train] steps: must be >= 1".
"""


class BadInput(Exception):
    """Bad config, data or checkpoint: reported as one line, exit code 2, no traceback."""
