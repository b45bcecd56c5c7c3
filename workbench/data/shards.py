"""Reading prepared data: parquet shards with one `text` column, streamed row group by row group.

    DATA_DIR/manifest.json
    DATA_DIR/train/shard_00000.parquet ...
    DATA_DIR/val/shard_00000.parquet ...

A position is (shard_index, row_index) within a split. iter_documents yields every document with
its own position, so a reader that stops after the document at (s, r) resumes with
start=(s, r + 1) (a row index past a shard's end simply continues with the next shard).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.data.sources import read_row_group
from workbench.errors import BadInput
from workbench.input_files import parse_json

SPLITS = ("train", "val")
TEXT_COLUMN = "text"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def list_shards(data_dir: str | Path, split: str) -> list[Path]:
    """The split's shard files in order; [] when the split (or the folder) does not exist."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (use one of {', '.join(SPLITS)})")
    folder = Path(data_dir) / split
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("shard_*.parquet") if p.is_file())


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """manifest.json of a prepared data folder ({} when absent); BadInput when unreadable."""
    path = Path(data_dir) / "manifest.json"
    try:
        manifest = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict):
        raise BadInput(f"{path}: manifest must be a JSON object")
    return manifest


def _open(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise BadInput(f"{path}: shard not found (the data folder changed; run `picochat prepare` again)") from None
    except Exception as error:  # ArrowInvalid, OSError: truncated or not parquet
        raise BadInput(f"{path}: corrupt parquet shard ({error})") from None


def iter_documents(data_dir: str | Path, split: str, start: tuple[int, int] = (0, 0),
                   stride: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, tuple[int, int]]]:
    """Yield (text, (shard_index, row_index)) for every document of the split from `start` on
    (inclusive), reading one row group at a time: memory stays at one row group whatever the
    size of the data. stride (index, count): only the row groups whose number, counted over the
    whole split, is index modulo count (each of `count` readers gets its own groups, unread by
    the others)."""
    shard_start, row_start = start
    stream, streams = stride
    if shard_start < 0 or row_start < 0:
        raise ValueError(f"bad start position {start!r}")
    if not 0 <= stream < streams:
        raise ValueError(f"bad stride {stride!r}")
    shards = list_shards(data_dir, split)
    group_number = 0  # of the next row group, over the whole split
    if streams > 1:
        group_number = sum(_open(path).metadata.num_row_groups for path in shards[:shard_start])
    skip = row_start  # rows still to skip; carries into the next shard when past a shard's end
    for shard_index in range(shard_start, len(shards)):
        path = shards[shard_index]
        parquet = _open(path)
        if TEXT_COLUMN not in parquet.schema_arrow.names:
            raise BadInput(f"{path}: shard has no '{TEXT_COLUMN}' column")
        first_group_number, group_number = group_number, group_number + parquet.metadata.num_row_groups
        if skip >= parquet.metadata.num_rows:
            skip -= parquet.metadata.num_rows
            continue
        first_row = 0
        for group in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            if first_row + group_rows <= skip or (first_group_number + group) % streams != stream:
                first_row += group_rows
                continue
            texts = read_row_group(parquet, group, TEXT_COLUMN, path)
            for offset, text in enumerate(texts):
                row = first_row + offset
                if row < skip or text is None:
                    continue
                yield text, (shard_index, row)
            first_row += group_rows
        skip = 0
