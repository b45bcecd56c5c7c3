"""`picochat serve CHECKPOINT`: the OpenAI-compatible server and its chat page.

Binds to 127.0.0.1 unless told otherwise: the server has no per-user accounts, and anyone who can
reach it can use the model. Set an API key (--api-key or PICOCHAT_API_KEY) before opening it up.
Only Host headers naming this machine or the bound address are served (--allowed-host adds
names), so a web page cannot reach it through DNS rebinding; web pages of other origins may call
it only when named with --cors-origin.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from workbench.errors import BadInput


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--model-name", default=None, help="the model id clients use (default: the run's name)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1 (default: $PICOCHAT_API_KEY, else none)")
    parser.add_argument("--compile", action="store_true",
                        help="decode through torch.compile: ~2x faster tokens on CPU, compiled before serving")
    parser.add_argument("--max-active", type=int, default=16,
                        help="answers generated together in one batch (n counts each choice)")
    parser.add_argument("--max-waiting", type=int, default=256, help="answers queued before answering 429")
    parser.add_argument("--truncate", action="store_true",
                        help="fit an over-long conversation by dropping its oldest turns, keeping room for "
                             "max_tokens (default: refuse it, 400 context_length_exceeded, as OpenAI)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="also serve requests whose Host header names NAME (repeatable; '*': any). "
                             "Always served: 127.0.0.1, localhost, [::1] and the --host address")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let web pages from ORIGIN (e.g. http://localhost:5173) call the API (repeatable)")
    parser.add_argument("--read-timeout", type=float, default=10.0,
                        help="seconds a request's headers and body may take to arrive")
    parser.add_argument("--max-connections", type=int, default=256, help="open connections before answering 503")
    parser.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask for")
    parser.add_argument("--max-messages", type=int, default=256, help="most messages in one request")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body")
    parser.add_argument("--max-n", type=int, default=8, help="most choices (n) in one request")


def run(args: argparse.Namespace) -> int:
    for name in ("port", "max_active", "max_waiting", "max_tokens", "max_messages", "max_body_bytes", "max_n",
                 "max_connections", "read_timeout"):
        value = getattr(args, name)
        if not value >= (0 if name == "port" else 1):
            raise BadInput(f"--{name.replace('_', '-')}: must be positive, got {value}")
    import uvicorn

    from workbench.checkpoint_files import resolve_checkpoint
    from workbench.engine import Engine
    from workbench.serve.app import HttpSettings, create_app, describe_model, uvicorn_config
    from workbench.serve.protocol import Limits

    folder = resolve_checkpoint(args.checkpoint)
    engine = Engine.from_checkpoint(folder, device=args.device, compiled=args.compile)
    model = describe_model(engine, folder, args.model_name)
    api_key = args.api_key or os.environ.get("PICOCHAT_API_KEY") or None
    limits = Limits(max_body_bytes=args.max_body_bytes, max_messages=args.max_messages,
                    max_tokens=args.max_tokens, max_n=args.max_n)
    http = HttpSettings(host=args.host, allowed_hosts=tuple(args.allowed_host), cors_origins=tuple(args.cors_origin),
                        read_timeout=args.read_timeout, max_connections=args.max_connections)
    app = create_app(engine, model, api_key=api_key, limits=limits, max_active=args.max_active,
                     max_waiting=args.max_waiting, truncate=args.truncate, http=http)
    if args.compile:
        print("picochat serve: compiling the decode step for every batch size ...", file=sys.stderr, flush=True)
        engine.warm_up(app.state.scheduler.batch, args.max_active)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    size = f"{model.params / 1e6:.1f}M params" if model.params else "size unknown"
    print(f"picochat serve: {model.id} ({size}) from {folder}", file=sys.stderr)
    print(f"  chat page   http://{args.host}:{args.port}/", file=sys.stderr)
    print(f"  OpenAI API  http://{args.host}:{args.port}/v1  (model '{model.id}'"
          f"{', API key required' if api_key else ''})", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print("  warning: listening beyond this machine without an API key", file=sys.stderr)
    uvicorn.Server(uvicorn_config(app, args.host, args.port, http)).run()
    return 0
