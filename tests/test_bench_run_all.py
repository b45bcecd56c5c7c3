"""`make bench` (bench/run_all.py): every benchmark script is run by it or named as run by hand, and
one that needs what this machine lacks is a skip with its reason, not a failure."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_bench_script_is_run_by_make_bench_or_named_as_run_by_hand():
    run_all = load_run_all()
    listed = {Path(argv[0]).name for _, argv, _ in run_all.BENCHMARKS}
    scripts = {path.name for path in BENCH.glob("*.py")} - {"run_all.py"}
    assert scripts - listed - set(run_all.BY_HAND) == set()
    assert "chat_page.py" in listed


def test_a_benchmark_this_machine_cannot_run_is_a_skip_with_its_reason(tmp_path, monkeypatch, capsys):
    run_all = load_run_all()
    monkeypatch.setattr(run_all, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "chat page", "--out", str(tmp_path)])
    assert run_all.main() == 0
    result = json.loads((tmp_path / "latest.json").read_text())["results"]
    assert [(r["name"], r["lines"], r["problem"]) for r in result] == [
        ("chat page", [f"skipped: needs Debian's chromium at {tmp_path / 'no-chromium'} (apt-get install chromium)"], "")]
    assert "skipped: needs Debian's chromium" in (tmp_path / "latest.md").read_text()
