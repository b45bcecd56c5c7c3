"""The OpenAI chat-completions wire format: request validation and the objects the server returns.

Requests are validated strictly (a string where a number belongs is an error, not a guess); unknown
fields are ignored so clients that send extras (`user`, `metadata`, ...) keep working, while
options that would change the answer and that we cannot honour (`tools`, `logprobs`, a JSON
`response_format`, ...) are refused with a 400 that names them.

Status codes: 400 for anything wrong with a request (limits included; a conversation that does not
fit the context with room for max_tokens is `context_length_exceeded`, as OpenAI's, unless the
server runs with --truncate), 401 for a missing or wrong API key, 404 for an unknown model or route,
405 (with Allow) for a wrong method, 413 for a body over the limit, 415 for a body that is not
JSON, 429 (with Retry-After) when too many requests wait, 500 only for an engine failure, with a
generic message (the details go to the server's log).

A final assistant message is a start for the answer to continue (prefill). Lone UTF-16
surrogates, which Python's json.dumps writes for unpaired ones, become U+FFFD.

What picochat adds to the OpenAI objects (nothing the official client rejects):
- thoughts (text between <|think_start|> and <|think_end|>) go in `reasoning_content`, the field
  DeepSeek, vLLM and llama.cpp use, never in `content`;
- calculator calls the model makes, and their results, stay in `content` as fenced blocks with the
  info strings `tool_call` and `tool_output` (the web page draws them as tool cards); when a client
  sends such an answer back in the history, the fences turn back into the model's tool tokens;
- request extras `top_k` and `repetition_penalty`; model objects carry `params` and `context_length`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workbench.config import SAMPLE_SETTINGS, SampleSection, sample_setting_bounds

TOOL_CALL_FENCE = "tool_call"
TOOL_OUTPUT_FENCE = "tool_output"


class ApiError(Exception):
    """Becomes an OpenAI error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers  # of the HTTP response (Retry-After, WWW-Authenticate)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20  # 1 MiB of JSON is far more than any context this model can read
    max_messages: int = 256
    max_tokens: int = 4096  # also capped by the model's context length
    max_n: int = 8
    max_stop: int = 4  # as OpenAI
    max_stop_chars: int = 64


# ---- requests ----


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    """A part of a message's content; only text parts are readable (checked in parse_chat_request,
    so that an image part gets a plain answer rather than a schema error)."""

    type: str
    text: str | None = None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    reasoning_content: str | None = None  # a previous answer's thought: accepted, not re-fed
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


# OpenAI's documented temperature range; a config's [sample] may go higher, a request may not
OPENAI_MAX_TEMPERATURE = 2.0


def sampling_field(name: str, highest: float | None = None) -> Any:
    """An optional request field for one [sample] setting, with the setting's range (config.py's
    SampleSection defines it once for the config, the engine, chat and this API); `highest`
    narrows it where OpenAI documents a narrower one."""
    low, high, low_refused = sample_setting_bounds(name)
    bounds: dict[str, Any] = {"gt" if low_refused else "ge": low}
    if highest is not None or high is not None:
        bounds["le"] = highest if highest is not None else high
    if isinstance(getattr(SampleSection, name), float):
        bounds["allow_inf_nan"] = False  # a JSON NaN or Infinity would pass no range check
    return Field(None, **bounds)


class ChatRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = sampling_field("temperature", highest=OPENAI_MAX_TEMPERATURE)
    top_p: float | None = sampling_field("top_p")  # 0: the most likely token only
    top_k: int | None = sampling_field("top_k")  # extension (as vLLM): 0 = off
    repetition_penalty: float | None = sampling_field("repetition_penalty")  # extension
    max_tokens: int | None = sampling_field("max_tokens")
    max_completion_tokens: int | None = sampling_field("max_tokens")
    stop: str | list[str] | None = None
    seed: int | None = sampling_field("seed")  # -1: random, as in [sample]
    n: int = Field(1, ge=1)
    # Accepted so that clients which always send them keep working; only the neutral values pass.
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


def parse_chat_request(body: bytes, limits: Limits) -> ChatRequest:
    """Bytes of a POST body -> a validated request, or ApiError(400) saying exactly what is wrong."""
    if len(body) > limits.max_body_bytes:
        raise request_too_large(limits)
    try:
        request = ChatRequest.model_validate_json(_without_lone_surrogates(body))
    except ValidationError as error:
        raise validation_error(error) from None
    for number, message in enumerate(request.messages):
        for place, part in enumerate(message.content if isinstance(message.content, list) else []):
            where = f"messages[{number}].content[{place}]"
            if part.type in ("image_url", "input_image", "image"):
                raise ApiError(400, f"{where}: image content is not supported (this model reads text only)",
                               where, "unsupported_content")
            if part.type != "text" or part.text is None:
                raise ApiError(400, f"{where}: only text parts ({{'type': 'text', 'text': ...}}) are supported, "
                               f"got type {part.type[:40]!r}", where, "unsupported_content")
    if len(request.messages) > limits.max_messages:
        raise ApiError(400, f"too many messages: {len(request.messages)} (at most {limits.max_messages})",
                       "messages", "too_many_messages")
    if request.stream_options is not None and not request.stream:
        raise ApiError(400, "stream_options is only allowed when stream is true", "stream_options")
    if request.n > limits.max_n:
        raise ApiError(400, f"n must be at most {limits.max_n}, got {request.n}", "n", "integer_above_max_value")
    stops = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    if len(stops) > limits.max_stop:
        raise ApiError(400, f"stop: at most {limits.max_stop} sequences, got {len(stops)}", "stop")
    if any(not s or len(s) > limits.max_stop_chars for s in stops):
        raise ApiError(400, f"stop: each sequence must have 1 to {limits.max_stop_chars} characters", "stop")
    for name, neutral in (("frequency_penalty", 0.0), ("presence_penalty", 0.0)):
        value = getattr(request, name)
        if value not in (None, neutral):
            raise ApiError(400, f"{name} is not supported (use repetition_penalty)", name, "unsupported_parameter")
    if request.logprobs:
        raise ApiError(400, "logprobs is not supported", "logprobs", "unsupported_parameter")
    if request.tools:
        raise ApiError(400, "tools are not supported: the model calls its built-in calculator by itself",
                       "tools", "unsupported_parameter")
    if request.response_format and request.response_format.get("type", "text") != "text":
        raise ApiError(400, "response_format: only {\"type\": \"text\"} is supported", "response_format",
                       "unsupported_parameter")
    return request


def sampling_settings(request: ChatRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling settings but max_tokens (which the context decides): each the
    request's value, else the model's [sample] value in `defaults`, else [sample]'s default."""
    settings = {}
    for name in SAMPLE_SETTINGS:
        if name != "max_tokens":
            value = getattr(request, name)
            settings[name] = value if value is not None else defaults.get(name, getattr(SampleSection, name))
    return settings


def request_too_large(limits: Limits) -> ApiError:
    return ApiError(413, f"request body is larger than {limits.max_body_bytes} bytes", None, "request_too_large")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(body: bytes) -> bytes:
    """The body with every unpaired surrogate escape (Python's json.dumps writes "\\ud800" for
    one) as U+FFFD; strict JSON parsers, ours included, refuse them, and no tokenizer could encode
    them. Paired ones are one character already once parsed. Bodies without any are untouched."""
    if not _SURROGATE_ESCAPE.search(body):
        return body
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return body  # not JSON (or nested too deep): the validator names the problem

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            return _SURROGATE.sub("\ufffd", item)
        if isinstance(item, list):
            return [clean(x) for x in item]
        if isinstance(item, dict):
            return {clean(key): clean(x) for key, x in item.items()}
        return item

    return json.dumps(clean(value), ensure_ascii=False).encode("utf-8")


def _is_union_branch(part: str | int) -> bool:
    """pydantic names the branch of a union it tried ("str", "list[TextPart]"): not a field name."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def validation_error(error: ValidationError) -> ApiError:
    """The first pydantic problem as one OpenAI-style message with a dotted `param`."""
    problem = error.errors(include_url=False)[0]
    location = [part for part in problem["loc"] if not _is_union_branch(part)]
    param = ""
    for part in location:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    if problem["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {problem['msg']}", None, "invalid_json")
    if problem["type"] == "model_type" and not location:
        return ApiError(400, "the body must be a JSON object", None, "invalid_json")
    message = f"{param}: {problem['msg']}" if param else problem["msg"]
    code = "missing_required_parameter" if problem["type"] == "missing" else "invalid_value"
    return ApiError(400, message, param or None, code)


# ---- messages -> the engine's chat format ----

_FENCE = re.compile(r"\n?```(" + TOOL_CALL_FENCE + "|" + TOOL_OUTPUT_FENCE + r")\n(.*?)\n```\n?", re.DOTALL)


def tool_call_text(expression: str) -> str:
    return f"\n```{TOOL_CALL_FENCE}\n{expression}\n```\n"


def tool_output_text(result: str) -> str:
    return f"```{TOOL_OUTPUT_FENCE}\n{result}\n```\n"


def tool_block_text(kind: str, text: str) -> str:
    """How an engine tool event ("tool_call" or "tool_output") reads in `content`."""
    return tool_call_text(text) if kind == "tool_call" else tool_output_text(text)


def _content_text(message: Message) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text or "" for part in message.content)


def _assistant_parts(text: str) -> str | list[dict[str, str]]:
    """An answer we sent earlier, with its tool fences turned back into python / python_output parts."""
    if f"```{TOOL_CALL_FENCE}" not in text:
        return text
    parts, position = [], 0
    for match in _FENCE.finditer(text):
        if match.start() > position:
            parts.append({"type": "text", "text": text[position:match.start()]})
        kind = "python" if match.group(1) == TOOL_CALL_FENCE else "python_output"
        parts.append({"type": kind, "text": match.group(2)})
        position = match.end()
    if position < len(text):
        parts.append({"type": "text", "text": text[position:]})
    return parts


def engine_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI messages -> the tokenizer's {"role", "content"} list.

    System and developer messages become one system message in front (the tokenizer folds it into
    the first user turn); empty answers are dropped and consecutive turns of one role joined, so the
    turns alternate as the model was trained. It must start with the user's turn; a final assistant
    message is the start of the answer, which the model continues.
    """
    system = "\n\n".join(_content_text(m) for m in messages if m.role in ("system", "developer"))
    turns: list[dict[str, Any]] = []
    for message in messages:
        text = _content_text(message)
        if message.role in ("system", "developer") or (message.role == "assistant" and not text.strip()):
            continue  # an empty earlier answer (stopped before its first token) carries nothing
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["text"] += "\n\n" + text
        else:
            turns.append({"role": message.role, "text": text})
    if not turns or turns[0]["role"] != "user":
        raise ApiError(400, "the conversation must start with a user message (after any system messages)",
                       "messages", "invalid_value")
    result: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for turn in turns:
        content = _assistant_parts(turn["text"]) if turn["role"] == "assistant" else turn["text"]
        result.append({"role": turn["role"], "content": content})
    return result


# ---- responses ----


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(completion_id: str, created: int, model: str, choices: list[dict[str, Any]],
          usage_value: dict[str, int] | None = None, include_usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "system_fingerprint": None, "choices": choices}
    if include_usage:
        body["usage"] = usage_value  # null on every chunk but the last, as OpenAI does
    return body


def delta_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def completion(completion_id: str, created: int, model: str, choices: list[dict[str, Any]],
               usage_value: dict[str, int]) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices, "usage": usage_value}


def message_choice(index: int, content: str, reasoning: str, finish_reason: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}
