"""`python -m workbench.engine.worker CHECKPOINT [--device cpu]`: chat and inspect over JSON lines.

For front ends that must not import torch themselves (the TUI): the model lives in this process.

stdin, one JSON object per line:
    {"type": "chat", "messages": [...], "sampling": {"temperature": 0.8, ...}, "tools": true}
    {"type": "stop"}                      stops the answer being generated (ignored when idle)
    {"type": "inspect", "text": "...", "top": 5}   the model's loss on every token of the text
stdout, one JSON object per line:
    {"type": "ready", "model": NAME, "params": N, "device": "cpu"}      once, after loading
    {"type": "text" | "thought" | "tool_call" | "tool_output", "text": "..."}   while answering
    {"type": "done", "finish_reason": "stop" | "length", "completion_tokens": N, "prompt_tokens": N,
     "seconds": S, "stopped": bool}                                     after every answer
    {"type": "inspect", "tokens": [{"id", "text", "token", "loss", "bits", "p", "rank",
     "top": [[text, p], ...]}, ...], "next": [[text, p], ...], "mean_loss", "bits_per_byte",
     "truncated"}                                                       the answer to an inspect
    {"type": "error", "message": "..."}                                 bad request or failure

A reader thread takes stdin, so a "stop" arrives while the main thread is generating. End of
stdin ends the worker (after stopping the current answer). A checkpoint that cannot be loaded is
reported as an error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import sys
import threading
import time

from workbench.errors import BadInput

MAX_TOP = 20  # most guesses an inspect may ask for per position
CHARS_PER_TOKEN_BOUND = 64  # text beyond seq_len * this many characters cannot fit: not even encoded


def inspect_text(engine, text: str, top: int = 5) -> dict:
    """How surprised the model is by each token of `text`, and what it expected instead.

    The text is read the way pretraining reads a document: <|bos|> then its tokens, at most the
    model's seq_len in all (`truncated` says the rest was left out). For token i, `loss` is
    -ln p(token i | the tokens before it) in nats (`bits` the same in bits, `rank` 1 when it was
    the model's first guess) and `top` the model's `top` likeliest tokens for that same position
    with their probabilities: the tokens it expected there. `next` is its guess after the last
    token. Each `text` is the token's share of the text (whole characters: a character split over
    tokens goes with its last one, so the pieces join to the text); `token` is the token's own
    bytes, readable (an incomplete character as \\x escapes)."""
    import torch

    from workbench.engine.streaming import TextStream

    tokenizer, model = engine.tokenizer, engine.model
    limit = model.config.seq_len
    cut = text[: limit * CHARS_PER_TOKEN_BOUND]
    ids = tokenizer.encode(cut, bos=True)
    truncated = len(ids) > limit or len(cut) < len(text)
    ids = ids[:limit]

    def readable(token_id: int) -> str:
        return tokenizer.token_to_bytes(token_id).decode("utf-8", errors="backslashreplace")

    def guesses(ranked_ids, ranked_probs) -> list[list]:
        return [[readable(i), round(p, 6)] for i, p in zip(ranked_ids, ranked_probs, strict=True)]

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=engine.device))[0]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            top_log_probs, top_ids = log_probs.topk(min(top, log_probs.size(-1)), dim=-1)
            targets = torch.tensor(ids[1:], device=log_probs.device)
            chosen = log_probs[:-1].gather(1, targets[:, None])[:, 0]
            ranks = (log_probs[:-1] > chosen[:, None]).sum(dim=1) + 1
    finally:
        model.train(was_training)
    stream = TextStream(tokenizer.token_to_bytes)
    pieces = [stream.push(token_id) for token_id in ids[1:]]
    if pieces:
        pieces[-1] += stream.flush()
    losses = (-chosen).tolist()
    top_ids, top_probs = top_ids.tolist(), top_log_probs.exp().tolist()
    tokens = [{"id": token_id, "text": piece, "token": readable(token_id), "loss": round(loss, 6),
               "bits": round(loss / math.log(2), 6), "p": round(math.exp(-loss), 6), "rank": rank,
               "top": guesses(top_ids[i], top_probs[i])}
              for i, (token_id, piece, loss, rank) in enumerate(zip(ids[1:], pieces, losses, ranks.tolist(),
                                                                    strict=True))]
    text_bytes = sum(len(tokenizer.token_to_bytes(token_id)) for token_id in ids[1:])
    return {"tokens": tokens, "next": guesses(top_ids[-1], top_probs[-1]),
            "mean_loss": round(sum(losses) / len(losses), 6) if losses else None,
            "bits_per_byte": round(sum(losses) / math.log(2) / text_bytes, 6) if text_bytes else None,
            "truncated": truncated}


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
        kind = request.get("type")
        if kind == "chat":
            self.chat(number, request)
        elif kind == "inspect":
            self.inspect(request)
        else:
            self.send(type="error", message=f"unknown request type {kind!r} (chat, inspect or stop)")

    def inspect(self, request: dict) -> None:
        text, top = request.get("text"), request.get("top", 5)
        if not isinstance(text, str):
            self.send(type="error", message="inspect needs \"text\": a string")
            return
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
            self.send(type="error", message=f"inspect \"top\" must be a whole number from 1 to {MAX_TOP}")
            return
        try:
            result = inspect_text(self.engine, text, top)
        except Exception as error:  # report, keep serving (as a chat does)
            self.send(type="error", message=f"{type(error).__name__}: {error}")
            return
        self.send(type="inspect", **result)

    def chat(self, number: int, request: dict) -> None:
        from workbench.engine.sampling import SamplingParams

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
