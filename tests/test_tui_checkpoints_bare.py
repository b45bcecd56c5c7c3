"""A checkpoint folder without meta.json inside RUN/checkpoints/ (weights, config and tokenizer: a
model copied in) loads in chat, eval, serve and sft with a warning; the Checkpoints screen lists it
too, its step read from the folder's name. Found by issue 19's re-check: it was not listed."""

from __future__ import annotations

import shutil

from textual.widgets import DataTable

from workbench import checkpoint_files, runs
from workbench.tui.app import PicochatApp


async def test_a_checkpoint_without_meta_json_is_listed_with_its_step(runs_dir, tiny_checkpoint):
    bare = runs_dir / "tiny-done" / "checkpoints" / "step_000050"
    bare.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        shutil.copy(tiny_checkpoint / name, bare / name)
    (runs_dir / "tiny-done" / "checkpoints" / "step_000060").mkdir()  # no weights either: not a checkpoint
    app = PicochatApp(runs_dir)
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("5")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        rows = [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]
    assert [row[0:4] for row in rows] == [
        ["d4-failed", "step_000100", "sft", "100"], ["tiny-done", "step_000050", "no meta.json", "50"],
        ["tiny-done", "step_000100", "pretrain", "100"], ["tiny-done", "step_000200", "pretrain", "200"],
        ["tiny-done", "step_000300", "pretrain", "300"]]
    assert rows[1][6] != "-"  # its weights, sized
    # training still neither resumes from it nor prunes it
    assert bare not in runs.list_checkpoints(runs_dir / "tiny-done")
    assert checkpoint_files.newest(runs_dir / "tiny-done").name == "step_000300"
