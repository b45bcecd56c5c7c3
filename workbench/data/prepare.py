"""Preparing data (the `picochat prepare` verb is workbench/prepare_cli.py): raw text files -> deduplicated train/val parquet shards.

    sources (.txt .jsonl .json .csv .parquet, files or folders)
      -> documents (sources.py) -> normalize -> drop exact duplicates -> split
      -> DATA_DIR/train/shard_00000.parquet ..., DATA_DIR/val/..., DATA_DIR/manifest.json

Everything streams: a document goes from its reader to a row-group buffer and out to disk, so
memory holds one row group per split plus a 20-byte digest per distinct document (for dedup).

The split ([data] val_split), chosen to fit the data:
- "hash": a document's place comes from its text alone (its SHA-1), so the same document lands in
  the same split on every run. Right for many independent documents (web pages, chats); wrong for
  one running text, whose paragraphs would sit in val between their own scene's train paragraphs.
- "tail": the last val_fraction of each source's bytes, cut at the document boundary nearest that
  point; a source that is one long document (no blank lines) is cut at the nearest line instead.
  Finding the point takes a first pass over each source that only counts bytes.
- [data] val_sources: separate validation files (a FineWeb-style val shard); every document of
  `sources` is then training data.
No exact copy of a document is ever on both sides: with dedup, a copy is dropped wherever it comes
again; without dedup, copies within a split are kept and a copy of a document already in the other
split is dropped (counted as a duplicate). Val sources are read first, so their copies in the
training sources are the ones dropped.

Output is written to a hidden temporary folder next to DATA_DIR and renamed into place at the
end: a failed or interrupted prepare leaves an earlier good dataset untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workbench.data.shards import SPLITS, TEXT_COLUMN, shard_name
from workbench.data.sources import SourceReport, expand_sources, read_source
from workbench.errors import BadInput

FORMAT_VERSION = 1
# ascii normalization: typographic punctuation NFKD leaves alone, mapped to plain ASCII first
_ASCII_PUNCTUATION = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u00ab": '"', "\u00bb": '"', "\u2039": "'", "\u203a": "'", "\u2022": "*", "\u00b7": "*",
})


def normalize(text: str, mode: str) -> str:
    """none: as is; nfc: Unicode NFC; ascii: NFKD with accents and other non-ASCII dropped."""
    if mode == "nfc":
        return unicodedata.normalize("NFC", text)
    if mode == "ascii":
        text = unicodedata.normalize("NFKD", text.translate(_ASCII_PUNCTUATION))
        return text.encode("ascii", "ignore").decode("ascii")
    return text


def val_score(digest: bytes) -> float:
    """A document's place in [0, 1) from its SHA-1: below val_fraction means validation."""
    return int.from_bytes(digest[:8], "big") / 2**64


class ShardWriter:
    """One split's shards: `shard_rows` documents per file, row groups of `row_group_rows`.

    The last document added is held back (`pending`) until the next one arrives or close():
    that lets prepare move one document into an otherwise empty split at the very end."""

    def __init__(self, folder: Path, shard_rows: int, row_group_rows: int):
        import pyarrow as pa

        self.folder = folder
        self.shard_rows, self.row_group_rows = shard_rows, row_group_rows
        self.schema = pa.schema([(TEXT_COLUMN, pa.string())])
        self.buffer: list[str] = []
        self.writer = None
        self.rows_in_shard = 0
        self.shards: list[str] = []
        self.documents = 0
        self.bytes = 0
        self.chars = 0
        self.pending: str | None = None

    def add(self, text: str) -> None:
        if self.pending is not None:
            self._write(self.pending)
        self.pending = text

    def take_pending(self) -> str | None:
        text, self.pending = self.pending, None
        return text

    @property
    def count(self) -> int:
        return self.documents + (self.pending is not None)

    def _write(self, text: str) -> None:
        self.buffer.append(text)
        self.documents += 1
        self.bytes += len(text.encode("utf-8"))
        self.chars += len(text)
        if len(self.buffer) >= self.row_group_rows or self.rows_in_shard + len(self.buffer) >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = shard_name(len(self.shards))
            self.writer = pq.ParquetWriter(self.folder / name, self.schema, compression="zstd")
            self.shards.append(name)
        table = pa.table({TEXT_COLUMN: pa.array(self.buffer, type=pa.string())}, schema=self.schema)
        self.writer.write_table(table, row_group_size=len(self.buffer))
        self.rows_in_shard += len(self.buffer)
        self.buffer = []
        if self.rows_in_shard >= self.shard_rows:
            self.writer.close()
            self.writer, self.rows_in_shard = None, 0

    def close(self) -> None:
        if self.pending is not None:
            self._write(self.take_pending())
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = None

    def summary(self) -> dict[str, Any]:
        return {"documents": self.documents, "bytes": self.bytes, "chars": self.chars, "shards": len(self.shards)}


ProgressCallback = Callable[[int, int, int], None]  # (bytes read, total bytes, documents kept)


def prepare(config: Any, writer: Any = None, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Read cfg.data.sources, write cfg.data_dir; returns the manifest. `writer` (a RunWriter)
    gets progress records and the final state; `progress` is called a few times a second."""
    data = config.data
    data_dir: Path = config.data_dir
    try:
        manifest = _prepare(config, data, data_dir, writer, progress)
    except BaseException as error:
        if writer is not None:
            message = str(error) if isinstance(error, BadInput) else f"{type(error).__name__}: {error}"
            writer.finish("failed", message)
        raise
    if writer is not None:
        writer.event(summary_line(manifest))
        writer.finish("done", f"{manifest['documents']:,} documents, {manifest['bytes']:,} bytes")
    return manifest


def _check_output_dir(data_dir: Path) -> None:
    """Refuse to replace a folder that is not a prepared dataset (a mistyped [data] dir)."""
    if data_dir.exists() and not data_dir.is_dir():
        raise BadInput(f"{data_dir}: [data] dir exists and is not a folder")
    if data_dir.is_dir() and any(data_dir.iterdir()) and not (data_dir / "manifest.json").exists():
        raise BadInput(f"{data_dir}: folder exists and is not a prepared dataset (no manifest.json); "
                       f"choose another [data] dir or empty it")


def _prepare(config: Any, data: Any, data_dir: Path, writer: Any, progress: ProgressCallback | None) -> dict[str, Any]:
    started = time.time()
    sources = [config.resolve_path(source) for source in data.sources]
    if not sources:
        raise BadInput("[data] sources is empty: name at least one file or folder")
    files, ignored = expand_sources(sources)
    val_files: list[Path] = []
    if data.val_sources:
        val_files, val_ignored = expand_sources([config.resolve_path(source) for source in data.val_sources])
        ignored += val_ignored
        files = val_files + [path for path in files if path not in val_files]
    _check_output_dir(data_dir)
    reports = [SourceReport(path=path, kind=_kind(path)) for path in files]
    total_bytes = sum(path.stat().st_size for path in files)
    if writer is not None:
        writer.write_status(state="running")
        writer.event(f"preparing {len(files)} file(s), {total_bytes:,} bytes -> {data_dir}")

    _clean_up_after_killed_prepares(data_dir)
    temporary = data_dir.with_name(f".{data_dir.name}.tmp-{os.getpid()}")
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    splits = {split: ShardWriter(temporary / split, data.shard_rows, data.row_group_rows) for split in SPLITS}
    seen: dict[str, set[bytes]] = {split: set() for split in SPLITS}  # digests of the kept documents
    duplicates = 0
    skipped_invalid = 0
    done_before = 0
    last_report = 0.0

    def report_progress(in_file: int, force: bool = False) -> None:
        nonlocal last_report
        now = time.time()
        if not force and now - last_report < 0.25:
            return
        last_report = now
        done = done_before + in_file
        kept = splits["train"].count + splits["val"].count
        if progress is not None:
            progress(done, total_bytes, kept)
        if writer is not None:
            writer.progress(done, total_bytes, "bytes", documents=kept)

    try:
        for report in reports:
            if report.path in val_files:
                assign = _all_to("val")
            elif val_files:
                assign = _all_to("train")
            elif data.val_split == "tail":
                assign = _TailSplit(_count_bytes(report.path, data), data.val_fraction)
            else:
                assign = _hash_split(data.val_fraction)
            for text in _documents(report, data):
                for split, piece in assign(text):
                    digest = hashlib.sha1(piece.encode("utf-8")).digest()
                    other = "train" if split == "val" else "val"
                    # dedup drops every copy; without it a copy across the split still would leak
                    if digest in seen[other] or (data.dedup and digest in seen[split]):
                        duplicates += 1
                        report.duplicates += 1
                        continue
                    seen[split].add(digest)
                    splits[split].add(piece)
                    report.documents += 1
                report_progress(report.bytes_read)
            done_before += report.size
            report_progress(0, force=True)

        train, val = splits["train"], splits["val"]
        if train.count == 0 and val.count == 0:
            raise BadInput(_nothing_usable(reports, ignored))
        # Every split gets a document when there are enough: training needs train, evaluation val.
        if train.count == 0:
            train.add(val.take_pending())
        elif val.count == 0 and data.val_fraction > 0 and train.count >= 2:
            val.add(train.take_pending())
        for shard_writer in splits.values():
            shard_writer.close()
        skipped_invalid = sum(report.skipped_count for report in reports)
        manifest = _manifest(config, data, splits, reports, ignored, duplicates, skipped_invalid,
                             time.time() - started)
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _replace(temporary, data_dir)
    except BaseException:
        for shard_writer in splits.values():
            shard_writer.abort()
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return manifest


def _documents(report: SourceReport, data: Any) -> Iterator[str]:
    """The source's documents, normalized; empty and unencodable ones skipped into the report."""
    for text, where in read_source(report.path, report, data.text_field, data.separator, data.csv_header):
        report.documents_read += 1
        text = normalize(text, data.normalize)
        if not text.strip():
            report.skip("empty after normalization", where)
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from JSON "\ud800" escapes
            report.skip("invalid Unicode (lone surrogates)", where)
            continue
        yield text


Assign = Callable[[str], list[tuple[str, str]]]  # document -> [(split, text)], usually one


def _all_to(split: str) -> Assign:
    return lambda text: [(split, text)]


def _hash_split(val_fraction: float) -> Assign:
    def assign(text: str) -> list[tuple[str, str]]:
        digest = hashlib.sha1(text.encode("utf-8")).digest()
        return [("val" if val_score(digest) < val_fraction else "train", text)]
    return assign


def _count_bytes(path: Path, data: Any) -> int:
    """The UTF-8 bytes of a source's usable documents (the tail split's first pass)."""
    scratch = SourceReport(path=path, kind=_kind(path))
    return sum(len(text.encode("utf-8")) for text in _documents(scratch, data))


class _TailSplit:
    """The "tail" split of one source, streamed: documents before the cut point go to train,
    after it to val. The document that straddles the point goes whole to the side that holds more
    of it, unless it is longer than the val part should be (one long document without blank
    lines, or a few big ones): then it is cut at the line boundary nearest the point."""

    def __init__(self, total_bytes: int, val_fraction: float):
        self.total = total_bytes
        self.cut = total_bytes - round(val_fraction * total_bytes)  # train bytes wanted
        self.offset = 0

    def __call__(self, text: str) -> list[tuple[str, str]]:
        encoded = text.encode("utf-8")
        start, end = self.offset, self.offset + len(encoded)
        self.offset = end
        if end <= self.cut or self.cut >= self.total:
            return [("train", text)]
        if start >= self.cut:
            return [("val", text)]
        if len(encoded) <= self.total - self.cut:
            return [("val" if self.cut - start < end - self.cut else "train", text)]
        line_end = _nearest_line_end(encoded, self.cut - start)
        if line_end is None:
            return [("train", text)]
        # the newline itself goes with neither side, as blank lines go with no document
        return [("train", encoded[:line_end - 1].decode("utf-8")), ("val", encoded[line_end:].decode("utf-8"))]


def _nearest_line_end(encoded: bytes, position: int) -> int | None:
    """The index just after the newline nearest `position` that leaves text on both sides."""
    before = encoded.rfind(b"\n", 0, position)
    after = encoded.find(b"\n", position)
    candidates = [i + 1 for i in (before, after) if i >= 0 and 0 < i + 1 < len(encoded)]
    return min(candidates, key=lambda i: abs(i - position)) if candidates else None


def _kind(path: Path) -> str:
    from workbench.data.sources import KINDS

    return KINDS[path.suffix.lower()]


def _clean_up_after_killed_prepares(data_dir: Path) -> None:
    """Folders a killed prepare left next to DATA_DIR, named for its pid: its half-written output
    (.DIR.tmp-PID) is removed, and the previous dataset, set aside while the new one was moved in
    (.DIR.old-PID), comes back if DATA_DIR is missing (killed between _replace's two renames).
    Folders of a live pid belong to a prepare still running and stay."""
    from workbench.runs import pid_alive

    prefix = f".{data_dir.name}."
    if not data_dir.parent.is_dir():
        return
    leftovers = [path for path in data_dir.parent.iterdir() if path.name.startswith(prefix)]
    for path in sorted(leftovers, key=lambda path: not path.name.startswith(f"{prefix}old-")):  # old first
        kind, _, pid = path.name[len(prefix):].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if kind == "old" and not data_dir.exists():
            os.replace(path, data_dir)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _replace(temporary: Path, data_dir: Path) -> None:
    """Move the finished dataset into place; the old one is removed only after the swap."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if data_dir.exists():
        old = data_dir.with_name(f".{data_dir.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(data_dir, old)
    os.replace(temporary, data_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _nothing_usable(reports: list[SourceReport], ignored: list[dict[str, str]]) -> str:
    problems = []
    for report in reports:
        if report.skipped_file:
            problems.append(f"{report.path.name}: {report.skipped_file}")
        for reason, (count, _) in report.skipped.items():
            problems.append(f"{report.path.name}: {count} x {reason}")
        if report.duplicates:
            problems.append(f"{report.path.name}: {report.duplicates} duplicate(s)")
    problems += [f"{Path(item['path']).name}: {item['reason']}" for item in ignored]
    names = ", ".join(str(report.path) for report in reports) or "the sources"
    detail = "; ".join(problems[:6]) if problems else "no documents found"
    return f"{names}: no usable documents ({detail})"


def _manifest(config: Any, data: Any, splits: dict[str, ShardWriter], reports: list[SourceReport],
              ignored: list[dict[str, str]], duplicates: int, skipped_invalid: int, seconds: float) -> dict[str, Any]:
    skipped = []
    for report in reports:
        if report.skipped_file:
            skipped.append({"source": str(report.path), "reason": report.skipped_file, "count": 1, "where": []})
        for reason, (count, wheres) in report.skipped.items():
            skipped.append({"source": str(report.path), "reason": reason, "count": count, "where": wheres})
    skipped += [{"source": item["path"], "reason": item["reason"], "count": 1, "where": []} for item in ignored]
    split_summaries = {split: writer.summary() for split, writer in splits.items()}
    return {
        "format_version": FORMAT_VERSION,
        "created": time.time(),
        "seconds": round(seconds, 3),
        "documents": sum(s["documents"] for s in split_summaries.values()),
        "bytes": sum(s["bytes"] for s in split_summaries.values()),
        "chars": sum(s["chars"] for s in split_summaries.values()),
        "splits": split_summaries,
        "shards": {split: [f"{split}/{name}" for name in writer.shards] for split, writer in splits.items()},
        "duplicates": duplicates,
        "skipped_records": skipped_invalid,
        "skipped": skipped,
        "sources": [report.to_dict() for report in reports],
        "validation": {
            "method": "val_sources" if data.val_sources else data.val_split,
            "bytes": split_summaries["val"]["bytes"],
            "sources": list(data.val_sources),
        },
        "settings": {
            "val_fraction": data.val_fraction,
            "val_split": data.val_split,
            "val_sources": list(data.val_sources),
            "text_field": data.text_field,
            "csv_header": data.csv_header,
            "separator": data.separator,
            "normalize": data.normalize,
            "dedup": data.dedup,
            "shard_rows": data.shard_rows,
            "row_group_rows": data.row_group_rows,
        },
    }


def summary_line(manifest: dict[str, Any]) -> str:
    splits = manifest["splits"]
    return (f"{manifest['documents']:,} documents ({splits['train']['documents']:,} train, "
            f"{splits['val']['documents']:,} val), {manifest['bytes']:,} bytes, "
            f"{splits['train']['shards'] + splits['val']['shards']} shard(s); "
            f"{manifest['duplicates']:,} duplicate(s), {manifest['skipped_records']:,} record(s) skipped")


def format_summary(manifest: dict[str, Any], data_dir: Path) -> str:
    lines = [f"prepared {data_dir}: {summary_line(manifest)}"]
    for item in manifest["skipped"]:
        where = ""
        if item["where"]:
            shown = ", ".join(str(w) for w in item["where"][:10])
            more = "..." if item["count"] > len(item["where"][:10]) else ""
            where = f" (at {shown}{more})"
        count = f"{item['count']} x " if item["count"] > 1 or item["where"] else ""
        lines.append(f"  skipped {item['source']}: {count}{item['reason']}{where}")
    return "\n".join(lines)

