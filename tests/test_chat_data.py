"""Chat JSONL: validation counts, system folding, GSM8K tool calls, weighted mixing, SFT batches."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from workbench.data import chat, synthetic
from workbench.errors import BadInput
from workbench.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    text = Path(__file__).resolve().parent.parent.joinpath("assets", "tiny_corpus.txt").read_text()[:60_000]
    return train_tokenizer(text.split("\n\n") + [p.question for p in synthetic.problems(200)], vocab_size=512)


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def test_malformed_lines_are_counted_and_skipped_with_a_summary(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        GOOD,
        {"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]},  # missing role
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},  # alternation
        {"messages": [{"role": "assistant", "content": "first"}]},  # alternation: starts with assistant
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},  # empty
        {"messages": [{"role": "user", "content": "q"}]},  # no reply
        {"messages": [{"role": "robot", "content": "q"}]},  # unknown role
        "{not json",
        "",
        {"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hey."}, {"role": "user", "content": "Bye"},
                               {"role": "assistant", "content": "Bye."}]},
    ])
    conversations, report = chat.load_chat_jsonl(path)
    assert len(conversations) == 2 and report.kept == 2 and report.lines == 9
    assert report.skipped == Counter({"missing role": 1, "wrong alternation": 2, "empty content": 1,
                                      "no assistant reply": 1, "unknown role": 1, "malformed JSON": 1})
    summary = report.summary()
    assert "2 conversations from 9 lines" in summary and "skipped 7" in summary
    assert "wrong alternation: 2 (first at line 3)" in summary
    # the system message folds into the first user turn
    assert conversations[1][0] == {"role": "user", "content": "Be brief.\n\nHi"}
    assert [m["role"] for m in conversations[1]] == ["user", "assistant", "user", "assistant"]


def test_unusable_files_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match="missing.jsonl"):
        chat.load_chat_jsonl(tmp_path / "missing.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", ["[1, 2]", {"messages": []}])
    with pytest.raises(BadInput, match="no valid chat conversations"):
        chat.load_chat_jsonl(bad)


def test_gsm8k_annotations_become_calculator_calls():
    answer = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
    parts = chat.gsm8k_to_parts(answer)
    assert parts == [
        {"type": "text", "text": "Natalia sold 48/2 = "},
        {"type": "python", "text": "48/2"},
        {"type": "python_output", "text": "24"},
        {"type": "text", "text": "24 clips in May.\nNatalia sold 48+24 = "},
        {"type": "python", "text": "48+24"},
        {"type": "python_output", "text": "72"},
        {"type": "text", "text": "72 clips altogether in April and May.\n#### 72"},
    ]
    assert chat.gsm8k_to_parts("no annotations here") == "no annotations here"
    # raw GSM8K lines ({"question", "answer"}) read as one exchange with tool calls
    turns = chat.normalize_conversation({"question": "How many?", "answer": answer})
    assert turns[0] == {"role": "user", "content": "How many?"}
    assert turns[1]["content"] == parts


def test_real_shared_chat_files_load_cleanly():
    root = Path("/work/shared/data/chat")
    if not root.exists():
        pytest.skip("shared data not present")
    conversations, report = chat.load_chat_jsonl(root / "gsm8k-chat" / "gsm8k_test_messages.jsonl")
    assert report.kept == 1319 and not report.skipped
    assert any(part["type"] == "python" for part in conversations[0][1]["content"])


def test_dataset_specs():
    assert chat.parse_dataset_spec("data/x.jsonl:2.5") == ("data/x.jsonl", 2.5)
    assert chat.parse_dataset_spec("data/x.jsonl") == ("data/x.jsonl", 1.0)
    assert chat.parse_dataset_spec("synthetic:arith:0.3") == ("synthetic:arith", 0.3)
    assert chat.parse_dataset_spec("synthetic:arith") == ("synthetic:arith", 1.0)
    with pytest.raises(BadInput):
        chat.parse_dataset_spec("x.jsonl:0")
    with pytest.raises(BadInput, match="unknown synthetic"):
        chat.load_datasets(["synthetic:poetry:1"], Path, seed=0)


def test_mixing_follows_the_weights_and_resumes_exactly(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"messages": [{"role": "user", "content": f"a{i}"},
                                                         {"role": "assistant", "content": f"A{i}"}]}
                                           for i in range(40)])
    data = chat.load_datasets([f"{a}:3", "synthetic:arith:1"], Path, seed=1)
    assert len(data.val) == 2 + chat.SYNTHETIC_VAL_SIZE  # 5 % of 40 held out, plus synthetic val
    held_out = {m[0]["content"] for m in data.val if m[0]["content"].startswith("a")}
    drawn = [next(data.train) for _ in range(4000)]
    from_a = [m for m in drawn if m[0]["content"].startswith("a")]
    assert 0.72 < len(from_a) / len(drawn) < 0.78
    assert not held_out & {m[0]["content"] for m in from_a}  # validation never trains
    # every epoch visits each training conversation once
    first_epoch = [m[0]["content"] for m in from_a[:38]]
    assert len(set(first_epoch)) == 38

    state = data.train.state_dict()
    continued = [next(data.train) for _ in range(50)]
    again = chat.load_datasets([f"{a}:3", "synthetic:arith:1"], Path, seed=1)
    again.train.load_state_dict(json.loads(json.dumps(state)))
    assert [next(again.train) for _ in range(50)] == continued


def test_batches_mask_pad_and_count_truncation(tokenizer):
    short = GOOD["messages"]
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Yes indeed."}]
    tool = synthetic.problems(1, 1, seed=0)[0].conversation()["messages"]
    stats = chat.RenderStats()
    rows = [chat.render_row(tokenizer, m, 64, stats) for m in (short, tool)]
    assert chat.render_row(tokenizer, long, 64, stats) is None  # cut before the reply: nothing to learn
    assert stats.truncated == 1 and stats.skipped == Counter({"nothing to learn after truncation": 1})
    assert stats.conversations == 2

    inputs, targets = chat.collate(rows, tokenizer.bos_id)
    longest = max(len(ids) for ids, _ in rows)
    assert inputs.shape == targets.shape == (2, longest - 1)
    for row, (ids, mask) in enumerate(rows):
        n = len(ids) - 1
        assert inputs[row, :n].tolist() == ids[:-1]
        assert (targets[row, n:] == -1).all() and (inputs[row, n:] == tokenizer.bos_id).all()  # padding
        expected = [t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)]
        assert targets[row, :n].tolist() == expected
    # trained: the assistant's reply, its tool call and <|assistant_end|>; never user text or tool output
    decoded = tokenizer.decode([t for t in targets[1].tolist() if t != -1])
    problem = synthetic.problems(1, 1, seed=0)[0]
    assert decoded == (f"<|python_start|>{problem.expression}<|python_end|>"
                       f"The answer is {problem.answer}.<|assistant_end|>")


def test_sft_batches_are_resumable_and_rows_stay_whole(tokenizer):
    data = chat.load_datasets(["synthetic:arith:1"], Path, seed=0)
    batches = chat.SftBatches(data.train, tokenizer, seq_len=128, batch_size=4)
    next(batches)
    state = json.loads(json.dumps(batches.state_dict()))
    expected = next(batches)
    again = chat.SftBatches(chat.load_datasets(["synthetic:arith:1"], Path, seed=0).train, tokenizer, 128, 4)
    again.load_state_dict(state)
    inputs, targets = next(again)
    assert torch.equal(inputs, expected[0]) and torch.equal(targets, expected[1])
    # each row starts with <|bos|>: one conversation per row, never packed
    assert (inputs[:, 0] == tokenizer.bos_id).all()
    assert batches.stats.truncated == 0 and batches.stats.conversations == 8

    val, stats = chat.val_batches(data.val, tokenizer, 128, batch_size=16)
    assert sum(b[0].shape[0] for b in val) == len(data.val) == stats.conversations


# ---- the RustGPT fork's format: a JSON list of "User: ... Assistant: ..." strings ----


def test_a_json_list_of_prefixed_strings_is_chat_data(tmp_path, tokenizer):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([
        "User: Hello Assistant: Hello, how can I help?",
        "User: What is 2+2? Assistant: 4. User: Thanks! Assistant: You are welcome.",
        "no prefixes at all",
        "Assistant: I speak first",
        "User: hi Assistant:   ",
        "Intro User: hi Assistant: hey",
        GOOD,  # objects may share the list
    ]), encoding="utf-8")
    conversations, report = chat.load_chat_file(path)
    assert conversations[0] == [{"role": "user", "content": "Hello"},
                                {"role": "assistant", "content": "Hello, how can I help?"}]
    assert [m["content"] for m in conversations[1]] == ["What is 2+2?", "4.", "Thanks!", "You are welcome."]
    assert len(conversations) == 3 and report.lines == 7
    assert report.skipped == Counter({"no turn prefixes": 1, "wrong alternation": 1, "empty content": 1,
                                      "text before the first turn prefix": 1})
    assert "3 conversations from 7 items" in report.summary() and "(first at item 3)" in report.summary()
    # converted like JSONL conversations: rendered with the loss on the assistant's turns only
    stats = chat.RenderStats()
    ids, mask = chat.render_row(tokenizer, conversations[0], 128, stats)
    assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == \
        "Hello, how can I help?<|assistant_end|>"

    # the same strings as JSONL lines, with other prefixes ([sft] turn_prefixes)
    lines = write_jsonl(tmp_path / "qa.jsonl", [json.dumps("Q: Hi there A: Hello!"), json.dumps("User: x Assistant: y")])
    conversations, report = chat.load_chat_file(lines, ("Q:", "A:"))
    assert conversations == [[{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]]
    assert report.skipped == Counter({"no turn prefixes": 1})
    # the skipped line names the prefixes expected and where they are set
    assert "no turn prefixes (expected 'Q:' and 'A:', as set by [sft] turn_prefixes): 1 (first at line 2)" \
        in report.summary() and "from 2 lines" in report.summary()


def test_unusable_json_chat_files_are_one_line_of_bad_input(tmp_path):
    path = tmp_path / "chat.json"
    for text, message in (('{"User": "x"}', "expected a JSON list of conversations"),
                          ('[\n"User: a Assistant: b",\n', r"chat\.json:3: invalid JSON"),
                          ("[" * 100_000, r"chat\.json:1: nested too deeply"),
                          ('["no prefix"]', r"no valid chat conversations in 1 item: no turn prefixes "
                                            r"\(expected 'User:' and 'Assistant:', as set by \[sft\] turn_prefixes\): "
                                            r"1 \(first at item 1\)$")):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(BadInput, match=message) as error:
            chat.load_chat_file(path)
        assert len(str(error.value).splitlines()) == 1
    # JSON Lines saved as .json is read as JSONL
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps("User: a Assistant: b") + "\n", encoding="utf-8")
    conversations, report = chat.load_chat_file(path)
    assert len(conversations) == 2 and report.unit == "line"


# ---- [sft] val_fraction, optional datasets, synthetic:chat ----


def test_val_fraction_zero_trains_on_every_conversation(tmp_path):
    facts = write_jsonl(tmp_path / "facts.jsonl", [{"messages": [{"role": "user", "content": f"Fact {i}?"},
                                                                 {"role": "assistant", "content": f"F{i}."}]}
                                                   for i in range(30)])
    held = chat.load_datasets([str(facts)], Path, seed=0)
    assert len(held.val) == 1  # 5 % of 30 by default
    data = chat.load_datasets([str(facts)], Path, seed=0, val_fraction=0.0)
    assert data.val == [] and data.probes == []
    assert {next(data.train)[0]["content"] for _ in range(30)} == {f"Fact {i}?" for i in range(30)}


def test_an_optional_dataset_that_is_missing_is_left_out_with_a_note(tmp_path):
    missing = tmp_path / "absent" / "chat.jsonl"
    data = chat.load_datasets(["synthetic:chat:1", f"{missing}?:0.5"], Path, seed=0)
    assert data.notes == [f"optional dataset {missing} not found: training without it"]
    assert [d.name for d in data.train.datasets] == ["synthetic:chat"]
    present = write_jsonl(tmp_path / "chat.jsonl", [GOOD] * 3)
    data = chat.load_datasets(["synthetic:chat:1", f"{present}?:0.5"], Path, seed=0)
    assert not data.notes and [d.name for d in data.train.datasets] == ["synthetic:chat", str(present)]
    with pytest.raises(BadInput, match="none of the optional datasets exists"):
        chat.load_datasets([f"{missing}?:0.5"], Path, seed=0)
    with pytest.raises(BadInput, match="chat data not found"):  # without the mark it must exist
        chat.load_datasets([f"{missing}:0.5"], Path, seed=0)


def test_synthetic_chat_trains_and_validates_on_separate_streams(tokenizer):
    data = chat.load_datasets(["synthetic:chat:1", "synthetic:arith:1"], Path, seed=0)
    assert len(data.val) == 2 * chat.SYNTHETIC_VAL_SIZE
    chats = [probe for probe in data.probes if probe[1] is None]
    assert len(chats) == chat.SYNTHETIC_VAL_SIZE and chats[0][0][-1]["role"] == "user"
    batches = chat.SftBatches(data.train, tokenizer, 128, 8)
    inputs, targets = next(batches)
    assert inputs.shape[0] == 8 and batches.stats.truncated == 0


@pytest.mark.parametrize("name", ["tiny", "shakespeare"])
def test_the_shipped_sft_mixtures_work_with_and_without_the_shared_folder(name, tmp_path):
    from workbench import config as config_module

    cfg = config_module.load(Path(__file__).resolve().parent.parent / "configs" / f"{name}.toml")
    fresh_clone = chat.load_datasets(cfg.sft.datasets, lambda path: tmp_path / path, seed=0)  # no ../shared
    assert [d.name for d in fresh_clone.train.datasets] == ["synthetic:arith", "synthetic:chat"]
    assert len(fresh_clone.notes) == 1 and "self_instruct" in fresh_clone.notes[0]
    if cfg.resolve_path("../shared/data/chat/self-instruct").exists():  # as in CI
        with_shared = chat.load_datasets(cfg.sft.datasets, cfg.resolve_path, seed=0)
        assert len(with_shared.train.datasets) == 3 and not with_shared.notes
