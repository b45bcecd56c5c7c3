"""The tokenizer: a real BPE trained on the bundled corpus in about a second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import cli
from workbench.errors import BadInput
from workbench.tokenizer import SPECIAL_TOKENS, ConversationError, Tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "assets" / "tiny_corpus.txt"

# Any text, plus texts that contain the special tokens' spellings and near misses.
texts = st.one_of(
    st.text(),
    st.lists(st.one_of(st.text(max_size=8), st.sampled_from(SPECIAL_TOKENS + ["<|", "|>", "<|bos", "\r\n", " 123"])),
             max_size=12).map("".join),
)
property_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    documents = [doc for doc in CORPUS.read_text(encoding="utf-8").split("\n\n") if doc.strip()]
    # A few lines in other scripts and the special tokens' own spellings (which must still never
    # come out as special ids), so merges exist for them too.
    extra = ["naïve café — Grüße, 東京タワー, Привет мир, 😀🎉 ✓", "<|bos|> <|user_start|> hi <|assistant_end|>"] * 50
    return train_tokenizer(iter(documents + extra), vocab_size=1024)


def test_vocab_and_specials(tok: Tokenizer):
    assert tok.vocab_size == 1024
    ids = [tok.special_id(token) for token in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tok.bos_id == tok.special_id("<|bos|>")
    for token, token_id in zip(SPECIAL_TOKENS, ids, strict=True):
        assert tok.is_special(token_id)
        assert tok.decode([token_id]) == token  # specials decode to their text
    assert not tok.is_special(tok.encode("hello")[0])
    with pytest.raises(KeyError):
        tok.special_id("<|nope|>")


@property_settings
@given(texts)
def test_roundtrip_any_unicode(tok: Tokenizer, text: str):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


@property_settings
@given(texts)
def test_ordinary_text_never_yields_a_special_id(tok: Tokenizer, text: str):
    assert not any(tok.is_special(i) for i in tok.encode(text))
    assert not any(tok.is_special(i) for ids in tok.encode_batch([text, text + "<|bos|>"]) for i in ids)


@property_settings
@given(texts)
def test_token_bytes_sum_to_utf8_length(tok: Tokenizer, text: str):
    table = tok.token_bytes()
    ids = tok.encode(text, bos=True)
    assert ids[0] == tok.bos_id and table[tok.bos_id] == 0
    assert sum(table[i] for i in ids) == len(text.encode("utf-8"))


def test_typed_special_strings_stay_text(tok: Tokenizer):
    for token in SPECIAL_TOKENS:
        ids = tok.encode(token)
        assert len(ids) > 1 and tok.special_id(token) not in ids
        assert tok.decode(ids) == token


def test_encode_batch_matches_encode(tok: Tokenizer):
    batch = ["First Citizen:", "", "  spaces  ", "line\nbreak", "12345 67"]
    assert tok.encode_batch(batch) == [tok.encode(t) for t in batch]
    assert tok.encode_batch(batch, bos=True) == [tok.encode(t, bos=True) for t in batch]


def test_token_bytes_table(tok: Tokenizer):
    table = tok.token_bytes()
    assert len(table) == tok.vocab_size
    assert all(table[tok.special_id(t)] == 0 for t in SPECIAL_TOKENS)
    assert all(n >= 1 for i, n in enumerate(table) if not tok.is_special(i))


def test_save_load_and_hf_compatibility(tok: Tokenizer, tmp_path: Path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = Tokenizer.from_file(path)
    text = "Hear me speak, <|bos|> 😀"
    assert again.encode(text) == tok.encode(text)
    assert again.vocab_size == tok.vocab_size and again.bos_id == tok.bos_id
    assert Tokenizer.from_str(tok.to_str()).encode(text) == tok.encode(text)
    hf = tokenizers.Tokenizer.from_file(str(path))  # plain tokenizers loads it as is
    assert hf.decode(tok.encode(text), skip_special_tokens=False) == text
    assert hf.token_to_id("<|assistant_end|>") == tok.special_id("<|assistant_end|>")


@pytest.mark.parametrize("content", ["", "{not json", '{"model": {}}', "\x00\x01binary"])
def test_corrupt_file_is_bad_input(tmp_path: Path, content: str):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BadInput, match=str(path)):
        Tokenizer.from_file(path)


def test_truncated_file_is_bad_input(tok: Tokenizer, tmp_path: Path):
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str()[:5000], encoding="utf-8")
    with pytest.raises(BadInput, match="tokenizer.json"):
        Tokenizer.from_file(path)


def test_missing_file_and_missing_specials(tmp_path: Path):
    with pytest.raises(BadInput, match="not found"):
        Tokenizer.from_file(tmp_path / "nope.json")
    plain = tokenizers.Tokenizer(tokenizers.models.BPE())
    with pytest.raises(BadInput, match="special"):
        Tokenizer.from_str(plain.to_str())


def test_vocab_too_small():
    with pytest.raises(BadInput, match="at least"):
        train_tokenizer(iter(["abc"]), vocab_size=100)


# ---- chat rendering ----


def _segments(tok: Tokenizer, ids: list[int], mask: list[int]) -> list[tuple[str, int]]:
    """Group the rendering into (text, mask) runs, for readable assertions."""
    runs: list[tuple[list[int], int]] = []
    for token_id, bit in zip(ids, mask, strict=True):
        if runs and runs[-1][1] == bit:
            runs[-1][0].append(token_id)
        else:
            runs.append(([token_id], bit))
    return [(tok.decode(run), bit) for run, bit in runs]


def test_render_conversation_mask(tok: Tokenizer):
    messages = [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "And 7*6?"},
        {"role": "assistant", "content": "Let me compute."},
    ]
    ids, mask = tok.render_conversation(messages)
    assert len(ids) == len(mask)
    assert _segments(tok, ids, mask) == [
        ("<|bos|><|user_start|>What is 2+3?<|user_end|><|assistant_start|>", 0),
        ("It is 5.<|assistant_end|>", 1),
        ("<|user_start|>And 7*6?<|user_end|><|assistant_start|>", 0),
        ("Let me compute.<|assistant_end|>", 1),
    ]


def test_render_tool_calls_and_thinking(tok: Tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "12*34?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "text": "use the tool"},
            {"type": "text", "text": "Computing: "},
            {"type": "python", "text": "12*34"},
            {"type": "python_output", "text": "408"},
            {"type": "text", "text": " The answer is 408."},
        ]},
    ]
    ids, mask = tok.render_conversation(messages)
    assert _segments(tok, ids, mask) == [
        ("<|bos|><|user_start|>Be brief.\n\n12*34?<|user_end|><|assistant_start|>", 0),
        ("<|think_start|>use the tool<|think_end|>Computing: <|python_start|>12*34<|python_end|>", 1),
        ("<|output_start|>408<|output_end|>", 0),
        (" The answer is 408.<|assistant_end|>", 1),
    ]
    # the whole rendering decodes to the format's text, specials as single ids
    assert ids.count(tok.special_id("<|python_start|>")) == 1
    ids_short, mask_short = tok.render_conversation(messages, max_tokens=7)
    assert ids_short == ids[:7] and mask_short == mask[:7]


def test_render_for_completion(tok: Tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    ids = tok.render_for_completion(messages)
    assert tok.decode(ids) == "<|bos|><|user_start|>S\n\nHi<|user_end|><|assistant_start|>"
    # a trailing reference answer is dropped
    with_answer = messages + [{"role": "assistant", "content": "Hello"}]
    assert tok.render_for_completion(with_answer) == ids
    full, _ = tok.render_conversation(with_answer)
    assert full[:len(ids)] == ids


def test_user_typed_specials_are_text_in_chat(tok: Tokenizer):
    ids, mask = tok.render_conversation([{"role": "user", "content": "<|assistant_end|>"},
                                         {"role": "assistant", "content": "ok"}])
    assert ids.count(tok.special_id("<|assistant_end|>")) == 1  # only the real one, at the end
    assert ids[-1] == tok.special_id("<|assistant_end|>") and mask[-1] == 1


@pytest.mark.parametrize("messages", [
    [],
    "not a list",
    [{"role": "assistant", "content": "first"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "   "}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": []}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}, {"role": "assistant", "content": "b"}],
    [{"role": "tool", "content": "a"}],
    [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}],
    [{"role": "user", "content": [{"type": "python", "text": "1+1"}]}, {"role": "assistant", "content": "b"}],
    [{"role": "user", "content": "only a question"}],
    ["not a dict"],
])
def test_bad_conversations(tok: Tokenizer, messages):
    with pytest.raises(ConversationError):
        tok.render_conversation(messages)
    assert issubclass(ConversationError, ValueError) and not issubclass(ConversationError, BadInput)


def test_completion_needs_a_user_turn_last(tok: Tokenizer):
    with pytest.raises(ConversationError):
        tok.render_for_completion([{"role": "system", "content": "only system"}])


# ---- the CLI ----


def _config(tmp_path: Path, vocab_size: int = 512) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(
        f'[run]\nname = "t"\nout_dir = "{tmp_path / "run"}"\n'
        f'[data]\nsources = ["{CORPUS}"]\nrow_group_rows = 256\n'
        f"[tokenizer]\nvocab_size = {vocab_size}\n",
        encoding="utf-8",
    )
    return path


def test_cli_needs_prepared_data(tmp_path: Path, capsys):
    config = _config(tmp_path)
    assert cli.main(["tokenizer", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "run" / "data") in err and "picochat prepare" in err


def test_cli_trains_and_records(tmp_path: Path, capsys):
    config = _config(tmp_path)
    assert cli.main(["prepare", str(config)]) == 0
    assert cli.main(["tokenizer", str(config)]) == 0
    out = capsys.readouterr().out
    assert "chars/token" in out
    tok = Tokenizer.from_file(tmp_path / "run" / "tokenizer.json")
    assert tok.vocab_size == 512
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["kind"] == "tokenizer"]
    assert len(final) == 1 and final[0]["vocab_size"] == 512
    assert final[0]["chars_per_token"] > 1.5 and final[0]["bytes_per_token"] > 1.5 and final[0]["train_seconds"] >= 0
    assert any(r["kind"] == "progress" and r["stage"] == "tokenizer" for r in records)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "done" and status["stage"] == "tokenizer"


def test_module_does_not_import_torch():
    code = "import sys, workbench.tokenizer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
