"""Chat pane: talk to any checkpoint. The model runs in a child process
(`python -m workbench.engine.worker CHECKPOINT`, JSON lines over stdin/stdout) so this process
never imports torch; a thread reads its events and posts them to the screen, where text is streamed
into Markdown, thoughts are folded and tool calls stand out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Collapsible, Footer, Input, Label, Markdown, Select, Static

from workbench import checkpoint_files
from workbench.config import SampleSection
from workbench.tui.model_process import ModelProcess, WorkerEvent, worker_command
from workbench.tui.widgets.common import NavBar

# [sample] key -> label of its input; default and type come from the one sampling schema
SAMPLING_FIELDS = {"temperature": "temperature", "top_k": "top-k", "top_p": "top-p", "max_tokens": "max tokens"}


def sampling_default(key: str) -> int | float:
    return getattr(SampleSection, key)


class ChatScreen(ModelProcess, Screen):
    TITLE = "Chat"
    BINDINGS = [
        Binding("escape", "stop_generation", "Stop generation", priority=True),
        Binding("ctrl+n", "new_conversation", "New conversation", priority=True),
        Binding("ctrl+y", "copy_answer", "Copy answer", priority=True),
    ]

    def compose(self) -> ComposeResult:
        yield NavBar("chat")
        with Horizontal(id="chat-top"):
            yield Select([], prompt="pick a checkpoint", id="chat-checkpoint")
            for key, label in SAMPLING_FIELDS.items():
                with Vertical(classes="sampling"):
                    yield Label(label)
                    yield Input(str(sampling_default(key)), id=f"chat-{key}", classes="sampling-input")
        yield Static(id="chat-status")
        yield VerticalScroll(id="chat-log")
        yield Input(placeholder="message (enter sends; escape stops the answer)", id="chat-input")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.checkpoint: Path | None = None
        self.messages: list[dict[str, Any]] = []
        self.answering = False
        self.parts: list[dict[str, str]] = []
        self.part_widget = None
        self.stream = None

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def on_unmount(self) -> None:
        self.stop_model()

    def sync_with_app(self) -> None:
        checkpoints = self.app.model.checkpoint_paths()
        picker = self.query_one("#chat-checkpoint", Select)
        picker.set_options([(checkpoint_files.checkpoint_label(p), str(p)) for p in checkpoints])
        wanted = self.app.chat_checkpoint or self.checkpoint
        if wanted is None and checkpoints:
            wanted = checkpoints[-1]
        if wanted is not None and wanted in checkpoints:
            picker.value = str(wanted)
            self.start_model(wanted)
        elif wanted is None:
            self.set_status(Text("no checkpoints yet: train a run first", style="dim"))
        self.query_one("#chat-input", Input).focus()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "chat-checkpoint" and event.value is not Select.NULL:
            self.start_model(Path(str(event.value)))

    # ---- the model process ----

    def start_model(self, checkpoint: Path) -> None:
        if checkpoint == self.checkpoint and self.process and self.process.poll() is None:
            return
        self.stop_model()
        self.checkpoint = checkpoint
        self.app.chat_checkpoint = checkpoint
        self.use_sampling_of(checkpoint)
        self.set_status(Text(f"loading {checkpoint_files.checkpoint_label(checkpoint)}…"))
        self.launch_model(getattr(self.app, "chat_worker_command", worker_command)(checkpoint))

    def use_sampling_of(self, checkpoint: Path) -> None:
        """Fill the sampling fields from the checkpoint's [sample] section (its run's choice)."""
        section = checkpoint_files.read_config(checkpoint).get("sample")
        if not isinstance(section, dict):
            return
        for key in SAMPLING_FIELDS:
            value = section.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.query_one(f"#chat-{key}", Input).value = str(type(sampling_default(key))(value))

    def stop_model(self) -> None:
        super().stop_model()
        self.answering = False

    # ---- conversation ----

    def sampling(self) -> dict[str, Any] | None:
        values = {}
        for key, label in SAMPLING_FIELDS.items():
            kind = type(sampling_default(key))
            text = self.query_one(f"#chat-{key}", Input).value.strip()
            try:
                values[key] = kind(text)
            except ValueError:
                self.notify(f"{label} must be a {'whole ' if kind is int else ''}number, got {text!r}",
                            severity="error")
                return None
        return values

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "chat-input" or not event.value.strip():
            return
        if self.answering:
            self.notify("still answering: escape stops it", severity="warning")
            return
        sampling = self.sampling()
        if sampling is None:
            return
        prompt = event.value.strip()
        messages = self.messages + [{"role": "user", "content": prompt}]
        if not self.send({"type": "chat", "messages": messages, "sampling": sampling}):
            return
        event.input.value = ""
        self.messages = messages
        log = self.query_one("#chat-log", VerticalScroll)
        await log.mount(Static(Text(prompt), classes="user-message"))
        self.answer_box = Vertical(classes="assistant-message")
        await log.mount(self.answer_box)
        self.answering, self.parts, self.part_widget, self.stream = True, [], None, None
        self.set_status("answering… (escape stops)")
        log.scroll_end(animate=False)

    async def on_worker_event(self, event: WorkerEvent) -> None:
        if event.generation != self.generation:
            return
        data = event.data
        kind = data.get("type")
        if kind == "ready":
            params = data.get("params")
            size = f", {params / 1e6:.1f}M params" if isinstance(params, (int, float)) else ""
            self.set_status(f"ready: {data.get('model', self.checkpoint.name if self.checkpoint else '')}{size}")
        elif kind in ("text", "thought", "tool_call", "tool_output") and self.answering:
            await self.add_part(kind, str(data.get("text", "")))
        elif kind == "done" and self.answering:
            await self.finish_answer(data)
        elif kind == "error":
            self.set_status(Text(f"error: {data.get('message', '')}", style="bold red"))
            if self.answering:
                await self.finish_answer({"finish_reason": "error"})
        elif kind == "exit":
            self.set_status(self.exit_text(data))
            if self.answering:
                await self.finish_answer({"finish_reason": "exit"})

    async def add_part(self, kind: str, text: str) -> None:
        """Consecutive pieces of the same kind extend one part; a new kind starts a new widget."""
        if self.parts and self.parts[-1]["kind"] == kind and kind in ("text", "thought"):
            self.parts[-1]["text"] += text
            if kind == "text":
                await self.stream.write(text)
            else:
                self.part_widget.update(self.parts[-1]["text"])
        else:
            await self.end_stream()
            self.parts.append({"kind": kind, "text": text})
            if kind == "text":
                markdown = Markdown(classes="answer-text")
                await self.answer_box.mount(markdown)
                self.stream = Markdown.get_stream(markdown)
                await self.stream.write(text)
            elif kind == "thought":
                self.part_widget = Static(text, classes="thought-text")
                await self.answer_box.mount(Collapsible(self.part_widget, title="thought", collapsed=True))
            elif kind == "tool_call":
                await self.answer_box.mount(Static(Text(f"⚙ calculator  {text}"), classes="tool-call"))
            else:
                await self.answer_box.mount(Static(Text(f"→ {text}"), classes="tool-output"))
        self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    async def end_stream(self) -> None:
        if self.stream is not None:
            await self.stream.stop()
            self.stream = None

    async def finish_answer(self, data: dict[str, Any]) -> None:
        await self.end_stream()
        self.answering = False
        kinds = {"text": "text", "thought": "thinking", "tool_call": "python", "tool_output": "python_output"}
        if any(part["kind"] != "text" for part in self.parts):
            content: Any = [{"type": kinds[part["kind"]], "text": part["text"]} for part in self.parts]
        else:
            content = "".join(part["text"] for part in self.parts)
        self.messages.append({"role": "assistant", "content": content})
        tokens, seconds = data.get("completion_tokens"), data.get("seconds")
        speed = f", {tokens / seconds:.1f} tok/s" if tokens and seconds else ""
        self.set_status(f"done ({data.get('finish_reason')}{f', {tokens} tokens' if tokens else ''}{speed})")

    def last_answer(self) -> str:
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                content = message["content"]
                if isinstance(content, str):
                    return content
                return "".join(part["text"] for part in content if part["type"] == "text")
        return ""

    def action_stop_generation(self) -> None:
        if self.answering:
            self.send({"type": "stop"})
            self.set_status("stopping…")

    async def action_new_conversation(self) -> None:
        if self.answering:
            self.action_stop_generation()
        await self.end_stream()
        self.messages, self.answering = [], False
        await self.query_one("#chat-log", VerticalScroll).remove_children()
        self.set_status("new conversation")
        self.query_one("#chat-input", Input).focus()

    def action_copy_answer(self) -> None:
        answer = self.last_answer()
        if answer:
            self.app.copy_to_clipboard(answer)
            self.notify("copied the last answer")

    def set_status(self, message: str | Text) -> None:
        self.query_one("#chat-status", Static).update(message)
