"""The run report: one page on what a run did, in the spirit of nanochat's report card (the
`picochat report RUN` verb is workbench/report_cli.py).

Gathered from the run folder runs/NAME and its stage siblings (NAME-sft, NAME-grpo, NAME-eval):
the frozen config, the machine, software versions and git commit, each stage's wall time, steps,
tokens, parameters, final train loss and val bpb, and every eval result found in the checkpoints'
evals.json, with each task's chance level beside it. Written to runs/NAME/report.md and
runs/NAME/report.json; `write_report(run_dir)` is the same thing as a function (speedrun calls it).

Everything is read from files the stages already wrote, so a report can be rebuilt at any time.
Wall time per stage is measured from metrics.jsonl (first to last record of the stage; gaps longer
than 10 minutes, e.g. between a stop and a --resume, are left out).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from workbench import checkpoint_files, runs, stages
from workbench.errors import BadInput
from workbench.evals.common import SCORE_KEYS, TASKS, describe_greedy_gain, headline_score
from workbench.stages import REPORT_COLUMNS, TRAINING_STAGES, WORKER_STAGES

SESSION_GAP_SECONDS = 600.0


# ---------------------------------------------------------------------------------------------
# finding the run's folders


def base_run_dir(run_dir: str | Path) -> Path:
    """runs/NAME for runs/NAME, runs/NAME-sft, runs/NAME-grpo or runs/NAME-eval."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise BadInput(f"{run_dir}: no such run folder")
    base, _ = stages.split_folder(run_dir)
    return base if base.is_dir() else run_dir


def stage_folders(base: Path) -> dict[str, Path]:
    """Each folder of the run that exists: "" (the run itself), "sft", "grpo", "eval"."""
    folders = {"": base}
    for stage in stages.FOLDER_SUFFIXES:
        sibling = stages.folder(base, stage)
        if sibling.is_dir():
            folders[stage] = sibling
    return folders


# ---------------------------------------------------------------------------------------------
# the machine and the software


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def hardware() -> dict[str, Any]:
    """The machine writing the report (training may have run elsewhere: see each stage's device)."""
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_gb = None
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    info: dict[str, Any] = {"cpu": cpu or platform.processor() or platform.machine(),
                            "cores": os.cpu_count(), "memory_gb": memory_gb,
                            "os": f"{platform.system()} {platform.release()}", "gpus": []}
    try:
        import torch

        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                info["gpus"].append(f"{props.name} ({props.total_memory / 1024**3:.0f} GiB)")
    except ImportError:
        pass
    return info


def software() -> dict[str, Any]:
    from workbench.config import REPO_DIR

    info: dict[str, Any] = {"python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                                timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=10)
        info["git_commit"] = commit.stdout.strip() or None
        info["git_dirty"] = bool(dirty.stdout.strip()) if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"], info["git_dirty"] = None, None
    return info


# ---------------------------------------------------------------------------------------------
# the stages


FINISHED = re.compile(r"^\w+ (done|stopped|failed)\b")  # a worker's last event (RunWriter.finish)


def wall_seconds(records: list[dict[str, Any]]) -> float | None:
    """Time covered by the records while a worker was at work: left out are gaps over
    SESSION_GAP_SECONDS, pauses (from a "paused at" event to the next record), and the time
    between a worker's end (its finish event) or a crash and the next worker (its "sys" record)."""
    timed = sorted(((r["t"], r) for r in records if runs.is_number(r.get("t"))), key=lambda pair: pair[0])
    if not timed:
        return None
    total = 0.0
    for (before, earlier), (after, later) in zip(timed, timed[1:], strict=False):
        message = str(earlier.get("message", "")) if earlier.get("kind") == "event" else ""
        if (after - before > SESSION_GAP_SECONDS or later.get("kind") == "sys"
                or message.startswith("paused at") or FINISHED.match(message)):
            continue
        total += after - before
    return total


def evals_of(records: list[dict[str, Any]], checkpoints: set[str]) -> list[dict[str, Any]]:
    """The records of the newest eval of each of these checkpoints (an eval worker's records start
    with an event naming its checkpoint): not those of earlier evals or of other checkpoints."""
    sessions: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for record in records:
        if record.get("kind") == "event" and isinstance(record.get("checkpoint"), str):
            name = str(Path(record["checkpoint"]).resolve())
            current = [] if name in checkpoints else None
            if current is not None:
                sessions[name] = current  # a later eval of the checkpoint replaces an earlier one
        if current is not None:
            current.append(record)
    return [record for session in sessions.values() for record in session]


def _last(records: list[dict[str, Any]], kind: str, key: str) -> Any:
    for record in reversed(records):
        if record.get("kind") == kind and record.get(key) is not None:
            return record[key]
    return None


def _first(records: list[dict[str, Any]], kind: str, key: str) -> Any:
    for record in records:
        if record.get("kind") == kind and record.get(key) is not None:
            return record[key]
    return None


def stage_summary(stage: str, records: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """What one stage did, from its metrics records (and its newest checkpoint for a training stage)."""
    mine = [r for r in records if r.get("stage") == stage]
    summary: dict[str, Any] = {"folder": str(folder), "wall_seconds": wall_seconds(mine)}
    if stage == "tokenizer":
        for key in ("vocab_size", "chars_per_token", "bytes_per_token", "train_seconds"):
            summary[key] = _last(mine, "tokenizer", key)
    if stage == "prepare":
        summary["summary"] = next((r.get("message") for r in reversed(mine)
                                   if r.get("kind") == "event" and "documents" in str(r.get("message", ""))), None)
    if stage in TRAINING_STAGES:
        summary.update(
            steps=_last(mine, "train", "step"),
            tokens=_last(mine, "train", "tokens"),
            params=_last(mine, "sys", "params"),
            device=_last(mine, "sys", "device_name") or _last(mine, "sys", "device"),
            dtype=_last(mine, "sys", "dtype"),
            final_loss=_last(mine, "train", "loss"),
            tokens_per_second=_last(mine, "train", "tokens_per_second"),
            mfu=_last(mine, "train", "mfu"),
            val_bpb=_last(mine, "eval", "val_bpb"),
            first_val_bpb=_first(mine, "eval", "val_bpb"),
            val_loss=_last(mine, "eval", "val_loss"),
        )
        checkpoint = checkpoint_files.newest(folder)
        if checkpoint is not None:
            meta = checkpoint_files.read_meta(checkpoint)
            summary["checkpoint"] = str(checkpoint)
            summary["params"] = summary["params"] or meta.get("params")
            summary["tokens"] = summary["tokens"] or meta.get("tokens")
            summary["steps"] = summary["steps"] or meta.get("step")
            summary["time_budget"] = meta.get("time_budget")  # seconds; its steps were fixed from it
    if stage == "eval":
        tasks = [r.get("task") for r in mine if r.get("kind") == "eval" and r.get("task")]
        summary["tasks"] = " ".join(dict.fromkeys(tasks)) or None
    if stage in ("sft", "grpo"):
        summary["end_rate"] = _last(mine, "eval", "end_rate")  # replies that end their turn properly
    if stage == "grpo":
        for key in ("accuracy", "zero_variance_fraction", "completion_length"):
            summary[f"first_{key}"] = _first(mine, "grpo", key)
            summary[key] = _last(mine, "grpo", key)
        # one step's reward is noise: compare the means of the first and the last quarter of steps
        rewards = [r["reward_mean"] for r in mine if r.get("kind") == "grpo" and r.get("reward_mean") is not None]
        if rewards:
            quarter = max(1, len(rewards) // 4)
            summary["first_reward_mean"] = sum(rewards[:quarter]) / quarter
            summary["reward_mean"] = sum(rewards[-quarter:]) / quarter
        held_out = [r for r in mine if r.get("kind") == "eval" and any(k.endswith("_reward") for k in r)]
        if held_out:
            key = next(k for k in held_out[-1] if k.endswith("_reward"))
            summary["first_held_out_reward"] = held_out[0].get(key)
            summary["held_out_reward"] = held_out[-1].get(key)
            # the measured effect: greedy accuracy against the frozen start on the same prompts
            gains = [describe_greedy_gain(k[:-len("_greedy_gain")], held_out[-1])
                     for k in held_out[-1] if k.endswith("_greedy_gain")]
            summary["held_out_greedy_gain"] = "; ".join(text for text in gains if text) or None
    return {key: value for key, value in summary.items() if value is not None}


def eval_results(folders: dict[str, Path]) -> list[dict[str, Any]]:
    """Every checkpoint's evals.json in the run's folders, oldest first within each folder."""
    found = []
    for name, folder in folders.items():
        for checkpoint in runs.list_checkpoints(folder):
            results = checkpoint_files.read_evals(checkpoint)
            if results:
                meta = checkpoint_files.read_meta(checkpoint)
                found.append({"stage": meta.get("stage") or ("pretrain" if not name else name),
                              "checkpoint": str(checkpoint), "step": meta.get("step"), "results": results})
    return found


# ---------------------------------------------------------------------------------------------
# the report


def gather(run_dir: str | Path) -> dict[str, Any]:
    base = base_run_dir(run_dir)
    folders = stage_folders(base)
    summaries: dict[str, Any] = {}
    evals = eval_results(folders)
    evaluated = {str(Path(entry["checkpoint"]).resolve()) for entry in evals}
    for name, folder in folders.items():
        records = runs.read_metrics(folder)
        if name == "eval":  # only the evals of the checkpoints reported
            records = evals_of(records, evaluated)
        present = [s for s in WORKER_STAGES if any(r.get("stage") == s for r in records)]
        for stage in present:
            if stage == "eval" and "eval" in summaries:  # eval records from several folders: add up
                extra = stage_summary(stage, records, folder)
                summaries["eval"]["wall_seconds"] = (summaries["eval"].get("wall_seconds") or 0) + (
                    extra.get("wall_seconds") or 0)
                continue
            if stage not in summaries or (name and stage == name):
                summaries[stage] = stage_summary(stage, records, folder)
    config_text = _read(str(base / "config.toml"))
    status = runs.read_status(base) or {}
    total = sum(s.get("wall_seconds") or 0 for s in summaries.values())
    return {
        "run": base.name,
        "folder": str(base.resolve()),
        "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "state": runs.effective_state(status) if status else "missing",
        "hardware": hardware(),
        "software": software(),
        "stages": {s: summaries[s] for s in WORKER_STAGES if s in summaries},
        "total_wall_seconds": total,
        "evals": evals,
        "config_toml": config_text,
    }


def _fmt_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _fmt_count(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:,.0f}"


def _fmt_percent(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def score_cell(task: str, result: dict[str, Any]) -> str:
    if task in SCORE_KEYS:  # bpb, and CORE / ChatCORE: centered, 0 = chance, 1 = perfect
        value = headline_score(task, result)
        return "-" if value is None else f"{value:.4f}"
    cell = _fmt_percent(result.get("accuracy"))
    if result.get("n") is not None and cell != "-":
        cell += f" (n={result['n']})"
    return cell


def main_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows = metrics, columns = the training stages; every eval task with its chance level."""
    summaries = report["stages"]
    columns = [s for s in REPORT_COLUMNS if s in summaries or any(e["stage"] == s for e in report["evals"])]
    newest_evals = {}
    for entry in report["evals"]:  # later checkpoints replace earlier ones
        newest_evals.setdefault(entry["stage"], {}).update(
            {task: dict(result, _step=entry["step"]) for task, result in entry["results"].items()
             if isinstance(result, dict)})
    header = ["metric", "chance"] + columns
    rows: list[list[str]] = []

    def add(label: str, chance: str, cells: list[str]) -> None:
        if any(cell != "-" for cell in cells):
            rows.append([label, chance] + cells)

    def stage_value(stage: str, key: str) -> Any:
        return summaries.get(stage, {}).get(key)

    add("wall time", "", [runs.format_duration(stage_value(s, "wall_seconds")) if stage_value(s, "wall_seconds")
                          is not None else "-" for s in columns])
    add("steps", "", [_fmt_number(stage_value(s, "steps")) for s in columns])
    add("time budget (steps fixed from it)", "", [runs.format_duration(stage_value(s, "time_budget"))
                                                  if stage_value(s, "time_budget") else "-" for s in columns])
    add("tokens", "", [_fmt_count(stage_value(s, "tokens")) for s in columns])
    add("parameters", "", [_fmt_count(stage_value(s, "params")) for s in columns])
    add("tokens/s (last step)", "", [_fmt_count(stage_value(s, "tokens_per_second")) for s in columns])
    add("final train loss", "", [_fmt_number(stage_value(s, "final_loss")) for s in columns])
    add("val bpb (stage's own val data)", "", [_fmt_number(stage_value(s, "val_bpb")) for s in columns])
    add("replies ending with <|assistant_end|>", "", [_fmt_percent(stage_value(s, "end_rate")) for s in columns])

    def first_to_last(stage: str, key: str) -> str:
        if stage_value(stage, key) is None:
            return "-"
        return f"{_fmt_number(stage_value(stage, 'first_' + key))} -> {_fmt_number(stage_value(stage, key))}"

    add("grpo reward (first -> last quarter of steps)", "", [first_to_last(s, "reward_mean") for s in columns])
    add("grpo held-out reward (first -> last eval)", "", [first_to_last(s, "held_out_reward") for s in columns])
    add("grpo held-out greedy accuracy (paired change, 95% CI)", "",
        [stage_value(s, "held_out_greedy_gain") or "-" for s in columns])
    tasks = [t for t in TASKS if any(t in newest_evals.get(s, {}) for s in columns)]
    tasks += sorted({t for s in columns for t in newest_evals.get(s, {})} - set(tasks))
    for task in tasks:
        chance = TASKS.get(task, ("", None, ""))[1]
        chance_text = "-" if chance is None else f"{100 * chance:.0f}%"
        label = "bpb (eval, lower is better)" if task == "bpb" else task
        if task in ("core", "chatcore"):
            chance_text = "0"
            names = [newest_evals.get(s, {}).get(task, {}).get("label") for s in columns]
            label = (next((name for name in names if isinstance(name, str)), "CORE") if task == "core"
                     else "ChatCORE") + " (centered)"
        add(label, chance_text, [score_cell(task, newest_evals.get(s, {}).get(task, {})) for s in columns])
        if task in ("arc-easy", "arc-challenge", "mmlu", "hellaswag"):
            add(f"{task}, letter answer", chance_text,
                [_fmt_percent(newest_evals.get(s, {}).get(task, {}).get("letter_accuracy")) for s in columns])
        if task in ("gsm8k", "humaneval"):
            add(f"{task}, well-formed thoughts", "",
                [_fmt_percent(newest_evals.get(s, {}).get(task, {}).get("well_formed_share")) for s in columns])
    steps = {s: {r.get("_step") for r in newest_evals.get(s, {}).values()} - {None} for s in columns}

    def column(stage: str) -> str:
        """The stage and its steps; the step its evals measured when that is another."""
        trained = stage_value(stage, "steps")
        evaluated = max(steps[stage]) if steps[stage] else None
        if evaluated is None or trained in (None, evaluated):
            shown = trained if trained is not None else evaluated
            return f"{stage} (step {shown})" if shown is not None else stage
        return f"{stage} (step {trained}; evals of step {evaluated})"

    header = ["metric", "chance"] + [column(s) for s in columns]
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    hw, sw = report["hardware"], report["software"]
    lines = [f"# picochat report: {report['run']}", "",
             f"Generated {report['generated']} from `{report['folder']}` (state: {report['state']}).", ""]
    lines += ["## Summary", ""]
    header, rows = main_table(report)
    if rows:
        lines += [_md_table(header, rows), ""]
        lines += ["Eval scores are from each stage's newest checkpoint that was evaluated (the speedrun evaluates "
                  "the last checkpoint of pretraining, SFT and GRPO on the same tasks: base -> SFT -> RL); n is the "
                  "number of examples (a `--limit` run scores a sample). Chance is the score of guessing uniformly. "
                  "CORE and ChatCORE are means of centered accuracies, (accuracy - chance) / (1 - chance): 0 is "
                  "chance, 1 perfect.", ""]
    else:
        lines += ["(no training or eval results yet)", ""]
    lines += ["## Stages", "", _md_table(["stage", "wall time", "details"], [
        [stage, runs.format_duration(info.get("wall_seconds")),
         ", ".join(f"{k} {_fmt_number(v)}" for k, v in info.items()
                   if k not in ("wall_seconds", "folder", "checkpoint") and not isinstance(v, dict))]
        for stage, info in report["stages"].items()]), "",
        f"Total wall time: {runs.format_duration(report['total_wall_seconds'])}.", ""]
    if report["evals"]:
        lines += ["## All eval results", ""]
        eval_rows = []
        for entry in report["evals"]:
            for task, result in entry["results"].items():
                if not isinstance(result, dict):
                    continue
                chance = result.get("chance")
                extras = []
                for key in ("letter_accuracy", "accuracy_sum", "subject_mean_accuracy", "well_formed_share",
                            "thought_share", "accuracy_with_thought", "accuracy_without_thought"):
                    if isinstance(result.get(key), (int, float)):
                        extras.append(f"{key} {_fmt_percent(result[key])}")
                if isinstance(result.get("thought_tokens"), (int, float)):
                    extras.append(f"thought_tokens {result['thought_tokens']:.1f}")
                if result.get("outcomes"):
                    extras.append("outcomes " + " ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())))
                if task in ("core", "chatcore") and isinstance(result.get("tasks"), dict):
                    extras.append("centered " + ", ".join(
                        f"{name} {_fmt_number(part.get('centered'))}" for name, part in result["tasks"].items()
                        if isinstance(part, dict)))
                eval_rows.append([entry["stage"], Path(entry["checkpoint"]).name, task, score_cell(task, result),
                                  "-" if chance is None else f"{100 * chance:.0f}%", ", ".join(extras)])
        lines += [_md_table(["stage", "checkpoint", "task", "score", "chance", "more"], eval_rows), ""]
        subjects = [(entry, entry["results"]["mmlu"]["subjects"]) for entry in report["evals"]
                    if isinstance(entry["results"].get("mmlu"), dict) and entry["results"]["mmlu"].get("subjects")]
        if subjects:
            entry, per_subject = subjects[-1]
            lines += [f"MMLU per subject ({entry['stage']}, {Path(entry['checkpoint']).name}): "
                      + ", ".join(f"{name} {_fmt_percent(s.get('accuracy'))} ({s.get('n')})"
                                  for name, s in per_subject.items()), ""]
    gpus = ", ".join(hw["gpus"]) if hw["gpus"] else "none"
    commit = sw.get("git_commit") or "unknown"
    if sw.get("git_dirty"):
        commit += " (uncommitted changes)"
    lines += ["## Environment", "",
              f"- CPU: {hw['cpu']} ({hw['cores']} cores), RAM {hw['memory_gb']} GiB, {hw['os']}",
              f"- GPU: {gpus}",
              f"- Python {sw['python']}, torch {sw.get('torch') or 'not installed'}",
              f"- git commit: {commit}", ""]
    devices = {stage: info.get("device") for stage, info in report["stages"].items() if info.get("device")}
    if devices:
        lines += ["Training devices: " + ", ".join(f"{stage} on {device}" for stage, device in devices.items()), ""]
    lines += ["## Config", "", "```toml", report["config_toml"].strip() or "# (no config.toml in the run folder)",
              "```", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Write runs/NAME/report.md and report.json; returns the path of report.md."""
    report = gather(run_dir)
    base = Path(report["folder"])
    header, rows = main_table(report)
    report["table"] = {"header": header, "rows": rows}
    markdown = render_markdown(report)
    runs.atomic_write_text(base / "report.json", json.dumps(runs._json_safe(report), indent=1))
    runs.atomic_write_text(base / "report.md", markdown)
    return base / "report.md"
