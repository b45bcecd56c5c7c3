"""One definition of the sampling settings ([sample] in workbench/config.py): a config file, the
engine's SamplingParams, `picochat chat`'s /settings and the server (real HTTP, the real engine on
the tiny checkpoint) judge one table of good and bad values alike, and name the setting when they
refuse one."""

from __future__ import annotations

import argparse
import json
import math

import httpx
import pytest
import tomli_w

from workbench import config as config_module
from workbench.config import SAMPLE_SETTINGS
from workbench.engine import Engine, SamplingParams
from workbench.engine.chat_cli import add_arguments, apply_settings
from workbench.serve.app import BackgroundServer, ServedModel, create_app, describe_model, prepare_job
from workbench.serve.protocol import ChatRequest, Limits
from workbench.tui.app import PicochatApp

# (setting, value, accepted). The server also keeps OpenAI's temperature ceiling of 2 (a config may
# go higher: tests/test_config.py) and its context limits on max_tokens, so the table stays inside both.
TABLE = [
    ("temperature", 0, True), ("temperature", 0.7, True), ("temperature", 2, True),
    ("temperature", -0.1, False), ("temperature", math.nan, False), ("temperature", math.inf, False),
    ("temperature", "hot", False), ("temperature", True, False),
    ("top_k", 0, True), ("top_k", 40, True), ("top_k", 1_000_000, True),
    ("top_k", -1, False), ("top_k", 2.5, False), ("top_k", 1_000_001, False),
    ("top_p", 0, True), ("top_p", 0.5, True), ("top_p", 1, True),
    ("top_p", -0.1, False), ("top_p", 1.1, False), ("top_p", math.nan, False),
    ("repetition_penalty", 0.5, True), ("repetition_penalty", 1.3, True), ("repetition_penalty", 10, True),
    ("repetition_penalty", 0, False), ("repetition_penalty", 10.5, False), ("repetition_penalty", math.inf, False),
    ("max_tokens", 1, True), ("max_tokens", 8, True),
    ("max_tokens", 0, False), ("max_tokens", 2.0, False), ("max_tokens", 65_537, False),
    ("seed", -1, True), ("seed", 0, True), ("seed", 2**32 - 1, True),
    ("seed", -2, False), ("seed", 2**32, False), ("seed", 1.5, False),
]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Engine.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def server(engine, tiny_checkpoint):
    app = create_app(engine, describe_model(engine, tiny_checkpoint))
    with BackgroundServer(app) as running:
        yield running


def config_verdict(name, value) -> bool:
    _, errors = config_module.parse(tomli_w.dumps({"sample": {name: value}}), "run.toml")
    assert all(error.startswith(f"run.toml:2: [sample] {name}: ") for error in errors), errors
    return not errors


def engine_verdict(name, value) -> bool:
    try:
        SamplingParams(**{name: value})
    except ValueError as error:
        assert str(error).startswith(f"{name}: ")
        return False
    return True


def chat_verdict(name, value) -> bool:
    """/settings NAME=VALUE, typed on a terminal (a float as Python writes it: nan, inf, 2.0)."""
    try:
        apply_settings(SamplingParams(), [f"{name}={value}"])
    except ValueError as error:
        assert name in str(error) and "\n" not in str(error)
        return False
    return True


def serve_verdict(server, name, value) -> bool:
    body = {"model": "tiny-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, name: value}
    reply = httpx.post(server.url + "/v1/chat/completions", content=json.dumps(body),
                       headers={"Content-Type": "application/json"}, timeout=60)
    if reply.status_code == 200:
        return True
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["param"] == name, (reply.status_code, error)
    return False


def test_one_table_is_judged_alike_by_config_engine_chat_and_server(server):
    for name, value, accepted in TABLE:
        verdicts = {"config": config_verdict(name, value), "engine": engine_verdict(name, value),
                    "chat": chat_verdict(name, value), "serve": serve_verdict(server, name, value)}
        assert verdicts == dict.fromkeys(verdicts, accepted), (name, value, verdicts)


def test_every_setting_is_a_request_field_a_chat_option_and_a_param():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = vars(parser.parse_args(["CKPT"]))
    defaults = config_module.SampleSection()
    for name in SAMPLE_SETTINGS:
        assert name in ChatRequest.model_fields and name in options
        assert getattr(SamplingParams(), name) == (None if name == "seed" else getattr(defaults, name))


def test_a_model_without_sample_defaults_gets_the_schemas_max_tokens(engine, monkeypatch):
    monkeypatch.setattr(config_module.SampleSection, "max_tokens", 7)
    chat = ChatRequest(model="tiny-test", messages=[{"role": "user", "content": "hi"}])
    model = ServedModel(id="tiny-test", context_length=engine.model.max_context)
    job = prepare_job(engine, chat, [{"role": "user", "content": "hi"}], model, Limits(), truncate=False)
    assert job.params.max_tokens == 7


async def test_the_chat_screen_starts_from_the_schemas_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module.SampleSection, "temperature", 0.3)
    monkeypatch.setattr(config_module.SampleSection, "max_tokens", 77)
    app = PicochatApp(tmp_path / "runs")
    async with app.run_test(size=(140, 44)) as pilot:
        app.action_show("chat")
        await pilot.pause()
        shown = {key: app.screen.query_one(f"#chat-{key}").value
                 for key in ("temperature", "top_k", "top_p", "max_tokens")}
        assert shown == {"temperature": "0.3", "top_k": "50", "top_p": "1.0", "max_tokens": "77"}
        assert app.screen.sampling() == {"temperature": 0.3, "top_k": 50, "top_p": 1.0, "max_tokens": 77}
