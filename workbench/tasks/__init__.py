"""The task layer: what each task's data, prompts, answers and scores are, shared by the evals
(evals/) and GRPO (train/grpo.py) so that a completion the eval counts right earns the reward, and
the other way round.

- answers: one reading of a completion (its thought, tool calls and outputs, its final number or
  letter), from token ids or decoded text
- base: Prompt and Task (GRPO's view: a deterministic prompt stream, held-out prompts, reward and
  correctness), mixtures, the multiple-choice Item and its letter prompt, read_records
- gsm8k, arc, mmlu, hellaswag, humaneval, arith, tool: one module per task, each with its loading
  (local files only), prompts, `correct(completion, answer)` and `reward(completion, answer)`,
  the reward defined from `correct`; arith and tool draw from data/synthetic.py
- registry: the [grpo] task (or mixture) by name

Torch-free. Layering: tasks import config-level modules, data/synthetic.py and evals' file readers
and sandbox, never train/ or the eval runners.
"""
