"""The server, over real HTTP on 127.0.0.1: the real engine on the tiny trained checkpoint, the
official openai client for the happy paths, plain HTTP for the malformed ones.

One stand-in appears below (`ScriptableEngine`): a trained tiny model ends its answers within a
few tokens and never thinks or calls its calculator, so to test what happens *during* a long answer
(a client leaving, another client served meanwhile) and how thoughts and tool calls travel, its
batch answers two trigger phrases from a script beside the real batch. Every other request in these
tests runs the real engine. Batching, over-long prompts, failures and the HTTP hardening are in
test_serve_hardening.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import openai
import pytest

from workbench.engine import Engine, Event
from workbench.serve import protocol
from workbench.serve.app import BackgroundServer, create_app, describe_model
from workbench.serve.protocol import Limits

ENDLESS = "keep talking forever"
SCRIPTED = "think and use your calculator"
SCRIPT = [Event("thought", "Two plus three; "), Event("thought", "use the tool."), Event("tool_call", "2+3"),
          Event("tool_output", "5"), Event("text", "The answer is "), Event("text", "**5**.")]


class ScriptableEngine:
    """The real engine, except that a prompt containing ENDLESS gets an answer that never ends
    (one text event every few milliseconds) until the server cancels it, and one containing
    SCRIPTED gets SCRIPT (a thought, a calculator call and its result, then the answer)."""

    def __init__(self, engine: Engine):
        self.engine, self.model, self.tokenizer, self.device = engine, engine.model, engine.tokenizer, engine.device
        self.closed = threading.Event()  # set when the server cancelled an endless answer

    def chat_prompt(self, *args, **kwargs) -> list[int]:
        return self.engine.chat_prompt(*args, **kwargs)

    def batch(self, prefill_chunk: int = 64) -> ScriptedBatch:
        return ScriptedBatch(self, self.engine.batch(prefill_chunk))


class ScriptedMember:
    def __init__(self, prompt_ids: list[int], endless: bool):
        self.prompt_ids, self.rows, self.error, self.endless = prompt_ids, 1, None, endless
        done = Event("done", finish_reason="stop", prompt_tokens=len(prompt_ids), completion_tokens=14)
        self.events = iter(SCRIPT + [done])

    def next_event(self) -> Event:
        return Event("text", "more ") if self.endless else next(self.events)


class ScriptedBatch:
    """The real Batch, and beside it the scripted members (one event per step each)."""

    def __init__(self, owner: ScriptableEngine, real):
        self.owner, self.real, self.scripted = owner, real, []

    @property
    def members(self) -> list:
        return self.real.members + self.scripted

    @property
    def rows(self) -> int:
        return self.real.rows + len(self.scripted)

    def add(self, prompt_ids, params, num_samples=1, use_tools=True, tool_text=None):
        text = self.owner.tokenizer.decode(prompt_ids)
        if ENDLESS in text or SCRIPTED in text:
            self.scripted.append(ScriptedMember(prompt_ids, endless=ENDLESS in text))
            return self.scripted[-1]
        return self.real.add(prompt_ids, params, num_samples, use_tools, tool_text)

    def cancel(self, member) -> None:
        if member in self.scripted:
            self.scripted.remove(member)
            self.owner.closed.set()
        else:
            self.real.cancel(member)

    def step(self):
        updates, ended = self.real.step() if self.real.members else ([], [])
        if self.scripted:
            time.sleep(0.005)
        for member in list(self.scripted):
            event = member.next_event()
            updates.append((member, 0, [event]))
            if event.kind == "done":
                self.scripted.remove(member)
                ended.append(member)
        return updates, ended


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> ScriptableEngine:
    return ScriptableEngine(Engine.from_checkpoint(tiny_checkpoint, device="cpu"))


@pytest.fixture(scope="module")
def server(engine, tiny_checkpoint):
    model = describe_model(engine.engine, tiny_checkpoint)
    limits = Limits(max_body_bytes=64_000, max_messages=16, max_n=4)
    app = create_app(engine, model, limits=limits)
    with BackgroundServer(app) as running:
        running.model, running.engine = model, engine
        yield running


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- models and health ----


def test_health_and_models_describe_the_checkpoint(server, client, tiny_checkpoint):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == server.model.id

    models = client.models.list().data
    assert [m.id for m in models] == [server.model.id] == ["tiny-test"]  # the run's name
    card = client.models.retrieve(server.model.id)
    assert card.object == "model" and card.owned_by == "picochat"
    extra = card.model_extra
    params = json.loads((tiny_checkpoint / "meta.json").read_text())["params"]
    assert extra["params"] == params > 0
    assert extra["context_length"] == 64 and extra["step"] == 40

    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.body["code"] == "model_not_found"


# ---- chat completions with the openai client ----


def test_non_streaming_completion_is_a_full_openai_object(server, client):
    answer = client.chat.completions.create(model=server.model.id, messages=user("Hello there!"),
                                            max_tokens=12, temperature=0.7, seed=3)
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    assert answer.model == server.model.id and answer.created > 1_600_000_000
    (choice,) = answer.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert 0 < usage.completion_tokens <= 12 and usage.prompt_tokens > 3
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 12


def test_streaming_matches_non_streaming_for_one_seed(server, client):
    """Same seed, same answer: streamed chunk by chunk, or in one piece."""
    request = dict(model=server.model.id, messages=user("Tell me a story."), max_tokens=16,
                   temperature=1.0, seed=11)
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content


def test_stream_ends_with_done_and_usage_only_when_asked(server):
    body = {"model": server.model.id, "messages": user("Hi"), "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert all("usage" not in event for event in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_options_n_stop_list_content_and_max_completion_tokens(server, client):
    answer = client.chat.completions.create(
        model=server.model.id, n=3, seed=5, temperature=1.0, max_completion_tokens=6, stop=["\n\n"],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Count "}, {"type": "text", "text": "to 3"}]}])
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in answer.choices)
    assert all("\n\n" not in (c.message.content or "") for c in answer.choices)
    assert answer.usage.completion_tokens <= 3 * 6
    streamed = list(client.chat.completions.create(model=server.model.id, n=2, max_tokens=5, messages=user("Hi"),
                                                   stream=True))
    finished = sorted(c.choices[0].index for c in streamed if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]
    # an earlier answer in the history is part of the next prompt
    alone = client.chat.completions.create(model=server.model.id, max_tokens=2, messages=user("And then?"))
    follow = client.chat.completions.create(
        model=server.model.id, max_tokens=2,
        messages=[*user("Hi"), {"role": "assistant", "content": "Hello, friend."}, *user("And then?")])
    assert follow.usage.prompt_tokens > alone.usage.prompt_tokens


def test_thoughts_and_tool_calls_reach_the_openai_client(server, client):
    answer = client.chat.completions.create(model=server.model.id, messages=user(SCRIPTED))
    message = answer.choices[0].message
    assert message.model_extra["reasoning_content"] == "Two plus three; use the tool."
    assert message.content == "\n```tool_call\n2+3\n```\n```tool_output\n5\n```\nThe answer is **5**."
    assert answer.usage.completion_tokens == 14

    chunks = list(client.chat.completions.create(model=server.model.id, messages=user(SCRIPTED), stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thought = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert thought == "Two plus three; use the tool."
    assert "".join(d.content or "" for d in deltas) == message.content

    # sent back as history, the fences become the model's own tool tokens again
    tokenizer = server.engine.tokenizer
    ids = tokenizer.render_for_completion(protocol.engine_messages(
        [protocol.Message(role="user", content=SCRIPTED), protocol.Message(role="assistant", content=message.content),
         protocol.Message(role="user", content="thanks")]))
    assert tokenizer.special_id("<|python_start|>") in ids and tokenizer.special_id("<|output_end|>") in ids
    assert "```" not in tokenizer.decode(ids)


# ---- bad requests: OpenAI error objects, 4xx so that clients do not retry ----


def post(server, body, timeout: float = 30) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + "/v1/chat/completions", content=content,
                      headers={"Content-Type": "application/json"}, timeout=timeout)


def error_of(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("body, param", [
    (b'{"model": "tiny-test", "messages": [', None),                         # malformed JSON
    (b"[1, 2]", None),                                                        # not an object
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),             # missing model
    ({"model": "tiny-test", "messages": "hi"}, "messages"),                   # wrong type
    ({"model": "tiny-test", "messages": []}, "messages"),                     # empty
    ({"model": "tiny-test", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "tiny-test", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, "max_tokens"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12}, "max_tokens"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 65},
     "max_completion_tokens"),                                                # beyond the 64-token context
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "n": 50}, "n"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5}, "stop"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64}, "seed"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}],
      "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}] * 17}, "messages"),
    ({"model": "tiny-test", "messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"model": "tiny-test", "messages": [{"role": "user", "content": "   "}]}, "messages"),
])
def test_bad_requests_are_400_with_an_openai_error(server, body, param):
    error = error_of(post(server, body))
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_oversized_body_unknown_model_and_unknown_route(server, client):
    huge = {"model": "tiny-test", "messages": user("x" * 70_000)}
    assert error_of(post(server, huge), 413)["code"] == "request_too_large"
    error = error_of(post(server, {"model": "gpt-4o", "messages": user("hi")}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error_of(httpx.get(server.url + "/v1/nothing"), 404)["code"] == "not_found"
    assert error_of(httpx.get(server.url + "/v1/chat/completions"), 405)["code"] == "method_not_allowed"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=server.model.id, messages=user("hi"), max_tokens=10**9)
    assert refused.value.status_code == 400 and "max_tokens" in refused.value.message


# ---- concurrency ----


def test_eight_concurrent_streaming_clients_all_finish(server):
    async def one(client: openai.AsyncOpenAI, number: int) -> tuple[str, str | None, int]:
        stream = await client.chat.completions.create(
            model=server.model.id, messages=user(f"Client {number} says hello."), max_tokens=20,
            temperature=1.0, seed=number, stream=True, stream_options={"include_usage": True})
        text, finish, usage = "", None, 0
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        return text, finish, usage

    async def everyone():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        async with client:
            return await asyncio.gather(*(one(client, number) for number in range(8)))

    results = asyncio.run(everyone())
    assert len(results) == 8
    assert all(finish in ("stop", "length") and 0 < usage <= 20 for _, finish, usage in results)
    assert httpx.get(server.url + "/health").json()["active"] == 0


def test_a_long_stream_does_not_block_others_and_stops_when_its_client_leaves(server, engine, client):
    engine.closed.clear()
    body = {"model": server.model.id, "messages": user(ENDLESS), "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(10)]  # the endless answer is under way...
        assert any('"more ' in line for line in received)
        # ...and another client gets its whole answer meanwhile
        other = client.chat.completions.create(model=server.model.id, messages=user("Quick one"), max_tokens=4)
        assert other.choices[0].finish_reason in ("stop", "length")
        assert not engine.closed.is_set()
    # the client hung up: the server notices and closes the generation
    assert engine.closed.wait(timeout=20), "the generation kept running after its client left"
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["active"] == 0


def test_a_non_streaming_request_stops_when_its_client_gives_up(server, engine):
    engine.closed.clear()
    with pytest.raises(httpx.ReadTimeout):  # the client waits one second, then hangs up
        post(server, {"model": server.model.id, "messages": user(ENDLESS)}, timeout=1.0)
    assert engine.closed.wait(timeout=20), "the generation kept running after its client left"


# ---- API key ----


def test_api_key_is_required_when_set(engine, tiny_checkpoint):
    app = create_app(engine, describe_model(engine.engine, tiny_checkpoint), api_key="sesame")
    with BackgroundServer(app) as running:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.get(running.url + "/v1/models", headers=headers)
            assert error_of(response, 401)["code"] == "invalid_api_key"
        assert httpx.get(running.url + "/health").status_code == 200  # health and the page stay open
        assert httpx.get(running.url + "/").status_code == 200
        keyed = openai.OpenAI(base_url=running.url + "/v1", api_key="sesame", max_retries=0)
        answer = keyed.chat.completions.create(model="tiny-test", messages=user("hi"), max_tokens=3)
        assert answer.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=running.url + "/v1", api_key="nope", max_retries=0).models.list()


# ---- the page and the wire format helpers ----


def test_page_and_its_files_are_served_without_external_resources(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    linked = [link for link in re.findall(r'(?:src|href)="([^"]+)"', page.text) if link != "data:,"]
    assert linked and all(link.startswith("/static/") for link in linked)
    for link in linked:
        asset = httpx.get(server.url + link)
        assert asset.status_code == 200 and asset.text
        if link.startswith("/static/vendor/"):  # markdown-it, DOMPurify: their URLs are XML namespaces and
            continue                            # linkify code; test_serve_browser checks no request leaves
        assert "http://" not in asset.text and "https://" not in asset.text and "@import" not in asset.text


def test_tool_fences_round_trip_to_the_models_parts():
    answer = ("Let me compute." + protocol.tool_call_text("2+3") + protocol.tool_output_text("5")
              + "It is 5.")
    messages = [protocol.Message(role="user", content="2+3?"),
                protocol.Message(role="assistant", content=answer),
                protocol.Message(role="user", content="thanks")]
    converted = protocol.engine_messages(messages)
    assert converted[1]["content"] == [
        {"type": "text", "text": "Let me compute."}, {"type": "python", "text": "2+3"},
        {"type": "python_output", "text": "5"}, {"type": "text", "text": "It is 5."}]


def test_system_messages_fold_and_empty_answers_drop():
    messages = [protocol.Message(role="developer", content="Be kind."),
                protocol.Message(role="user", content="a"),
                protocol.Message(role="assistant", content=""),
                protocol.Message(role="user", content="b")]
    assert protocol.engine_messages(messages) == [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "a\n\nb"}]


# ---- the command ----


def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    from workbench.cli import main

    assert main(["serve", str(tmp_path / "nothing-here")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("picochat serve: error:") and "\n" not in error


def test_cli_serves_a_checkpoint_on_localhost(tiny_checkpoint, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "workbench", "serve", str(tiny_checkpoint.parent.parent),
                                "--port", str(port), "--device", "cpu", "--api-key", "k"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in keyed.models.list().data] == ["tiny-test"]
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = (tmp_path / "serve.log").read_text()
    assert f"http://127.0.0.1:{port}/" in output and "API key required" in output


@pytest.mark.parametrize(("checkpoint", "label"), [
    ("nometa", "nometa"),  # a shipped model's folder (no meta.json), given relative: was "/nometa"
    (".", "nometa"),
    ("runs/tiny/int8/step_000300", "tiny/int8/step_000300"),  # an INT8 copy says so (was "tiny/step_000300")
])
def test_the_model_card_names_a_checkpoint_outside_a_run_by_its_folder(engine, tiny_checkpoint, tmp_path,
                                                                          monkeypatch, checkpoint, label):
    folder = tmp_path / "nometa"
    folder.mkdir()
    (folder / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    monkeypatch.chdir(tmp_path / "nometa" if checkpoint == "." else tmp_path)
    with BackgroundServer(create_app(engine, describe_model(engine.engine, checkpoint))) as running:
        card = httpx.get(running.url + "/v1/models").json()["data"][0]
    assert card["checkpoint"] == label and str(tmp_path) not in json.dumps(card)
