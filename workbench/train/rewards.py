"""Rewards for GRPO, defined from the scoring the evals use (workbench.tasks.answers): a completion
the GSM8K eval counts right earns the numeric reward, and the other way round.

A completion is read from its token ids (tasks.answers.parse_tokens, as the rollouts pass it) or
from decoded text (special tokens written as their strings). Its answer is its text outside
thoughts with the calculator's outputs kept: an answer given by the calculator's output alone is
the model's answer, as it is for the eval.

- numeric_reward: GSM8K and the synthetic arithmetic task. The number after "####" if present,
  else the last number of the answer, compared with the reference.
- letter_reward: ARC-style multiple choice; the first standalone letter A-E (or "answer is X").
- tool_reward: the tool-use task; full reward needs a calculator call that ran without error and
  the right final answer; the right answer without (working) tool use earns half.
"""

from __future__ import annotations

from workbench.tasks.answers import (
    ParsedCompletion,
    final_number,
    letter_correct,
    number_correct,
    parse,
    tool_used_correctly,
)

Completion = str | ParsedCompletion


def extract_number(text: str) -> float | None:
    """The final number of a piece of text as a float (a reference solution's "#### N")."""
    number = final_number(text)
    return None if number is None else float(number)


def numeric_reward(completion: Completion, answer: float | int | str) -> float:
    """1.0 when the completion's final number equals the answer, else 0.0."""
    return 1.0 if number_correct(completion, answer) else 0.0


def letter_reward(completion: Completion, answer: str) -> float:
    """1.0 when the first chosen letter equals the answer letter (case-sensitive capital A-E)."""
    return 1.0 if letter_correct(completion, answer) else 0.0


def tool_reward(completion: Completion, answer: float | int | str) -> float:
    """1.0: a working calculator call and the right answer; 0.5: right answer without working tool use."""
    parsed = parse(completion)
    if not number_correct(parsed, answer):
        return 0.0
    return 1.0 if tool_used_correctly(parsed) else 0.5
