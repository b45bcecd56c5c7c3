"""The table `picochat eval` prints is titled by the checkpoint it evaluated: RUN/step_N,
RUN/int8/step_N, or for a checkpoint folder outside a run (a shipped model: weights, config and
tokenizer, issue 19 item 7) its own name. Found by issue 19's re-check: `picochat eval nometa`
was titled "//nometa"."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.evals.api import Evaluation
from workbench.evals.cli import print_results


@pytest.mark.parametrize(("checkpoint", "title"), [
    ("runs/tiny/checkpoints/step_000300", "tiny/step_000300"),
    ("runs/tiny/int8/step_000300", "tiny/int8/step_000300"),
    ("nometa", "nometa"),
    ("models/picochat-rs-90m", "picochat-rs-90m"),
])
def test_the_table_title_names_the_checkpoint(capsys, monkeypatch, tmp_path, checkpoint, title):
    monkeypatch.chdir(tmp_path)
    print_results(Evaluation(checkpoint=Path(checkpoint), results={}, stopped="", records=None))
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.strip() == title
