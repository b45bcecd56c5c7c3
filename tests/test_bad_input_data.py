"""Hostile data files: deep JSON nesting, undecodable and UTF-16 chat data, FIFOs, devices and
unreadable files as sources, over-long documents for the tokenizer, stale prepare folders, bad
mixture weights, a vocab the corpus cannot fill. Each ends in one line and exit 2 (BadInput), or is
counted and skipped where skipping is the reader's policy; none hangs or shows a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import cli
from workbench import config as config_module
from workbench.data import chat, shards
from workbench.data.prepare import prepare
from workbench.errors import BadInput
from workbench.evals import common

REPO = Path(__file__).resolve().parents[1]
DEEP = "[" * 50_000  # json.loads raises RecursionError on this
GOOD_CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def write_config(tmp_path: Path, sources: list[Path], **sections: dict) -> Path:
    body = {"run": {"name": "t", "out_dir": str(tmp_path / "run")},
            "data": {"sources": [str(s) for s in sources], "val_fraction": 0.0}}
    for section, values in sections.items():
        body.setdefault(section, {}).update(values)
    lines = []
    for section, values in body.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process expecting bad input: exit 2 and exactly one line on stderr."""
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block blocks: SIGALRM interrupts a blocking
    open() of a FIFO or an endless read of /dev/zero."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- item 5: deep nesting ----


def test_prepare_counts_and_skips_a_deeply_nested_jsonl_line(tmp_path: Path):
    source = tmp_path / "a.jsonl"
    source.write_text(f'{{"text": "one"}}\n{DEEP}\n{{"text": "two"}}\n', encoding="utf-8")
    manifest = prepare(config_module.load(write_config(tmp_path, [source])))
    assert manifest["documents"] == 2
    assert manifest["skipped"] == [{"source": str(source), "reason": "nested too deeply", "count": 1, "where": [2]}]


def test_prepare_refuses_a_deeply_nested_json_document(tmp_path: Path, capsys):
    source = tmp_path / "a.json"
    source.write_text(DEEP, encoding="utf-8")
    err = one_line_error(capsys, ["prepare", str(write_config(tmp_path, [source]))])
    assert f"{source}:1: nested too deeply" in err


def test_chat_data_counts_and_skips_a_deeply_nested_line(tmp_path: Path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join([json.dumps(GOOD_CHAT), DEEP, json.dumps(GOOD_CHAT)]) + "\n", encoding="utf-8")
    conversations, report = chat.load_chat_jsonl(path)
    assert len(conversations) == 2
    assert dict(report.skipped) == {"nested too deeply": 1} and report.examples["nested too deeply"] == 2


def test_eval_file_with_a_deeply_nested_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + DEEP + "\n", encoding="utf-8")
    with pytest.raises(BadInput, match=f"^{path}:2: nested too deeply$"):
        list(common.iter_jsonl(path))


# ---- item 6: SFT data encodings ----


def test_chat_data_counts_a_non_utf8_line_and_keeps_the_rest(tmp_path: Path):
    path = tmp_path / "chat.jsonl"
    good = json.dumps(GOOD_CHAT).encode()
    path.write_bytes(good + b"\n" + b'{"messages": "\xff\xfe latin-1 \xe9"}\n' + good + b"\n")
    conversations, report = chat.load_chat_jsonl(path)
    assert len(conversations) == 2
    assert dict(report.skipped) == {"not UTF-8": 1} and report.examples["not UTF-8"] == 2


def test_chat_data_in_utf16_is_one_line_of_bad_input(tmp_path: Path, capsys):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(GOOD_CHAT) + "\n", encoding="utf-16")
    with pytest.raises(BadInput, match=f"^{path}: UTF-16 text") as error:
        chat.load_chat_jsonl(path)
    assert len(str(error.value).splitlines()) == 1


def test_chat_data_with_a_utf8_bom_keeps_line_1(tmp_path: Path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(GOOD_CHAT) + "\n" + json.dumps(GOOD_CHAT) + "\n", encoding="utf-8-sig")
    conversations, report = chat.load_chat_jsonl(path)
    assert len(conversations) == 2 and not report.skipped


def test_eval_file_with_a_utf8_bom_reads_line_1(tmp_path: Path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n", encoding="utf-8-sig")
    assert [number for number, _ in common.iter_jsonl(path)] == [1]


# ---- item 7: sources that are not regular files, or cannot be read ----


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    return path


def _device_link(device: str):
    def make(tmp_path: Path) -> Path:
        path = tmp_path / f"{Path(device).name}.txt"
        path.symlink_to(device)
        return path
    return make


@pytest.mark.parametrize("make_source", [_fifo, _device_link("/dev/zero"), _device_link("/dev/urandom")],
                         ids=["fifo", "dev-zero", "dev-urandom"])
def test_prepare_refuses_a_source_that_is_not_a_regular_file(tmp_path: Path, capsys, make_source):
    source = make_source(tmp_path)
    with deadline(20):
        err = one_line_error(capsys, ["prepare", str(write_config(tmp_path, [source]))])
    assert str(source) in err and "not a regular file" in err


def test_prepare_reports_a_fifo_inside_a_source_folder(tmp_path: Path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("a document\n", encoding="utf-8")
    os.mkfifo(folder / "b.txt")
    with deadline(20):
        manifest = prepare(config_module.load(write_config(tmp_path, [folder])))
    assert manifest["documents"] == 1
    assert {"source": str(folder / "b.txt"), "reason": "not a regular file (a FIFO)", "count": 1,
            "where": []} in manifest["skipped"]


def test_prepare_source_that_fails_to_read_is_one_line(tmp_path: Path, capsys):
    """/proc/self/mem is a regular file whose read fails (EIO) even for root."""
    source = tmp_path / "mem.txt"
    source.symlink_to("/proc/self/mem")
    err = one_line_error(capsys, ["prepare", str(write_config(tmp_path, [source]))])
    assert str(source) in err and "cannot read" in err


def _without_root_privileges() -> list[str]:
    """A command prefix under which file permissions apply: none for ordinary users; for root, a
    user namespace (root keeps its uid but loses the capability to override permissions)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("unshare") or subprocess.run(["unshare", "--user", "true"]).returncode != 0:
        pytest.skip("running as root without user namespaces: permissions do not apply")
    return ["unshare", "--user"]


def test_prepare_unreadable_source_is_one_line_not_a_traceback(tmp_path: Path):
    source = tmp_path / "secret.txt"
    source.write_text("a document\n", encoding="utf-8")
    source.chmod(0)
    config = write_config(tmp_path, [source])
    result = subprocess.run([*_without_root_privileges(), sys.executable, "-m", "workbench", "prepare", str(config)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(source) in result.stderr and "Permission denied" in result.stderr


def test_chat_data_and_eval_files_refuse_a_fifo(tmp_path: Path):
    fifo = _fifo(tmp_path)
    with deadline(20):
        with pytest.raises(BadInput, match="not a regular file"):
            chat.load_chat_jsonl(fifo)
        with pytest.raises(BadInput, match="not a regular file"):
            list(common.iter_jsonl(fifo))
        with pytest.raises(BadInput, match="not a regular file"):
            list(common.iter_csv(fifo))


def test_tokenizer_file_that_is_a_fifo_is_bad_input(tmp_path: Path):
    from workbench.tokenizer import Tokenizer

    fifo = tmp_path / "tokenizer.json"
    os.mkfifo(fifo)
    with deadline(20), pytest.raises(BadInput, match="not a regular file"):
        Tokenizer.from_file(fifo)


# ---- item 8: over-long documents reach the tokenizer trainer in bounded pieces ----


def test_long_documents_are_cut_at_whitespace_into_bounded_pieces():
    from workbench.tokenizer import MAX_PIECE_CHARS, split_long_document

    words = "a few words\n\n and  spaces " * (3 * MAX_PIECE_CHARS // 20)
    pieces = list(split_long_document(words))
    assert "".join(pieces) == words and len(pieces) >= 3
    assert all(len(piece) <= MAX_PIECE_CHARS for piece in pieces)
    # cut before a whitespace run, never inside a word or a run of spaces
    assert all(not piece[-1].isspace() and piece[0].isspace() for piece in pieces[1:-1])
    unbroken = "x" * (2 * MAX_PIECE_CHARS + 5)  # no whitespace at all: cut hard
    assert [len(piece) for piece in split_long_document(unbroken)] == [MAX_PIECE_CHARS, MAX_PIECE_CHARS, 5]
    assert list(split_long_document("short text")) == ["short text"]


@pytest.fixture(scope="module")
def small_tokenizer():
    from workbench.tokenizer import train_tokenizer

    text = (REPO / "assets" / "tiny_corpus.txt").read_text(encoding="utf-8")[:60_000]
    return train_tokenizer(text.split("\n\n"), vocab_size=400)


# Letters, digits, punctuation, line breaks and the whitespace where Python's idea differs from
# Unicode's (\x1c-\x1f, \x85, NBSP, U+2028): every way SPLIT_PATTERN can glue characters together.
_TRICKY = st.text(alphabet=st.sampled_from(list("ab1.,'!-_ \t\n\r") + ["\x1c", "\x85", "\xa0", "\u2028", "é", "²"]),
                  max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(_TRICKY, min_size=1, max_size=40))
def test_cutting_a_long_text_never_changes_its_tokens(small_tokenizer, chunks):
    """A cut at one of split_long_document's places encodes to exactly the tokens of the whole text.
    "a " every <= 9 characters guarantees a 20-character window such a place (no hard cut)."""
    from workbench.tokenizer import split_long_document

    text = "a ".join(chunks)
    pieces = list(split_long_document(text, limit=20))
    assert "".join(pieces) == text
    whole = small_tokenizer.hf.encode(text, add_special_tokens=False).ids
    assert [i for piece in pieces for i in small_tokenizer.hf.encode(piece, add_special_tokens=False).ids] == whole


def test_long_texts_encode_in_pieces_to_the_same_tokens(small_tokenizer):
    from workbench.tokenizer import MAX_PIECE_CHARS

    text = (REPO / "assets" / "tiny_corpus.txt").read_text(encoding="utf-8")[:3 * MAX_PIECE_CHARS]
    whole = small_tokenizer.hf.encode(text, add_special_tokens=False).ids
    assert small_tokenizer.encode(text) == whole
    assert small_tokenizer.encode_batch(["short one", text], bos=True)[1] == [small_tokenizer.bos_id, *whole]


def test_trainer_batches_are_bounded_in_characters():
    from workbench.tokenizer import MAX_BATCH_CHARS, MAX_PIECE_CHARS, bounded_batches

    documents = ["y " * MAX_PIECE_CHARS] * 20 + ["small"] * 1000
    batches = list(bounded_batches(documents))
    assert "".join(text for batch in batches for text in batch) == "".join(documents)
    assert all(sum(map(len, batch)) <= MAX_BATCH_CHARS for batch in batches)
    assert max(len(text) for batch in batches for text in batch) <= MAX_PIECE_CHARS


# ---- smaller ones ----


def test_prepare_removes_temporary_folders_of_dead_prepares(tmp_path: Path):
    source = tmp_path / "a.txt"
    source.write_text("a document\n", encoding="utf-8")
    config = config_module.load(write_config(tmp_path, [source]))
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid is dead now
    stale = config.data_dir.with_name(f".{config.data_dir.name}.tmp-{finished.pid}")
    live = config.data_dir.with_name(f".{config.data_dir.name}.tmp-{os.getppid()}")  # pytest's parent: alive
    for folder in (stale, live):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "shard_00000.parquet").write_bytes(b"half written")
    prepare(config)
    assert not stale.exists()
    assert live.exists()  # another prepare may still be writing it


def test_prepare_brings_back_a_dataset_set_aside_by_a_killed_prepare(tmp_path: Path):
    """Killed between the two renames of the swap: DATA_DIR is gone, the old dataset is hidden."""
    source = tmp_path / "a.txt"
    source.write_text("first version\n", encoding="utf-8")
    config = config_module.load(write_config(tmp_path, [source]))
    prepare(config)
    finished = subprocess.Popen(["true"])
    finished.wait()
    aside = config.data_dir.with_name(f".{config.data_dir.name}.old-{finished.pid}")
    os.replace(config.data_dir, aside)
    source.write_text("\n", encoding="utf-8")
    with pytest.raises(BadInput, match="no usable documents"):  # this prepare fails...
        prepare(config)
    assert not aside.exists()  # ...but the dataset is back in place first
    assert [text for text, _ in shards.iter_documents(config.data_dir, "train")] == ["first version"]


@pytest.mark.parametrize("weight", ["inf", "1e999", "nan", "-1", "0", "-inf"])
def test_mixture_weight_must_be_a_finite_positive_number(weight: str):
    with pytest.raises(BadInput, match=f"weight must be a finite number > 0 in 'data/x.jsonl:{weight}'"):
        chat.parse_dataset_spec(f"data/x.jsonl:{weight}")


def test_huge_mixture_weights_still_mix():
    datasets = [chat.ChatDataset(name, [[{"role": "user", "content": name}]], 1e308, seed=0) for name in "ab"]
    mixture = chat.ChatMixture(datasets, seed=0)
    drawn = {next(mixture)[0]["content"] for _ in range(50)}
    assert drawn == {"a", "b"}


def test_tokenizer_warns_when_the_corpus_cannot_fill_the_vocab(tmp_path: Path, capsys):
    source = tmp_path / "tiny.txt"
    source.write_text("hello world\n\nhello there\n", encoding="utf-8")
    config = write_config(tmp_path, [source], tokenizer={"vocab_size": 1024})
    assert cli.main(["prepare", str(config)]) == 0
    assert cli.main(["tokenizer", str(config)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "vocab" in line]
    assert len(warnings) == 1 and "1024" in warnings[0], captured.err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in records if r["kind"] == "tokenizer")
    assert final["vocab_size_requested"] == 1024 and final["vocab_size"] < 1024
    assert str(final["vocab_size"]) in warnings[0]
    assert any(r["kind"] == "event" and "1024" in r["message"] for r in records)


def test_a_prompt_with_bytes_that_are_not_utf8_is_answered(tiny_checkpoint, capsys):
    """A terminal can pass bytes that are not UTF-8 (Python hands them on as lone surrogates):
    the prompt is answered, the bytes read as U+FFFD, instead of a TypeError from the tokenizer."""
    code = cli.main(["chat", str(tiny_checkpoint), "-p", "Hello \udcff there", "--temperature", "0",
                     "--max-tokens", "4"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err, captured.err
