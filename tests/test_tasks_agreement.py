"""Every task with a reward scores a completion as its eval does (workbench/tasks/): on tables of
completions (plain answers, tool-only answers, thoughts, cut-off turns, multiple-choice letters,
code), a completion the eval counts right earns the reward and one it counts wrong earns none, for
GSM8K, the synthetic arith and tool tasks, ARC, MMLU, HellaSwag and HumanEval; and a completion
read from its token ids (as GRPO's rollouts read it) scores as its decoded text does, except that
text spelling a marker is not a marker: with the markers written as text, eval and reward still
agree with each other.

"""

from __future__ import annotations

import re

import pytest

from workbench.evals import gsm8k, humaneval, multiple_choice
from workbench.tasks import arc, arith, hellaswag, mmlu, registry, tool
from workbench.tasks import gsm8k as gsm8k_task
from workbench.tasks import humaneval as humaneval_task
from workbench.tasks.answers import chosen_letter, parse, parse_text, parse_tokens
from workbench.tokenizer import SPECIAL_TOKENS

CALL = "<|python_start|>6*7<|python_end|><|output_start|>42<|output_end|>"
END = "<|assistant_end|>"

# (case, completion, reference, right?)
NUMERIC = [
    ("plain answer", "The answer is 42." + END, "42", True),
    ("plain wrong answer", "The answer is 41." + END, "42", False),
    ("gsm8k solution", "6 times 7 is 42.\n#### 42", "42", True),
    ("answer only in the thought", "<|think_start|>6*7 is 42<|think_end|>I am not sure." + END, "42", False),
    ("answer after a thought", "<|think_start|>6*7 is 41?<|think_end|>#### 42" + END, "42", True),
    ("unclosed thought", "<|think_start|>6 times 7 is 42 and so", "42", False),
    ("tool-only answer", CALL + END, "42", True),
    ("tool-only answer, no end", CALL, "42", True),
    ("tool call then prose answer", CALL + "The answer is 42." + END, "42", True),
    ("tool call then a different prose answer", CALL + " so the answer is 41." + END, "42", False),
    ("unterminated tool call", "<|python_start|>6*7 = 42", "42", False),
    ("tool call whose output is cut off", "<|python_start|>6*7<|python_end|><|output_start|>42", "42", True),
    ("malformed tool call", "<|python_start|>6*(<|python_end|><|output_start|>Error: cannot parse<|output_end|>"
     + END, "42", False),
    ("no answer", "I do not know." + END, "42", False),
    ("empty", "", "42", False),
    ("several numbers: the last counts", "7 + 35 = 42 apples, 3 left over." + END, "42", False),
    ("several numbers: after ####", "#### 42 and then 7 more", "42", True),
    ("text after the turn's end", "41" + END + "42", "42", False),
    ("commas", "#### 1,234", "1234", True),
    ("dollars and cents", "She earns $1,234.00 in all.", "1234", True),
    ("decimals", "It is 2.50 litres.", "2.5", True),
    ("negative", "The answer is -3." + END, "-3", True),
    ("sign matters", "The answer is 3." + END, "-3", False),
]

LETTER_CHOICES = ["red", "green", "blue", "black"]
LETTER_TASKS = {"arc-easy": arc, "mmlu": mmlu, "hellaswag": hellaswag}
# (case, completion, gold letter, right?)
LETTERS = [
    ("bare letter", "C" + END, "C", True),
    ("answer is", "The answer is C." + END, "C", True),
    ("parenthesised", "(C) because the sky is", "C", True),
    ("answer after a thought", "<|think_start|>maybe B<|think_end|>C" + END, "C", True),
    ("letter only in the thought", "<|think_start|>C<|think_end|>" + END, "C", False),
    ("wrong letter", "B" + END, "C", False),
    ("no letter", "I do not know." + END, "C", False),
    ("letter after a tool call", "<|python_start|>2+2<|python_end|><|output_start|>4<|output_end|> so the answer is C"
     + END, "C", True),
    ("letter only in a tool call", "<|python_start|>C<|python_end|><|output_start|>Error<|output_end|>" + END, "C",
     False),
    ("letter after the turn's end", "I am not sure." + END + "C", "C", False),
    ("a letter beyond the choices", "E" + END, "C", False),
    ("lower case is not a letter", "c" + END, "C", False),
]

HUMANEVAL_PROBLEM = humaneval_task.Problem(
    task_id="agreement/0", prompt='def add(a, b):\n    """The sum of a and b."""\n', entry_point="add",
    canonical_solution="    return a + b\n",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n")
# (case, completion, right?)
CODE = [
    ("a body continuing the prompt", "    return a + b\n" + END, True),
    ("a whole definition in a code block", "```python\ndef add(a, b):\n    return b + a\n```" + END, True),
    ("a wrong body", "    return a - b\n" + END, False),
    ("code only in the thought", "<|think_start|>    return a + b\n<|think_end|>I am not sure." + END, False),
    ("code after a thought", "<|think_start|>add them<|think_end|>    return a + b\n" + END, True),
    ("right code after the turn's end", "    return a - b\n" + END + "    return a + b\n", False),
]


def eval_number_right(completion, reference: str) -> bool:
    problem = gsm8k.Problem(question="q", solution=f"#### {reference}", answer=reference)
    return gsm8k.score([problem], [completion]).accuracy == 1.0


def eval_letter_right(completion, gold: str, task: str = "arc-easy") -> bool:
    """The multiple-choice scoring of the choice the completion names (-1 when it names none or
    one the item does not have)."""
    item = multiple_choice.Item(context="Q", choices=LETTER_CHOICES, gold="ABCD".index(gold), question="Q")
    letter = chosen_letter(parse(completion).answer)
    choice = multiple_choice.LETTERS.index(letter) if letter else -1
    return multiple_choice.score(task, [item], [choice if choice < len(item.choices) else -1]).accuracy == 1.0


def eval_code_right(completion) -> bool:
    return humaneval.score([HUMANEVAL_PROBLEM], [completion], timeout=20, workers=1).accuracy == 1.0


@pytest.mark.parametrize("case, completion, reference, right", NUMERIC, ids=[row[0] for row in NUMERIC])
def test_gsm8k_and_arith_rewards_agree_with_the_eval(case, completion, reference, right, tiny_config):
    assert eval_number_right(completion, reference) is right
    assert gsm8k_task.reward(completion, reference) == (1.0 if right else 0.0)  # GRPO's gsm8k task
    arith = registry.single_task(tiny_config, "arith")
    assert arith.correct(completion, reference) is right
    assert arith.reward(completion, reference) == (1.0 if right else 0.0)
    tool = registry.single_task(tiny_config, "tool")  # right earns at least half; wrong earns nothing
    assert tool.correct(completion, reference) is right
    assert (tool.reward(completion, reference) > 0) is right


@pytest.mark.parametrize("case, completion, gold, right", LETTERS, ids=[row[0] for row in LETTERS])
def test_multiple_choice_reward_agrees_with_the_eval(case, completion, gold, right):
    assert eval_letter_right(completion, gold) is right
    assert arc.reward(completion, gold) == (1.0 if right else 0.0)  # GRPO's arc task
    for name, task in LETTER_TASKS.items():
        assert eval_letter_right(completion, gold, name) is right, name
        assert task.correct(completion, gold) is right, name
        assert task.reward(completion, gold) == (1.0 if right else 0.0), name


@pytest.mark.parametrize("case, completion, right", CODE, ids=[row[0] for row in CODE])
def test_humaneval_reward_agrees_with_the_eval(case, completion, right, tiny_tokenizer):
    assert eval_code_right(completion) is right
    assert humaneval_task.correct(completion, HUMANEVAL_PROBLEM) is right
    assert humaneval_task.reward(completion, HUMANEVAL_PROBLEM) == (1.0 if right else 0.0)
    from_tokens = parse_tokens(tiny_tokenizer, token_ids(tiny_tokenizer, completion))
    assert from_tokens == parse_text(completion)
    assert eval_code_right(from_tokens) is right  # the eval scores a completion read from its tokens too


def token_ids(tokenizer, text: str, markers_as_text: bool = False) -> list[int]:
    """The ids the engine would have produced for a decoded completion: markers are special tokens
    (or, with markers_as_text, ordinary text that spells them)."""
    ids = []
    for index, piece in enumerate(re.split("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")", text)):
        if index % 2 and not markers_as_text:
            ids.append(tokenizer.special_id(piece))
        elif piece:
            ids.extend(tokenizer.encode(piece))
    return ids


@pytest.mark.parametrize("case, completion, reference, right", NUMERIC, ids=[row[0] for row in NUMERIC])
def test_a_completion_read_from_its_tokens_scores_as_its_text(case, completion, reference, right, tiny_tokenizer):
    from_tokens = parse_tokens(tiny_tokenizer, token_ids(tiny_tokenizer, completion))
    assert from_tokens == parse_text(completion)
    assert eval_number_right(from_tokens, reference) is right
    assert gsm8k_task.reward(from_tokens, reference) == (1.0 if right else 0.0)


def test_text_that_spells_a_tool_call_is_not_a_tool_call(tiny_tokenizer):
    reply = CALL + "The answer is 42." + END
    assert tool.reward(parse_tokens(tiny_tokenizer, token_ids(tiny_tokenizer, reply)), 42) == 1.0
    spelled = parse_tokens(tiny_tokenizer, token_ids(tiny_tokenizer, reply, markers_as_text=True))
    assert spelled.tool_calls == [] and not spelled.ended
    assert tool.reward(spelled, 42) == 0.5  # right, but the calculator never ran



@pytest.mark.parametrize("case, completion, reference, right", NUMERIC, ids=[row[0] for row in NUMERIC])
def test_markers_written_as_text_score_alike_in_eval_and_reward(case, completion, reference, right, tiny_config,
                                                                 tiny_tokenizer):
    """A model that writes "<|python_start|>" or "<|think_start|>" as ordinary text made no call and
    no thought: whatever that text then answers, eval and every reward read it the same way."""
    spelled = parse_tokens(tiny_tokenizer, token_ids(tiny_tokenizer, completion, markers_as_text=True))
    assert spelled.tool_calls == [] and spelled.thought is None and not spelled.ended
    counted = eval_number_right(spelled, reference)
    for task in (gsm8k_task, arith):
        assert task.correct(spelled, reference) is counted
        assert task.reward(spelled, reference) == (1.0 if counted else 0.0)
    assert tool.reward(spelled, reference) == (0.5 if counted else 0.0)  # right at best: no call ran
    letter = parse_tokens(tiny_tokenizer, token_ids(tiny_tokenizer, "<|think_start|>B<|think_end|>C" + END, True))
    assert eval_letter_right(letter, "C") is arc.correct(letter, "C") is (arc.reward(letter, "C") == 1.0)


def test_the_fake_tool_only_answer_is_the_models_own_number(tiny_tokenizer):
    """Spelled as text, the calculator's markers leave the model's own digits: "42" is its answer,
    right for the eval and the numeric reward, and the tool reward sees no call."""
    spelled = parse_tokens(tiny_tokenizer, token_ids(tiny_tokenizer, CALL + END, markers_as_text=True))
    assert eval_number_right(spelled, "42") and gsm8k_task.reward(spelled, "42") == 1.0
    assert tool.reward(spelled, "42") == 0.5 and tool.reward(parse_text(CALL + END), "42") == 1.0


def test_the_task_layer_sits_below_the_evals_and_training():
    """Tasks import the evals' file readers and sandbox, never train/ or an eval runner (which
    import the tasks): the import graph stays a DAG, function-local imports included."""
    from test_architecture import PACKAGE, import_graph

    graph = import_graph(PACKAGE, at_import_time=False)
    task_modules = [module for module in graph if module.startswith("workbench.tasks")]
    assert "workbench.tasks.gsm8k" in task_modules and "workbench.train.grpo" in graph
    allowed = {"workbench.evals", "workbench.evals.common", "workbench.evals.sandbox"}
    reaching = {module: sorted(target for target in graph[module]
                               if target.startswith("workbench.train") or
                               (target.startswith("workbench.evals") and target not in allowed))
                for module in task_modules}
    assert not {module: targets for module, targets in reaching.items() if targets}
