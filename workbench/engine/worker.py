"""`python -m workbench.engine.worker CHECKPOINT [--device cpu]`: chat over JSON lines.

For front ends that must not import torch themselves (the TUI): the model lives in this process.

stdin, one JSON object per line:
    {"type": "chat", "messages": [...], "sampling": {"temperature": 0.8, ...}, "tools": true}
    {"type": "stop"}                      stops the answer being generated (ignored when idle)
stdout, one JSON object per line:
    {"type": "ready", "model": NAME, "params": N, "device": "cpu"}      once, after loading
    {"type": "text" | "thought" | "tool_call" | "tool_output", "text": "..."}   while answering
    {"type": "done", "finish_reason": "stop" | "length", "completion_tokens": N, "prompt_tokens": N,
     "seconds": S, "stopped": bool}                                     after every answer
    {"type": "error", "message": "..."}                                 bad request or failure

A reader thread takes stdin, so a "stop" arrives while the main thread is generating. End of
stdin ends the worker (after stopping the current answer). A checkpoint that cannot be loaded is
reported as an error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time

from workbench.errors import BadInput


class Worker:
    def __init__(self, engine, out=None):
        self.engine = engine
        self.out = out or sys.stdout
        self.requests: queue.Queue = queue.Queue()
        # chats are numbered as they arrive; "stop" stops every chat received before it (the one
        # being answered and any still waiting), never a later one
        self.received = 0
        self.stop_upto = 0
        self.write_lock = threading.Lock()

    def send(self, **message) -> None:
        with self.write_lock:
            self.out.write(json.dumps(message, ensure_ascii=False) + "\n")
            self.out.flush()

    def read_lines(self, stream) -> None:
        """The reader thread: parse lines, act on "stop" at once, queue the rest."""
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request must be a JSON object")
            except ValueError as error:
                self.send(type="error", message=f"bad request line: {error}")
                continue
            if request.get("type") == "stop":
                self.stop_upto = self.received
            else:
                self.received += 1
                self.requests.put((self.received, request))
        self.stop_upto = self.received
        self.requests.put(None)  # end of input

    def serve(self, stream) -> None:
        threading.Thread(target=self.read_lines, args=(stream,), daemon=True).start()
        while (item := self.requests.get()) is not None:
            self.handle(*item)

    def handle(self, number: int, request: dict) -> None:
        from workbench.engine.sampling import SamplingParams

        if request.get("type") != "chat":
            self.send(type="error", message=f"unknown request type {request.get('type')!r} (chat or stop)")
            return
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            self.send(type="error", message="chat needs a non-empty list of messages")
            return
        try:
            params = SamplingParams.from_dict(request.get("sampling") or {})
        except (TypeError, ValueError) as error:
            self.send(type="error", message=f"bad sampling settings: {error}")
            return
        start = time.perf_counter()
        try:
            run = self.engine.start_chat(messages, params, use_tools=bool(request.get("tools", True)))
            for _, events in run if self.stop_upto < number else ():
                for event in events:
                    self.send(type=event.kind, text=event.text)
                if self.stop_upto >= number:
                    break
        except Exception as error:  # a conversation that cannot be rendered, say: report, keep serving
            self.send(type="error", message=f"{type(error).__name__}: {error}")
            return
        row = run.rows[0]
        self.send(type="done", finish_reason=row.finish_reason or "stop", completion_tokens=len(row.tokens),
                  prompt_tokens=len(run.prompt_ids), seconds=round(time.perf_counter() - start, 3),
                  stopped=row.finish_reason is None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.engine.worker", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    # keep stdout for the protocol alone, whatever a library prints
    protocol_out, sys.stdout = sys.stdout, sys.stderr
    worker = Worker(None, out=protocol_out)
    try:
        from workbench.engine.engine import Engine

        worker.engine = Engine.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype)
    except BadInput as error:
        worker.send(type="error", message=str(error))
        return 2
    engine = worker.engine
    worker.send(type="ready", model=engine.model_name, params=engine.num_params, device=str(engine.device))
    try:
        worker.serve(sys.stdin)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
