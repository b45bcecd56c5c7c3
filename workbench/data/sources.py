"""Readers for raw data sources: each streams (text, where) documents out of one file.

    .txt .text .md   documents separated by blank lines, or by a [data] separator line
    .jsonl           one JSON object per line; the [data] text_field holds the document
    .json            a list of strings, or of objects with text_field (read whole: json has no
                     streaming parser in the standard library); JSON Lines saved as .json also works
    .csv             the text_field column (csv module, streamed row by row); with [data]
                     csv_header = false there is no header: each row's columns joined with ", "
    .parquet         the text_field column (FineWeb layout), read one row group at a time

`where` is a line number (text, jsonl, csv), an item index (json) or a row index (parquet): it
goes into the skip report so the user can find the bad record. Problems in single records
(undecodable bytes, bad JSON lines, missing fields) are counted in the SourceReport and skipped;
problems that make a whole file unreadable as what it claims to be (corrupt parquet, invalid
.json, a missing column, JSON nested too deeply) raise BadInput naming the file. Empty and binary
files are skipped and reported. A source named directly must be a regular file (a FIFO or
/dev/zero would hang the reader: BadInput); other folder entries are reported and left out. A file
that cannot be read (permissions, I/O errors) is BadInput naming it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from workbench.errors import BadInput
from workbench.input_files import (
    JSON_LINES,
    NestedTooDeeply,
    not_regular_reason,
    open_regular,
    parse_json,
    parse_json_document,
)

KINDS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".json": "json",
         ".csv": "csv", ".parquet": "parquet"}
SUPPORTED = ", ".join(sorted(KINDS))
BOM = b"\xef\xbb\xbf"
MAX_WHERE = 20  # line numbers kept per skip reason


@dataclass
class SourceReport:
    """What happened to one source file; becomes an entry of manifest.json's "sources"."""

    path: Path
    kind: str
    size: int = 0
    sha256: str = ""
    bytes_read: int = 0  # progress within the file (approximate for parquet)
    documents_read: int = 0  # documents the reader produced
    documents: int = 0  # kept after normalization and dedup (filled in by prepare)
    duplicates: int = 0
    skipped_file: str = ""  # reason the whole file was skipped, if it was
    skipped: dict[str, list[Any]] = field(default_factory=dict)  # reason -> [count, first wheres]

    def skip(self, reason: str, where: Any = None) -> None:
        entry = self.skipped.setdefault(reason, [0, []])
        entry[0] += 1
        if where is not None and len(entry[1]) < MAX_WHERE:
            entry[1].append(where)

    @property
    def skipped_count(self) -> int:
        return sum(count for count, _ in self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "bytes": self.size,
            "sha256": self.sha256,
            "documents_read": self.documents_read,
            "documents": self.documents,
            "duplicates": self.duplicates,
            "skipped_file": self.skipped_file or None,
            "skipped": {reason: {"count": count, "where": wheres} for reason, (count, wheres) in self.skipped.items()},
        }


def expand_sources(sources: list[Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files to read, in order: each file as given, each folder's supported files recursively
    (sorted, hidden ones left out). Returns (files, ignored) where ignored lists the folder
    entries that were left out and why. Missing sources, unsupported files and anything but a
    regular file (a FIFO or /dev/zero would hang the reader) named directly raise BadInput."""
    files: list[Path] = []
    ignored: list[dict[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            files.append(path)

    for source in sources:
        if not source.exists():
            raise BadInput(f"{source}: data source not found")
        if source.is_dir():
            found = 0
            for path in sorted(source.rglob("*")):
                relative = path.relative_to(source)
                if any(part.startswith(".") for part in relative.parts) or path.is_dir():
                    continue
                unusable = not_regular_reason(path) if path.exists() else "broken symbolic link"
                if unusable:
                    ignored.append({"path": str(path), "reason": unusable})
                elif path.suffix.lower() in KINDS:
                    add(path)
                    found += 1
                else:
                    ignored.append({"path": str(path), "reason": "unsupported file type"})
            if not found:
                ignored.append({"path": str(source), "reason": f"folder has no {SUPPORTED} files"})
        elif unusable := not_regular_reason(source):
            raise BadInput(f"{source}: {unusable}")
        elif source.suffix.lower() in KINDS:
            add(source)
        else:
            raise BadInput(f"{source}: unsupported file type '{source.suffix}' (use {SUPPORTED})")
    return files, ignored


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


SNIFF_BYTES = 8192


def sniff(path: Path) -> str:
    """A reason to skip a would-be text file outright ('' when it looks like text)."""
    with open(path, "rb") as handle:
        return sniff_head(handle.read(SNIFF_BYTES))


def sniff_head(head: bytes) -> str:
    """sniff() on the first SNIFF_BYTES bytes of a file."""
    if not head:
        return "empty file"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (convert it to UTF-8)"
    if b"\x00" in head:
        return "binary file (NUL bytes)"
    return ""


class _Lines:
    """Binary lines of a file, hashing every byte and counting progress as it goes."""

    def __init__(self, handle: BinaryIO, report: SourceReport):
        self.handle, self.report = handle, report
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for number, raw in enumerate(self.handle, start=1):
            self.digest.update(raw)
            self.report.bytes_read += len(raw)
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            yield number, raw
        self.report.sha256 = self.digest.hexdigest()


def decode_line(raw: bytes) -> str | None:
    """A line as text without its line ending, or None when it is not valid UTF-8 (or has NULs)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


def read_source(path: Path, report: SourceReport, text_field: str = "text",
                separator: str = "", csv_header: bool = True) -> Iterator[tuple[str, Any]]:
    """Documents of one file as (text, where). Updates `report` as it reads. A file that cannot
    be read (permissions, I/O error) is BadInput naming it."""
    try:
        yield from _read_source(path, report, text_field, separator, csv_header)
    except OSError as error:
        raise BadInput(f"{path}: cannot read data source ({error.strerror or error})") from None


def _read_source(path: Path, report: SourceReport, text_field: str, separator: str,
                 csv_header: bool) -> Iterator[tuple[str, Any]]:
    report.size = path.stat().st_size
    if report.kind != "parquet":
        reason = sniff(path)
        if reason:
            report.skipped_file = reason
            report.sha256 = file_sha256(path)
            report.bytes_read = report.size
            return
    elif report.size == 0:
        report.skipped_file = "empty file"
        report.sha256 = file_sha256(path)
        return
    reader = {"text": _read_text, "jsonl": _read_jsonl, "json": _read_json,
              "csv": _read_csv, "parquet": _read_parquet}[report.kind]
    yield from reader(path, report, text_field=text_field, separator=separator, csv_header=csv_header)
    report.bytes_read = report.size


def _read_text(path: Path, report: SourceReport, separator: str = "", **_: Any) -> Iterator[tuple[str, Any]]:
    """Documents are runs of lines between blank lines (or between separator lines, when a
    separator is set: then blank lines stay inside documents). A document with undecodable
    bytes is skipped whole."""
    marker = separator.strip()
    lines: list[str] = []
    first_line = 0
    bad_line = 0

    def finish() -> Iterator[tuple[str, Any]]:
        nonlocal lines, bad_line
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            if bad_line:
                report.skip("invalid UTF-8", bad_line)
            else:
                yield "\n".join(lines), first_line
        lines, bad_line = [], 0

    with open(path, "rb") as handle:
        for number, raw in _Lines(handle, report):
            text = decode_line(raw)
            if text is None:
                bad_line = bad_line or number
                text = "\ufffd"  # a placeholder that keeps the document open
            boundary = (text.strip() == marker) if marker else not text.strip()
            if boundary:
                yield from finish()
                continue
            if not lines:
                if marker and not text.strip():
                    continue  # blank lines right after a separator
                first_line = number
            lines.append(text)
        yield from finish()


def _read_jsonl(path: Path, report: SourceReport, text_field: str = "text", **_: Any) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as handle:
        for number, raw in _Lines(handle, report):
            if not raw.strip():
                continue
            text = decode_line(raw)
            if text is None:
                report.skip("invalid UTF-8", number)
                continue
            try:
                record = parse_json(text)
            except NestedTooDeeply as error:
                report.skip(error.msg, number)
                continue
            except json.JSONDecodeError:
                report.skip("invalid JSON", number)
                continue
            value = _field(record, text_field, report, number)
            if value is not None:
                yield value, number


def _field(record: Any, text_field: str, report: SourceReport, where: Any) -> str | None:
    if isinstance(record, str):
        value = record
    elif isinstance(record, dict):
        if text_field not in record:
            report.skip(f"no '{text_field}' field", where)
            return None
        value = record[text_field]
        if not isinstance(value, str):
            report.skip(f"'{text_field}' is not a string", where)
            return None
    else:
        report.skip(f"not a string or an object with '{text_field}'", where)
        return None
    if not value.strip():
        report.skip("empty text", where)
        return None
    return value


def _read_json(path: Path, report: SourceReport, text_field: str = "text", **_: Any) -> Iterator[tuple[str, Any]]:
    raw = path.read_bytes()
    report.sha256 = hashlib.sha256(raw).hexdigest()
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        report.skipped_file = f"invalid UTF-8 at byte {error.start}"
        return
    del raw
    data = parse_json_document(path, text)
    del text
    if data is JSON_LINES:
        yield from _read_jsonl(path, report, text_field=text_field)
        return
    if isinstance(data, dict) and text_field in data and isinstance(data[text_field], str):
        data = [data]
    if not isinstance(data, list):
        raise BadInput(f"{path}: expected a JSON list of strings or of objects with '{text_field}'")
    for index, record in enumerate(data):
        value = _field(record, text_field, report, index)
        if value is not None:
            yield value, index


def _read_csv(path: Path, report: SourceReport, text_field: str = "text", csv_header: bool = True,
              **_: Any) -> Iterator[tuple[str, Any]]:
    """The text_field column of a headed file; with csv_header false, every row (its columns
    joined with ", ") of a file whose first line is already data."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # documents can be longer than csv's 128 KiB default

    with open_regular(path, "data source") as handle:
        lines = _Lines(handle, report)
        # surrogateescape keeps undecodable bytes visible as lone surrogates: a row holding one is skipped
        reader = csv.reader(raw.decode("utf-8", errors="surrogateescape") for _, raw in lines)
        column = None  # None: the whole row
        if csv_header:
            try:
                header = next(reader)
            except StopIteration:
                report.skipped_file = "no CSV header"
                return
            except csv.Error as error:
                raise BadInput(f"{path}:1: malformed CSV header ({error})") from None
            if text_field not in header:
                columns = ", ".join(header[:20])
                raise BadInput(f"{path}: no column '{text_field}' (columns: {columns}); set [data] text_field, "
                               f"or csv_header = false for a file without a header")
            column = header.index(text_field)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:
                report.skip("malformed CSV row", reader.line_num)
                continue
            if not row:
                continue
            if column is not None and len(row) <= column:
                report.skip("row has too few columns", reader.line_num)
                continue
            value = row[column] if column is not None else ", ".join(row)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                report.skip("invalid UTF-8", reader.line_num)
                continue
            if "\x00" in value:
                report.skip("invalid UTF-8", reader.line_num)
                continue
            if not (value if column is not None else "".join(row)).strip():  # every column blank
                report.skip("empty text", reader.line_num)
                continue
            yield value, reader.line_num


def _read_parquet(path: Path, report: SourceReport, text_field: str = "text", **_: Any) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except Exception as error:  # ArrowInvalid / OSError: truncated, not parquet
        raise BadInput(f"{path}: not a readable parquet file ({_first_line(error)})") from None
    if text_field not in schema.names:
        columns = ", ".join(schema.names[:20])
        raise BadInput(f"{path}: no column '{text_field}' (columns: {columns}); set [data] text_field")
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
            or str(column_type) == "string_view"):
        raise BadInput(f"{path}: column '{text_field}' holds {column_type}, not text")
    report.sha256 = file_sha256(path)
    metadata = parquet.metadata
    first_row = 0
    for group in range(metadata.num_row_groups):
        texts = read_row_group(parquet, group, text_field, path)
        for offset, value in enumerate(texts):
            row = first_row + offset
            if value is None:
                report.skip("null text", row)
            elif not value.strip():
                report.skip("empty text", row)
            else:
                yield value, row
        first_row += len(texts)
        report.bytes_read = report.size * (group + 1) // metadata.num_row_groups


def read_row_group(parquet, group: int, column: str, path: Path) -> list:
    """One column of one row group of an open pyarrow ParquetFile, as Python values; BadInput
    "PATH: corrupt parquet, row group N (...)" when it cannot be read."""
    try:
        return parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
    except Exception as error:  # ArrowInvalid / OSError: a damaged page or a truncated file
        raise BadInput(f"{path}: corrupt parquet, row group {group} ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
