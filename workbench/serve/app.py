"""The ASGI app: OpenAI-compatible chat completions, the model list, health, and the chat page.

`create_app(engine, model)` builds a FastAPI app around one engine. Generation happens on the
scheduler's thread (see scheduler.py); the handlers here validate, queue, and turn engine events into
OpenAI objects, streamed as server-sent events or gathered into one response. See protocol.py for
what picochat adds to the OpenAI format (thoughts, tool calls, `params`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
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

from workbench.serve import protocol
from workbench.serve.protocol import ApiError, Limits
from workbench.serve.scheduler import END, Busy, Failure, Scheduler

STATIC_DIR = Path(__file__).resolve().parent / "static"
DISCONNECT_CHECK_SECONDS = 0.5


@dataclass
class ServedModel:
    """What /v1/models says about the model, and the sampling defaults from its config."""

    id: str
    params: int = 0
    context_length: int | None = None  # None: no limit (models that re-feed a fixed window)
    created: int = field(default_factory=protocol.now)
    checkpoint: str = ""
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
        served.checkpoint = str(folder)
        config, meta = _read_json(folder / "config.json"), _read_json(folder / "meta.json")
        run_name = config.get("run", {}).get("name")
        served.stage, served.step = meta.get("stage"), meta.get("step")
        if name is None and run_name:
            suffix = f"-{served.stage}" if served.stage in ("sft", "grpo") else ""
            served.id = f"{run_name}{suffix}"
        sample = config.get("sample", {})
        served.defaults = {key: sample[key] for key in
                           ("temperature", "top_k", "top_p", "repetition_penalty", "max_tokens") if key in sample}
    return served


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def create_app(engine: Any, model: ServedModel, api_key: str | None = None, limits: Limits | None = None,
               max_active: int = 16, max_waiting: int = 256) -> FastAPI:
    limits = limits or Limits()
    scheduler = Scheduler(max_active=max_active, max_waiting=max_waiting)

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
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(ApiError(error.status_code, message, None, code).body(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(error)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        body = ApiError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", None,
                           "invalid_api_key")

    # ---- the page and health ----

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.id, "active": scheduler.active_count,
                "waiting": scheduler.waiting_count, "completed": scheduler.completed,
                "device": str(getattr(engine, "device", "")), "auth": api_key is not None}

    # ---- models ----

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model.card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if model_id != model.id:
            raise unknown_model(model_id)
        return model.card()

    def unknown_model(model_id: str) -> ApiError:
        return ApiError(404, f"the model '{model_id}' does not exist; this server serves '{model.id}'",
                        "model", "model_not_found")

    # ---- chat completions ----

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        chat = protocol.parse_chat_request(await read_body(request, limits), limits)
        if chat.model != model.id:
            raise unknown_model(chat.model)
        messages = protocol.engine_messages(chat.messages)
        # Rendering checks the conversation (a 400 now beats a failure mid-stream); off the event loop,
        # since a long conversation takes a while to tokenize.
        prompt_tokens = await asyncio.to_thread(count_prompt_tokens, engine, messages)
        choices = sampling_for_choices(chat, model, limits)
        queue: asyncio.Queue = asyncio.Queue()
        tickets = []
        try:
            for index, params in enumerate(choices):
                start = functools.partial(engine.stream_chat, messages, params)
                tickets.append(scheduler.submit(start, queue=queue, tag=index))
        except Busy as error:
            for ticket in tickets:
                ticket.cancel()
            raise ApiError(429, f"the server is busy: {error}", None, "server_busy", kind="rate_limit_error") from None
        answer = Answer(request, queue, tickets, model.id, prompt_tokens)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return StreamingResponse(answer.sse(include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await answer.gather())

    return app


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


def count_prompt_tokens(engine: Any, messages: list[dict[str, Any]]) -> int:
    from workbench.tokenizer import ConversationError

    try:
        return len(engine.tokenizer.render_for_completion(messages))
    except ConversationError as error:  # the tokenizer refused the conversation: the client's problem
        raise ApiError(400, f"messages: {error}", "messages", "invalid_value") from None


def sampling_for_choices(chat: protocol.ChatRequest, model: ServedModel, limits: Limits) -> list[Any]:
    """One SamplingParams per requested choice; max_tokens checked against the limits and the context."""
    from workbench.engine import SamplingParams  # torch: imported on first request, not at import time

    requested = chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens
    param = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
    ceiling = limits.max_tokens if model.context_length is None else min(limits.max_tokens, model.context_length)
    if requested is not None and requested > ceiling:
        raise ApiError(400, f"{param} is too large: {requested}; this server allows at most {ceiling}", param,
                       "integer_above_max_value")
    # A conversation longer than the context is not refused: the engine drops its oldest turns (a chat
    # page can go on talking to a 128-token model), and an answer that reaches the end of the context
    # finishes with "length".
    max_tokens = requested or min(int(model.defaults.get("max_tokens", 256)), ceiling)
    defaults = model.defaults
    stops = [chat.stop] if isinstance(chat.stop, str) else list(chat.stop or [])
    base = {
        "temperature": chat.temperature if chat.temperature is not None else defaults.get("temperature", 0.8),
        "top_k": chat.top_k if chat.top_k is not None else defaults.get("top_k", 50),
        "top_p": chat.top_p if chat.top_p is not None else defaults.get("top_p", 1.0),
        "repetition_penalty": (chat.repetition_penalty if chat.repetition_penalty is not None
                               else defaults.get("repetition_penalty", 1.0)),
        "max_tokens": max_tokens,
        "stop": stops,
    }
    # n choices from one seed must still differ from each other, and each stays reproducible.
    return [SamplingParams(**base, seed=None if chat.seed is None else chat.seed + index)
            for index in range(chat.n)]


class ClientGone(Exception):
    pass


class Answer:
    """The events of one request's choices (all on one queue, tagged by choice index) as OpenAI objects."""

    def __init__(self, request: Request, queue: asyncio.Queue, tickets: list, model_id: str, prompt_tokens: int):
        self.request, self.queue, self.tickets = request, queue, tickets
        self.model_id, self.prompt_tokens = model_id, prompt_tokens
        self.id, self.created = protocol.new_completion_id(), protocol.now()
        self.last_check = time.monotonic()

    def cancel(self) -> None:
        for ticket in self.tickets:
            ticket.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Any]]:
        """(choice index, event) until every choice ended; raises ClientGone when the client left."""
        ended = 0
        while ended < len(self.tickets):
            if self.queue.empty():  # wait, looking in on the client now and then
                try:
                    index, item = await asyncio.wait_for(self.queue.get(), DISCONNECT_CHECK_SECONDS)
                except asyncio.TimeoutError:  # noqa: UP041 (not the builtin one before Python 3.11)
                    await self.check_client()
                    continue
            else:
                index, item = self.queue.get_nowait()
            if item is END:
                ended += 1
                continue
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
        n = len(self.tickets)
        texts, thoughts = [""] * n, [""] * n
        finish, completion_tokens = ["stop"] * n, 0
        try:
            async for index, event in self.events():
                if event.kind == "done":
                    finish[index] = event.finish_reason or "stop"
                    completion_tokens += event.completion_tokens
                    self.prompt_tokens = event.prompt_tokens or self.prompt_tokens
                elif event.kind == "thought":
                    thoughts[index] += event.text
                else:
                    texts[index] += content_piece(event)
        except ClientGone:
            return {}  # nobody is listening for the answer
        finally:
            self.cancel()
        choices = [protocol.message_choice(i, texts[i], thoughts[i], finish[i]) for i in range(n)]
        return protocol.completion(self.id, self.created, self.model_id, choices,
                                   protocol.usage(self.prompt_tokens, completion_tokens))

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], usage_value: dict[str, int] | None = None) -> str:
            body = protocol.chunk(self.id, self.created, self.model_id, choices, usage_value, include_usage)
            return sse_line(body)

        completion_tokens = 0
        try:
            for index in range(len(self.tickets)):
                yield chunk([protocol.delta_choice(index, {"role": "assistant", "content": ""})])
            pending = []  # events that arrived together go out in one write
            async for index, event in self.events():
                if event.kind == "done":
                    completion_tokens += event.completion_tokens
                    self.prompt_tokens = event.prompt_tokens or self.prompt_tokens
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
        except ApiError as error:  # headers are sent already: the error travels as an event
            yield sse_line(error.body())
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()


def content_piece(event: Any) -> str:
    if event.kind == "tool_call":
        return protocol.tool_call_text(event.text)
    if event.kind == "tool_output":
        return protocol.tool_output_text(event.text)
    return event.text


def sse_line(body: dict[str, Any]) -> str:
    return "data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n\n"


# ---- running the app in this process (tests, bench) ----


class BackgroundServer:
    """uvicorn serving `app` on a thread; port 0 picks a free port (read `.port` after start)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
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
