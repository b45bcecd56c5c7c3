"""The server under load and abuse, over real HTTP on 127.0.0.1 (httpx, the official openai client,
raw sockets): continuous batching gives each request the tokens it would get alone, a 1 MB
conversation does not stall a running stream, over-long prompts, failures inside generation, and
the protocol and network hardening (415, 413, Host allow-list, CORS, HEAD/405, 429, slow clients).

The model is the real tiny checkpoint (context 64); a failing model is that model with its decode
step made to raise. The endless stream is test_serve's scripted stand-in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
import time

import httpx
import openai
import pytest
import torch

from workbench.engine import Engine, SamplingParams
from workbench.engine.engine import ContextLengthExceeded
from workbench.engine.rows import RowGroup
from workbench.serve import protocol
from workbench.serve.app import BackgroundServer, HttpSettings, create_app, describe_model
from workbench.serve.protocol import Limits

ENDLESS = "keep talking forever"


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> Engine:
    return Engine.from_checkpoint(tiny_checkpoint, device="cpu")


def serve(engine, tiny_checkpoint, **options) -> BackgroundServer:
    """A running server on a free port (use as a context manager)."""
    http = options.pop("http", HttpSettings())
    app = create_app(engine, describe_model(getattr(engine, "engine", engine), tiny_checkpoint), http=http, **options)
    return BackgroundServer(app, http=http)


@pytest.fixture(scope="module")
def server(engine, tiny_checkpoint):
    with serve(engine, tiny_checkpoint, limits=Limits(max_body_bytes=2 << 20, max_messages=300)) as running:
        yield running


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def post(url: str, body, headers: dict | None = None, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + "/v1/chat/completions", content=content, timeout=timeout,
                      headers={"Content-Type": "application/json", **(headers or {})})


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# ---- continuous batching ----


def test_batch_rows_joining_at_different_steps_match_their_answers_alone(engine):
    """Engine level: four prompts join a batch two steps apart (one with n=2), in chunks of 8
    prompt tokens; every greedy row gets exactly the tokens it gets alone."""
    tokenizer = engine.tokenizer
    prompts = [tokenizer.encode(text, bos=True) for text in
               ("First Citizen:\n", "Hello there, how", "We are accounted poor citizens, the patricians good", "x")]
    greedy = SamplingParams(temperature=0.0, max_tokens=1000)
    alone = [engine.generate(prompt, greedy, use_tools=False)[0].tokens for prompt in prompts]
    batch = engine.batch(prefill_chunk=8)
    members, steps, most_rows = [], 0, 0
    while len(members) < len(prompts) or batch.members:
        if steps % 2 == 0 and len(members) < len(prompts):
            members.append(batch.add(prompts[len(members)], greedy, 2 if len(members) == 2 else 1, False))
        _, ended = batch.step()
        assert all(member.error is None for member in ended)
        most_rows = max(most_rows, batch.rows)
        steps += 1
    assert most_rows >= 3  # they did share steps
    for member, expected in zip(members, alone, strict=True):
        assert [row.tokens for row in member.group.rows] == [expected] * member.rows


def test_a_failing_member_ends_alone(engine):
    """One member's own failure (here its row logic raising) ends that member; the others of the
    batch finish with the answers they get alone."""
    tokenizer, greedy = engine.tokenizer, SamplingParams(temperature=0.0, max_tokens=20)
    prompts = [tokenizer.encode(text, bos=True) for text in ("First Citizen:\n", "Hello there", "We are")]
    alone = [engine.generate(prompt, greedy, use_tools=False)[0].tokens for prompt in prompts]
    batch = engine.batch()
    members = [batch.add(prompt, greedy, 1, False) for prompt in prompts]
    batch.step()  # all three prefilled and answering

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    members[1].group.advance = broken
    failed = []
    while batch.members:
        failed += [member for member in batch.step()[1] if member.error is not None]
    assert failed == [members[1]] and str(members[1].error) == "boom"
    assert [members[0].group.rows[0].tokens, members[2].group.rows[0].tokens] == [alone[0], alone[2]]


def test_a_greedy_request_gets_the_same_answer_beside_others(server):
    """HTTP: a greedy request and a seeded sampled one alone, then again beside each other and two
    more with other settings (top_k, top_p = 0, a repetition penalty, n = 2): the same answers."""
    greedy = {"messages": user("First Citizen: speak"), "max_tokens": 40, "temperature": 0}
    seeded = {"messages": user("Hello"), "max_tokens": 40, "temperature": 1.2, "extra_body": {"top_k": 5},
              "seed": 1}
    others = [seeded,
              {"messages": user("We are accounted poor"), "max_tokens": 40, "temperature": 0.9, "top_p": 0,
               "extra_body": {"repetition_penalty": 1.3}, "n": 2},
              {"messages": user("x"), "max_tokens": 40, "temperature": 1.0, "top_p": 0.5, "seed": 7}]

    async def ask(client, body):
        answer = await client.chat.completions.create(model="tiny-test", **body)
        return [choice.message.content for choice in answer.choices]

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        async with client:
            alone = [await ask(client, greedy), await ask(client, seeded)]
            together = await asyncio.gather(ask(client, greedy), *(ask(client, body) for body in others))
        return alone, together

    alone, together = asyncio.run(main())
    assert together[:2] == alone
    assert len(together[2]) == 2


def test_rows_sampled_together_draw_from_their_own_generators():
    """One sample_next call over rows of different requests: each row's token depends on its own
    generator only, as if sampled alone."""
    from workbench.engine.sampling import make_generator, sample_next

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9)
    together = sample_next(logits, params, [make_generator(seed, "cpu") for seed in (1, 2, 3)])
    alone = [sample_next(logits[i:i + 1], params, [make_generator(seed, "cpu")]).item()
             for i, seed in enumerate((1, 2, 3))]
    assert together.tolist() == alone
    draws = {sample_next(logits[:1], params, [make_generator(seed, "cpu")]).item() for seed in range(40)}
    assert len(draws) > 3


def test_n_choices_share_one_prefill_and_differ(server):
    answer = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
        model="tiny-test", messages=user("Tell me"), n=4, max_tokens=12, temperature=1.5, seed=3)
    assert [choice.index for choice in answer.choices] == [0, 1, 2, 3]
    assert len({choice.message.content for choice in answer.choices}) > 1


def test_a_megabyte_conversation_does_not_stall_a_running_stream(engine, tiny_checkpoint):
    """An endless stream runs; a 255-message, ~1 MB conversation arrives. While it is rendered,
    tokenized (off the generation thread) and answered (400, or with --truncate prefilled in
    chunks), the stream keeps receiving text in every third of that time."""
    from test_serve import ScriptableEngine

    text = "All the world's a stage, and all the men and women merely players. " * 58
    big = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i in range(255)]
    scripted = ScriptableEngine(engine)
    for truncate in (False, True):
        with serve(scripted, tiny_checkpoint, truncate=truncate,
                   limits=Limits(max_body_bytes=2 << 20, max_messages=300)) as running:
            arrivals: list[float] = []
            stop = threading.Event()

            def listen(arrivals=arrivals, stop=stop, running=running):
                body = {"model": "tiny-test", "messages": user(ENDLESS), "stream": True}
                with httpx.stream("POST", running.url + "/v1/chat/completions", json=body, timeout=60) as reply:
                    for _ in reply.iter_raw():
                        arrivals.append(time.monotonic())
                        if stop.is_set():
                            return

            listener = threading.Thread(target=listen)
            listener.start()
            while len(arrivals) < 5:
                time.sleep(0.01)
            sent = time.monotonic()
            reply = post(running.url, {"model": "tiny-test", "messages": big, "max_tokens": 4})
            done = time.monotonic()
            stop.set()
            listener.join(timeout=30)
            if truncate:
                assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] <= 64 - 4
            else:
                assert error_of(reply, 400)["code"] == "context_length_exceeded"
            third = (done - sent) / 3
            for part in range(3):
                start = sent + part * third
                assert any(start <= t < start + third for t in arrivals), f"no text in third {part + 1}"


# ---- over-long prompts ----


def test_an_over_long_prompt_is_context_length_exceeded(server):
    error = error_of(post(server.url, {"model": "tiny-test", "messages": user("word " * 200)}), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "maximum context length is 64 tokens" in error["message"]
    # fits alone, but not with the requested answer
    error = error_of(post(server.url, {"model": "tiny-test", "messages": user("word " * 20), "max_tokens": 60}), 400)
    assert error["code"] == "context_length_exceeded"


def test_truncation_keeps_the_framing_and_room_for_max_tokens(engine, tiny_checkpoint):
    tokenizer = engine.tokenizer
    bos, user_start = tokenizer.bos_id, tokenizer.special_id("<|user_start|>")
    end = [tokenizer.special_id("<|user_end|>"), tokenizer.special_id("<|assistant_start|>")]
    many = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        many += [{"role": "user", "content": f"question {i} about the citizens"},
                 {"role": "assistant", "content": f"answer {i}"}]
    many.append({"role": "user", "content": "last question"})
    for messages in (many, user("word " * 300)):
        ids = engine.chat_prompt(messages, SamplingParams(max_tokens=20), reserve=20)
        assert len(ids) + 20 <= 64 and ids[:2] == [bos, user_start] and ids[-2:] == end
        with pytest.raises(ContextLengthExceeded):
            engine.chat_prompt(messages, SamplingParams(max_tokens=20), truncate=False, reserve=20)
    assert tokenizer.decode(engine.chat_prompt(many, SamplingParams(), reserve=20)).startswith(
        "<|bos|><|user_start|>Be brief.\n\n")  # the system text goes with the first turn kept
    with serve(engine, tiny_checkpoint, truncate=True) as running:
        answer = post(running.url, {"model": "tiny-test", "messages": many, "max_tokens": 20}).json()
        assert answer["usage"]["prompt_tokens"] + 20 <= 64


def test_each_message_is_encoded_once_however_much_is_dropped(engine, monkeypatch):
    """A long chat cut to fit a 64-token context: one encode per message (plus one for the system
    text folded into the first turn kept), not one re-render of the conversation per dropped turn."""
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(100):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    messages.append({"role": "user", "content": "last"})
    calls = []
    encode = type(engine.tokenizer).encode
    monkeypatch.setattr(type(engine.tokenizer), "encode", lambda self, text, bos=False: calls.append(text)
                        or encode(self, text, bos))
    engine.chat_prompt(messages, SamplingParams(max_tokens=10))
    assert len(messages) - 1 <= len(calls) <= len(messages) + 2


def test_a_final_assistant_message_is_continued(server, engine):
    messages = [*user("Hello"), {"role": "assistant", "content": "Well, my friend"}]
    ids = engine.chat_prompt(messages, SamplingParams(max_tokens=8))
    assert engine.tokenizer.decode(ids).endswith("<|assistant_start|>Well, my friend")
    answer = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
        model="tiny-test", messages=messages, max_tokens=8)
    assert answer.usage.prompt_tokens == len(ids)


# ---- stop strings and tool blocks ----


def test_stop_strings_apply_to_tool_blocks_in_the_content(engine):
    """A stop string inside a calculator call as the content shows it ("```tool_call\\n2+3"): the
    answer ends there, the tool never runs. One that spans a block's edge ("see.\\n```", text then
    call; "```\\nIt", output then text) ends it too."""
    tokenizer = engine.tokenizer
    script = [*tokenizer.encode("Let me see."), tokenizer.special_id("<|python_start|>"), *tokenizer.encode("2+3"),
              tokenizer.special_id("<|python_end|>"), *tokenizer.encode("It is 5.")]
    whole = "Let me see.\n```tool_call\n2+3\n```\n```tool_output\n5\n```\nIt is 5."
    for stop, expected, reason in (("2+3", "Let me see.\n```tool_call\n", "stop"),
                                   ("see.\n```tool", "Let me ", "stop"),
                                   ("```\nIt", "Let me see.\n```tool_call\n2+3\n```\n```tool_output\n5\n", "stop"),
                                   ("nowhere", whole, None)):
        group = RowGroup(tokenizer, [tokenizer.bos_id], SamplingParams(temperature=0, stop=[stop]),
                         tool_text=protocol.tool_block_text)
        text = ""
        for token in script:
            if group.finished:
                break
            while group.rows[0].forced:  # tool output the engine forces
                _, produced = group.advance(torch.zeros(1, tokenizer.vocab_size))
                text += "".join(protocol.tool_block_text(e.kind, e.text) if e.kind.startswith("tool") else e.text
                                for _, events in produced for e in events)
            logits = torch.full((1, tokenizer.vocab_size), -1e4)
            logits[0, token] = 1e4
            _, produced = group.advance(logits)
            text += "".join(protocol.tool_block_text(e.kind, e.text) if e.kind.startswith("tool") else e.text
                            for _, events in produced for e in events)
        assert (text == expected if reason else text.startswith(expected)) and group.rows[0].finish_reason == reason
        completion = group.rows[0].completion(1)
        assert [call["expression"] for call in completion.tool_calls] == ([] if stop in ("2+3", "see.\n```tool")
                                                                          else ["2+3"])


# ---- failures inside generation ----


def test_a_failure_keeps_the_streamed_text_and_tells_nothing_but_the_log(engine, tiny_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="picochat.serve")
    steps = [0]
    real_step = engine.model.decode_step

    def failing_step(*args):
        steps[0] += 1
        if steps[0] > 3:
            raise RuntimeError(f"exploded in {tiny_checkpoint}/secret.py")
        return real_step(*args)

    with serve(engine, tiny_checkpoint) as running:
        engine.model.decode_step = failing_step
        try:
            body = {"model": "tiny-test", "messages": user("Tell me about the citizens"), "max_tokens": 30,
                    "temperature": 1.0, "seed": 0, "stream": True}
            with httpx.stream("POST", running.url + "/v1/chat/completions", json=body, timeout=60) as reply:
                events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
            steps[0] = 0
            whole = post(running.url, {k: v for k, v in body.items() if k != "stream"})
        finally:
            del engine.model.decode_step
        health = httpx.get(running.url + "/health").json()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    chunks = [json.loads(event) for event in events[:-2]]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    assert sum(1 for chunk in chunks if chunk["choices"][0]["delta"].get("content") is not None) >= 2
    assert error_of(whole, 500)["code"] == "generation_failed"
    for text in (json.dumps(error), whole.text):
        assert "secret" not in text and str(tiny_checkpoint) not in text and "RuntimeError" not in text
    assert health["failed"] == 2
    logged = "\n".join(record.getMessage() + str(record.exc_info) for record in caplog.records)
    assert "generation failed" in logged and "secret.py" in logged  # the traceback is in the log
    assert any("POST /v1/chat/completions 200" in record.getMessage() for record in caplog.records)


def test_no_response_holds_a_path_of_this_machine(server, tiny_checkpoint):
    folder = str(tiny_checkpoint.parent.parent.parent)
    for response in (httpx.get(server.url + "/v1/models"), httpx.get(server.url + "/v1/models/tiny-test"),
                     httpx.get(server.url + "/health"), httpx.get(server.url + "/nothing")):
        assert folder not in response.text and "/tmp" not in response.text
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["checkpoint"] == "run/step_000040"


# ---- the protocol ----


def test_bodies_must_be_json(server):
    body = json.dumps({"model": "tiny-test", "messages": user("hi"), "max_tokens": 2})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        error = error_of(post(server.url, body, {"Content-Type": content_type}), 415)
        assert error["code"] == "unsupported_media_type"
    assert post(server.url, body, {"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_too_large_bodies_are_413_even_chunked(engine, tiny_checkpoint):
    with serve(engine, tiny_checkpoint, limits=Limits(max_body_bytes=1000)) as running:
        big = json.dumps({"model": "tiny-test", "messages": user("x" * 2000)}).encode()
        assert error_of(post(running.url, big), 413)["code"] == "request_too_large"
        chunked = httpx.post(running.url + "/v1/chat/completions", content=iter([big[:500], big[500:]]),
                             headers={"Content-Type": "application/json"})
        assert error_of(chunked, 413)["code"] == "request_too_large"


def test_host_allow_list(engine, tiny_checkpoint, server):
    port = server.port
    for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LocalHost"):
        assert httpx.get(server.url + "/v1/models", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        assert error_of(httpx.get(server.url + "/v1/models", headers={"Host": host}), 400)["code"] == "invalid_host"
    with serve(engine, tiny_checkpoint, http=HttpSettings(allowed_hosts=("picochat.lan",))) as running:
        assert httpx.get(running.url + "/health", headers={"Host": "picochat.lan:80"}).status_code == 200
        assert httpx.get(running.url + "/health", headers={"Host": "evil.example"}).status_code == 400


def test_cors_is_opt_in_and_wrong_methods_name_the_allowed_ones(engine, tiny_checkpoint, server):
    preflight = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    refused = httpx.options(server.url + "/v1/chat/completions", headers=preflight)
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert "access-control-allow-origin" not in refused.headers
    head = httpx.head(server.url + "/v1/chat/completions")
    assert head.status_code == 405 and head.headers["allow"] == "POST"
    assert httpx.head(server.url + "/health").status_code == 200
    with serve(engine, tiny_checkpoint, http=HttpSettings(cors_origins=("http://localhost:5173",))) as running:
        allowed = httpx.options(running.url + "/v1/chat/completions", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
        other = httpx.options(running.url + "/v1/chat/completions", headers={**preflight, "Origin": "http://evil"})
        assert other.headers.get("access-control-allow-origin") != "http://evil"
        answer = post(running.url, {"model": "tiny-test", "messages": user("hi"), "max_tokens": 2},
                      {"Origin": "http://localhost:5173"})
        assert answer.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_busy_is_429_with_retry_after_and_n_beyond_the_queue_is_400(engine, tiny_checkpoint):
    from test_serve import ScriptableEngine

    with serve(ScriptableEngine(engine), tiny_checkpoint, max_active=1, max_waiting=2) as running:
        error = error_of(post(running.url, {"model": "tiny-test", "messages": user("hi"), "n": 3}), 400)
        assert error["param"] == "n"  # could never be served: not a 429 to retry forever
        streams = []
        try:
            for _ in range(3):  # one generating, two waiting
                streams.append(httpx.stream("POST", running.url + "/v1/chat/completions", timeout=60,
                                            json={"model": "tiny-test", "messages": user(ENDLESS), "stream": True}))
                streams[-1].__enter__()
            deadline = time.monotonic() + 30
            while httpx.get(running.url + "/health").json()["waiting"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            busy = post(running.url, {"model": "tiny-test", "messages": user("hi")})
            assert error_of(busy, 429)["code"] == "server_busy" and busy.headers["retry-after"] == "1"
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)


@pytest.mark.parametrize("content, accepted", [
    ("top_p", True), ("surrogate", True), ("image", False)])
def test_top_p_zero_lone_surrogates_and_image_parts(server, content, accepted):
    body = {"model": "tiny-test", "messages": user("hi there"), "max_tokens": 3}
    if content == "top_p":
        body["top_p"] = 0
    elif content == "surrogate":
        body["messages"] = user("broken \ud800 half")  # json.dumps writes it as \ud800
    else:
        body["messages"] = [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    reply = post(server.url, json.dumps(body))
    if accepted:
        assert reply.status_code == 200, reply.text
    else:
        error = error_of(reply, 400)
        assert "image content is not supported" in error["message"]
        assert error["param"] == "messages[0].content[1]"


# ---- slow clients ----


def test_slow_clients_are_cut_off_and_do_not_pin_the_server(engine, tiny_checkpoint):
    """300 connections send their headers and part of a body, then nothing (slowloris); 20 more
    never finish their headers. The server closes them all after the read timeout and keeps
    answering."""
    with serve(engine, tiny_checkpoint, http=HttpSettings(read_timeout=1.0, max_connections=1000)) as running:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{\"model\": ")
        sockets = []
        try:
            for number in range(320):
                connection = socket.create_connection(("127.0.0.1", running.port), timeout=10)
                connection.sendall(head if number < 300 else b"GET /health HTTP/1.1\r\nHost: 12")
                sockets.append(connection)
            open_ones = set(sockets)
            deadline = time.monotonic() + 30
            while open_ones and time.monotonic() < deadline:
                readable, _, _ = select.select(list(open_ones), [], [], 0.5)
                for connection in readable:
                    try:
                        if not connection.recv(4096):
                            open_ones.discard(connection)
                    except OSError:
                        open_ones.discard(connection)
            assert not open_ones, f"{len(open_ones)} slow connections still open"
            assert httpx.get(running.url + "/health").status_code == 200
        finally:
            for connection in sockets:
                connection.close()


def test_connections_beyond_the_cap_are_503(engine, tiny_checkpoint):
    with serve(engine, tiny_checkpoint, http=HttpSettings(max_connections=3)) as running:
        idle = [socket.create_connection(("127.0.0.1", running.port), timeout=10) for _ in range(3)]
        try:
            deadline = time.monotonic() + 10  # until the server has accepted them
            while httpx.get(running.url + "/health").status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert httpx.get(running.url + "/health").status_code == 503
        finally:
            for connection in idle:
                connection.close()
        deadline = time.monotonic() + 10
        while httpx.get(running.url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(running.url + "/health").status_code == 200
