"""`picochat eval CHECKPOINT --tasks bpb,arc-easy,arc-challenge,mmlu,hellaswag,gsm8k,humaneval [--limit N]`

A thin wrapper over workbench.evals.api.evaluate (what it reads, checks and writes is said there):
the arguments in, a table of the results out.
"""

from __future__ import annotations

import argparse
from typing import Any

from workbench.checkpoint_files import checkpoint_label
from workbench.evals.api import Evaluation, evaluate, headline
from workbench.evals.common import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--tasks", default=None,
                        help=f"comma-separated, or 'all': {','.join(TASKS)} (default: the config's [eval] tasks)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N examples per task (MMLU: spread across subjects); 0 = all "
                             "(default: the config's [eval] limit)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the eval data files (default: the config's [eval] data_dir)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--seed", type=int, default=0, help="seed for torch (generation is greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens generated per GSM8K/HumanEval answer (default: [eval] max_new_tokens)")
    parser.add_argument("--bpb-tokens", type=int, default=None,
                        help="validation tokens for bpb (default: the config's [train] eval_tokens)")
    parser.add_argument("--core-bundle", default=None,
                        help="CORE bundle folder (core.yaml, eval_meta_data.csv, eval_data/) for --tasks core "
                             "(default: [eval] core_bundle; none: ARC and HellaSwag from the data dir)")


# ---------------------------------------------------------------------------------------------
# printing


def extra_text(task: str, result: dict[str, Any]) -> str:
    parts = []
    if result.get("letter_accuracy") is not None:
        parts.append(f"letter {100 * result['letter_accuracy']:.1f}%")
    if result.get("accuracy_sum") is not None:
        parts.append(f"sum-logprob {100 * result['accuracy_sum']:.1f}%")
    if result.get("well_formed_share") is not None:
        parts.append(f"well-formed thought {100 * result['well_formed_share']:.0f}%")
    if result.get("outcomes"):
        parts.append(" ".join(f"{k} {v}" for k, v in sorted(result["outcomes"].items())))
    if task == "bpb" and result.get("tokens"):
        parts.append(f"{result['tokens']} tokens")
    if task in ("core", "chatcore") and isinstance(result.get("tasks"), dict):
        parts.append((f"{result['label']}, " if result.get("label") else "") + "centered: " + " ".join(
            f"{name} {entry['centered']:+.3f}" for name, entry in result["tasks"].items()))
    return ", ".join(parts)


def print_table(results: dict[str, dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("task")
    table.add_column("score", justify="right")
    table.add_column("chance", justify="right")
    table.add_column("n", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("notes")
    for task, result in results.items():
        chance = result.get("chance")
        table.add_row(task, headline(task, result), "-" if chance is None else f"{100 * chance:.0f}%",
                      str(result.get("n", "")), f"{result.get('seconds', 0):.1f}", extra_text(task, result))
    Console().print(table)


def print_results(evaluation: Evaluation) -> None:
    """The table of an evaluation's results, then where they were saved."""
    path, folder = evaluation.checkpoint, evaluation.records
    print_table(evaluation.results, checkpoint_label(path))  # the title says which was evaluated
    print(f"results: {path / 'evals.json'}" + (f"; progress and records: {folder / 'metrics.jsonl'}" if folder else ""))


def run(args: argparse.Namespace) -> int:
    print_results(evaluate(args.checkpoint, args.tasks, limit=args.limit, data_dir=args.data_dir,
                           core_bundle=args.core_bundle, device=args.device, seed=args.seed,
                           max_new_tokens=args.max_new_tokens, bpb_tokens=args.bpb_tokens))
    return 0
