"""The Inspect screen (F8): per-token loss and the model's top guesses, computed by the model process
(`workbench.engine.worker`, request "inspect") and shown token by token in the TUI.

Update the snapshots after an intended change:
    .venv/bin/python -m pytest tests/test_tui_inspect.py --snapshot-update
"""

from __future__ import annotations

import io
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
from tui_helpers import FIXTURE_RUNS, until

CORPUS_LINE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


# ---- the worker's "inspect" request (a real tiny model, in this process) ----


@pytest.fixture(scope="module")
def worker(tiny_checkpoint):
    from workbench.engine.engine import Engine
    from workbench.engine.worker import Worker

    return Worker(Engine.from_checkpoint(tiny_checkpoint, device="cpu"), out=io.StringIO())


def ask(worker, request: dict) -> dict:
    """One request through the worker's dispatcher; its one reply line."""
    worker.out.seek(0)
    worker.out.truncate()
    worker.handle(1, request)
    lines = worker.out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_inspect_gives_each_tokens_loss_and_the_models_top_guesses(worker):
    import torch

    engine = worker.engine
    text = CORPUS_LINE + "Naïve café ☃"  # characters of 2 and 3 bytes: pieces must still join up
    reply = ask(worker, {"type": "inspect", "text": text})
    assert reply["type"] == "inspect" and not reply["truncated"]
    tokens = reply["tokens"]
    ids = engine.tokenizer.encode(text)
    assert [token["id"] for token in tokens] == ids
    assert "".join(token["text"] for token in tokens) == text
    # the same numbers as the model's own training loss on <|bos|> + text
    full = torch.tensor([[engine.tokenizer.bos_id, *ids]])
    with torch.no_grad():
        expected = engine.model(full[:, :-1], targets=full[:, 1:], loss_reduction="none").view(-1).tolist()
    assert [token["loss"] for token in tokens] == pytest.approx(expected, abs=1e-4)
    assert reply["mean_loss"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    assert reply["bits_per_byte"] == pytest.approx(sum(expected) / math.log(2) / len(text.encode()), abs=1e-4)
    for token in tokens:
        assert token["bits"] == pytest.approx(token["loss"] / math.log(2), abs=1e-5)
        assert token["p"] == pytest.approx(math.exp(-token["loss"]), abs=1e-5)
        probs = [p for _, p in token["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        if token["rank"] <= 5:  # among the guesses, at its rank, with its probability
            assert token["top"][token["rank"] - 1] == [token["token"], pytest.approx(token["p"], abs=1e-5)]
        else:
            assert token["p"] <= probs[-1]
    assert len(reply["next"]) == 5
    # trained on this text: far less surprised by it than by a jumble of the same characters
    jumble = "".join(sorted(CORPUS_LINE))
    assert ask(worker, {"type": "inspect", "text": jumble})["mean_loss"] > reply["mean_loss"] + 1.0


def test_inspect_stops_at_the_context_and_checks_its_request(worker):
    seq_len = worker.engine.model.config.seq_len
    long = ask(worker, {"type": "inspect", "text": CORPUS_LINE * 20, "top": 3})
    assert long["truncated"] and len(long["tokens"]) == seq_len - 1  # <|bos|> takes one place
    assert all(len(token["top"]) == 3 for token in long["tokens"])
    empty = ask(worker, {"type": "inspect", "text": ""})
    assert empty["tokens"] == [] and empty["mean_loss"] is None and len(empty["next"]) == 5
    for bad, word in (({"text": 7}, "text"), ({}, "text"), ({"text": "a", "top": 0}, "top"),
                      ({"text": "a", "top": True}, "top"), ({"text": "a", "top": 10**6}, "top")):
        reply = ask(worker, {"type": "inspect", **bad})
        assert reply["type"] == "error" and word in reply["message"], (bad, reply)
    assert ask(worker, {"type": "dance"})["message"].endswith("(chat, inspect or stop)")


# ---- the screen ----

FIXTURE_REPLY = Path(__file__).parent / "fixtures" / "inspect_reply.json"  # tiny model on FIXTURE_TEXT
FIXTURE_TEXT = "".join(token["text"] for token in json.loads(FIXTURE_REPLY.read_text())["tokens"])

# A model process that speaks the worker protocol without a model: FIXTURE_TEXT gets the recorded
# reply, any other text one token per character costing 0, 1, 2... bits; every request is logged.
FAKE_WORKER = textwrap.dedent('''
    import json, sys
    reply_path, log_path = sys.argv[1:3]
    recorded = json.load(open(reply_path, encoding="utf-8"))
    fixture_text = "".join(token["text"] for token in recorded["tokens"])
    print(json.dumps({"type": "ready", "model": "fake/step_000001", "params": 1234567}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(line)
        text = request["text"]
        if text == fixture_text:
            reply = recorded
        else:
            guesses = [["x", 0.5], ["y", 0.25], ["z", 0.125], ["w", 0.0625], ["v", 0.03125]]
            reply = {"type": "inspect", "mean_loss": 1.0, "bits_per_byte": 2.0, "truncated": False,
                     "next": guesses, "tokens": [
                         {"id": i, "text": c, "token": c, "loss": i * 0.6931471805599453, "bits": float(i),
                          "p": 2.0 ** -i, "rank": 1, "top": guesses} for i, c in enumerate(text)]}
        print(json.dumps(reply), flush=True)
''')


def app_with_fake_worker(tmp_path, runs_dir=FIXTURE_RUNS):
    from workbench.tui.app import PicochatApp

    script, log = tmp_path / "fake_worker.py", tmp_path / "requests.jsonl"
    script.write_text(FAKE_WORKER)
    app = PicochatApp(runs_dir)
    app.inspect_worker_command = lambda checkpoint: [sys.executable, str(script), str(FIXTURE_REPLY), str(log)]
    return app, log


def shown(widget) -> str:
    return str(widget.render())


async def open_inspect(pilot, text: str = FIXTURE_TEXT):
    """F8, wait for the model, put `text` in, ctrl+r, wait for its tokens: the screen."""
    from workbench.tui.screens.inspect import InspectScreen, TokenView

    await pilot.press("f8")
    screen = pilot.app.screen
    assert isinstance(screen, InspectScreen)
    assert await until(pilot, lambda: "ready" in shown(screen.query_one("#inspect-status"))), \
        shown(screen.query_one("#inspect-status"))
    screen.query_one("#inspect-input").load_text(text)
    await pilot.press("ctrl+r")
    view = screen.query_one(TokenView)
    assert await until(pilot, lambda: "".join(token["text"] for token in view.tokens) == text)
    return screen, view


async def test_inspect_screen_moves_over_tokens_by_key_and_mouse(tmp_path):
    from workbench.tui.screens.inspect import TokenView

    app, _ = app_with_fake_worker(tmp_path)
    recorded = json.loads(FIXTURE_REPLY.read_text())
    async with app.run_test(size=(80, 24)) as pilot:
        screen, view = await open_inspect(pilot)
        detail = screen.query_one("#inspect-detail")
        assert app.focused is view and view.cursor == 0
        assert "41 tokens" in view.border_title and "bits/byte" in view.border_title
        first = recorded["tokens"][0]
        assert '"First"' in shown(detail) and f"rank {first['rank']}" in shown(detail)
        for piece, probability in first["top"]:  # the five guesses for this place, with their probabilities
            assert f"{probability:6.3f}" in shown(detail) and f'"{piece}"' in shown(detail)
        await pilot.press("l", "l", "right", "h")
        assert view.cursor == 2 and '":\\n"' in shown(detail)
        await pilot.press("w")
        worst = max(range(41), key=lambda i: recorded["tokens"][i]["loss"])
        assert view.cursor == worst and f"token {worst + 1} of 41" in detail.border_title
        await pilot.press("G")
        assert view.cursor == 41 and "after the text" in detail.border_title
        assert f'"{recorded["next"][0][0]}"' in shown(detail)
        await pilot.press("g", "j")  # one row down: "Before..." starts the second row
        assert view.tokens[view.cursor]["text"] == "B"
        # the mouse: hovering a token shows it (the view's content starts inside its border and padding)
        row, column = view.laid.starts[7]  # " we"
        await pilot.hover(TokenView, offset=(column + 2, row + 1))
        assert view.cursor == 7 and '" we"' in shown(detail)
        await pilot.press("i")  # back to the text
        assert app.focused is screen.query_one("#inspect-input")
    assert screen.process is None  # the model process ends with the app


async def test_inspect_screen_reads_the_text_as_it_is_typed(tmp_path):
    app, log = app_with_fake_worker(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen, view = await open_inspect(pilot, "ab")
        await pilot.press("i", "end", *"cd")  # typing, then a pause: one request with the whole text
        assert await until(pilot, lambda: [token["text"] for token in view.tokens] == list("abcd"))
        requests = [json.loads(line) for line in log.read_text().splitlines()]
        assert [request["text"] for request in requests] == ["ab", "abcd"]
        assert all(request == {"type": "inspect", "text": request["text"], "top": 5} for request in requests)
        # the bits set the colour: 0 bits and 3 bits fall in different bands
        assert view.render_line(0).text.startswith("abcd")
        styles = [segment.style.bgcolor for segment in view.render_line(0) if segment.text in "ad"]
        assert len(set(styles)) == 2


@pytest.mark.slow
async def test_inspect_screen_with_a_real_model_process(tiny_checkpoint):
    """The real worker on a real checkpoint, through the screen (no fake anywhere)."""
    from workbench.tui.app import PicochatApp

    app = PicochatApp(tiny_checkpoint.parent.parent.parent)
    async with app.run_test(size=(80, 24)) as pilot:
        screen, view = await open_inspect(pilot, CORPUS_LINE)
        assert screen.checkpoint == tiny_checkpoint
        assert len(view.tokens) > 10 and all(len(token["top"]) == 5 for token in view.tokens)
        await pilot.press("l")
        token = view.tokens[1]
        assert f"loss {token['loss']:.2f} nats" in shown(screen.query_one("#inspect-detail"))
        process = screen.process
    assert process.wait(timeout=30) is not None  # ended with the app


# ---- snapshots (the recorded reply: no model, nothing that depends on timing) ----


def snapshot_app(tmp_path):
    async def inspect_the_fixture_text(pilot):
        _, view = await open_inspect(pilot)
        for _ in range(3):
            await pilot.press("l")
        await pilot.pause()

    app, _ = app_with_fake_worker(tmp_path)
    return app, inspect_the_fixture_text


def test_inspect_screen_80x24(snap_compare, tmp_path):
    app, run_before = snapshot_app(tmp_path)
    assert snap_compare(app, run_before=run_before, terminal_size=(80, 24))


def test_inspect_screen_200x50(snap_compare, tmp_path):
    app, run_before = snapshot_app(tmp_path)
    assert snap_compare(app, run_before=run_before, terminal_size=(200, 50))


async def test_inspect_screen_follows_the_checkpoint_and_says_why_a_model_cannot_load(tmp_path):
    app, log = app_with_fake_worker(tmp_path)
    fake = app.inspect_worker_command
    broken = '{"type": "error", "message": "step_000100/model.safetensors: missing"}'
    app.inspect_worker_command = lambda checkpoint: (
        fake(checkpoint) if checkpoint.name == "step_000300" else
        [sys.executable, "-c", f"print({broken!r}); raise SystemExit(2)"])
    async with app.run_test(size=(80, 24)) as pilot:
        screen, view = await open_inspect(pilot, "abc")
        assert screen.checkpoint.name == "step_000300"  # the newest, when none was picked
        picker = screen.query_one("#inspect-checkpoint")
        picker.value = str(FIXTURE_RUNS / "tiny-done" / "checkpoints" / "step_000100")
        status = screen.query_one("#inspect-status")
        assert await until(pilot, lambda: "exited" in shown(status))
        assert shown(status) == "the model process exited (code 2): step_000100/model.safetensors: missing"
        picker.value = str(FIXTURE_RUNS / "tiny-done" / "checkpoints" / "step_000300")
        # a new model process reads the text on screen by itself
        assert await until(pilot, lambda: len(log.read_text().splitlines()) == 2 and "ready" in shown(status))
        assert [json.loads(line)["text"] for line in log.read_text().splitlines()] == ["abc", "abc"]
