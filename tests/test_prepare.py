"""Data preparation: every source type, dedup, normalization, the split, the manifest, bad input
through the real CLI, and the streamed shard layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench import cli
from workbench import config as config_module
from workbench.data import shards
from workbench.data.prepare import normalize, prepare
from workbench.errors import BadInput


def write_config(tmp_path: Path, sources: list[Path | str], **data) -> Path:
    data.setdefault("val_fraction", 0.0)
    lines = ['[run]', 'name = "t"', f'out_dir = "{tmp_path / "run"}"', "[data]",
             "sources = [" + ", ".join(json.dumps(str(s)) for s in sources) + "]"]
    for key, value in data.items():
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_prepare(tmp_path: Path, sources, **data) -> tuple[dict, list[str], list[str]]:
    """prepare through the config loader; returns (manifest, train docs, val docs)."""
    cfg = config_module.load(write_config(tmp_path, sources, **data))
    manifest = prepare(cfg)
    train = [text for text, _ in shards.iter_documents(cfg.data_dir, "train")]
    val = [text for text, _ in shards.iter_documents(cfg.data_dir, "val")]
    return manifest, train, val


def cli_error(tmp_path: Path, capsys, sources, **data) -> str:
    """Run `picochat prepare` expecting bad input: exit 2 and exactly one line on stderr."""
    config = write_config(tmp_path, sources, **data)
    code = cli.main(["prepare", str(config)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


# ---- source types ----


def test_txt_blank_lines(tmp_path: Path):
    source = tmp_path / "a.txt"
    source.write_text("First doc\nline two\n\n\n  indented second\r\n\r\nthird\n", encoding="utf-8")
    manifest, train, val = run_prepare(tmp_path, [source])
    assert train == ["First doc\nline two", "  indented second", "third"] and val == []
    assert manifest["documents"] == 3
    assert manifest["sources"][0]["documents"] == 3


def test_txt_separator_keeps_blank_lines(tmp_path: Path):
    source = tmp_path / "a.txt"
    source.write_text("one\n\nstill one\n<|endoftext|>\n\ntwo\n<|endoftext|>\n", encoding="utf-8")
    _, train, _ = run_prepare(tmp_path, [source], separator="<|endoftext|>")
    assert train == ["one\n\nstill one", "two"]


def test_jsonl(tmp_path: Path):
    source = tmp_path / "a.jsonl"
    source.write_text('{"body": "alpha"}\n\n{"body": "beta", "x": 1}\n', encoding="utf-8")
    _, train, _ = run_prepare(tmp_path, [source], text_field="body")
    assert train == ["alpha", "beta"]


def test_json_list_of_strings_and_objects(tmp_path: Path):
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["one", "two"]), encoding="utf-8")
    objects = tmp_path / "o.json"
    objects.write_text(json.dumps([{"text": "three"}, {"text": "four", "id": 2}, {"other": "x"}]), encoding="utf-8")
    manifest, train, _ = run_prepare(tmp_path, [strings, objects])
    assert train == ["one", "two", "three", "four"]
    assert manifest["sources"][1]["skipped"] == {"no 'text' field": {"count": 1, "where": [2]}}


def test_json_lines_saved_as_json(tmp_path: Path):
    source = tmp_path / "a.json"
    source.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    _, train, _ = run_prepare(tmp_path, [source])
    assert train == ["a", "b"]


def test_csv(tmp_path: Path):
    source = tmp_path / "a.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "content"])
        writer.writerow([1, "plain"])
        writer.writerow([2, 'multi\nline, with "quotes"'])
        writer.writerow([3, "x" * 200_000])  # longer than csv's default field limit
    _, train, _ = run_prepare(tmp_path, [source], text_field="content")
    assert train == ["plain", 'multi\nline, with "quotes"', "x" * 200_000]


def test_parquet_fineweb_layout(tmp_path: Path):
    source = tmp_path / "fw.parquet"
    table = pa.table({"text": ["doc one", None, "doc two", "doc three"], "id": ["a", "b", "c", "d"],
                      "url": ["u"] * 4, "token_count": [2, 0, 2, 2]})
    pq.write_table(table, source, row_group_size=2)
    manifest, train, _ = run_prepare(tmp_path, [source])
    assert train == ["doc one", "doc two", "doc three"]
    assert manifest["sources"][0]["skipped"]["null text"] == {"count": 1, "where": [1]}


def test_folders_recursive_sorted_and_several_sources(tmp_path: Path):
    folder = tmp_path / "corpus"
    (folder / "b" / "deeper").mkdir(parents=True)
    (folder / "a.txt").write_text("from a", encoding="utf-8")
    (folder / "b" / "deeper" / "c.jsonl").write_text('{"text": "from c"}\n', encoding="utf-8")
    (folder / "b" / "b.txt").write_text("from b", encoding="utf-8")
    (folder / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (folder / "notes.xml").write_text("<x/>", encoding="utf-8")
    single = tmp_path / "z.txt"
    single.write_text("single file", encoding="utf-8")
    manifest, train, _ = run_prepare(tmp_path, [folder, single, folder / "a.txt"])
    assert train == ["from a", "from b", "from c", "single file"]  # a.txt listed twice is read once
    assert [Path(s["path"]).name for s in manifest["sources"]] == ["a.txt", "b.txt", "c.jsonl", "z.txt"]
    assert any(item["reason"] == "unsupported file type" and item["source"].endswith("notes.xml")
               for item in manifest["skipped"])


# ---- processing ----


def test_dedup(tmp_path: Path):
    source = tmp_path / "a.txt"
    source.write_text("same\n\nother\n\nsame\n\nsame\n", encoding="utf-8")
    manifest, train, _ = run_prepare(tmp_path, [source])
    assert train == ["same", "other"] and manifest["duplicates"] == 2
    assert manifest["sources"][0]["duplicates"] == 2
    _, train, _ = run_prepare(tmp_path, [source], dedup=False)
    assert train == ["same", "other", "same", "same"]


def test_dedup_across_files(tmp_path: Path):
    (tmp_path / "a.txt").write_text("shared\n\nonly a", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "shared"}\n', encoding="utf-8")
    manifest, train, _ = run_prepare(tmp_path, [tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert train == ["shared", "only a"] and manifest["duplicates"] == 1


def test_normalization(tmp_path: Path):
    decomposed = "cafe\u0301"  # e + combining acute
    assert normalize(decomposed, "none") == decomposed
    assert normalize(decomposed, "nfc") == "caf\u00e9"
    assert normalize("“Naïve” café — ﬁne…", "ascii") == '"Naive" cafe - fine...'
    source = tmp_path / "a.txt"
    source.write_text(f"{decomposed}\n\ncaf\u00e9\n\n東京\n", encoding="utf-8")
    manifest, train, _ = run_prepare(tmp_path, [source], normalize="nfc")
    assert train == ["caf\u00e9", "東京"] and manifest["duplicates"] == 1
    manifest, train, _ = run_prepare(tmp_path, [source], normalize="ascii")
    assert train == ["cafe"]  # the NFC twin is a duplicate, 東京 becomes empty
    assert manifest["sources"][0]["skipped"]["empty after normalization"]["count"] == 1


def test_split_is_deterministic_per_document(tmp_path: Path):
    source = tmp_path / "a.txt"
    docs = [f"document number {i}" for i in range(2000)]
    source.write_text("\n\n".join(docs), encoding="utf-8")
    manifest, train, val = run_prepare(tmp_path, [source], val_fraction=0.1)
    assert sorted(train + val) == sorted(docs)
    assert 120 < len(val) < 280  # about 10%
    assert manifest["splits"]["val"]["documents"] == len(val)
    # Same documents in another order and with others around them: each keeps its split.
    shuffled = tmp_path / "b.txt"
    shuffled.write_text("\n\n".join(list(reversed(docs)) + ["new one", "new two"]), encoding="utf-8")
    _, train2, val2 = run_prepare(tmp_path, [shuffled], val_fraction=0.1)
    assert set(val) <= set(val2) and set(train) <= set(train2)


def test_tiny_corpus_still_gets_both_splits(tmp_path: Path):
    source = tmp_path / "a.txt"
    source.write_text("one\n\ntwo\n\nthree", encoding="utf-8")
    _, train, val = run_prepare(tmp_path, [source], val_fraction=0.01)
    assert len(train) >= 1 and len(val) == 1 and sorted(train + val) == ["one", "three", "two"]


def test_manifest(tmp_path: Path):
    source = tmp_path / "a.jsonl"
    source.write_text('{"text": "héllo"}\n{"text": "wörld"}\nnot json\n', encoding="utf-8")
    cfg = config_module.load(write_config(tmp_path, [source]))
    manifest = prepare(cfg)
    on_disk = json.loads((cfg.data_dir / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["documents"] == 2
    assert manifest["bytes"] == len("héllo".encode()) + len("wörld".encode())
    assert manifest["splits"]["train"]["documents"] == 2 and manifest["splits"]["val"]["documents"] == 0
    assert manifest["shards"]["train"] == ["train/shard_00000.parquet"]
    entry = manifest["sources"][0]
    import hashlib
    assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert entry["documents"] == 2 and entry["documents_read"] == 2
    assert manifest["skipped"] == [{"source": str(source), "reason": "invalid JSON", "count": 1, "where": [3]}]
    assert manifest["settings"]["row_group_rows"] == cfg.data.row_group_rows


# ---- bad input ----


def test_undecodable_lines_are_skipped_and_reported(tmp_path: Path, capsys):
    source = tmp_path / "a.txt"
    source.write_bytes(b"good one\n\nbad \xff\xfe here\nstill the bad doc\n\ngood two\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "\xc3\x28"}\n')
    config = write_config(tmp_path, [source, jsonl])
    assert cli.main(["prepare", str(config)]) == 0
    out = capsys.readouterr().out
    assert "invalid UTF-8 (at 3)" in out and "b.jsonl: 1 x invalid UTF-8 (at 2)" in out
    cfg = config_module.load(config)
    assert [t for t, _ in shards.iter_documents(cfg.data_dir, "train")] == ["good one", "good two", "fine"]


def test_bad_jsonl_lines_counted_with_line_numbers(tmp_path: Path, capsys):
    source = tmp_path / "a.jsonl"
    source.write_text('{"text": "ok"}\n{broken\n[1, 2]\n{"text": 5}\n{"txt": "typo"}\n{"text": "ok2"}\n{"text": ""}\n',
                      encoding="utf-8")
    config = write_config(tmp_path, [source])
    assert cli.main(["prepare", str(config)]) == 0
    out = capsys.readouterr().out
    assert "1 x invalid JSON (at 2)" in out
    assert "not a string or an object with 'text' (at 3)" in out
    assert "'text' is not a string (at 4)" in out and "no 'text' field (at 5)" in out
    assert "empty text (at 7)" in out
    assert "2 documents" in out


def test_empty_file_skipped_and_reported(tmp_path: Path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    good = tmp_path / "good.txt"
    good.write_text("content", encoding="utf-8")
    assert cli.main(["prepare", str(write_config(tmp_path, [empty, good]))]) == 0
    assert f"skipped {empty}: empty file" in capsys.readouterr().out


def test_only_empty_file_is_bad_input(tmp_path: Path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    err = cli_error(tmp_path, capsys, [empty])
    assert str(empty) in err and "no usable documents" in err and "empty file" in err


def test_missing_source(tmp_path: Path, capsys):
    missing = tmp_path / "nowhere" / "data.txt"
    err = cli_error(tmp_path, capsys, [missing])
    assert str(missing) in err and "not found" in err


def test_unsupported_file_named_directly(tmp_path: Path, capsys):
    source = tmp_path / "data.xml"
    source.write_text("<x/>", encoding="utf-8")
    err = cli_error(tmp_path, capsys, [source])
    assert str(source) in err and "unsupported" in err


def test_binary_file(tmp_path: Path, capsys):
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    err = cli_error(tmp_path, capsys, [binary])
    assert str(binary) in err and "binary" in err
    good = tmp_path / "good.txt"
    good.write_text("text", encoding="utf-8")
    assert cli.main(["prepare", str(write_config(tmp_path, [binary, good]))]) == 0
    assert "binary file (NUL bytes)" in capsys.readouterr().out


def test_all_lines_undecodable_is_bad_input(tmp_path: Path, capsys):
    source = tmp_path / "latin1.txt"
    source.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    err = cli_error(tmp_path, capsys, [source])
    assert str(source) in err and "invalid UTF-8" in err


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_parquet(tmp_path: Path, capsys, damage: str):
    source = tmp_path / "fw.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 20 for i in range(500)]}), source, row_group_size=50)
    raw = source.read_bytes()
    source.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"PAR1" + b"\x13" * 500)
    err = cli_error(tmp_path, capsys, [source])
    assert str(source) in err and "parquet" in err


def test_corrupt_parquet_row_group(tmp_path: Path, capsys):
    source = tmp_path / "fw.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 20 for i in range(500)]}), source,
                   row_group_size=100, compression="none")
    raw = bytearray(source.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 400] = b"\xff" * 400  # footer intact, a data page destroyed
    source.write_bytes(bytes(raw))
    err = cli_error(tmp_path, capsys, [source])
    assert str(source) in err and "row group 2" in err


def test_parquet_without_the_column(tmp_path: Path, capsys):
    source = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["a"]}), source)
    err = cli_error(tmp_path, capsys, [source])
    assert str(source) in err and "no column 'text'" in err and "content" in err


def test_csv_without_the_column(tmp_path: Path, capsys):
    source = tmp_path / "x.csv"
    source.write_text("a,b\n1,2\n", encoding="utf-8")
    err = cli_error(tmp_path, capsys, [source])
    assert str(source) in err and "no column 'text'" in err and "csv_header = false" in err


def test_headerless_csv_joins_each_rows_columns(tmp_path: Path):
    source = tmp_path / "x.csv"
    source.write_text('a,b\nc,d\n"one, two",three\n,\n', encoding="utf-8")
    manifest, train, _ = run_prepare(tmp_path, [source], csv_header=False)
    assert train == ["a, b", "c, d", "one, two, three"]  # the first line is data, not a header
    assert manifest["sources"][0]["skipped"]["empty text"] == {"count": 1, "where": [4]}
    assert manifest["settings"]["csv_header"] is False


def test_invalid_json_file(tmp_path: Path, capsys):
    source = tmp_path / "x.json"
    source.write_text('[{"text": "a"},\n {"text": ', encoding="utf-8")
    err = cli_error(tmp_path, capsys, [source])
    assert f"{source}:2" in err and "invalid JSON" in err


def test_nothing_usable(tmp_path: Path, capsys):
    source = tmp_path / "x.jsonl"
    source.write_text('{"title": "no text"}\n{"title": "again"}\n', encoding="utf-8")
    err = cli_error(tmp_path, capsys, [source])
    assert str(source) in err and "no usable documents" in err and "no 'text' field" in err


def test_failed_prepare_keeps_the_earlier_dataset(tmp_path: Path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("keep me\n\nand me", encoding="utf-8")
    manifest, _, _ = run_prepare(tmp_path, [good])
    cfg = config_module.load(tmp_path / "run.toml")
    before = sorted(p.relative_to(cfg.data_dir) for p in cfg.data_dir.rglob("*"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    cli_error(tmp_path, capsys, [good, broken])
    assert sorted(p.relative_to(cfg.data_dir) for p in cfg.data_dir.rglob("*")) == before
    assert [t for t, _ in shards.iter_documents(cfg.data_dir, "train")] == ["keep me", "and me"]
    assert not [p for p in cfg.data_dir.parent.iterdir() if p.name.startswith(".data.")]  # temp folder gone
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "broken.parquet" in status["message"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path, capsys):
    foreign = tmp_path / "important"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious", encoding="utf-8")
    good = tmp_path / "good.txt"
    good.write_text("text", encoding="utf-8")
    err = cli_error(tmp_path, capsys, [good], dir=str(foreign))
    assert str(foreign) in err and "manifest.json" in err
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_cli_writes_run_folder_records(tmp_path: Path, capsys):
    source = tmp_path / "a.txt"
    source.write_text("\n\n".join(f"doc {i}" for i in range(50)), encoding="utf-8")
    assert cli.main(["prepare", str(write_config(tmp_path, [source]))]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    progress = [r for r in records if r["kind"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == source.stat().st_size
    assert progress[-1]["unit"] == "bytes" and progress[-1]["stage"] == "prepare"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "done" and status["stage"] == "prepare"


# ---- streaming layout and reading back ----


def test_shard_and_row_group_layout(tmp_path: Path):
    source = tmp_path / "big.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for i in range(1000):
            handle.write(json.dumps({"text": f"document {i}"}) + "\n")
    cfg = config_module.load(write_config(tmp_path, [source], shard_rows=300, row_group_rows=64))
    manifest = prepare(cfg)
    files = shards.list_shards(cfg.data_dir, "train")
    assert [p.name for p in files] == [f"shard_{i:05d}.parquet" for i in range(4)]
    assert manifest["shards"]["train"] == [f"train/{p.name}" for p in files]
    assert [pq.ParquetFile(p).metadata.num_rows for p in files] == [300, 300, 300, 100]
    for path in files:
        meta = pq.ParquetFile(path).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert all(size <= 64 for size in sizes) and sizes[:-1] == [64] * (len(sizes) - 1)
        assert pq.ParquetFile(path).schema_arrow.names == ["text"]
    documents = list(shards.iter_documents(cfg.data_dir, "train"))
    assert [text for text, _ in documents] == [f"document {i}" for i in range(1000)]
    assert documents[0][1] == (0, 0) and documents[299][1] == (0, 299) and documents[300][1] == (1, 0)
    assert documents[-1][1] == (3, 99)
    # resuming: from any position, and past a shard's end into the next
    assert next(shards.iter_documents(cfg.data_dir, "train", start=(1, 70))) == ("document 370", (1, 70))
    assert next(shards.iter_documents(cfg.data_dir, "train", start=(0, 300))) == ("document 300", (1, 0))
    assert list(shards.iter_documents(cfg.data_dir, "train", start=(3, 100))) == []
    assert list(shards.iter_documents(cfg.data_dir, "train", start=(9, 0))) == []
    assert list(shards.iter_documents(cfg.data_dir, "val")) == []


def test_iter_documents_reads_row_group_by_row_group(tmp_path: Path, monkeypatch):
    source = tmp_path / "a.txt"
    source.write_text("\n\n".join(f"doc {i}" for i in range(100)), encoding="utf-8")
    cfg = config_module.load(write_config(tmp_path, [source], row_group_rows=10))
    prepare(cfg)
    reads = []
    original = pq.ParquetFile.read_row_group

    def spy(self, index, *args, **kwargs):
        reads.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    iterator = shards.iter_documents(cfg.data_dir, "train", start=(0, 35))
    assert next(iterator)[0] == "doc 35"
    assert reads == [3]  # groups 0-2 skipped unread, only the one holding row 35 read so far
    assert shards.list_shards(tmp_path / "nothing", "train") == []


def test_corrupt_shard_is_bad_input(tmp_path: Path):
    source = tmp_path / "a.txt"
    source.write_text("one\n\ntwo", encoding="utf-8")
    cfg = config_module.load(write_config(tmp_path, [source]))
    prepare(cfg)
    shard = shards.list_shards(cfg.data_dir, "train")[0]
    shard.write_bytes(shard.read_bytes()[:20])
    with pytest.raises(BadInput, match="shard_00000.parquet"):
        list(shards.iter_documents(cfg.data_dir, "train"))


# ---- the tail split and val_sources: validation text that never occurs in training ----


def test_tail_split_cuts_at_a_document_boundary(tmp_path: Path):
    source = tmp_path / "a.txt"
    docs = [f"paragraph {i} " * (3 + i % 4) for i in range(40)]
    docs = [doc.strip() for doc in docs]
    source.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    manifest, train, val = run_prepare(tmp_path, [source], val_fraction=0.2, val_split="tail")
    assert train + val == docs  # in order: the val split is the text's end, whole documents
    assert 0.15 < manifest["splits"]["val"]["bytes"] / manifest["bytes"] < 0.25
    assert manifest["validation"] == {"method": "tail", "bytes": manifest["splits"]["val"]["bytes"], "sources": []}
    _, hashed_train, hashed_val = run_prepare(tmp_path, [source], val_fraction=0.2)
    assert hashed_train + hashed_val != docs  # the hash split interleaves them


def test_tail_split_of_one_long_document_cuts_at_a_line(tmp_path: Path):
    source = tmp_path / "verses.txt"
    lines = [f"verse {i}: and it came to pass" for i in range(100)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, train, val = run_prepare(tmp_path, [source], val_fraction=0.1, val_split="tail")
    assert len(train) == 1 and len(val) == 1
    assert train[0].split("\n") == lines[:90] and val[0].split("\n") == lines[90:]


def test_tail_split_of_small_files(tmp_path: Path):
    one_line = tmp_path / "one.txt"
    one_line.write_text("just one line\n", encoding="utf-8")
    _, train, val = run_prepare(tmp_path, [one_line], val_fraction=0.1, val_split="tail")
    assert train == ["just one line"] and val == []  # nothing to cut: no line boundary
    two_lines = tmp_path / "two.txt"
    two_lines.write_text("first line\nsecond line", encoding="utf-8")
    _, train, val = run_prepare(tmp_path, [two_lines], val_fraction=0.1, val_split="tail")
    assert train == ["first line"] and val == ["second line"]


def test_tail_split_takes_the_tail_of_each_source(tmp_path: Path):
    for name in "ab":
        (tmp_path / f"{name}.txt").write_text("\n\n".join(f"{name} document {i:02}" for i in range(10)),
                                              encoding="utf-8")
    _, train, val = run_prepare(tmp_path, [tmp_path / "a.txt", tmp_path / "b.txt"], val_fraction=0.2,
                                val_split="tail")
    assert val == ["a document 08", "a document 09", "b document 08", "b document 09"]
    assert train == [f"{name} document {i:02}" for name in "ab" for i in range(8)]


@pytest.mark.parametrize("dedup", [True, False])
def test_tail_split_never_keeps_a_copy_on_both_sides(tmp_path: Path, dedup: bool):
    source = tmp_path / "a.txt"
    docs = [f"scene {i}, a speech of some length" for i in range(9)] + ["Exeunt."]
    docs = docs + ["scene 1, a speech of some length", "Exeunt.", "the last words"]  # the tail repeats
    source.write_text("\n\n".join(docs), encoding="utf-8")
    manifest, train, val = run_prepare(tmp_path, [source], val_fraction=0.15, val_split="tail", dedup=dedup)
    assert val == ["the last words"] and not set(train) & set(val)
    assert manifest["duplicates"] == 2 and train == docs[:10]


def test_val_sources_override_the_split(tmp_path: Path):
    (tmp_path / "train.txt").write_text("alpha\n\nbeta\n\nheld out\n\ngamma", encoding="utf-8")
    (tmp_path / "val.jsonl").write_text('{"text": "held out"}\n{"text": "delta"}\n', encoding="utf-8")
    for split in ("hash", "tail"):
        manifest, train, val = run_prepare(tmp_path, [tmp_path / "train.txt"], val_fraction=0.5, val_split=split,
                                           val_sources=[str(tmp_path / "val.jsonl")])
        assert val == ["held out", "delta"]
        assert train == ["alpha", "beta", "gamma"]  # the copy of a val document left training
        assert manifest["validation"]["method"] == "val_sources"
        assert manifest["validation"]["bytes"] == len("held out") + len("delta")


def test_val_sources_missing_is_bad_input(tmp_path: Path, capsys):
    (tmp_path / "train.txt").write_text("alpha", encoding="utf-8")
    err = cli_error(tmp_path, capsys, [tmp_path / "train.txt"], val_sources=[str(tmp_path / "nope.txt")])
    assert "nope.txt: data source not found" in err


SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="needs ../shared/data/tinyshakespeare")
def test_tail_split_of_tiny_shakespeare_does_not_leak(tmp_path: Path):
    manifest, train, val = run_prepare(tmp_path, [SHAKESPEARE], val_fraction=0.1, val_split="tail")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert 0.09 < manifest["validation"]["bytes"] / len(text.encode()) < 0.11
    assert text.rstrip().endswith(val[-1])  # the val split is the end of the play text
    width = 64
    train_passages = {hash(doc[i:i + width]) for doc in train for i in range(len(doc) - width + 1)}
    leaked = [doc[i:i + width] for doc in val for i in range(len(doc) - width + 1)
              if hash(doc[i:i + width]) in train_passages]
    assert leaked == []
