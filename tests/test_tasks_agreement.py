"""The evals and the GRPO rewards read a completion the same way: on a table of completions, a
completion the eval counts right earns the reward and one it counts wrong earns none, for GSM8K,
the synthetic arith and tool tasks and multiple choice; and a completion read from its token ids
(as GRPO's rollouts read it) scores as its decoded text does, except that text spelling a marker is
not a marker."""

from __future__ import annotations

import re

import pytest

from workbench.evals import gsm8k, multiple_choice
from workbench.tasks import arc, registry, tool
from workbench.tasks import gsm8k as gsm8k_task
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
# (case, completion, gold letter, right?)
LETTERS = [
    ("bare letter", "C" + END, "C", True),
    ("answer is", "The answer is C." + END, "C", True),
    ("parenthesised", "(C) because the sky is", "C", True),
    ("answer after a thought", "<|think_start|>maybe B<|think_end|>C" + END, "C", True),
    ("letter only in the thought", "<|think_start|>C<|think_end|>" + END, "C", False),
    ("wrong letter", "B" + END, "C", False),
    ("no letter", "I do not know." + END, "C", False),
]


def eval_number_right(completion, reference: str) -> bool:
    problem = gsm8k.Problem(question="q", solution=f"#### {reference}", answer=reference)
    return gsm8k.score([problem], [completion]).accuracy == 1.0


def eval_letter_right(completion: str, gold: str) -> bool:
    """The multiple-choice scoring of the choice the completion names (-1 when it names none)."""
    item = multiple_choice.Item(context="Q", choices=LETTER_CHOICES, gold="ABCD".index(gold), question="Q")
    letter = chosen_letter(parse(completion).answer)
    choice = multiple_choice.LETTERS.index(letter) if letter else -1
    return multiple_choice.score("arc-easy", [item], [choice]).accuracy == 1.0


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

