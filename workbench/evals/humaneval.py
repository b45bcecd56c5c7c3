"""HumanEval: write the body of a Python function; pass@1 with greedy decoding.

Loading, prompts, turning an answer into a program and running it in the sandbox are the task's
(workbench/tasks/humaneval.py); this module generates the answers (greedily, stopping at a new
top-level statement for base models) and scores them: a task passes when its program exits 0.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from workbench.evals.common import Progress, TaskResult, mean, no_progress
from workbench.evals.reasoning import reasoning_metrics
from workbench.evals.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT
from workbench.tasks import humaneval as task
from workbench.tasks.answers import ParsedCompletion, parse
from workbench.tasks.base import prompt_tokens
from workbench.tasks.humaneval import STOP_SEQUENCES, Problem


def score(problems: list[Problem], completions: list[str | ParsedCompletion], timeout: float = DEFAULT_TIMEOUT,
          memory_mb: int = DEFAULT_MEMORY_MB, workers: int | None = None,
          count_tokens: Callable[[str], int] | None = None, progress: Progress = no_progress) -> TaskResult:
    """pass@1 of generated completions (raw text, special tokens included, or read already from
    the tokens), each run in the sandbox (tasks.humaneval.run_tests, whose reading the reward is
    defined from)."""
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
    parsed = [parse(completion) for completion in completions]
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(task.run_tests, problem, p, timeout, memory_mb)
                   for problem, p in zip(problems, parsed, strict=True)]
        for done, future in enumerate(futures, start=1):
            results.append(future.result())
            progress(done, len(futures))
    passed = [r.passed for r in results]
    details = {"passed": sum(passed), "outcomes": dict(Counter(r.status for r in results)),
               "failures": [{"task_id": problem.task_id, "status": r.status,
                             "error": (r.stderr.strip().splitlines() or [""])[-1][:200]}
                            for problem, r in zip(problems, results, strict=True) if not r.passed][:5],
               # the sandbox layers active in every run (a machine without namespaces has fewer)
               "sandbox_layers": [layer for layer in results[0].layers if all(layer in r.layers for r in results)]
               if results else []}
    details.update(reasoning_metrics(parsed, passed, count_tokens))
    return TaskResult(task="humaneval", accuracy=mean([float(p) for p in passed]), n=len(problems), chance=0.0,
                      details=details)


def evaluate(engine, tokenizer, problems: list[Problem], chat: bool, max_new_tokens: int, seed: int | None,
             progress: Progress = no_progress) -> TaskResult:
    from workbench.evals.generation import generate_all

    total = 2 * len(problems)
    prompts = [prompt_tokens(tokenizer, task.messages(p), task.plain_prompt(p), chat) for p in problems]
    outputs = generate_all(engine, tokenizer, prompts, max_new_tokens, seed,
                           stop=[] if chat else STOP_SEQUENCES, use_tools=False,
                           progress=lambda done, _t: progress(done, total))
    result = score(problems, [o.text for o in outputs], count_tokens=lambda t: len(tokenizer.encode(t)),
                   progress=lambda done, _t: progress(len(problems) + done, total))
    result.details["completion_tokens"] = mean([float(o.completion_tokens) for o in outputs])
    result.details["prompt"] = "chat" if chat else "plain"
    result.details["prompt_truncated_share"] = mean([float(o.prompt_truncated) for o in outputs])
    result.details["examples"] = [{"task_id": p.task_id, "completion": o.text[:400]}
                                  for p, o in list(zip(problems, outputs, strict=True))[:3]]
    return result
