"""MFU is a share of the hardware's peak, so no reader shows one above 100% (issue 19 item 9).
The training loop now keeps the best rate seen as a floor for the peak, but run folders written
before that (a peak measured while the machine was busy) hold MFU 201%: the dashboard's headline
and MFU panel, the report and the CLI must read those as missing, not plot them."""

from __future__ import annotations

from workbench import runs
from workbench.tui.series import RunMetrics


def write_old_run(run_dir, mfus):
    writer = runs.RunWriter(run_dir, "pretrain", total_steps=len(mfus))
    for step, mfu in enumerate(mfus, start=1):
        writer.log("train", step, loss=4.0, tokens=step * 512, tokens_per_second=1000.0, mfu=mfu)


def test_an_mfu_above_100_percent_or_below_0_reads_as_missing(tmp_path):
    write_old_run(tmp_path / "old", [0.0, 55.5, 100.0, 201.3, -3.0])
    train = runs.read_metrics(tmp_path / "old", "train")
    assert [record.get("mfu") for record in train] == [0.0, 55.5, 100.0, None, None]
    assert all(record["loss"] == 4.0 for record in train)  # the rest of the record stays


def test_the_dashboard_never_plots_or_heads_with_an_mfu_above_100(tmp_path):
    write_old_run(tmp_path / "old", [40.0, 201.3])
    metrics = RunMetrics(tmp_path / "old")
    metrics.poll()
    assert metrics.series["mfu"].value == [40.0]
    assert "mfu" not in metrics.last_train  # the headline shows "MFU -"
