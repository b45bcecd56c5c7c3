"""TUI benchmarks: start-up time of `picochat-tui` to its first screen, and the dashboard redraw
time for a 100k-step run: every plot rebuilt (full), and a poll that brings 5 new steps (live), with
plotext's cost at 100k points for comparison.

    .venv/bin/python bench/tui.py [--points 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STARTUP_SCRIPT = """
import time, sys
started = time.perf_counter()
from workbench.tui.app import PicochatApp
import asyncio
async def main():
    app = PicochatApp(sys.argv[1])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        print(time.perf_counter() - started, 'torch' in sys.modules)
asyncio.run(main())
"""


def startup_seconds(runs_dir: Path, repeats: int = 5) -> tuple[float, bool]:
    """Wall time from launching the interpreter to the Runs screen drawn (headless)."""
    times, torch_loaded = [], False
    for _ in range(repeats):
        begin = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, str(runs_dir)], capture_output=True,
                             text=True, cwd=REPO, check=True).stdout.split()
        times.append(time.perf_counter() - begin)
        torch_loaded |= out[1] == "True"
    return statistics.median(times), torch_loaded


def train_record(step: int) -> str:
    return json.dumps({"t": 1e9 + step * 0.1, "step": step, "kind": "train", "stage": "pretrain",
                       "loss": 3 + 5 / step ** 0.3 + (step % 17) * 0.01, "lr": 0.02,
                       "grad_norm": 1 + (step % 13) * 0.1, "tokens": step * 8192,
                       "tokens_per_second": 50_000 + step % 1000, "mfu": 30.0}) + "\n"


def write_run(run_dir: Path, points: int) -> None:
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.jsonl", "w") as handle:
        for step in range(1, points + 1):
            handle.write(train_record(step))
            if step % 250 == 0:
                handle.write(json.dumps({"t": 1e9 + step * 0.1, "step": step, "kind": "eval",
                                         "stage": "pretrain", "val_bpb": 1 + 1 / step ** 0.2}) + "\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "done", "stage": "pretrain", "pid": 1, "step": points,
                                                     "total_steps": points, "started": 1e9,
                                                     "heartbeat": 1e9 + points * 0.1}))


async def redraw_seconds(runs_dir: Path, run_dir: Path, points: int, repeats: int = 10) -> dict[str, float]:
    from workbench.tui.app import PicochatApp
    from workbench.tui.widgets.plot import MetricPlot

    app = PicochatApp(runs_dir)
    async with app.run_test(size=(200, 60)) as pilot:
        begin = time.perf_counter()
        app.open_run(run_dir)
        await pilot.pause()
        first_load = time.perf_counter() - begin
        screen = app.screen
        plots = list(screen.query(MetricPlot))
        # Full redraw: every figure rebuilt (what a resize, a theme or an axis change costs).
        full = []
        for _ in range(repeats):
            for plot in plots:
                plot._cache_key = None
            begin = time.perf_counter()
            screen.update_plots()
            for plot in plots:
                plot.render()
            full.append(time.perf_counter() - begin)
        # Live update: the worker appended 5 steps; one poll, then the plots that changed redraw.
        live = []
        step = points
        for _ in range(repeats):
            with open(run_dir / "metrics.jsonl", "a") as handle:
                for _ in range(5):
                    step += 1
                    handle.write(train_record(step))
            begin = time.perf_counter()
            screen.poll()
            for plot in plots:
                plot.render()  # an unchanged plot (val bpb here) answers from its cache
            live.append(time.perf_counter() - begin)
        loss = screen.query_one("#plot-loss", MetricPlot)
        # For comparison: what plotext alone costs with every one of the points.
        series = screen.metrics[run_dir].series["loss"]
        loss.plt.clear_figure()
        loss.plt.plot(series.step, series.value)
        begin = time.perf_counter()
        loss.plt.build()
        raw = time.perf_counter() - begin
        return {"first_load": first_load, "full": statistics.median(full), "live": statistics.median(live),
                "raw_plotext": raw, "points_drawn": loss.point_count(), "plots": len(plots)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs_dir = Path(folder) / "runs"
        run_dir = runs_dir / "big"
        write_run(run_dir, args.points)
        startup, torch_loaded = startup_seconds(runs_dir)
        redraw = asyncio.run(redraw_seconds(runs_dir, run_dir, args.points))
    print(f"tui: startup {startup * 1000:.0f} ms to first screen (torch imported: {torch_loaded}); "
          f"dashboard {args.points // 1000}k points: full redraw {redraw['full'] * 1000:.1f} ms for "
          f"{redraw['plots']} plots ({redraw['points_drawn']} points in the loss plot), live update "
          f"{redraw['live'] * 1000:.1f} ms (5 new steps), first load {redraw['first_load'] * 1000:.0f} ms; "
          f"plotext without downsampling {redraw['raw_plotext'] * 1000:.0f} ms for one plot")


if __name__ == "__main__":
    main()
