"""Opening and parsing files a user hands us, safely against hostile ones.

open_regular(path, what) opens a file for binary reading only when it is a regular file: opening
a FIFO blocks until some writer appears, and /dev/zero or /dev/urandom never end, so either would
hang a reader forever. A missing, special or unreadable file is BadInput naming it.

parse_json(text) is json.loads, except that the two ways json.loads fails with something other
than json.JSONDecodeError come out as subclasses of it: nesting too deep for Python's recursion
limit (`[` x 50,000 is only 50 kB) raises NestedTooDeeply (msg "nested too deeply") instead of
RecursionError, and an integer of more than 4,300 digits raises NumberTooLong instead of a bare
ValueError. A reader's existing `except json.JSONDecodeError` then counts or reports them, with
the file and line, like any other bad JSON.

parse_json_document(path, text) is the whole-file reading of a .json a user hands us: its one
value, JSON_LINES when the file holds one value per line (JSON Lines saved as .json; the caller
reads it line by line), BadInput naming the file and line otherwise.

Only the standard library is imported: every reader may use this module.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from workbench.errors import BadInput


class NestedTooDeeply(json.JSONDecodeError):
    """JSON nested deeper than the parser can recurse."""


class NumberTooLong(json.JSONDecodeError):
    """An integer literal longer than Python's int conversion limit."""


def parse_json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise NestedTooDeeply("nested too deeply", _document(text), 0) from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise NumberTooLong("number too long", _document(text), 0) from None


def _document(text: str | bytes) -> str:
    return text if isinstance(text, str) else ""


JSON_LINES = object()  # parse_json_document's answer for a file of one JSON value per line


def parse_json_document(path: str | Path, text: str) -> Any:
    """The one JSON value of a whole file's text, or JSON_LINES when a second value follows the
    first. BadInput "PATH:LINE: invalid JSON (...)" or "PATH:LINE: nested too deeply" otherwise."""
    try:
        return parse_json(text)
    except NestedTooDeeply as error:
        raise BadInput(f"{path}:{error.lineno}: {error.msg}") from None
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            return JSON_LINES
        raise BadInput(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None


def file_type(mode: int) -> str:
    """What a file that is not regular is, in words: "a FIFO", "a character device", ..."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def not_regular_reason(path: str | Path) -> str:
    """'' for a regular file (symbolic links followed), else e.g. "not a regular file (a FIFO)".
    A file that cannot be examined gives '' too: opening it reports the problem."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    return "" if stat.S_ISREG(mode) else f"not a regular file ({file_type(mode)})"


def open_regular(path: str | Path, what: str = "file") -> BinaryIO:
    """`path` opened for binary reading. BadInput "PATH: <what> not found", "PATH: not a regular
    file (a FIFO)" or "PATH: cannot read <what> (Permission denied)" otherwise. The open does not
    block (O_NONBLOCK), so a FIFO is refused rather than waited on; it is examined after opening,
    so what is checked is what gets read."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BadInput(f"{path}: {what} not found") from None
    except OSError as error:
        raise BadInput(f"{path}: cannot read {what} ({error.strerror or error})") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise BadInput(f"{path}: not a regular file ({file_type(mode)})")
    return os.fdopen(descriptor, "rb")
