"""`make bench`: every benchmark in one run, one table (markdown + JSON) with the machine's description.

Each benchmark is its own script that prints comparable lines (see each file's docstring); this
runs them one after another (never in parallel: they would steal each other's cores), keeps every
line they print, and writes bench/results/latest.md and latest.json stamped with the commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")  # the one bench/chat_page.py and tests/test_serve_browser.py drive


def browser_missing() -> str:
    """Why the chat page cannot be measured here ('' when it can)."""
    if not CHROMIUM.exists():
        return f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "needs playwright (pip install playwright)"
    return ""


# (name, script arguments, what tells why it cannot run on this machine or None): ordered cheap
# first, so a partial run still says something
BENCHMARKS = [
    ("matmul peak", ["bench/matmul_peak.py"], None),
    ("memory bandwidth", ["bench/membw.py"], None),
    ("tokenizer", ["bench/tokenizer.py"], None),
    ("data loader", ["bench/loader.py"], None),
    ("training", ["bench/train.py"], None),
    ("generation", ["bench/generate.py"], None),
    ("serving", ["bench/serve.py"], None),
    ("tui", ["bench/tui.py"], None),
    ("chat page", ["bench/chat_page.py"], browser_missing),
]
# bench scripts run by hand, not by `make bench`, and why
BY_HAND = {
    "baseline_gpt.py": "not a benchmark: the baseline model train.py and learn.py race against",
    "gpu.py": "the first check on a GPU machine",
    "grpo_levers.py": "GRPO runs from an SFT checkpoint (2-5 CPU-minutes per variant; about 2 hours for all)",
    "learn.py": "a race of 2, 5 and 10 wall-clock minutes per contender",
}


def machine_description() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip().replace("\n", ", ")
    except (OSError, subprocess.TimeoutExpired):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": memory, "gpu": gpu or "none",
            "python": platform.python_version(), "commit": commit or "unknown",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_benchmark(arguments: list[str], timeout: float) -> tuple[list[str], float, str]:
    """Returns (printed lines, seconds, problem or '')."""
    started = time.time()
    try:
        result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, cwd=REPO,
                                timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return [line for line in output.splitlines() if line.strip()], time.time() - started, "timed out"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    problem = "" if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()[-300:]}"
    return lines, time.time() - started, problem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per benchmark")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for latest.md/json")
    args = parser.parse_args()
    chosen = [entry for entry in BENCHMARKS if not args.only or entry[0] in args.only.split(",")]

    machine = machine_description()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, gpu {machine['gpu']}, "
          f"commit {machine['commit']}", flush=True)
    results = []
    for name, argv, cannot_run in chosen:
        print(f"--- {name}: {' '.join(argv)}", flush=True)
        missing = cannot_run() if cannot_run else ""
        if missing:  # a skip, not a failure: this machine lacks what the benchmark drives
            lines, seconds, problem = [f"skipped: {missing}"], 0.0, ""
        else:
            lines, seconds, problem = run_benchmark(argv, args.timeout)
        for line in lines:
            print(line, flush=True)
        if problem:
            print(f"({name}: {problem})", flush=True)
        results.append({"name": name, "command": " ".join(argv), "lines": lines, "seconds": round(seconds, 1),
                        "problem": problem})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    markdown = [f"# picochat benchmarks, commit {machine['commit']}, {machine['date']}", "",
                f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, "
                f"GPU: {machine['gpu']}, Python {machine['python']}", "",
                "| benchmark | result | seconds |", "|---|---|---|"]
    for result in results:
        text = "<br>".join(line.replace("|", "\\|") for line in result["lines"]) or "-"
        if result["problem"]:
            text += f"<br>({result['problem']})"
        markdown.append(f"| {result['name']} | {text} | {result['seconds']} |")
    (out / "latest.md").write_text("\n".join(markdown) + "\n")
    print(f"wrote {out / 'latest.md'} and {out / 'latest.json'}")
    return 1 if any(result["problem"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
