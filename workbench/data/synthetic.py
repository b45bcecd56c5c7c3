"""Synthetic task families: arithmetic word problems with verifiable answers, and simple chat.

    "Mia has 4 boxes with 12 shells in each box. She gives away 7. How many shells does she have now?"
    -> <|python_start|>4*12-7<|python_end|><|output_start|>41<|output_end|>The answer is 41.

Why generate our own: a CPU-sized model cannot learn GSM8K in minutes, but it can learn to read a short
story, write the one calculator expression it describes and copy the result. That gives (1) as much SFT
chat data as a small model needs, with tool calls in the chat format (docs/interfaces.md), and (2) a GRPO task
where a freshly fine-tuned small model is partly right, so reinforcement learning visibly helps in
minutes. GSM8K stays the real benchmark.

Difficulty is the number of operations (1 = "has A, gets B more"); operands grow with it
(max_operand overrides). A problem is a pure function of (seed, index, difficulty), so the SFT
sampler can resume at any position and GRPO draws the same prompts after a resume.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [("Tom", "he", "his"), ("Mia", "she", "her"), ("Sam", "he", "his"), ("Ana", "she", "her"),
         ("Ben", "he", "his"), ("Eva", "she", "her"), ("Leo", "he", "his"), ("Zoe", "she", "her"),
         ("Max", "he", "his"), ("Ivy", "she", "her"), ("Dan", "he", "his"), ("Amy", "she", "her")]
ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "cookies", "coins", "stamps", "shells",
         "cards", "eggs", "flowers"]

# One sentence per operation; {b} is the right operand.
ADD = ["{He} buys {b} more.", "{He} finds {b} more.", "A friend gives {him} {b} more.", "{He} gets {b} more."]
SUB = ["{He} gives away {b}.", "{He} loses {b}.", "{He} sells {b}.", "{He} gives {b} to a friend."]
MUL = ["Then {he} gets {b} times as many.", "Then the number grows {b} times."]
DIV = ["{He} splits them into {b} equal groups and keeps one group.",
       "{He} shares them equally with {friends} and keeps one share."]
QUESTIONS = ["How many {items} does {he} have now?", "How many {items} does {he} have?"]
LEFT_QUESTION = "How many {items} are left?"  # only after something was taken away

OPERAND_LIMITS = {1: 9, 2: 20, 3: 50, 4: 100}  # difficulty -> largest operand (beyond 4: 10 ** (d - 2))
MAX_DIFFICULTY = 8


def operand_limit(difficulty: int) -> int:
    return OPERAND_LIMITS.get(difficulty, 10 ** (difficulty - 2))


@dataclass
class Problem:
    """One word problem: the question, its calculator expression and the verified integer answer."""

    question: str
    expression: str
    answer: int
    difficulty: int

    def prompt(self) -> list[dict]:
        """The chat prompt for generation (GRPO, evals): one user turn."""
        return [{"role": "user", "content": self.question}]

    def conversation(self) -> dict:
        """The worked answer as a chat conversation with one calculator call (SFT data)."""
        reply = [{"type": "python", "text": self.expression},
                 {"type": "python_output", "text": str(self.answer)},
                 {"type": "text", "text": f"The answer is {self.answer}."}]
        return {"messages": [{"role": "user", "content": self.question}, {"role": "assistant", "content": reply}]}


def _capitalized(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def make_problem(rng: random.Random, difficulty: int, max_operand: int | None = None) -> Problem:
    """One problem with `difficulty` operations, operands up to max_operand (default from difficulty)."""
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be 1..{MAX_DIFFICULTY}, got {difficulty}")
    limit = max_operand or operand_limit(difficulty)
    name, he, his = rng.choice(NAMES)
    him = "him" if he == "he" else "her"
    items = rng.choice(ITEMS)
    words = {"he": he, "He": _capitalized(he), "him": him, "his": his, "items": items}

    # The first sentence is either "has A" or, as one operation, "has A boxes with B in each box".
    operations_left = difficulty
    if difficulty >= 2 and rng.random() < 0.3:
        boxes, each = rng.randint(2, min(limit, 9)), rng.randint(2, limit)
        sentences = [f"{name} has {boxes} boxes with {each} {items} in each box."]
        expression, value, loose = f"{boxes}*{each}", boxes * each, False
        operations_left -= 1
    else:
        start = rng.randint(max(2, limit // 3), limit) if difficulty > 1 else rng.randint(2, limit)
        sentences = [f"{name} has {start} {items}."]
        expression, value, loose = str(start), start, False  # loose: top level is + or - (needs parens before * /)

    operation = ""
    for _ in range(operations_left):
        choices = ["+", "-"] + (["*"] if value <= 10 * limit else []) + (["/"] if _divisors(value) else [])
        operation = rng.choice(choices)
        if operation == "-" and value < 2:
            operation = "+"
        if operation == "+":
            b = rng.randint(1, limit)
            template = rng.choice(ADD)
            value += b
        elif operation == "-":
            b = rng.randint(1, min(limit, value - 1))
            template = rng.choice(SUB)
            value -= b
        elif operation == "*":
            b = rng.randint(2, min(5, max(2, limit)))
            template = rng.choice(MUL)
            value *= b
        else:
            b = rng.choice(_divisors(value))
            template = rng.choice(DIV)
            value //= b
        if operation in "*/" and loose:
            expression = f"({expression})"
        expression = f"{expression}{operation}{b}"
        loose = operation in "+-"
        friends = f"{b - 1} friends" if b > 2 else "a friend"
        sentences.append(template.format(b=b, friends=friends, **words))

    questions = QUESTIONS + [LEFT_QUESTION] if operation == "-" else QUESTIONS
    sentences.append(rng.choice(questions).format(**words))
    return Problem(question=" ".join(sentences), expression=expression, answer=value, difficulty=difficulty)


def _divisors(value: int) -> list[int]:
    """Small divisors (2..9) that leave a whole number above 1: division stays exact."""
    return [d for d in range(2, 10) if value % d == 0 and value // d > 1]


def problem_at(seed: int, index: int, difficulty: int | tuple[int, int], max_operand: int | None = None) -> Problem:
    """The index-th problem of a stream: a pure function of its arguments. A (low, high) difficulty
    draws each problem's difficulty uniformly from that range."""
    rng = random.Random(f"arith:{seed}:{index}:{difficulty}:{max_operand}")
    level = rng.randint(*difficulty) if isinstance(difficulty, tuple) else difficulty
    return make_problem(rng, level, max_operand)


def problems(n: int, difficulty: int | tuple[int, int] = (1, 3), seed: int = 0, start: int = 0,
             max_operand: int | None = None) -> list[Problem]:
    return [problem_at(seed, index, difficulty, max_operand) for index in range(start, start + n)]


# ---------------------------------------------------------------------------------------------
# synthetic:chat: greetings and simple questions, for a model that should talk as well as add
#
# A newcomer's first prompts are "Hello", "Who are you?" and a simple question. Without chat data
# of that kind an SFT model trained on arithmetic answers everything with a calculator call; the
# shared self-instruct set helps where it exists, but a fresh clone may not have it. These are
# short, deterministic exchanges (a pure function of seed and index, like the problems above) that
# fit a 128-token context whole.

GREETINGS = ["Hello", "Hi", "Hey", "Hello there", "Hi there", "Good morning", "Good evening", "Hey there"]
GREETING_REPLIES = ["Hello! How can I help you today?", "Hi! What can I do for you?",
                    "Hello! Ask me anything.", "Hi there! How can I help?"]
IDENTITY_QUESTIONS = ["Who are you?", "What are you?", "What is your name?", "Tell me about yourself."]
IDENTITY_REPLY = "I am picochat, a small language model. I can chat and solve simple word problems."
HOW_ARE_YOU = (["How are you?", "How are you today?", "How is it going?"],
               ["I am doing well, thank you! How can I help?", "I am fine, thanks for asking. What can I do for you?"])
THANKS = (["Thank you!", "Thanks!", "Thanks a lot."], ["You are welcome!", "Glad I could help!"])
GOODBYES = (["Bye!", "Goodbye.", "See you later."], ["Goodbye! Have a nice day.", "Bye! Come back any time."])

CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo",
            "England": "London", "Egypt": "Cairo", "Greece": "Athens", "Russia": "Moscow", "China": "Beijing",
            "Canada": "Ottawa", "Peru": "Lima", "Norway": "Oslo", "Kenya": "Nairobi", "Ireland": "Dublin"}
COLORS = {"the sky": "blue", "grass": "green", "snow": "white", "a banana": "yellow", "coal": "black",
          "a strawberry": "red", "an orange": "orange", "a cloud": "white", "a lemon": "yellow", "blood": "red"}
SOUNDS = {"dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks", "lion": "roars", "horse": "neighs",
          "sheep": "bleats", "bird": "sings", "owl": "hoots", "pig": "oinks"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "old": "young",
             "happy": "sad", "open": "closed", "light": "dark", "early": "late", "full": "empty", "wet": "dry"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


# Questions about the tables above: (table, the question's wordings, the answer), where {key} is
# an entry's key ({Key} capitalized) and {value} its value.
TABLE_FACTS = [
    (CAPITALS, ["What is the capital of {key}?", "Which city is the capital of {key}?"],
     "The capital of {key} is {value}."),
    (COLORS, ["What color is {key}?"], "{Key} is {value}."),
    (SOUNDS, ["What sound does a {key} make?", "What does a {key} say?"], "A {key} {value}."),
    (OPPOSITES, ["What is the opposite of {key}?", "Tell me the opposite of {key}."],
     "The opposite of {key} is {value}."),
]


def _fact(rng: random.Random) -> tuple[str, str]:
    """One simple question with its one-sentence answer."""
    kind = rng.randrange(len(TABLE_FACTS) + 2)
    if kind < len(TABLE_FACTS):
        table, questions, answer = TABLE_FACTS[kind]
        key, value = rng.choice(sorted(table.items()))
        # a single wording draws nothing, so every seed gives the conversations it always gave
        question = rng.choice(questions) if len(questions) > 1 else questions[0]
        words = {"key": key, "Key": _capitalized(key), "value": value}
        return question.format(**words), answer.format(**words)
    if kind == len(TABLE_FACTS):
        index = rng.randrange(len(DAYS))
        return f"What day comes after {DAYS[index]}?", f"After {DAYS[index]} comes {DAYS[(index + 1) % 7]}."
    word = rng.choice(ITEMS)
    return f"How do you spell {word}?", f"The word {word} is spelled " + "-".join(word.upper()) + "."


def chat_at(seed: int, index: int) -> dict:
    """The index-th synthetic chat conversation ({"messages": [...]}), a pure function of its arguments:
    a greeting, a question about the model, small talk or a simple factual question, sometimes
    after a greeting (two exchanges)."""
    rng = random.Random(f"chat:{seed}:{index}")
    kind = rng.randrange(6)
    if kind == 0:
        user, reply = rng.choice(GREETINGS) + rng.choice(["", "!", "."]), rng.choice(GREETING_REPLIES)
    elif kind == 1:
        user, reply = rng.choice(IDENTITY_QUESTIONS), IDENTITY_REPLY
    elif kind == 2:
        prompts, replies = rng.choice([HOW_ARE_YOU, THANKS, GOODBYES])
        user, reply = rng.choice(prompts), rng.choice(replies)
    else:
        user, reply = _fact(rng)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    if kind >= 3 and rng.random() < 0.25:  # a greeting first, then the question
        messages = [{"role": "user", "content": rng.choice(GREETINGS) + "!"},
                    {"role": "assistant", "content": rng.choice(GREETING_REPLIES)}] + messages
    return {"messages": messages}


def chats(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    return [chat_at(seed, index) for index in range(start, start + n)]
