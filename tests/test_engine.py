"""The inference engine: KV cache, sampling, streaming, reasoning, tools, stop conditions.

A real tokenizer (trained here on a slice of the bundled corpus plus multi-byte text) and a real
tiny GPT (trained here for a few dozen steps) for everything the model decides; a scripted token
source for the engine's own logic (tool calls, thoughts, stop strings), driven through the very
same loop a model drives.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.config import ModelSection
from workbench.engine import Completion, Engine, Event, SamplingParams
from workbench.engine.engine import ModelSource, measure_speed
from workbench.engine.sampling import sample_next
from workbench.model import build_model
from workbench.tokenizer import train_tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "assets" / "tiny_corpus.txt"
MULTIBYTE = ["Größe, Übermaß und Äpfel — naïve café. ", "日本語のテキストです。東京と京都。",
             "Emoji: 🎉🚀✨ and κόσμε, привет мир. ", "½ ¾ € £ ¥ ©"]


@pytest.fixture(scope="module")
def tokenizer():
    text = CORPUS.read_text(encoding="utf-8")[:40_000]
    documents = text.split("\n\n") + MULTIBYTE * 20
    return train_tokenizer(iter(documents), vocab_size=512)


def _train(model, tokenizer, steps=40, seq_len=32):
    text = CORPUS.read_text(encoding="utf-8")[:40_000] + "".join(MULTIBYTE) * 20
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (16,), generator=generator)
        batch = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
        loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    # two layers, the first with a short window, so the cache path exercises both kinds of layer
    cfg = ModelSection(depth=2, width=64, seq_len=48, window_pattern="SL", short_window=12)
    return _train(build_model(cfg, tokenizer.vocab_size), tokenizer)


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    return Engine(model, tokenizer)


GREEDY = SamplingParams(temperature=0.0, max_tokens=30)


def prompt(tokenizer, text="First Citizen:\n"):
    return tokenizer.encode(text, bos=True)


# ---------------------------------------------------------------------------------------------
# the model path


def test_kv_cache_greedy_equals_no_cache_greedy(model, tokenizer):
    ids = prompt(tokenizer)
    with_cache = Engine(model, tokenizer, use_cache=True).generate(ids, GREEDY, num_samples=2, use_tools=False)
    without = Engine(model, tokenizer, use_cache=False).generate(ids, GREEDY, num_samples=2, use_tools=False)
    assert with_cache[0].tokens == without[0].tokens
    assert with_cache[1].tokens == with_cache[0].tokens  # greedy rows of a shared prefill agree
    assert len(with_cache[0].tokens) > 5


@pytest.mark.slow
def test_compiled_decoding_matches_eager(model, tokenizer):
    """The torch.compile'd static-shape decode step (--compile) picks the same greedy tokens as
    the eager cache path, for one row and for a shared prefill of three, to the end of the context."""
    ids = prompt(tokenizer)
    params = SamplingParams(temperature=0.0, max_tokens=1000)
    for rows in (1, 3):
        eager = Engine(model, tokenizer).generate(ids, params, num_samples=rows, use_tools=False)
        compiled = Engine(model, tokenizer, compiled=True).generate(ids, params, num_samples=rows, use_tools=False)
        assert [g.tokens for g in compiled] == [g.tokens for g in eager]
    fast, slow = ModelSource(model, "cpu", compiled=True), ModelSource(model, "cpu")
    a, b = fast.prefill(ids, 1), slow.prefill(ids, 1)
    while fast.room():
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        token = a.argmax(-1).tolist()
        a, b = fast.step(token), slow.step(token)


def test_kv_cache_runs_to_the_end_of_the_context(model, tokenizer):
    """Past the short window and up to seq_len: still identical, then "length"."""
    ids = prompt(tokenizer)
    params = SamplingParams(temperature=0.0, max_tokens=1000)
    fast = Engine(model, tokenizer, use_cache=True)
    slow = Engine(model, tokenizer, use_cache=False)
    # greedy decoding may end early at <|assistant_end|>: compare the logits step by step to the end
    cached, plain = ModelSource(model, "cpu", True), ModelSource(model, "cpu", False)
    a, b = cached.prefill(ids, 1), plain.prefill(ids, 1)
    for _ in range(model.config.seq_len - len(ids)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        token = a.argmax(-1).tolist()
        a, b = cached.step(token), plain.step(token)
    assert cached.room() == 0
    for generation in (fast.generate(ids, params)[0], slow.generate(ids, params)[0]):
        assert generation.finish_reason in ("stop", "length")
        assert len(ids) + len(generation.tokens) <= model.config.seq_len + 1


def test_context_full_finishes_with_length(engine, tokenizer):
    """A prompt that leaves 3 cache slots: 3 fed tokens, plus the one sampled from the last forward."""
    source = ScriptedSource(tokenizer.vocab_size, [tokenizer.encode("word " * 30)] * 2,
                            special(tokenizer, "assistant_end"), max_len=20)
    run = engine.start(list(range(300, 317)), SamplingParams(temperature=0.0, max_tokens=100), num_samples=2,
                       source=source)
    texts = ["", ""]
    for row, events in run:
        texts[row] += "".join(e.text for e in events)
    assert [row.finish_reason for row in run.rows] == ["length", "length"]
    assert [len(row.tokens) for row in run.rows] == [4, 4]
    assert texts == [tokenizer.decode(run.rows[0].tokens)] * 2


def test_top_k_1_equals_greedy(engine, tokenizer):
    ids = prompt(tokenizer)
    greedy = engine.generate(ids, GREEDY, use_tools=False)[0].tokens
    top1 = engine.generate(ids, SamplingParams(temperature=1.0, top_k=1, max_tokens=30, seed=3),
                           use_tools=False)[0].tokens
    assert top1 == greedy


def test_fixed_seed_repeats_and_seeds_differ(engine, tokenizer):
    ids = prompt(tokenizer)
    params = SamplingParams(temperature=1.0, top_k=0, max_tokens=25, seed=1234)
    first = [g.tokens for g in engine.generate(ids, params, num_samples=4)]
    again = [g.tokens for g in engine.generate(ids, params, num_samples=4)]
    assert first == again
    other = [g.tokens for g in engine.generate(ids, SamplingParams(temperature=1.0, top_k=0, max_tokens=25,
                                                                    seed=99), num_samples=4)]
    assert other != first
    assert len({tuple(tokens) for tokens in first}) > 1  # the rows of one prefill sample independently


def test_batched_rows_match_single_row_greedy(engine, tokenizer):
    ids = prompt(tokenizer, "All:\n")
    single = engine.generate(ids, GREEDY, num_samples=1)[0]
    batch = engine.generate(ids, GREEDY, num_samples=5)
    assert all(g.tokens == single.tokens for g in batch)
    assert all(g.sampled_mask == [1] * len(g.tokens) for g in batch)


@pytest.mark.parametrize("kind", ["bigram", "mlp"])
def test_models_without_kv_cache_generate_by_refeeding(tokenizer, kind):
    torch.manual_seed(0)
    model = _train(build_model(ModelSection(kind=kind, width=64, context=4, seq_len=32), tokenizer.vocab_size),
                   tokenizer, steps=20)
    engine = Engine(model, tokenizer)
    generations = engine.generate(prompt(tokenizer), SamplingParams(temperature=0.0, max_tokens=80),
                                  num_samples=2)
    assert generations[0].tokens == generations[1].tokens
    assert generations[0].finish_reason in ("stop", "length")
    # no positional limit: a baseline can run past its seq_len when it does not stop
    sampled = engine.generate(prompt(tokenizer), SamplingParams(temperature=1.0, top_k=0, max_tokens=40, seed=0))
    assert 1 <= len(sampled[0].tokens) <= 40


def test_stream_chat_yields_complete_text_and_one_done(engine, tokenizer):
    params = SamplingParams(temperature=1.0, top_k=0, max_tokens=40, seed=7)
    events = list(engine.stream_chat([{"role": "user", "content": "Größe 日本 🎉?"}], params))
    assert events[-1].kind == "done" and sum(e.kind == "done" for e in events) == 1
    done = events[-1]
    assert done.finish_reason in ("stop", "length")
    assert done.prompt_tokens > 0 and 1 <= done.completion_tokens <= 40
    completion = engine.complete_chat([{"role": "user", "content": "Größe 日本 🎉?"}], params)[0]
    streamed_text = "".join(e.text for e in events if e.kind == "text")
    assert streamed_text == completion.text  # same seed, same answer, whichever way it is read
    assert completion.completion_tokens == done.completion_tokens


def test_complete_chat_n_samples(engine):
    params = SamplingParams(temperature=1.0, top_k=20, max_tokens=20, seed=5)
    completions = engine.complete_chat([{"role": "user", "content": "Speak."}], params, n=3)
    assert len(completions) == 3 and all(isinstance(c, Completion) for c in completions)
    assert all(c.finish_reason in ("stop", "length") for c in completions)


def test_long_chat_history_drops_oldest_turns(engine):
    messages = []
    for i in range(12):
        messages += [{"role": "user", "content": f"question number {i} about the citizens"},
                     {"role": "assistant", "content": f"answer number {i}"}]
    messages.append({"role": "user", "content": "last question"})
    params = SamplingParams(temperature=0.0, max_tokens=10)
    ids = engine.chat_prompt(messages, params)
    assert len(ids) + min(10, 24) <= engine.model.config.seq_len
    assert engine.tokenizer.decode(ids).rstrip().endswith("last question<|user_end|><|assistant_start|>")
    events = list(engine.stream_chat(messages, params))
    assert events[-1].kind == "done"


def test_repetition_penalty_top_p_and_temperature():
    logits = torch.tensor([[10.0, 9.0, 1.0, -5.0]])
    seen = torch.tensor([[True, False, False, False]])
    assert sample_next(logits, SamplingParams(temperature=0.0)).item() == 0
    penalized = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert sample_next(logits, penalized, seen=seen).item() == 1
    # top_p keeps the smallest set whose mass reaches p: here only token 0 (p(0) ~ 0.73)
    nucleus = SamplingParams(temperature=1.0, top_k=0, top_p=0.5)
    generator = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, nucleus, generator).item() for _ in range(50)}
    assert draws == {0}
    wide = SamplingParams(temperature=5.0, top_k=0, top_p=1.0)
    draws = {sample_next(logits, wide, generator).item() for _ in range(200)}
    assert {0, 1, 2} <= draws
    top2 = SamplingParams(temperature=5.0, top_k=2)
    assert {sample_next(logits, top2, generator).item() for _ in range(100)} == {0, 1}
    # top_p = 0 keeps the most likely token only (OpenAI accepts it too), with or without top_k
    for top_k in (0, 3):
        only_best = SamplingParams(temperature=5.0, top_k=top_k, top_p=0.0)
        assert {sample_next(logits, only_best, generator).item() for _ in range(50)} == {0}


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    for bad in ({"top_p": -0.1}, {"top_p": 1.5}, {"temperature": float("nan")}, {"temperature": float("inf")},
                {"top_p": float("nan")}, {"repetition_penalty": float("nan")}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(ValueError):
        SamplingParams.from_dict({"temprature": 1.0})
    assert SamplingParams.from_dict({"seed": -1, "stop": "END"}).seed is None
    assert SamplingParams(stop="END").stop == ["END"]


def test_measure_speed_reports_prefill_and_decode(model):
    speed = measure_speed(model, prompt_tokens=8, new_tokens=4, batch_size=2)
    assert speed["decode_tokens_per_second"] > 0 and speed["prefill_tokens_per_second"] > 0
    no_cache = measure_speed(model, prompt_tokens=8, new_tokens=4, batch_size=2, use_cache=False)
    assert no_cache["decode_tokens_per_second"] > 0


# ---------------------------------------------------------------------------------------------
# the engine's own logic, with a scripted token source


class ScriptedSource:
    """Stands in for the model: each row 'wants' to say its script, token by token. A fed token
    that is the script's next one advances it; anything else (forced tool output) does not.
    Logits are one-hot, so any sampler picks the scripted token."""

    def __init__(self, vocab_size: int, scripts: list[list[int]], end_id: int, max_len: int | None = None):
        self.vocab_size, self.scripts, self.end_id, self.max_len = vocab_size, scripts, end_id, max_len
        self.length = 0
        self.positions = [0] * len(scripts)
        self.fed: list[list[int]] = [[] for _ in scripts]

    def room(self):
        return None if self.max_len is None else self.max_len - self.length

    def _logits(self):
        logits = torch.full((len(self.scripts), self.vocab_size), -1e4)
        for row, (script, position) in enumerate(zip(self.scripts, self.positions, strict=True)):
            logits[row, script[position] if position < len(script) else self.end_id] = 1e4
        return logits

    def prefill(self, prompt_ids, num_samples):
        assert num_samples == len(self.scripts)
        self.length = len(prompt_ids)
        return self._logits()

    def step(self, tokens):
        self.length += 1
        for row, token in enumerate(tokens):
            self.fed[row].append(token)
            script, position = self.scripts[row], self.positions[row]
            if position < len(script) and token == script[position]:
                self.positions[row] += 1
        return self._logits()


def special(tokenizer, name):
    return tokenizer.special_id(f"<|{name}|>")


def single_byte_ids(tokenizer, text):
    """The text as one token per UTF-8 byte (what splits multi-byte characters across tokens)."""
    byte_to_id = {}
    for token_id in range(tokenizer.vocab_size):
        raw = tokenizer.token_to_bytes(token_id)
        if len(raw) == 1 and not tokenizer.is_special(token_id):
            byte_to_id.setdefault(raw, token_id)
    return [byte_to_id[bytes([b])] for b in text.encode("utf-8")]


def run_script(engine, scripts, params=None, use_tools=True):
    tokenizer = engine.tokenizer
    source = ScriptedSource(tokenizer.vocab_size, scripts, special(tokenizer, "assistant_end"))
    run = engine.start([tokenizer.bos_id], params or SamplingParams(temperature=0.0, max_tokens=200),
                       num_samples=len(scripts), use_tools=use_tools, source=source)
    events: list[list[Event]] = [[] for _ in scripts]
    for row, row_events in run:
        events[row].extend(row_events)
    return run, events


def test_streaming_never_splits_a_utf8_character(engine, tokenizer):
    text = "Größe 日本語 🎉🚀 κόσμε ½€"
    script = single_byte_ids(tokenizer, text) + [special(tokenizer, "assistant_end")]
    run, events = run_script(engine, [script])
    pieces = [e.text for e in events[0] if e.kind == "text"]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(pieces) == len(text)  # released character by character, each as soon as it is whole
    assert run.rows[0].finish_reason == "stop"


def test_streaming_with_a_real_model_concatenates_to_the_decode(engine, tokenizer):
    run = engine.start(tokenizer.encode("Größe 日本", bos=True),
                       SamplingParams(temperature=1.5, top_k=0, max_tokens=60, seed=11))
    pieces = [e.text for _, events in run for e in events if e.kind == "text"]
    row = run.rows[0]
    ids = [t for t in row.tokens if not tokenizer.is_special(t)]
    if not any(tokenizer.is_special(t) for t in row.tokens):
        assert "".join(pieces) == tokenizer.decode_bytes(ids).decode("utf-8", errors="replace")


def test_thoughts_are_separate_from_the_answer(engine, tokenizer):
    script = ([special(tokenizer, "think_start")] + tokenizer.encode("let me think: 2 and 2")
              + [special(tokenizer, "think_end")] + tokenizer.encode("The answer is four.")
              + [special(tokenizer, "assistant_end")])
    run, events = run_script(engine, [script])
    kinds = [e.kind for e in events[0]]
    assert "".join(e.text for e in events[0] if e.kind == "thought") == "let me think: 2 and 2"
    assert "".join(e.text for e in events[0] if e.kind == "text") == "The answer is four."
    assert kinds.index("text") > max(i for i, kind in enumerate(kinds) if kind == "thought")
    completion = run.rows[0].completion(1)
    assert completion.thought == "let me think: 2 and 2" and completion.text == "The answer is four."


def test_tool_call_runs_the_calculator_and_forces_its_output(engine, tokenizer):
    call = tokenizer.encode("12*7+3")
    script = (tokenizer.encode("Let me compute.") + [special(tokenizer, "python_start")] + call
              + [special(tokenizer, "python_end")] + tokenizer.encode(" So it is 87.")
              + [special(tokenizer, "assistant_end")])
    run, events = run_script(engine, [script])
    row = run.rows[0]
    forced = [special(tokenizer, "output_start"), *tokenizer.encode("87"), special(tokenizer, "output_end")]
    end_of_call = row.tokens.index(special(tokenizer, "python_end")) + 1
    assert row.tokens[end_of_call:end_of_call + len(forced)] == forced
    assert row.sampled_mask[end_of_call:end_of_call + len(forced)] == [0] * len(forced)
    assert sum(row.sampled_mask) == len(script)  # everything else was sampled
    kinds = [(e.kind, e.text) for e in events[0] if e.kind in ("tool_call", "tool_output")]
    assert kinds == [("tool_call", "12*7+3"), ("tool_output", "87")]
    assert "".join(e.text for e in events[0] if e.kind == "text") == "Let me compute. So it is 87."
    completion = row.completion(1)
    assert completion.tool_calls == [{"expression": "12*7+3", "output": "87"}]
    assert row.finish_reason == "stop" and row.tokens[-1] == special(tokenizer, "assistant_end")


def test_tool_errors_become_output_and_tools_can_be_off(engine, tokenizer):
    script = ([special(tokenizer, "python_start")] + tokenizer.encode("__import__('os')")
              + [special(tokenizer, "python_end"), special(tokenizer, "assistant_end")])
    _, events = run_script(engine, [script])
    outputs = [e.text for e in events[0] if e.kind == "tool_output"]
    assert len(outputs) == 1 and outputs[0].startswith("Error:")
    run, events = run_script(engine, [script], use_tools=False)
    assert not any(e.kind == "tool_output" for e in events[0])
    assert run.rows[0].sampled_mask == [1] * len(script)


def test_tool_calls_in_a_batch_only_force_their_own_row(engine, tokenizer):
    with_call = ([special(tokenizer, "python_start")] + tokenizer.encode("2+2")
                 + [special(tokenizer, "python_end")] + tokenizer.encode("ok")
                 + [special(tokenizer, "assistant_end")])
    plain = tokenizer.encode("no tools here at all") + [special(tokenizer, "assistant_end")]
    run, events = run_script(engine, [with_call, plain])
    assert 0 in run.rows[0].sampled_mask
    assert run.rows[1].sampled_mask == [1] * len(plain) and run.rows[1].tokens == plain
    assert "".join(e.text for e in events[1] if e.kind == "text") == "no tools here at all"


def test_stop_strings_cut_the_answer_even_across_tokens(engine, tokenizer):
    script = single_byte_ids(tokenizer, "hello STOP world") + [special(tokenizer, "assistant_end")]
    run, events = run_script(engine, [script], SamplingParams(temperature=0.0, max_tokens=200, stop=["STOP"]))
    text = "".join(e.text for e in events[0] if e.kind == "text")
    assert text == "hello "
    assert run.rows[0].finish_reason == "stop"
    assert len(run.rows[0].tokens) == len("hello STOP")  # generation ends at the stop string
    # a prefix of a stop string that never completes is shown in the end
    script = single_byte_ids(tokenizer, "say ST") + [special(tokenizer, "assistant_end")]
    _, events = run_script(engine, [script], SamplingParams(temperature=0.0, max_tokens=200, stop=["STOP"]))
    assert "".join(e.text for e in events[0] if e.kind == "text") == "say ST"


def test_stops_at_bos_and_at_max_tokens(engine, tokenizer):
    script = tokenizer.encode("one two") + [tokenizer.bos_id] + tokenizer.encode("three")
    run, _ = run_script(engine, [script])
    assert run.rows[0].finish_reason == "stop" and run.rows[0].tokens[-1] == tokenizer.bos_id
    long_script = tokenizer.encode("word " * 50)
    run, _ = run_script(engine, [long_script], SamplingParams(temperature=0.0, max_tokens=7))
    assert run.rows[0].finish_reason == "length" and len(run.rows[0].tokens) == 7


# ---------------------------------------------------------------------------------------------
# the JSON-lines worker


class WorkerProcess:
    def __init__(self, *args):
        import subprocess
        import sys

        self.process = subprocess.Popen([sys.executable, "-m", "workbench.engine.worker", *map(str, args)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1)

    def send(self, *messages):
        import json

        self.process.stdin.write("".join(json.dumps(m) + "\n" if isinstance(m, dict) else m for m in messages))
        self.process.stdin.flush()

    def read(self):
        import json

        line = self.process.stdout.readline()
        assert line, self.process.stderr.read()
        return json.loads(line)

    def until_done(self):
        messages = []
        while not messages or messages[-1]["type"] not in ("done", "error"):
            messages.append(self.read())
        return messages


def test_worker_json_lines(tiny_checkpoint):
    worker = WorkerProcess(tiny_checkpoint, "--device", "cpu")
    try:
        ready = worker.read()
        assert ready["type"] == "ready" and ready["params"] > 0 and ready["device"] == "cpu"
        chat = {"type": "chat", "messages": [{"role": "user", "content": "Hello"}],
                "sampling": {"temperature": 0, "max_tokens": 10}}
        worker.send(chat)
        answer = worker.until_done()
        done = answer[-1]
        assert done["type"] == "done" and done["finish_reason"] in ("stop", "length") and not done["stopped"]
        assert 1 <= done["completion_tokens"] <= 10 and done["prompt_tokens"] > 0 and done["seconds"] >= 0
        assert all(m["type"] in ("text", "thought", "tool_call", "tool_output") for m in answer[:-1])
        # a stop right behind a chat stops it, and only it
        worker.send(dict(chat, sampling={"temperature": 0, "max_tokens": 40}), {"type": "stop"}, chat)
        stopped = worker.until_done()
        assert stopped[-1]["type"] == "done" and stopped[-1]["stopped"] and stopped[-1]["completion_tokens"] < 40
        again = worker.until_done()
        assert [m.get("text") for m in again[:-1]] == [m.get("text") for m in answer[:-1]]
        assert not again[-1]["stopped"]
        # bad requests are reported and the worker carries on
        worker.send("this is not json\n", {"type": "dance"}, dict(chat, sampling={"temperature": -2}),
                    dict(chat, sampling={"bogus": 1}), dict(chat, messages=[{"role": "assistant", "content": "x"}]))
        errors = [worker.read() for _ in range(5)]
        assert [e["type"] for e in errors] == ["error"] * 5
        assert "bogus" in errors[3]["message"]
        worker.send(chat)
        assert worker.until_done()[-1]["type"] == "done"
        worker.process.stdin.close()  # end of input ends the worker
        assert worker.process.wait(timeout=30) == 0
    finally:
        worker.process.kill()
        worker.process.wait()


def test_worker_bad_checkpoint(tmp_path):
    worker = WorkerProcess(tmp_path / "missing", "--device", "cpu")
    message = worker.read()
    assert message["type"] == "error" and "missing" in message["message"]
    assert worker.process.wait(timeout=60) == 2


def test_generation_keeps_a_training_models_mode(model, tokenizer):
    model.train()
    try:
        Engine(model, tokenizer).generate(prompt(tokenizer), GREEDY)
        assert model.training
        run = Engine(model, tokenizer).start(prompt(tokenizer), GREEDY)
        iterator = iter(run)
        next(iterator)
        assert not model.training  # generating: eval mode
        iterator.close()  # an abandoned run gives the mode back too
        assert model.training
    finally:
        model.eval()
