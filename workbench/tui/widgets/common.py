"""Widgets every screen uses: the navigation bar, tables that move with j/k/g/G, tick lists whose
ticks read without colour, and the help overlay (`?`) that lists every key of the screen."""

from __future__ import annotations

from rich.cells import cell_len
from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widgets import DataTable, SelectionList, Static
from textual.widgets._toggle_button import ToggleButton
from textual.widgets.option_list import OptionDoesNotExist
from textual.widgets.selection_list import SelectionType

# mode -> (key, long title, short title for narrow terminals)
NAVIGATION = {
    "runs": ("1", "Runs", "Runs"),
    "config": ("2", "Config", "Conf"),
    "data": ("3", "Data", "Data"),
    "dashboard": ("4", "Dashboard", "Dash"),
    "checkpoints": ("5", "Checkpoints", "Ckpt"),
    "evals": ("6", "Evals", "Eval"),
    "chat": ("7", "Chat", "Chat"),
    "inspect": ("8", "Inspect", "Insp"),
}
WIDE = 110  # columns from which the navigation bar spells the screens out


class NavBar(Static):
    """One line on top: the screens by number (the one on view highlighted), then `? keys`."""

    DEFAULT_CSS = "NavBar { height: 1; background: $panel; color: $text-muted; }"

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def render(self) -> Text:
        wide = self.size.width >= WIDE
        line = Text(" picochat " if wide else "", style="bold")
        for mode, (key, title, short) in NAVIGATION.items():
            label = f" {key} {title if wide else short} "
            line.append(label, style="bold reverse" if mode == self.mode else "")
        line.append("  ? keys  q quit" if wide else "  ? keys", style="dim")
        line.truncate(max(1, self.size.width), overflow="ellipsis")
        return line


class KeyTable(DataTable):
    """A DataTable that also moves the way htop and less do, and whose rows are replaced whole
    with their columns already as wide as their cells."""

    def replace_rows(self, entries: list[tuple[str, tuple]]) -> None:
        """Clear, then add (key, cells) rows. DataTable measures new cells only when idle, and a
        frame drawn before that is cached with the columns at their headers' widths ("tin" for
        "tiny"): the widths are set here first."""
        self.clear()
        for index, column in enumerate(self.ordered_columns):
            cells = [row[index] for _, row in entries] + [column.label]
            column.content_width = max(cell_len(cell.plain if isinstance(cell, Text) else str(cell))
                                       for cell in cells)
        for key, row in entries:
            self.add_row(*row, key=key)

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "First", show=False),
        Binding("G", "scroll_bottom", "Last", show=False),
    ]


class TickList(SelectionList[SelectionType]):
    """A SelectionList whose ticked rows show an x and unticked ones a blank, so they differ on a
    terminal without colour (the stock list draws the same X in both, only coloured apart)."""

    BINDINGS = [Binding("j", "cursor_down", show=False), Binding("k", "cursor_up", show=False)]

    def render_line(self, y: int) -> Strip:
        line = super().render_line(y)
        try:
            selection = self.get_option_at_index(self.scroll_offset.y + y)
        except OptionDoesNotExist:
            return line
        segments = list(line)
        if len(segments) > 1 and segments[1].text == ToggleButton.BUTTON_INNER:
            segments[1] = Segment("x" if selection.value in self._selected else " ", segments[1].style)
        return Strip(segments, line.cell_length)


def describe_key(binding) -> str:
    return binding.key_display or {"left_square_bracket": "[", "right_square_bracket": "]",
                                   "question_mark": "?", "slash": "/", "space": "space"}.get(
        binding.key, binding.key.replace("ctrl+", "^"))


class HelpScreen(ModalScreen[None]):
    """Every key the screen underneath answers to, its own first; escape, q or ? closes."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, title: str, rows: list[tuple[str, str, str]]):
        super().__init__(classes="dialog")
        self.title_text, self.rows = title, rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0), expand=True)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(ratio=1)
        section = None
        for group, key, description in self.rows:
            if group != section:
                section = group
                table.add_row(Text(group, style="underline"), "")
            table.add_row(key, description)
        with VerticalScroll(classes="dialog-box help-box"):
            yield Static(Text(f"{self.title_text}: keys   (escape closes)", style="bold"))
            yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)


GENERIC_ACTIONS = ("app.focus_next", "app.focus_previous", "screen.copy_text", "focus_next", "focus_previous",
                   "copy_text")  # every screen has them: listed with the app's keys


def help_rows(screen) -> list[tuple[str, str, str]]:
    """(group, key, what) for every binding active on `screen`: the screen's own first, then
    the focused widget's (a table's moves, an editor's), then the app's."""
    groups: dict[str, list[list[str]]] = {"this screen": [], "the focused part": [], "everywhere": []}
    seen: dict[tuple[str, str], list[str]] = {}
    for active in screen.active_bindings.values():
        binding = active.binding
        description = binding.description or binding.action
        if binding.action.startswith("show("):
            continue
        if (description, binding.action) in seen:  # one action on two keys (q and ctrl+q): one row
            seen[description, binding.action][1] += f", {describe_key(binding)}"
            continue
        group = ("everywhere" if active.node is screen.app or binding.action in GENERIC_ACTIONS else
                 "this screen" if active.node is screen else "the focused part")
        seen[description, binding.action] = row = [group, describe_key(binding), description]
        groups[group].append(row)
    groups["everywhere"].append(("everywhere", f"1-{len(NAVIGATION)}, F1-F{len(NAVIGATION)}", "go to a screen (" + ", ".join(
        f"{key} {title}" for key, title, _ in NAVIGATION.values()) + ")"))
    groups["everywhere"].append(("everywhere", "^p", "command palette (every action by name)"))
    return [(group, key, what) for rows in groups.values() for group, key, what in rows]
