"""`picochat chat`: one-shot -p through the CLI, the interactive loop through a subprocess."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pytest
from rich.console import Console

from workbench.cli import main
from workbench.engine import Engine, SamplingParams
from workbench.engine.chat_cli import Chat, apply_settings


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine.from_checkpoint(tiny_checkpoint, device="cpu")


def test_one_shot_prints_the_answer(tiny_checkpoint, engine, capsys):
    code = main(["chat", str(tiny_checkpoint), "-p", "Hello there", "--temperature", "0", "--max-tokens", "12",
                 "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    expected = engine.complete_chat([{"role": "user", "content": "Hello there"}],
                                    SamplingParams(temperature=0.0, max_tokens=12))[0]
    assert out == expected.text + "\n"


@pytest.mark.slow
def test_compiled_one_shot_gives_the_eager_answer(tiny_checkpoint, engine, capsys):
    code = main(["chat", str(tiny_checkpoint), "-p", "Hello there", "--temperature", "0", "--max-tokens", "12",
                 "--device", "cpu", "--compile"])
    assert code == 0
    captured = capsys.readouterr()
    expected = engine.complete_chat([{"role": "user", "content": "Hello there"}],
                                    SamplingParams(temperature=0.0, max_tokens=12))[0]
    assert captured.out == expected.text + "\n"
    assert "compiled in" in captured.err


def test_one_shot_bad_input(tiny_checkpoint, tmp_path, capsys):
    assert main(["chat", str(tmp_path / "nothing"), "-p", "hi"]) == 2
    assert main(["chat", str(tiny_checkpoint), "-p", "hi", "--temperature", "-1"]) == 2
    err = capsys.readouterr().err
    assert "temperature" in err and len(err.strip().splitlines()) == 2


def test_interactive_session_in_a_subprocess(tiny_checkpoint):
    lines = ["Hello", "/settings temperature=0 max_tokens=6", "/settings", "/settings bogus=1",
             "/clear", "Speak again", "/help", "/quit", "never read"]
    result = subprocess.run([sys.executable, "-m", "workbench", "chat", str(tiny_checkpoint), "--device", "cpu",
                             "--max-tokens", "8", "--seed", "1"],
                            input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "max_tokens=6" in out and "temperature=0.0" in out
    assert "unknown setting 'bogus'" in out
    assert "(conversation cleared)" in out
    assert out.count("picochat>") == 2 and out.count(" s, ") == 2  # two answers, each with its stats line
    assert "/clear forgets" in out


def test_ctrl_d_leaves(tiny_checkpoint):
    result = subprocess.run([sys.executable, "-m", "workbench", "chat", str(tiny_checkpoint), "--device", "cpu"],
                            input="", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


class InterruptingFile(io.StringIO):
    """A terminal whose user presses ctrl+c as soon as the answer starts to appear."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def write(self, text):
        if self.armed and text.strip():
            self.armed = False
            signal.raise_signal(signal.SIGINT)
        return super().write(text)


def test_ctrl_c_stops_the_answer_but_not_the_chat(engine):
    question = [{"role": "user", "content": "Tell me a long story"}]
    seed = next(seed for seed in range(50)  # a seed whose answer is long enough to interrupt
                if engine.complete_chat(question, SamplingParams(temperature=1.0, top_k=0, max_tokens=40,
                                                                 seed=seed))[0].text.strip()[3:])
    screen = InterruptingFile()
    chat = Chat(engine, SamplingParams(temperature=1.0, top_k=0, max_tokens=40, seed=seed),
                Console(file=screen, force_terminal=False, width=200))
    screen.armed = True
    assert chat.answer("Tell me a long story") == "stopped"
    assert "stopped" in screen.getvalue()
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]  # the partial answer is kept
    # the chat goes on, turns still alternating
    assert chat.answer("And another") in ("stop", "length")
    roles = [m["role"] for m in chat.messages]
    assert roles[-2:] == ["user", "assistant"] or roles[-1] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False))


def test_history_is_sent_back_to_the_model(engine):
    question = [{"role": "user", "content": "First question"}]
    seed = next(seed for seed in range(50)  # a seed whose answer says something
                if engine.complete_chat(question, SamplingParams(temperature=1.0, max_tokens=8, seed=seed))[0]
                .text.strip())
    chat = Chat(engine, SamplingParams(temperature=1.0, max_tokens=8, seed=seed), Console(file=io.StringIO()))
    chat.answer("First question")
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]
    first = len(engine.chat_prompt(chat.messages + [{"role": "user", "content": "x"}], chat.params))
    assert first > len(engine.chat_prompt([{"role": "user", "content": "x"}], chat.params))
    chat.command("/clear")
    assert chat.messages == []


def test_settings_parsing():
    params, tools = apply_settings(SamplingParams(), ["temperature=0.5", "top_k=5", "seed=none", "stop=END,###",
                                                      "tools=off"])
    assert (params.temperature, params.top_k, params.seed, params.stop, tools) == (0.5, 5, None, ["END", "###"],
                                                                                   False)
    for bad in (["top_p=2"], ["nonsense"], ["top_k=x"], ["tools=maybe"]):
        with pytest.raises(ValueError):
            apply_settings(SamplingParams(), bad)
