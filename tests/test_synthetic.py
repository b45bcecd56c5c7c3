"""The synthetic arithmetic task family: deterministic, verifiable, rendered as chat with tool calls."""

import re

import pytest

from workbench.data import synthetic
from workbench.tasks.arith import reward as numeric_reward
from workbench.tasks.tool import reward as tool_reward
from workbench.tools import calculate


def generate(n: int, seed: int, start: int = 0) -> list[dict]:
    """n chat conversations with calculator calls, as SFT reads them."""
    return [problem.conversation() for problem in synthetic.problems(n, seed=seed, start=start)]


def test_generate_is_deterministic_by_seed():
    assert generate(20, seed=3) == generate(20, seed=3)
    assert generate(20, seed=3) != generate(20, seed=4)
    # a stream can be read from any position: the resumable SFT sampler relies on it
    assert generate(5, seed=3, start=10) == generate(15, seed=3)[10:]


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 6])
def test_answers_are_verified_by_the_calculator(difficulty):
    for problem in synthetic.problems(300, difficulty, seed=difficulty):
        assert calculate(problem.expression) == str(problem.answer)
        assert problem.answer >= 0
        # the operands are the question's numbers, in order (sharing "with 3 friends" divides by 4)
        if "shares them" not in problem.question:
            assert re.findall(r"\d+", problem.expression) == re.findall(r"\d+", problem.question)


def test_difficulty_sets_the_number_of_operations_and_operand_size():
    def operations(problem):
        return len(re.findall(r"[-+*/]", problem.expression))

    easy = synthetic.problems(200, 1, seed=0)
    hard = synthetic.problems(200, 4, seed=0)
    assert all(operations(p) == 1 for p in easy)
    assert all(operations(p) == 4 for p in hard)
    assert max(int(n) for p in easy for n in re.findall(r"\d+", p.question)) <= 9
    assert max(int(n) for p in hard for n in re.findall(r"\d+", p.question)) > 50
    mixed = synthetic.problems(300, (1, 3), seed=0)
    assert {p.difficulty for p in mixed} == {1, 2, 3}
    with pytest.raises(ValueError):
        synthetic.problems(1, 0)


def test_conversation_has_a_calculator_call_and_a_checkable_answer():
    problem = synthetic.problems(1, 2, seed=5)[0]
    conversation = problem.conversation()
    user, assistant = conversation["messages"]
    assert user == {"role": "user", "content": problem.question}
    kinds = [part["type"] for part in assistant["content"]]
    assert kinds == ["python", "python_output", "text"]
    assert assistant["content"][1]["text"] == str(problem.answer)
    assert problem.prompt() == [user]
    # the rendered reply earns full reward; a wrong one none
    reply = (f"<|python_start|>{problem.expression}<|python_end|><|output_start|>{problem.answer}<|output_end|>"
             f"The answer is {problem.answer}.<|assistant_end|>")
    assert numeric_reward(reply, problem.answer) == 1.0
    assert tool_reward(reply, problem.answer) == 1.0
    assert numeric_reward(f"The answer is {problem.answer + 1}.", problem.answer) == 0.0


def test_chat_family_greets_introduces_itself_and_answers_simple_questions():
    from workbench.data.chat import normalize_conversation

    conversations = synthetic.chats(300, seed=5)
    assert conversations == synthetic.chats(300, seed=5) and conversations != synthetic.chats(300, seed=6)
    assert synthetic.chats(5, seed=5, start=20) == conversations[20:25]
    for conversation in conversations:
        normalize_conversation(conversation)  # valid chat: user first, alternating, assistant last
    replies = [c["messages"][-1]["content"] for c in conversations]
    assert any(r in synthetic.GREETING_REPLIES for r in replies)
    assert synthetic.IDENTITY_REPLY in replies
    assert any(r.startswith("The capital of") for r in replies) and "A cat meows." in replies
    assert len(set(replies)) > 60  # not a handful of canned lines
    assert any(len(c["messages"]) == 4 for c in conversations)  # a greeting, then a question
