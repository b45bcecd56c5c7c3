"""HumanEval: write the body of a Python function; pass@1 with greedy decoding.

The model gets the function's signature and docstring (as plain text for base models, as a chat
message for chat models). What it writes becomes code in one of two ways:
- it contains (in a ``` block or not) a whole `def <entry_point>(...)`: the program is the prompt
  (for its imports and helpers) followed by that code, whose definition replaces the stub;
- otherwise it is the function's body continuing the prompt, cut at the first top-level
  "def"/"class"/"if"/"print"/"#" line, as in OpenAI's human-eval.
The program = that + the task's tests + `check(<entry_point>)`, run in the sandbox (sandbox.py)
with a time and memory limit; a task passes when the program exits 0.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import BadInput
from workbench.evals.common import Progress, TaskResult, iter_jsonl, mean, no_progress, require
from workbench.evals.reasoning import reasoning_metrics
from workbench.evals.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, run_program
from workbench.tasks.answers import parse_text

STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S)


@dataclass
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str
    where: str = field(default="", compare=False)


def load(path: str | Path) -> list[Problem]:
    problems = []
    for number, record in iter_jsonl(Path(path)):
        where = f"{path}:{number}"
        fields = {key: require(record, key, str, where)
                  for key in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}
        if not fields["entry_point"].isidentifier():
            raise BadInput(f"{where}: entry_point {fields['entry_point']!r} is not a Python identifier")
        if "def check(" not in fields["test"]:
            raise BadInput(f"{where}: field 'test' does not define check(candidate)")
        problems.append(Problem(**fields, where=where))
    if not problems:
        raise BadInput(f"{path}: no records")
    return problems


def truncate_at_stops(code: str) -> str:
    cut = len(code)
    for stop in STOP_SEQUENCES:
        index = code.find(stop)
        if index != -1:
            cut = min(cut, index)
    return code[:cut]


def completion_code(problem: Problem, answer: str) -> str:
    """Python source that defines the function, from the model's answer (see the module doc)."""
    blocks = _CODE_BLOCK.findall(answer)
    code = blocks[0] if blocks else answer
    if re.search(rf"^[ \t]*def[ \t]+{re.escape(problem.entry_point)}[ \t]*\(", code, re.M):
        return problem.prompt + "\n" + code.strip("\n") + "\n"
    return problem.prompt + truncate_at_stops(code)


def assemble_program(problem: Problem, answer: str) -> str:
    return (completion_code(problem, answer) + "\n\n" + problem.test + "\n\n"
            + f"check({problem.entry_point})\n")


def score(problems: list[Problem], completions: list[str], timeout: float = DEFAULT_TIMEOUT,
          memory_mb: int = DEFAULT_MEMORY_MB, workers: int | None = None,
          count_tokens: Callable[[str], int] | None = None, progress: Progress = no_progress) -> TaskResult:
    """pass@1 of generated completions (raw text, special tokens included), each run in the sandbox."""
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
    parsed = [parse_text(text) for text in completions]
    programs = [assemble_program(problem, p.answer) for problem, p in zip(problems, parsed, strict=True)]
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_program, program, timeout, memory_mb) for program in programs]
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


def prompt_ids(tokenizer, problem: Problem, chat: bool) -> list[int]:
    if chat:
        message = f"Complete this Python function:\n\n```python\n{problem.prompt}```"
        return tokenizer.render_for_completion([{"role": "user", "content": message}])
    return [tokenizer.bos_id] + tokenizer.encode(problem.prompt)


def evaluate(engine, tokenizer, problems: list[Problem], chat: bool, max_new_tokens: int, seed: int | None,
             progress: Progress = no_progress) -> TaskResult:
    from workbench.evals.generation import generate_all

    total = 2 * len(problems)
    prompts = [prompt_ids(tokenizer, p, chat) for p in problems]
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
