"""Multiple-choice evals: ARC-Easy, ARC-Challenge, MMLU and HellaSwag.

Each item is a context and a few continuations. The model's choice is the continuation with the
highest MEAN log-likelihood per token given the context (length-normalised, so long answers are not
penalised for having more tokens; the sum is reported beside it as `accuracy_sum`). Forward passes
are batched over (item, choice) rows, longest first, within a token budget.

Chat models (checkpoints of the sft/grpo stages) are also asked the question as a chat message
listing the choices as A-D; their answer is the letter whose token has the highest logit right
after <|assistant_start|> (`letter_accuracy`).

The items, their loading and their chat (letter) prompt are the tasks' (workbench/tasks/arc.py,
mmlu.py, hellaswag.py; base.Item). Scoring is separate from the model: `score(task, items,
predictions)` takes choice indices, so a known answer sheet can be scored without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.evals.common import Progress, TaskResult, mean, no_progress
from workbench.tasks import arc, hellaswag, mmlu
from workbench.tasks.base import LETTERS, Item, letter_prompt

# ---------------------------------------------------------------------------------------------
# items: each task's loader (workbench/tasks/) reads its file format into base.Item; a malformed
# record is BadInput("FILE:LINE: ...")


def load(task: str, path: str | Path) -> list[Item]:
    if task in ("arc-easy", "arc-challenge"):
        return arc.load(path)
    if task == "hellaswag":
        return hellaswag.load(path)
    if task == "mmlu":
        return mmlu.load(path)
    raise ValueError(f"not a multiple-choice task: {task}")


def select(items: list[Item], limit: int | None) -> list[Item]:
    """The first `limit` items; for MMLU spread across subjects (round robin over the subjects in
    alphabetical order: item 0 of each subject, then item 1 of each, ...). Deterministic."""
    if not limit or limit >= len(items):
        return items
    subjects: dict[str, list[Item]] = {}
    for item in items:
        subjects.setdefault(item.subject, []).append(item)
    if len(subjects) == 1:
        return items[:limit]
    chosen: list[Item] = []
    depth = 0
    while len(chosen) < limit:
        for name in sorted(subjects):
            if depth < len(subjects[name]) and len(chosen) < limit:
                chosen.append(subjects[name][depth])
        depth += 1
    return chosen


# ---------------------------------------------------------------------------------------------
# scoring: from choice indices, no model needed


def score(task: str, items: list[Item], predictions: list[int],
          letter_predictions: list[int] | None = None, sum_predictions: list[int] | None = None) -> TaskResult:
    """Accuracy of `predictions` (one choice index per item) against the gold answers, with the
    chance level (mean of 1/choices) and, for MMLU, per-subject accuracy."""
    if len(predictions) != len(items):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
    correct = [int(p == item.gold) for p, item in zip(predictions, items, strict=True)]
    chance = mean([1.0 / len(item.choices) for item in items])
    details: dict[str, Any] = {"correct": sum(correct), "scoring": "mean log-likelihood per continuation token"}
    if sum_predictions is not None:
        details["accuracy_sum"] = mean([float(p == item.gold) for p, item in zip(sum_predictions, items, strict=True)])
    if letter_predictions is not None:
        details["letter_accuracy"] = mean([float(p == item.gold)
                                           for p, item in zip(letter_predictions, items, strict=True)])
    if any(item.subject for item in items):
        per_subject: dict[str, dict[str, Any]] = {}
        for item, ok in zip(items, correct, strict=True):
            entry = per_subject.setdefault(item.subject, {"correct": 0, "n": 0})
            entry["correct"] += ok
            entry["n"] += 1
        for entry in per_subject.values():
            entry["accuracy"] = entry["correct"] / entry["n"]
        details["subjects"] = dict(sorted(per_subject.items()))
        # MMLU's usual headline is the mean over items; the macro mean over subjects is beside it.
        details["subject_mean_accuracy"] = mean([e["accuracy"] for e in per_subject.values()])
    return TaskResult(task=task, accuracy=mean([float(c) for c in correct]), n=len(items), chance=chance,
                      details=details)


# ---------------------------------------------------------------------------------------------
# the model's answers


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def choice_rows(tokenizer, items: list[Item], max_len: int) -> list[tuple[int, int, list[int], int]]:
    """(item index, choice index, token ids, start): the continuation is ids[start:].

    Context and context+choice are tokenized whole, and the continuation starts where the two
    token sequences part, so a merge across the boundary never shifts the scored tokens. Rows longer
    than the model's context lose tokens from the left (the continuation is kept)."""
    rows = []
    bos = tokenizer.bos_id
    for i, item in enumerate(items):
        context_ids = [bos] + tokenizer.encode(item.context)
        for j, choice in enumerate(item.choices):
            ids = [bos] + tokenizer.encode(item.context + item.delimiter + choice)
            start = max(1, min(_common_prefix(context_ids, ids), len(ids) - 1))
            if len(ids) > max_len:
                cut = len(ids) - max_len
                ids = ids[cut:]
                start = max(1, start - cut)
            rows.append((i, j, ids, start))
    return rows


def _batches(lengths: list[int], token_budget: int, max_rows: int = 64) -> list[list[int]]:
    """Row indices grouped longest first so padding is small; each batch's rows * longest row fits."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    batches, current = [], []
    for k in order:
        longest = lengths[current[0]] if current else lengths[k]
        if current and ((len(current) + 1) * longest > token_budget or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(k)
    if current:
        batches.append(current)
    return batches


def token_budget(vocab_size: int, max_len: int, device) -> int:
    """Tokens per forward pass: the float32 logits (and the log-softmax beside them) dominate."""
    budget_bytes = (4 << 30) if str(device).startswith("cuda") else (1 << 30)
    return max(max_len, budget_bytes // (vocab_size * 4 * 3))


def _autocast(device):
    import contextlib

    import torch

    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class ContinuationScore:
    """How a model reads one row's continuation (ids[start:]) given what precedes it."""

    logprob_sum: float
    tokens: int
    greedy: bool  # every continuation token is the model's argmax (CORE's language-modeling tasks)

    @property
    def logprob_mean(self) -> float:
        return self.logprob_sum / max(1, self.tokens)


def continuation_scores(model, rows: list[tuple[list[int], int]], vocab_size: int, device, max_len: int,
                        progress: Progress = no_progress) -> list[ContinuationScore]:
    """Score each (token ids, start) row: the log-likelihood of ids[start:] and whether greedy
    decoding reproduces it. Rows are batched longest first within a token budget (the float32
    logits dominate memory); rows are already cut to the model's context (see choice_rows)."""
    import torch

    lengths = [len(ids) - 1 for ids, _ in rows]
    budget = token_budget(vocab_size, max_len, device)
    scores: list[ContinuationScore | None] = [None] * len(rows)
    done = 0
    with torch.inference_mode():
        for batch in _batches(lengths, budget):
            width = max(lengths[k] for k in batch)
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), -1, dtype=torch.long)
            for r, k in enumerate(batch):
                ids, start = rows[k]
                inputs[r, : len(ids) - 1] = torch.tensor(ids[:-1])
                # target position t predicts ids[t + 1]; continuation tokens are ids[start:]
                targets[r, start - 1 : len(ids) - 1] = torch.tensor(ids[start:])
            inputs, targets = inputs.to(device), targets.to(device)
            with _autocast(device):
                logits = model(inputs)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            mask = targets != -1
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            hits = (logits.argmax(dim=-1) == targets) | ~mask
            sums, counts, greedy = picked.sum(dim=1), mask.sum(dim=1), hits.all(dim=1)
            for r, k in enumerate(batch):
                scores[k] = ContinuationScore(float(sums[r]), int(counts[r]), bool(greedy[r]))
            done += len(batch)
            progress(done, len(rows))
    return scores  # type: ignore[return-value]


def likelihood_predictions(model, tokenizer, items: list[Item], device, max_len: int,
                           progress: Progress = no_progress) -> tuple[list[int], list[int]]:
    """Each item's choice by mean and by summed log-likelihood of its continuation tokens."""
    rows = choice_rows(tokenizer, items, max_len)
    scores = continuation_scores(model, [(ids, start) for _, _, ids, start in rows], tokenizer.vocab_size,
                                 device, max_len, progress)
    by_row = {(i, j): score for (i, j, _, _), score in zip(rows, scores, strict=True)}
    by_mean = [max(range(len(item.choices)), key=lambda j, i=i: by_row[(i, j)].logprob_mean)
               for i, item in enumerate(items)]
    by_sum = [max(range(len(item.choices)), key=lambda j, i=i: by_row[(i, j)].logprob_sum)
              for i, item in enumerate(items)]
    return by_mean, by_sum


def letter_predictions(model, tokenizer, items: list[Item], device, max_len: int,
                       progress: Progress = no_progress) -> list[int]:
    """A chat model's letter answer: the letter token with the highest logit after <|assistant_start|>."""
    import torch

    letter_ids = [tokenizer.encode(letter)[0] for letter in LETTERS]
    prompts = []
    for item in items:
        ids = tokenizer.render_for_completion(letter_prompt(item))
        prompts.append(ids[-max_len:])
    lengths = [len(ids) for ids in prompts]
    budget = token_budget(tokenizer.vocab_size, max_len, device)
    answers = [0] * len(items)
    done = 0
    with torch.inference_mode():
        for batch in _batches(lengths, budget):
            width = max(lengths[k] for k in batch)
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            for r, k in enumerate(batch):
                inputs[r, : lengths[k]] = torch.tensor(prompts[k])
            with _autocast(device):
                logits = model(inputs.to(device))
            for r, k in enumerate(batch):
                candidates = letter_ids[: len(items[k].choices)]
                last = logits[r, lengths[k] - 1, candidates].float()
                answers[k] = int(torch.argmax(last))
            done += len(batch)
            progress(done, len(items))
    return answers


def evaluate(task: str, model, tokenizer, items: list[Item], device, max_len: int, chat: bool,
             progress: Progress = no_progress) -> TaskResult:
    """Run the model on `items` and score it."""
    total = sum(len(item.choices) for item in items) + (len(items) if chat else 0)

    def likelihood_progress(done: int, _total: int) -> None:
        progress(done, total)

    by_mean, by_sum = likelihood_predictions(model, tokenizer, items, device, max_len, likelihood_progress)
    letters = None
    if chat:
        offset = sum(len(item.choices) for item in items)
        letters = letter_predictions(model, tokenizer, items, device, max_len,
                                     lambda done, _t: progress(offset + done, total))
    return score(task, items, by_mean, letter_predictions=letters, sum_predictions=by_sum)
