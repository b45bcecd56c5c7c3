"""Inspect: what a checkpoint makes of a text. Type or paste text; each token is coloured by the
model's loss on it (how surprised it was), and the token under the cursor (arrows or h/l, or the
mouse) shows its loss and the model's five likeliest tokens for that place, the token after the
text included. The model runs in the Chat screen's kind of child process
(`python -m workbench.engine.worker`, request "inspect"), so this process never imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Footer, Select, Static, TextArea

from workbench.checkpoint_files import checkpoint_label
from workbench.tui.model import ModelChanged
from workbench.tui.model_process import ModelProcess, WorkerEvent, worker_command
from workbench.tui.widgets.common import NavBar

# Loss bands in bits, each with its background: a fixed scale, so two checkpoints compare by eye.
# (A uniform guess over a 512-token vocabulary costs 9 bits; a well-trained model pays under 1 on
# most tokens of ordinary text.)
LOSS_BANDS = (
    (1.0, "<1", "#1e5631"),
    (3.0, "1-3", "#4a6b1f"),
    (6.0, "3-6", "#7a6a12"),
    (9.0, "6-9", "#8a4513"),
    (float("inf"), "9+", "#8b1a1a"),
)
NEXT_MARK = "⋯"  # the place after the text: the model's guess of what comes next
AUTO_INSPECT_SECONDS = 0.6  # after typing stops, the text is inspected again
BAR_CELLS = 20  # a bar this long is probability 1
GUESS_CELLS = 12  # the guesses' column (a longer token widens it)


def band_color(bits: float) -> str:
    """The background of a token that cost `bits` (NaN, from a broken model, as the worst)."""
    return next((color for limit, _, color in LOSS_BANDS if bits < limit), LOSS_BANDS[-1][2])


def legend() -> Text:
    text = Text("bits ")
    for _, label, color in LOSS_BANDS:
        text.append(f" {label} ", style=f"#ffffff on {color}")
    return text


def visible(piece: str) -> str:
    """A token's text in quotes (so its spaces show), newlines and tabs as escapes."""
    return '"' + piece.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def cell_char(char: str) -> str:
    """How a character of the text is drawn in the token view (one cell for anything invisible)."""
    if char == "\n":
        return "↵"
    if char == "\t":
        return "→"
    return "·" if not char.isprintable() else char


@dataclass
class Layout:
    """The token view at one width: the text wrapped by character (a token can span two rows)."""

    rows: list[list[tuple[int, str]]]  # per row: runs of (token index, drawn text)
    owners: list[list[int]]  # per row, per cell: the index of the token drawn there
    starts: list[tuple[int, int]]  # per token (and the place after the text): (row, column) where it begins


def lay_out(pieces: list[str], width: int) -> Layout:
    """Token i's text flows on from token i-1's; a newline ends its row after a ↵ mark; the place
    after the text (index len(pieces)) is one cell drawn as NEXT_MARK."""
    width = max(2, width)
    rows: list[list[tuple[int, str]]] = [[]]
    owners: list[list[int]] = [[]]
    starts: list[tuple[int, int]] = []
    column = 0
    for index, piece in enumerate([*pieces, NEXT_MARK]):
        starts.append((len(rows) - 1, column))
        for position, char in enumerate(piece):
            drawn = cell_char(char)
            cells = cell_len(drawn)
            if column + cells > width:
                rows.append([])
                owners.append([])
                column = 0
                if position == 0:
                    starts[-1] = (len(rows) - 1, 0)
            run = rows[-1]
            if run and run[-1][0] == index:
                run[-1] = (index, run[-1][1] + drawn)
            else:
                run.append((index, drawn))
            owners[-1].extend([index] * cells)
            column += cells
            if char == "\n":
                rows.append([])
                owners.append([])
                column = 0
    return Layout(rows, owners, starts)


class TokenView(ScrollView, can_focus=True):
    """The inspected text, each token on the colour of its loss; the cursor token reversed."""

    BINDINGS = [
        Binding("left,h", "move(-1)", "Previous token", show=False),
        Binding("right,l", "move(1)", "Next token"),
        Binding("up,k", "move_row(-1)", "Row up", show=False),
        Binding("down,j", "move_row(1)", "Row down", show=False),
        Binding("home,g", "first", "First token", show=False),
        Binding("end,G", "last", "After the text", show=False),
        Binding("w", "worst", "Worst token"),
        Binding("i,e", "screen.edit", "Edit text"),
    ]

    cursor: reactive[int] = reactive(0)

    class Moved(Message):
        def __init__(self, index: int):
            super().__init__()
            self.index = index

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tokens: list[dict[str, Any]] = []
        self.layout_cache: Layout | None = None
        self.inspected = False  # nothing to draw (not even the place after the text) before a reply

    def show(self, tokens: list[dict[str, Any]]) -> None:
        """New tokens; the cursor stays where it was if the text still reaches there."""
        self.tokens, self.inspected = tokens, True
        self.layout_cache = None
        self.set_reactive(TokenView.cursor, min(self.cursor, len(tokens)))
        self.update_size()
        self.post_message(self.Moved(self.cursor))
        self.refresh()

    @property
    def laid(self) -> Layout:
        if self.layout_cache is None:
            width = self.scrollable_content_region.width
            self.layout_cache = (lay_out([token["text"] for token in self.tokens], width) if self.inspected
                                 else Layout([], [], [(0, 0)]))
        return self.layout_cache

    def update_size(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.laid.rows))

    def on_resize(self) -> None:
        self.layout_cache = None
        self.update_size()
        self.scroll_to_cursor()

    def render_line(self, y: int) -> Strip:
        row = y + self.scroll_offset.y
        base = self.rich_style
        width = self.scrollable_content_region.width
        if row >= len(self.laid.rows):
            return Strip.blank(width, base)
        segments = []
        for index, drawn in self.laid.rows[row]:
            if index == len(self.tokens):
                style = Style(dim=True)
            else:
                style = Style(color="#ffffff", bgcolor=band_color(self.tokens[index]["bits"]))
            if index == self.cursor:
                style += Style(reverse=True, bold=True)
            segments.append(Segment(drawn, base + style))
        return Strip(segments).adjust_cell_length(width, base)

    def watch_cursor(self, cursor: int) -> None:
        self.scroll_to_cursor()
        self.post_message(self.Moved(cursor))
        self.refresh()

    def scroll_to_cursor(self) -> None:
        if self.cursor < len(self.laid.starts):
            row, column = self.laid.starts[self.cursor]
            self.scroll_to_region(Region(column, row, 1, 1), animate=False, immediate=True)

    def action_move(self, step: int) -> None:
        self.cursor = max(0, min(len(self.tokens), self.cursor + step))

    def action_move_row(self, step: int) -> None:
        """To the token drawn in the row above/below at the cursor's column (the row's last one
        when that row is shorter)."""
        row, column = self.laid.starts[self.cursor]
        target = row + step
        if 0 <= target < len(self.laid.owners) and self.laid.owners[target]:
            owners = self.laid.owners[target]
            self.cursor = owners[min(column, len(owners) - 1)]

    def action_first(self) -> None:
        self.cursor = 0

    def action_last(self) -> None:
        self.cursor = len(self.tokens)

    def action_worst(self) -> None:
        if self.tokens:
            self.cursor = max(range(len(self.tokens)), key=lambda index: self.tokens[index]["loss"])

    def token_at(self, x: int, y: int) -> int | None:
        row, column = y + self.scroll_offset.y, x + self.scroll_offset.x
        if 0 <= row < len(self.laid.owners) and 0 <= column < len(self.laid.owners[row]):
            return self.laid.owners[row][column]
        return None

    def on_mouse_move(self, event: events.MouseMove) -> None:
        offset = event.get_content_offset(self)
        index = self.token_at(offset.x, offset.y) if offset else None
        if index is not None:
            self.set_reactive(TokenView.cursor, index)  # no scrolling under the mouse
            self.post_message(self.Moved(index))
            self.refresh()

    def on_click(self, event: events.Click) -> None:
        self.focus()


class InspectScreen(ModelProcess, Screen):
    TITLE = "Inspect"
    BINDINGS = [
        Binding("ctrl+r", "inspect", "Inspect", priority=True),
    ]
    DEFAULT_CSS = """
    #inspect-top { height: auto; }
    #inspect-checkpoint { width: 1fr; }
    #inspect-status { width: 1fr; height: 3; padding: 1 1 0 1; color: $text-muted; }
    #inspect-input { height: 1fr; min-height: 4; max-height: 10; }
    #inspect-tokens { height: 3fr; min-height: 5; scrollbar-gutter: stable; }
    #inspect-detail { height: 8; }
    """

    def compose(self) -> ComposeResult:
        yield NavBar("inspect")
        with Horizontal(id="inspect-top"):
            yield Select([], prompt="pick a checkpoint", id="inspect-checkpoint")
            yield Static(id="inspect-status")
        yield TextArea(id="inspect-input", placeholder="type or paste text: it is inspected as you type "
                                                       "(ctrl+r at once); tab goes to the tokens")
        yield TokenView(id="inspect-tokens", classes="panel")
        yield Static(id="inspect-detail", classes="panel")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.checkpoint: Path | None = None
        self.model_name = self.ready_text = ""  # the model's name; "ready: NAME, N params"
        self.sent = self.answered = 0  # inspect requests sent to this process, and replies to them
        self.reply: dict[str, Any] | None = None  # the newest inspect reply shown
        self.pending_text: str | None = None  # typed but not inspected yet
        self.auto_timer = None
        self.query_one("#inspect-tokens").border_title = "tokens"
        self.query_one("#inspect-tokens").border_subtitle = legend()

    def on_screen_resume(self) -> None:
        self.sync_with_app()

    def on_unmount(self) -> None:
        self.stop_model()

    def sync_with_app(self) -> None:
        self.list_checkpoints()
        checkpoints = self.app.model.checkpoint_paths()
        wanted = self.checkpoint or self.app.chat_checkpoint
        if wanted not in checkpoints:
            wanted = checkpoints[-1] if checkpoints else None
        if wanted is None:
            self.set_status(Text("no checkpoints yet: train a run first", style="dim"))
        else:
            self.query_one("#inspect-checkpoint", Select).value = str(wanted)
            self.start_model(wanted)
        if not self.reply:
            self.query_one("#inspect-input", TextArea).focus()

    def list_checkpoints(self) -> None:
        picker = self.query_one("#inspect-checkpoint", Select)
        value = picker.value
        paths = self.app.model.checkpoint_paths()
        picker.set_options([(checkpoint_label(path), str(path)) for path in paths])
        if value is not Select.NULL and Path(str(value)) in paths:
            picker.value = value

    @on(ModelChanged)
    def model_changed(self, event: ModelChanged) -> None:
        if event.topic == "checkpoints":
            self.list_checkpoints()
            if self.checkpoint is None:
                self.sync_with_app()

    @on(Select.Changed, "#inspect-checkpoint")
    def checkpoint_picked(self, event: Select.Changed) -> None:
        if event.value is not Select.NULL:
            self.start_model(Path(str(event.value)))

    # ---- the model process ----

    def start_model(self, checkpoint: Path) -> None:
        if checkpoint == self.checkpoint and self.process and self.process.poll() is None:
            return
        self.checkpoint = checkpoint
        self.sent = self.answered = 0
        self.model_name = self.ready_text = ""
        self.set_status(Text(f"loading {checkpoint_label(checkpoint)}…"))
        if not self.launch_model(getattr(self.app, "inspect_worker_command", worker_command)(checkpoint)):
            return
        if self.query_one("#inspect-input", TextArea).text.strip():
            self.action_inspect()  # the text on screen, read by the new checkpoint

    # ---- inspecting ----

    @on(TextArea.Changed, "#inspect-input")
    def text_changed(self) -> None:
        """Inspect again once typing pauses (one request per pause, not per key)."""
        if self.auto_timer is not None:
            self.auto_timer.stop()
        self.auto_timer = self.set_timer(AUTO_INSPECT_SECONDS, self.inspect_typed)

    def inspect_typed(self) -> None:
        self.auto_timer = None
        text = self.query_one("#inspect-input", TextArea).text
        if text != self.pending_text:
            self.request(text)

    def action_inspect(self) -> None:
        if self.auto_timer is not None:
            self.auto_timer.stop()
            self.auto_timer = None
        if self.request(self.query_one("#inspect-input", TextArea).text):
            self.query_one(TokenView).focus()

    def action_edit(self) -> None:
        self.query_one("#inspect-input", TextArea).focus()

    def request(self, text: str) -> bool:
        if not self.send({"type": "inspect", "text": text, "top": 5}):
            return False
        self.sent += 1
        self.pending_text = text
        self.set_status(Text(f"{self.model_name or 'the model'}: reading…"))
        return True

    def on_worker_event(self, event: WorkerEvent) -> None:
        if event.generation != self.generation:
            return
        data = event.data
        kind = data.get("type")
        if kind == "ready":
            self.model_name = str(data.get("model") or checkpoint_label(self.checkpoint))
            params = data.get("params")
            size = f", {params / 1e6:.1f}M params" if isinstance(params, (int, float)) else ""
            self.ready_text = f"ready: {self.model_name}{size}"
            self.set_status(Text(self.ready_text))
        elif kind == "inspect":
            self.answered += 1
            if self.answered == self.sent:  # older replies are for text typed over since
                self.show_reply(data)
        elif kind == "error":
            self.answered += 1
            self.set_status(Text(f"error: {data.get('message', '')}", style="bold red"))
        elif kind == "exit":
            self.set_status(self.exit_text(data))

    def show_reply(self, reply: dict[str, Any]) -> None:
        tokens = reply.get("tokens")
        if not isinstance(tokens, list):
            self.set_status(Text("the model process sent an inspect reply without tokens", style="bold red"))
            return
        self.reply = reply
        summary = f"{len(tokens)} tokens"
        mean, per_byte = reply.get("mean_loss"), reply.get("bits_per_byte")
        if isinstance(mean, (int, float)):
            summary += f" · mean loss {mean:.2f} nats ({mean / 0.6931471805599453:.2f} bits)"
        if isinstance(per_byte, (int, float)):
            summary += f" · {per_byte:.2f} bits/byte"
        if reply.get("truncated"):
            summary += " · cut at the context length"
        self.query_one("#inspect-tokens").border_title = summary
        self.set_status(Text(self.ready_text))
        self.query_one(TokenView).show(tokens)

    @on(TokenView.Moved)
    def show_token(self, event: TokenView.Moved) -> None:
        self.query_one("#inspect-detail", Static).update(self.describe(event.index))

    def describe(self, index: int) -> Text:
        """The token at `index` (its loss, probability and rank) and the model's guesses for its
        place, the token itself marked among them; past the last token, the guesses for the next."""
        detail = self.query_one("#inspect-detail", Static)
        if self.reply is None:
            detail.border_title = "the model's guesses"
            return Text("move to a token (arrows, h/l, or the mouse) to see what the model expected there",
                        style="dim")
        tokens = self.reply["tokens"]
        if index < len(tokens):
            token = tokens[index]
            detail.border_title = f"token {index + 1} of {len(tokens)}: the model expected"
            text = Text()
            text.append(visible(token["token"]), style=f"bold #ffffff on {band_color(token['bits'])}")
            text.append(f"  id {token['id']} · loss {token['loss']:.2f} nats = {token['bits']:.2f} bits"
                        f" · p {token['p']:.3f} · rank {token['rank']}")
            guesses, own = token["top"], token["token"]
        else:
            detail.border_title = "after the text: the model expects"
            text = Text("what comes next", style="bold")
            guesses, own = self.reply.get("next") or [], None
        width = max([GUESS_CELLS, *(cell_len(visible(piece)) for piece, _ in guesses)])
        for piece, probability in guesses:
            text.append(f"\n{probability:6.3f}  ")
            text.append(visible(piece), style="bold" if piece == own else "")
            text.append(" " * (width - cell_len(visible(piece)) + 1))
            filled = probability * BAR_CELLS
            text.append("█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else ""), style="cyan")
            if piece == own:
                text.append("  ◀ this token", style="bold")
        return text

    def set_status(self, message: str | Text) -> None:
        self.query_one("#inspect-status", Static).update(message)
