"""The ASGI app: OpenAI-compatible chat completions, the model list, health, and the chat page.

`create_app(engine, model)` builds a FastAPI app around one engine. Generation happens on the
scheduler's thread, in one continuous batch (see scheduler.py); the handlers here validate, render
and tokenize the conversation (on a worker thread, never on the generation thread), queue it, and
turn engine events into OpenAI objects, streamed as server-sent events or gathered into one
response. See protocol.py for what picochat adds to the OpenAI format (thoughts, tool calls).

Failures: a client gets an OpenAI error object with a message about its request, never a path or
an exception's text; the server's log (logger `picochat.serve`) gets the traceback, and one line
per request (guard.py). A stream that fails midway keeps what it sent, then gets an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from workbench import checkpoint_files
from workbench.config import SAMPLE_SETTINGS, SampleSection
from workbench.serve import protocol
from workbench.serve.guard import Gate, allowed_hosts, guarded_h11
from workbench.serve.protocol import ApiError, Limits
from workbench.serve.scheduler import END, Busy, Failure, Job, Scheduler

log = logging.getLogger("picochat.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DISCONNECT_CHECK_SECONDS = 0.5


@dataclass
class ServedModel:
    """What /v1/models says about the model, and the sampling defaults from its config."""

    id: str
    params: int = 0
    context_length: int | None = None  # None: no limit (models that re-feed a fixed window)
    created: int = field(default_factory=protocol.now)
    checkpoint: str = ""  # RUN/step_N, never a path
    step: int | None = None
    stage: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # temperature, top_k, top_p, repetition_penalty, max_tokens

    def card(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "picochat",
                "params": self.params, "context_length": self.context_length, "checkpoint": self.checkpoint,
                "step": self.step, "stage": self.stage}


def describe_model(engine: Any, checkpoint: str | Path | None = None, name: str | None = None) -> ServedModel:
    """A ServedModel from the engine (size, context) and the checkpoint folder's config/meta files."""
    model = engine.model
    context = getattr(model, "max_context", None) if getattr(model, "supports_kv_cache", False) else None
    served = ServedModel(id=name or "picochat", params=int(model.num_params()), context_length=context)
    if checkpoint is None and getattr(engine, "checkpoint", None) is not None:
        checkpoint = engine.checkpoint.path
    if checkpoint is not None:
        folder = Path(checkpoint)
        served.checkpoint = checkpoint_files.checkpoint_label(folder)  # no path of this machine
        config, meta = checkpoint_files.read_config(folder), checkpoint_files.read_meta(folder)
        run_name = config.get("run", {}).get("name")
        served.stage, served.step = meta.get("stage"), meta.get("step")
        if name is None and run_name:
            suffix = f"-{served.stage}" if served.stage in ("sft", "grpo") else ""
            served.id = f"{run_name}{suffix}"
        sample = config.get("sample", {})
        # a model's seed stays out: every request without one would get the same answer
        served.defaults = {key: sample[key] for key in SAMPLE_SETTINGS if key != "seed" and key in sample}
    return served


@dataclass
class HttpSettings:
    """What the server accepts from the network (besides protocol.Limits)."""

    host: str = "127.0.0.1"  # the bound address: a Host header naming it is served
    allowed_hosts: tuple[str, ...] = ()  # more Host names to serve ("*": any)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (none: same origin only)
    read_timeout: float = 10.0  # seconds for a request's head and body to arrive
    keep_alive: int = 5  # seconds an idle kept-alive connection stays open
    max_connections: int = 256  # beyond: 503


def create_app(engine: Any, model: ServedModel, api_key: str | None = None, limits: Limits | None = None,
               max_active: int = 16, max_waiting: int = 256, truncate: bool = False,
               http: HttpSettings | None = None, prefill_chunk: int = 64):
    """The app, wrapped in the Host check and access log (guard.Gate), and with CORS when asked.

    max_active: most answers (rows) generating at once; max_waiting: most waiting; truncate: fit
    an over-long conversation by dropping its oldest turns instead of answering 400."""
    limits = limits or Limits()
    http = http or HttpSettings()
    scheduler = Scheduler(engine.batch(prefill_chunk=prefill_chunk), max_active=max_active, max_waiting=max_waiting)
    most_choices = min(limits.max_n, max_active, max_waiting)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="picochat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.model = model

    # ---- errors: every failure is an OpenAI error object ----

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(ApiError(error.status_code, message, None, code).body(), status_code=error.status_code,
                            headers=getattr(error, "headers", None))  # 405 names the methods in Allow

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(error)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        body = ApiError(500, "internal error; the details are in the server's log", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", None,
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    # ---- the page and health ----

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.id, "active": scheduler.active_count,
                "waiting": scheduler.waiting_count, "completed": scheduler.completed,
                "cancelled": scheduler.cancelled, "failed": scheduler.failed,
                "device": str(getattr(engine, "device", "")), "auth": api_key is not None}

    # ---- models ----

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model.card()]}

    @app.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"])
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if model_id != model.id:
            raise unknown_model(model_id)
        return model.card()

    def unknown_model(model_id: str) -> ApiError:
        return ApiError(404, f"the model '{model_id[:200]}' does not exist; this server serves '{model.id}'",
                        "model", "model_not_found")

    # ---- chat completions ----

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        require_json(request)
        chat = protocol.parse_chat_request(await read_body(request, limits), limits)
        if chat.model != model.id:
            raise unknown_model(chat.model)
        if chat.n > most_choices:
            raise ApiError(400, f"n must be at most {most_choices} on this server, got {chat.n}", "n",
                           "integer_above_max_value")
        messages = protocol.engine_messages(chat.messages)
        # Rendering and tokenizing take a while for a long conversation: on a worker thread, so
        # neither the event loop nor the generation thread waits for them.
        job = await asyncio.to_thread(prepare_job, engine, chat, messages, model, limits, truncate)
        queue: asyncio.Queue = asyncio.Queue()
        try:
            ticket = scheduler.submit(job, queue)
        except Busy as error:
            raise ApiError(429, f"the server is busy: {error}", None, "server_busy", kind="rate_limit_error",
                           headers={"Retry-After": "1"}) from None
        answer = Answer(request, queue, ticket, chat.n, model.id, len(job.prompt_ids))
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(answer.sse(include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await answer.gather())

    if http.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(http.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return Gate(app, allowed_hosts(http.host, http.allowed_hosts))


_JSON_MEDIA = re.compile(r"application/(?:[\w.+-]+\+)?json$")


def require_json(request: Request) -> None:
    """JSON bodies only: a form or text/plain body is what any web page can post cross-site
    without asking (a 'simple' request), so it is refused before it is read."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not _JSON_MEDIA.match(media):
        shown = media[:80] or "none"
        raise ApiError(415, f"the body must be JSON: send 'Content-Type: application/json' (got {shown})",
                       None, "unsupported_media_type")


async def read_body(request: Request, limits: Limits) -> bytes:
    """The POST body, refusing it as soon as it grows past the limit (chunked uploads too)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise protocol.request_too_large(limits)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limits.max_body_bytes:
            raise protocol.request_too_large(limits)
    return bytes(body)


def prepare_job(engine: Any, chat: protocol.ChatRequest, messages: list[dict[str, Any]], model: ServedModel,
                limits: Limits, truncate: bool) -> Job:
    """The prompt's ids and the sampling settings of its choices (on a worker thread).

    max_tokens: the request's, refused above the limits and the context; unset, the model's
    default, cut to what the context leaves after the prompt. A prompt that leaves no room for
    max_tokens is a 400 context_length_exceeded, or with `truncate` loses its oldest turns."""
    from workbench.engine import SamplingParams  # torch: imported on first request, not at import time
    from workbench.engine.engine import ContextLengthExceeded
    from workbench.tokenizer import ConversationError

    requested = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    param = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
    context = model.context_length
    ceiling = limits.max_tokens if context is None else min(limits.max_tokens, context - 1)
    if requested is not None and requested > ceiling:
        raise ApiError(400, f"{param} is too large: {requested}; this server allows at most {ceiling}", param,
                       "integer_above_max_value")
    default = min(int(model.defaults.get("max_tokens", SampleSection.max_tokens)), ceiling)
    if requested is not None:
        reserve = requested
    else:  # the default adapts to the prompt; when cutting the prompt, keep room for a fair answer
        reserve = min(default, context // 2) if truncate and context else 1
    stops = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or [])
    settings = {**protocol.sampling_settings(chat, model.defaults), "max_tokens": max(reserve, 1), "stop": stops}
    try:
        params = SamplingParams(**settings)
        prompt = engine.chat_prompt(messages, params, truncate=truncate, reserve=reserve)
    except ConversationError as error:  # the tokenizer refused the conversation: the client's problem
        raise ApiError(400, f"messages: {error}", "messages", "invalid_value") from None
    except ContextLengthExceeded as error:
        raise ApiError(400, str(error), "messages", "context_length_exceeded") from None
    except ValueError as error:  # settings the sampler refuses (a model default out of range, say)
        raise ApiError(400, str(error), None, "invalid_value") from None
    if requested is None:
        room = default if context is None else min(default, context - len(prompt))
        params.max_tokens = max(room, 1)
    # n choices share one prefill and one sampler seeded with `seed`: each differs from the others,
    # and the set is reproducible
    return Job(prompt, params, chat.n, use_tools=True, tool_text=protocol.tool_block_text)


class ClientGone(Exception):
    pass


class Answer:
    """The events of one request's choices (tagged by choice index, on one queue) as OpenAI objects."""

    def __init__(self, request: Request, queue: asyncio.Queue, ticket, n: int, model_id: str, prompt_tokens: int):
        self.request, self.queue, self.ticket, self.n = request, queue, ticket, n
        self.model_id, self.prompt_tokens = model_id, prompt_tokens
        self.id, self.created = protocol.new_completion_id(), protocol.now()
        self.last_check = time.monotonic()

    async def events(self) -> AsyncIterator[tuple[int, Any]]:
        """(choice index, event) until the request ended; raises ClientGone when the client left
        and ApiError(500) when generation failed."""
        while True:
            if self.queue.empty():  # wait, looking in on the client now and then
                try:
                    index, item = await asyncio.wait_for(self.queue.get(), DISCONNECT_CHECK_SECONDS)
                except asyncio.TimeoutError:  # noqa: UP041 (not the builtin one before Python 3.11)
                    await self.check_client()
                    continue
            else:
                index, item = self.queue.get_nowait()
            if item is END:
                return
            if isinstance(item, Failure):
                raise ApiError(500, item.message, kind="server_error", code="generation_failed")
            if time.monotonic() - self.last_check > DISCONNECT_CHECK_SECONDS:
                await self.check_client()
            yield index, item

    async def check_client(self) -> None:
        self.last_check = time.monotonic()
        if await self.request.is_disconnected():
            raise ClientGone()

    async def gather(self) -> dict[str, Any]:
        n = self.n
        texts, thoughts = [""] * n, [""] * n
        finish, completion_tokens = ["stop"] * n, 0
        try:
            async for index, event in self.events():
                if event.kind == "done":
                    finish[index] = event.finish_reason or "stop"
                    completion_tokens += event.completion_tokens
                elif event.kind == "thought":
                    thoughts[index] += event.text
                else:
                    texts[index] += content_piece(event)
        except ClientGone:
            return {}  # nobody is listening for the answer
        finally:
            self.ticket.cancel()
        choices = [protocol.message_choice(i, texts[i], thoughts[i], finish[i]) for i in range(n)]
        return protocol.completion(self.id, self.created, self.model_id, choices,
                                   protocol.usage(self.prompt_tokens, completion_tokens))

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], usage_value: dict[str, int] | None = None) -> str:
            body = protocol.chunk(self.id, self.created, self.model_id, choices, usage_value, include_usage)
            return sse_line(body)

        completion_tokens = 0
        pending: list[str] = []  # events that arrived together go out in one write
        try:
            for index in range(self.n):
                yield chunk([protocol.delta_choice(index, {"role": "assistant", "content": ""})])
            async for index, event in self.events():
                if event.kind == "done":
                    completion_tokens += event.completion_tokens
                    pending.append(chunk([protocol.delta_choice(index, {}, event.finish_reason or "stop")]))
                elif event.kind == "thought":
                    pending.append(chunk([protocol.delta_choice(index, {"reasoning_content": event.text})]))
                elif event.text:
                    pending.append(chunk([protocol.delta_choice(index, {"content": content_piece(event)})]))
                if pending and self.queue.empty():
                    yield "".join(pending)
                    pending = []
            if pending:
                yield "".join(pending)
            if include_usage:
                yield chunk([], protocol.usage(self.prompt_tokens, completion_tokens))
            yield "data: [DONE]\n\n"
        except ClientGone:
            return
        except ApiError as error:  # headers are sent already: what was generated goes out, then the error
            yield "".join(pending) + sse_line(error.body())
            yield "data: [DONE]\n\n"
        finally:
            self.ticket.cancel()


def content_piece(event: Any) -> str:
    if event.kind in ("tool_call", "tool_output"):
        return protocol.tool_block_text(event.kind, event.text)
    return event.text


def sse_line(body: dict[str, Any]) -> str:
    return "data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n\n"


# ---- running the app ----


def uvicorn_config(app: Any, host: str, port: int, http: HttpSettings, log_level: str = "info"):
    """uvicorn's settings for `picochat serve` and BackgroundServer alike: the guarded h11
    protocol (read deadlines), a cap on connections, a short keep-alive; our own access log."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False,
                          http=guarded_h11(http.read_timeout), limit_concurrency=http.max_connections,
                          timeout_keep_alive=http.keep_alive, timeout_graceful_shutdown=5)


# ---- running the app in this process (tests, bench) ----


class BackgroundServer:
    """uvicorn serving `app` on a thread; port 0 picks a free port (read `.port` after start)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, http: HttpSettings | None = None):
        import uvicorn

        self.server = uvicorn.Server(uvicorn_config(app, host, port, http or HttpSettings(), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="picochat-server", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
