"""Serving throughput and latency: tokens/s and time to first token for 1, 4, 16 and 32 concurrent
streaming clients against `picochat serve` (started as its own process, as a user would run it,
with --truncate), and the first-token time of a small request sent beside a 1 MB conversation.

Without a checkpoint it makes one in a few seconds: the model shape of --config (default d4:
depth 4, width 256, seq_len 256), random weights and a tokenizer trained on a slice of the bundled
corpus. A random model almost never ends its answer, so every request decodes the full --tokens,
which makes runs comparable. One line per concurrency level (x: total tokens/s over one client's,
in the same run), then one for the 1 MB neighbour; each ends with the machine's load average:

    serve bench-d4 c=16: 2400 tok/s (x 6.1) | 5.20 req/s | ttft p50 58 ms p95 120 ms | 32 requests x 64 tokens (cpu, load 1.9)
    serve bench-d4 beside 1 MB: small request ttft median 210 ms max 380 ms over 3 tries (cpu, load 2.1)

    python bench/serve.py [CHECKPOINT] [--config configs/d4.toml] [--clients 1 4 16 32] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_checkpoint(config_path: Path, folder: Path, vocab_size: int) -> Path:
    """A random-init checkpoint with the model shape of a config and a quickly trained tokenizer."""
    from workbench import config as config_module
    from workbench.checkpoint import save_checkpoint
    from workbench.model import build_model
    from workbench.tokenizer import train_tokenizer

    config = config_module.load(config_path)
    config.run.name = f"bench-{config.run.name}"
    config.tokenizer.vocab_size = vocab_size
    text = (REPO / "assets" / "tiny_corpus.txt").read_text(encoding="utf-8")[:400_000]
    tokenizer = train_tokenizer(iter(text.split("\n\n")), vocab_size)
    model = build_model(config.model, tokenizer.vocab_size)
    return save_checkpoint(folder / "run", 0, model, config, tokenizer, meta={"stage": "pretrain"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkpoint: Path, device: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "workbench", "serve", str(checkpoint), "--port", str(port),
               "--device", device, "--max-active", "64", "--truncate", "--max-body-bytes", str(2 << 20)]
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"the server did not come up in 180 s:\n{log_path.read_text()}")


async def one_request(client: httpx.AsyncClient, model: str, tokens: int, number: int,
                      messages: list[dict] | None = None) -> tuple[float, int]:
    """(seconds to the first generated text, completion tokens) of one streamed answer."""
    messages = messages or [{"role": "user", "content": f"Tell me story number {number}."}]
    body = {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 1.0, "seed": number,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, completion_tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                completion_tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                delta = choice["delta"]
                if first is None and (delta.get("content") or delta.get("reasoning_content")
                                      or choice["finish_reason"]):
                    first = time.perf_counter() - started
    return (first if first is not None else time.perf_counter() - started), completion_tokens


async def run_level(url: str, model: str, clients: int, requests: int, tokens: int, headers: dict) -> dict:
    """`clients` workers share `requests` streamed requests; each worker sends its next one when done."""
    numbers = iter(range(requests))
    ttfts, produced = [], 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal produced
        for number in numbers:
            ttft, completion_tokens = await one_request(client, model, tokens, number)
            ttfts.append(ttft)
            produced += completion_tokens

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, headers=headers) as client:
        await one_request(client, model, 4, 10_000)  # warm-up: first-request allocations, lazy imports
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {"requests_per_second": requests / seconds, "ttft_mean": statistics.mean(ttfts),
            "ttft_p50": statistics.median(ttfts), "ttft_p95": percentile(ttfts, 95),
            "tokens_per_second": produced / seconds, "tokens": produced, "requests": requests}


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


def megabyte_conversation() -> list[dict]:
    """255 messages, ~1 MB of text: a long chat pasted back whole, as a client without a context
    budget sends it."""
    text = (REPO / "assets" / "tiny_corpus.txt").read_text(encoding="utf-8")
    messages = []
    for index in range(255):
        start = (index * 3_900) % (len(text) - 4_000)
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text[start:start + 3_900]})
    return messages


async def beside_a_megabyte(url: str, model: str, tokens: int, headers: dict, tries: int = 3) -> list[float]:
    """First-token seconds of a small streamed request sent 0.1 s after a 1 MB conversation, so it
    arrives while the big one is being rendered, tokenized and prefilled."""
    big = megabyte_conversation()
    ttfts = []
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as client:
        for attempt in range(tries):
            heavy = asyncio.create_task(one_request(client, model, tokens, 20_000 + attempt, big))
            await asyncio.sleep(0.1)
            ttft, _ = await one_request(client, model, 8, 30_000 + attempt)
            ttfts.append(ttft)
            await heavy
    return ttfts


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def cpu_seconds(pid: int) -> float:
    """CPU time the server process has used (user + system): on a shared machine, tokens per
    server CPU second compare where tokens per second cannot."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint or run folder (default: make a random one)")
    parser.add_argument("--config", default=str(REPO / "configs" / "d4.toml"), help="model shape when making one")
    parser.add_argument("--vocab", type=int, default=4096, help="tokenizer size when making one")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of every request")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default max(8, 2 x clients))")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="picochat-bench-serve-") as scratch:
        scratch = Path(scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else make_checkpoint(Path(args.config), scratch,
                                                                                   args.vocab)
        process, url = start_server(checkpoint, args.device, scratch / "server.log")
        try:
            key = os.environ.get("PICOCHAT_API_KEY")  # the server reads it too
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            model = httpx.get(url + "/v1/models", headers=headers).json()["data"][0]["id"]
            device = httpx.get(url + "/health").json().get("device", args.device)
            single = None
            for clients in args.clients:
                requests = args.requests or max(8, 2 * clients)
                cpu_before = cpu_seconds(process.pid)
                result = asyncio.run(run_level(url, model, clients, requests, args.tokens, headers))
                per_cpu = result["tokens"] / (cpu_seconds(process.pid) - cpu_before)
                single = single or (result["tokens_per_second"] if clients == 1 else None)
                ratio = f" (x {result['tokens_per_second'] / single:.1f})" if single else ""
                print(f"serve {model} c={clients}: {result['tokens_per_second']:.0f} tok/s{ratio} | "
                      f"{per_cpu:.0f} tok per server cpu-s | {result['requests_per_second']:.2f} req/s | "
                      f"ttft p50 {result['ttft_p50'] * 1000:.0f} ms "
                      f"p95 {result['ttft_p95'] * 1000:.0f} ms | {requests} requests x {args.tokens} tokens "
                      f"({device}, {load()})", flush=True)
            ttfts = asyncio.run(beside_a_megabyte(url, model, args.tokens, headers))
            print(f"serve {model} beside 1 MB: small request ttft median {statistics.median(ttfts) * 1000:.0f} ms "
                  f"max {max(ttfts) * 1000:.0f} ms over {len(ttfts)} tries ({device}, {load()})", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
