"""Writing files that other processes may be reading: a reader sees the old file or the new one,
never half of one, and a crash or a full disk leaves no half-written file under a real name.

Only the standard library is imported: every module may use this one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file beside `path` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:  # a full disk, say: leave no half-written temporary behind
        temporary.unlink(missing_ok=True)
        raise


def fsync_path(path: str | Path) -> None:
    """Flush a file or a folder (its entries: the renames done in it) to disk, where the OS allows."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def replace_folder(complete: Path, final: Path) -> None:
    """Put the finished folder `complete` in the place of `final` (a re-saved checkpoint, a re-exported
    folder). An existing `final` is first moved aside to `.tmp-old-NAME`, so a crash between the two
    renames leaves one whole copy (checkpoint_files.recover_interrupted_saves puts a checkpoint back)."""
    if not final.exists():
        os.replace(complete, final)
        return
    old = final.with_name(f".tmp-old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    os.replace(final, old)
    os.replace(complete, final)
    shutil.rmtree(old, ignore_errors=True)
