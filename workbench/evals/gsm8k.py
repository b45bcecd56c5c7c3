"""GSM8K: grade-school math word problems, answered by generation with the calculator.

The model gets the question (a chat message for chat models, "Question: ...\\nAnswer:" for base
models) and generates greedily; when it writes <|python_start|>expr<|python_end|> the engine runs
the calculator and forces the result in. The final number is the one after the last "####", else
the last number of the answer (outside the thought); it is right when it equals the reference
numerically (commas, "$" and trailing ".0" do not matter): workbench.tasks.answers, which the
GRPO reward reads with too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import BadInput
from workbench.evals.common import Progress, TaskResult, iter_jsonl, mean, no_progress, require
from workbench.evals.reasoning import reasoning_metrics
from workbench.tasks.answers import ParsedCompletion, final_number, normalize_number, parse, same_number


@dataclass
class Problem:
    question: str
    solution: str  # the reference solution text, ending in "#### N"
    answer: str  # N, normalised
    where: str = field(default="", compare=False)


def load(path: str | Path) -> list[Problem]:
    """{"question", "answer"} per line; the answer ends in '#### N'."""
    problems = []
    for number, record in iter_jsonl(Path(path)):
        where = f"{path}:{number}"
        question = require(record, "question", str, where)
        solution = require(record, "answer", str, where)
        if "####" not in solution:
            raise BadInput(f"{where}: field 'answer' has no '#### <final answer>' line")
        answer = normalize_number(solution.rsplit("####", 1)[1])
        if answer is None:
            raise BadInput(f"{where}: no number after '####' in field 'answer'")
        problems.append(Problem(question=question, solution=solution, answer=answer, where=where))
    if not problems:
        raise BadInput(f"{path}: no records")
    return problems


def score(problems: list[Problem], completions: list[str | ParsedCompletion],
          count_tokens: Callable[[str], int] | None = None) -> TaskResult:
    """Accuracy of generated completions (raw text, special tokens included, or read already from
    the tokens) plus reasoning metrics. A completion is right when tasks.answers.number_correct
    says so: the GRPO reward's reading."""
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
    parsed = [parse(completion) for completion in completions]
    predicted = [final_number(p.answer) for p in parsed]
    correct = [same_number(pred, problem.answer) for pred, problem in zip(predicted, problems, strict=True)]
    details = {"correct": sum(correct), "answered_share": mean([float(p is not None) for p in predicted])}
    details.update(reasoning_metrics(parsed, correct, count_tokens))
    return TaskResult(task="gsm8k", accuracy=mean([float(c) for c in correct]), n=len(problems), chance=0.0,
                      details=details)


def prompt_ids(tokenizer, problem: Problem, chat: bool) -> list[int]:
    if chat:
        return tokenizer.render_for_completion([{"role": "user", "content": problem.question}])
    return [tokenizer.bos_id] + tokenizer.encode(f"Question: {problem.question}\nAnswer:")


def evaluate(engine, tokenizer, problems: list[Problem], chat: bool, max_new_tokens: int, seed: int | None,
             progress: Progress = no_progress) -> TaskResult:
    from workbench.evals.generation import generate_all

    prompts = [prompt_ids(tokenizer, p, chat) for p in problems]
    stop = [] if chat else ["\nQuestion:", "\n\n"]
    outputs = generate_all(engine, tokenizer, prompts, max_new_tokens, seed, stop=stop, use_tools=True,
                           progress=progress)
    result = score(problems, [o.text for o in outputs], count_tokens=lambda t: len(tokenizer.encode(t)))
    result.details["completion_tokens"] = mean([float(o.completion_tokens) for o in outputs])
    result.details["cut_off_share"] = mean([float(o.finish_reason == "length") for o in outputs])
    result.details["prompt"] = "chat" if chat else "plain"
    result.details["prompt_truncated_share"] = mean([float(o.prompt_truncated) for o in outputs])
    result.details["examples"] = [{"question": p.question[:200], "completion": o.text[:400], "reference": p.answer}
                                  for p, o in list(zip(problems, outputs, strict=True))[:3]]
    return result
