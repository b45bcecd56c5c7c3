"""GSM8K: grade-school math word problems, answered by generation with the calculator.

The model gets the question (a chat message for chat models, "Question: ...\\nAnswer:" for base
models) and generates greedily; when it writes <|python_start|>expr<|python_end|> the engine runs
the calculator and forces the result in. The final number is the one after the last "####", else
the last number of the answer (outside the thought); it is right when it equals the reference
numerically (commas, "$" and trailing ".0" do not matter). Loading, prompts and that scoring are
the task's (workbench/tasks/gsm8k.py), which GRPO's reward is defined from; this module runs the
model and adds the reasoning metrics.
"""

from __future__ import annotations

from collections.abc import Callable

from workbench.evals.common import Progress, TaskResult, mean, no_progress
from workbench.evals.reasoning import reasoning_metrics
from workbench.tasks import gsm8k as task
from workbench.tasks.answers import ParsedCompletion, final_number, parse
from workbench.tasks.base import prompt_tokens
from workbench.tasks.gsm8k import Problem


def score(problems: list[Problem], completions: list[str | ParsedCompletion],
          count_tokens: Callable[[str], int] | None = None) -> TaskResult:
    """Accuracy of generated completions (raw text, special tokens included, or read already from
    the tokens) plus reasoning metrics. A completion is right when the task says so
    (tasks.gsm8k.correct), whose reading the GRPO reward is defined from."""
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
    parsed = [parse(completion) for completion in completions]
    predicted = [final_number(p.answer) for p in parsed]
    correct = [task.correct(p, problem.answer) for p, problem in zip(parsed, problems, strict=True)]
    details = {"correct": sum(correct), "answered_share": mean([float(p is not None) for p in predicted])}
    details.update(reasoning_metrics(parsed, correct, count_tokens))
    return TaskResult(task="gsm8k", accuracy=mean([float(c) for c in correct]), n=len(problems), chance=0.0,
                      details=details)


def evaluate(engine, tokenizer, problems: list[Problem], chat: bool, max_new_tokens: int, seed: int | None,
             progress: Progress = no_progress) -> TaskResult:
    from workbench.evals.generation import generate_all

    prompts = [prompt_tokens(tokenizer, task.messages(p), task.plain_prompt(p), chat) for p in problems]
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
