"""`picochat <verb>`: one entry point, one module per verb.

Each verb lives in its own module with `add_arguments(parser)` and `run(args) -> int | None`, and
is imported only when used, so `picochat runs` never pays for importing torch. Bad input (BadInput)
becomes a one-line message and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from workbench.errors import BadInput

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "config": ("workbench.config_cli", "show or check a config: config show|check CONFIG"),
    "prepare": ("workbench.prepare_cli", "text/jsonl/json/csv/parquet -> parquet shards (train/val)"),
    "tokenizer": ("workbench.tokenizer_cli", "train the BPE tokenizer on the prepared data"),
    "pretrain": ("workbench.train.pretrain", "pretrain the GPT [--resume] [--detach]"),
    "sft": ("workbench.train.sft", "supervised fine-tuning on chat JSONL [--resume] [--detach]"),
    "grpo": ("workbench.train.grpo", "reinforcement learning with GRPO [--resume] [--detach]"),
    "eval": ("workbench.evals.cli", "evaluate a checkpoint: --tasks bpb,arc-easy,...,humaneval"),
    "report": ("workbench.report_cli", "write runs/NAME/report.md from a run's results"),
    "chat": ("workbench.engine.chat_cli", "chat with a checkpoint in the terminal [-p PROMPT]"),
    "quantize": ("workbench.engine.quantize", "write an INT8 copy of a checkpoint"),
    "export": ("workbench.export_cli", "write a checkpoint for other tools: --format hf|safetensors --out DIR"),
    "serve": ("workbench.serve.cli", "OpenAI-compatible HTTP server with a chat web page"),
    "speedrun": ("workbench.speedrun", "every stage in order, one report at the end"),
    "sweep": ("workbench.sweep_cli", "a grid of pretraining runs: sweep CONFIG --set train.matrix_lr=0.01,0.02"),
    "runs": ("workbench.runs_cli", "list runs with their state"),
    "status": ("workbench.runs_cli", "show one run's status"),
    "stop": ("workbench.runs_cli", "ask a running worker to stop (it checkpoints first)"),
    "pause": ("workbench.runs_cli", "pause a running worker at its next step"),
    "resume-run": ("workbench.runs_cli", "resume a paused worker"),
    "attach": ("workbench.runs_cli", "follow a run's progress in this terminal"),
    "tui": ("workbench.tui.app", "open the full-screen workbench (same as picochat-tui)"),
}


def usage() -> str:
    width = max(len(verb) for verb in VERBS)
    lines = ["usage: picochat <verb> [options]   (picochat <verb> -h for a verb's options)", "", "verbs:"]
    lines += [f"  {verb.ljust(width)}  {help_text}" for verb, (_, help_text) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        import difflib

        close = difflib.get_close_matches(verb, list(VERBS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"picochat: unknown verb '{verb}'{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, help_text = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"picochat {verb}", description=help_text)
    if hasattr(module, "add_arguments_for"):
        module.add_arguments_for(verb, parser)  # one module serving several verbs
    else:
        module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.verb = verb
    try:
        return int(module.run(args) or 0)
    except BadInput as error:
        print(f"picochat {verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"picochat {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
