"""Small modal screens: yes/no confirmation, a one-line prompt, picking several items, and picking
the stage to launch."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList
from textual.widgets.option_list import Option

from workbench.tui.widgets.common import TickList


class ConfirmDialog(ModalScreen[bool]):
    """Ask before anything destructive; y/enter confirms, n/escape cancels."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__(classes="dialog")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question, classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PromptDialog(ModalScreen[str | None]):
    """One line of text (a path to export to, say); enter accepts, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = ""):
        super().__init__(classes="dialog")
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question, classes="dialog-question")
            yield Input(self.value, id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PickDialog(ModalScreen[list[str] | None]):
    """Tick several items (runs to overlay); enter accepts, escape cancels."""

    BINDINGS = [Binding("enter", "accept", "Accept", priority=True), Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, items: list[str], selected: list[str]):
        super().__init__(classes="dialog")
        self.question, self.items, self.selected = question, items, set(selected)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(self.question + "  (space ticks, enter accepts)", classes="dialog-question")
            yield TickList[str](*[(item, item, item in self.selected) for item in self.items], id="items")

    def action_accept(self) -> None:
        self.dismiss(list(self.query_one("#items", TickList).selected))

    def action_cancel(self) -> None:
        self.dismiss(None)


class StageDialog(ModalScreen[str | None]):
    """Which stage to launch: one key per stage, and enter takes the one the run needs next
    (highlighted), so the usual path is ctrl+l, enter."""

    KEYS = {"prepare": "d", "tokenizer": "t", "pretrain": "p", "sft": "s", "grpo": "g", "eval": "e"}
    BINDINGS = [Binding("escape", "cancel", "Cancel")] + [
        Binding(key, f"pick('{stage}')", stage, show=False) for stage, key in KEYS.items()]

    def __init__(self, title: str, stages: dict[str, str], suggested: str, running: str | None = None):
        super().__init__(classes="dialog")
        self.title_text, self.stages, self.suggested, self.running = title, stages, suggested, running

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(f"{self.title_text}\n(a key, or enter for the highlighted one; escape cancels)",
                        classes="dialog-question")
            if self.running:
                yield Label(f"{self.running} is running now: what comes after it can start once it ends",
                            classes="dialog-question warning")
            yield OptionList(*[Option(f"{self.KEYS[stage]}  {stage:<10} {about}" + self.mark(stage), id=stage)
                               for stage, about in self.stages.items()], id="stages")

    def mark(self, stage: str) -> str:
        if stage == self.running:
            return "  <- running"
        return "  <- next" if stage == self.suggested and self.running is None else ""

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = list(self.stages).index(self.suggested)
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_pick(self, stage: str) -> None:
        self.dismiss(stage)

    def action_cancel(self) -> None:
        self.dismiss(None)
