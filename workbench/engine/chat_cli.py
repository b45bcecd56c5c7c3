"""`picochat chat CHECKPOINT`: chat with a model in the terminal, or answer one prompt (-p).

Interactive: the conversation keeps its history (the model sees earlier turns, including its own
thoughts and tool calls); answers stream as they are generated, thoughts dimmed, calculator calls
coloured. ctrl+c stops the answer being written and keeps the chat; ctrl+d or /quit leaves.
Commands: /clear (forget the history), /settings (show), /settings key=value ... (change), /help.

One-shot: `picochat chat CKPT -p "question"` prints the answer text on stdout (thoughts and tool
calls go to stderr), for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import time

from workbench.config import SAMPLE_SETTINGS, SampleSection

# the [sample] settings (workbench/config.py defines them for the config, the engine, this chat and
# the server), then what only a chat sets
SETTINGS = (*SAMPLE_SETTINGS, "stop", "tools")
HELP = ("commands: /clear forgets the conversation, /settings shows the sampling settings, "
        f"/settings key=value ... changes them ({', '.join(SETTINGS)}), /quit leaves (or ctrl+d); "
        "ctrl+c stops an answer")
STYLES = {"text": "", "thought": "dim italic", "tool_call": "bold cyan", "tool_output": "green"}
PART_TYPES = {"text": "text", "thought": "thinking", "tool_call": "python", "tool_output": "python_output"}
OPTION_HELP = {"temperature": "0 = greedy", "top_k": "0 = off", "top_p": "1 = off; 0 = the most likely token only",
               "repetition_penalty": "1 = off", "seed": "-1 = random"}


def shown_text(event) -> str:
    """How an event reads on a terminal: a calculator call and its result as a line of its own,
    [calculator: 2+2 = 4], so the answer that follows starts on the next line."""
    if event.kind == "tool_call":
        return f"[calculator: {event.text}"
    if event.kind == "tool_output":
        return f" = {event.text}]\n"
    return event.text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
    for name in SAMPLE_SETTINGS:
        meaning = OPTION_HELP.get(name, "")
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(SampleSection, name)), default=None,
                            help=f"{meaning}{'; ' if meaning else ''}default: the run's [sample] {name}")
    parser.add_argument("--no-tools", action="store_true", help="do not run the calculator")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true",
                        help="decode through torch.compile: ~2x faster tokens on CPU, ~20 s to compile first")


def initial_params(config, args: argparse.Namespace):
    """The checkpoint's [sample] settings, overridden by the command line."""
    from workbench.engine.sampling import SamplingParams

    values = dataclasses.asdict(config.sample)
    for name in SAMPLE_SETTINGS:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return SamplingParams.from_dict(values)


def apply_settings(params, assignments: list[str]):
    """/settings key=value ...: a new SamplingParams, or ValueError naming what is wrong."""
    from workbench.engine.sampling import SamplingParams

    values = dataclasses.asdict(params)
    tools = None
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key, raw = key.strip().replace("-", "_"), raw.strip()
        if not sep:
            raise ValueError(f"expected key=value, got {assignment!r}")
        if key == "tools":
            if raw.lower() not in ("on", "off", "true", "false", "1", "0"):
                raise ValueError("tools=on or tools=off")
            tools = raw.lower() in ("on", "true", "1")
        elif key == "stop":
            values["stop"] = [s for s in raw.split(",") if s]
        elif key == "seed" and raw.lower() in ("none", "random"):
            values["seed"] = None
        elif key in SAMPLE_SETTINGS:
            values[key] = typed_setting(key, raw)
        else:
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (one of {', '.join(SETTINGS)})"
            raise ValueError(f"unknown setting {key!r}{hint}")
    return SamplingParams.from_dict(values), tools


def typed_setting(name: str, raw: str) -> int | float | str:
    """A /settings value as the type its setting has; text that is no such number stays text, for
    the settings' one check (SamplingParams) to refuse as a config's check would."""
    kind = type(getattr(SampleSection, name))
    try:
        return kind(raw)
    except ValueError:
        return raw


def describe(params, tools: bool) -> str:
    seed = "random" if params.seed is None else params.seed
    stop = ",".join(params.stop) or "-"
    return (f"temperature={params.temperature} top_k={params.top_k} top_p={params.top_p} "
            f"repetition_penalty={params.repetition_penalty} max_tokens={params.max_tokens} seed={seed} "
            f"stop={stop} tools={'on' if tools else 'off'}")


class Chat:
    """One conversation: history, settings, and streaming an answer to a rich console."""

    def __init__(self, engine, params, console, use_tools: bool = True):
        self.engine, self.params, self.console, self.use_tools = engine, params, console, use_tools
        self.messages: list[dict] = []

    def answer(self, prompt: str) -> str:
        """Stream the answer to `prompt`; ctrl+c stops it early. Returns the finish reason."""
        from workbench.tokenizer import ConversationError

        self.messages.append({"role": "user", "content": prompt})
        parts: list[dict] = []
        reason, done = "stopped", None
        start = time.perf_counter()
        stream = self.engine.stream_chat(self.messages, self.params, use_tools=self.use_tools)
        try:
            for event in stream:
                if event.kind == "done":
                    done, reason = event, event.finish_reason
                    continue
                part_type = PART_TYPES[event.kind]
                if parts and parts[-1]["type"] == part_type and part_type in ("text", "thinking"):
                    parts[-1]["text"] += event.text
                else:
                    parts.append({"type": part_type, "text": event.text})
                self.show(event)
        except KeyboardInterrupt:
            reason = "stopped"
        except ConversationError as error:
            self.messages.pop()
            self.console.print(f"\n[red]cannot render the conversation: {error}[/red]")
            return "error"
        finally:
            stream.close()
        seconds = time.perf_counter() - start
        parts = [part for part in parts if part["text"].strip()]
        if parts:
            self.messages.append({"role": "assistant", "content": parts})
        else:
            self.messages.pop()  # nothing was said: forget the question too, so turns still alternate
        tokens = done.completion_tokens if done else sum(len(p["text"]) for p in parts)
        unit = "tokens" if done else "chars"
        self.console.print(f"\n[dim]({tokens} {unit}, {seconds:.1f} s, {reason})[/dim]", highlight=False)
        return reason

    def show(self, event) -> None:
        self.console.print(shown_text(event), style=STYLES[event.kind], end="", markup=False, highlight=False,
                           soft_wrap=True)

    def command(self, line: str) -> bool:
        """Handle a /command; False when the chat should end."""
        name, *rest = line.split()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/clear":
            self.messages.clear()
            self.console.print("[dim](conversation cleared)[/dim]")
        elif name == "/settings":
            if rest:
                try:
                    self.params, tools = apply_settings(self.params, rest)
                except ValueError as error:
                    self.console.print(f"[red]{error}[/red]", highlight=False)
                    return True
                if tools is not None:
                    self.use_tools = tools
            self.console.print(describe(self.params, self.use_tools), highlight=False, markup=False)
        elif name == "/help":
            self.console.print(HELP, highlight=False, markup=False)
        else:
            self.console.print(f"[red]unknown command {name}[/red] ({HELP})", highlight=False)
        return True

    def loop(self, read=input) -> None:
        while True:
            try:
                line = read("\nyou> ").strip()
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                self.console.print("\n[dim](ctrl+d or /quit to leave)[/dim]")
                continue
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            self.console.print("[bold]picochat>[/bold] ", end="")
            self.answer(line)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from workbench.engine.engine import Engine

    engine = Engine.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype, compiled=args.compile)
    if args.compile:
        print("compiling the decode step ...", file=sys.stderr, flush=True)
        print(f"compiled in {engine.warm_up():.0f} s", file=sys.stderr)
    try:
        params = initial_params(engine.checkpoint.config, args)
    except ValueError as error:
        from workbench.errors import BadInput

        raise BadInput(f"sampling settings: {error}") from None
    use_tools = not args.no_tools
    if args.prompt is not None:
        return one_shot(engine, params, args.prompt, use_tools)
    console = Console(highlight=False)
    console.print(f"[bold]picochat[/bold] {engine.model_name} ({engine.num_params / 1e6:.1f}M params, "
                  f"{engine.device}) - /help for commands, ctrl+d to leave", highlight=False)
    console.print(describe(params, use_tools), style="dim", highlight=False, markup=False)
    Chat(engine, params, console, use_tools).loop(read=console.input if sys.stdin.isatty() else input)
    return 0


def one_shot(engine, params, prompt: str, use_tools: bool) -> int:
    """The answer's text on stdout, thoughts and calculator calls on stderr, each written (and
    flushed) as it comes: on a terminal the calculator's line shows before the answer it helped."""
    for event in engine.stream_chat([{"role": "user", "content": prompt}], params, use_tools=use_tools):
        if event.kind != "done":
            stream = sys.stdout if event.kind == "text" else sys.stderr
            (sys.stderr if stream is sys.stdout else sys.stdout).flush()
            stream.write(shown_text(event))
            stream.flush()
    sys.stdout.write("\n")
    return 0
