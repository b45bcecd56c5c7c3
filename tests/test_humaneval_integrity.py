"""HumanEval scores only plain data: a completion cannot pass the tests with an object that claims to
equal everything, or by tampering with the names and builtins the tests use.

Each cheat below is a completion a model (or an RL policy rewarded by tasks.humaneval.reward) could
write; each passed the tests before the program checked what the candidate returns. Every program
runs in the real sandbox.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.errors import BadInput
from workbench.evals import humaneval
from workbench.tasks import humaneval as humaneval_task

FIXTURES = Path(__file__).parent / "fixtures" / "evals" / "humaneval" / "HumanEval.jsonl"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl"

ADD = humaneval_task.Problem(
    task_id="integrity/add", prompt='def add(a, b):\n    """The sum of a and b."""\n', entry_point="add",
    canonical_solution="    return a + b\n",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n")
REVERSED = humaneval_task.Problem(
    task_id="integrity/reversed", prompt='def backwards(items):\n    """items, last first, as a list."""\n',
    entry_point="backwards", canonical_solution="    return items[::-1]\n",
    test="def check(candidate):\n    assert candidate([1, 2]) == [2, 1]\n    assert tuple(candidate([3, 4, 5])) == (5, 4, 3)\n")
# the tests call the function by its own name too (as HumanEval/33 does)
BY_NAME = humaneval_task.Problem(
    task_id="integrity/by-name", prompt=ADD.prompt, entry_point="add", canonical_solution=ADD.canonical_solution,
    test="def check(candidate):\n    assert candidate(2, 3) == add(2, 3)\n    assert candidate(1, 1) == 2\n")
# a result the tests hold while they call the function again
KEPT = humaneval_task.Problem(
    task_id="integrity/kept", prompt='def pair(n):\n    """[n, n]."""\n', entry_point="pair",
    canonical_solution="    return [n, n]\n",
    test="def check(candidate):\n    first = candidate(1)\n    second = candidate(2)\n"
         "    assert first == [1, 1]\n    assert second == [2, 2]\n")
# a module-level import after `def check`: the moment a patched __import__ runs completion code
IMPORTS_AFTER = humaneval_task.Problem(
    task_id="integrity/imports-after", prompt=ADD.prompt, entry_point="add", canonical_solution=ADD.canonical_solution,
    test=ADD.test + "\n\nimport math\n")

ALWAYS_EQUAL = "class Anything:\n    __eq__ = lambda self, other: True\n    __hash__ = lambda self: 0\n\n\n"


def run(problem: humaneval_task.Problem, answer: str):
    return humaneval_task.run_tests(problem, answer, timeout=20)


def assert_refused(problem: humaneval_task.Problem, answer: str, reason: str) -> None:
    result = run(problem, answer)
    assert result.status == "failed", (result.status, result.stderr)
    assert reason in result.stderr, result.stderr


CHEATS = [  # (case, problem, completion, what the failure says)
    ("an object equal to everything", ADD, ALWAYS_EQUAL + "def add(a, b):\n    return Anything()\n",
     "add returned a Anything, not plain data"),
    ("an int subclass equal to everything", ADD,
     "class Number(int):\n    __eq__ = lambda self, other: True\n    __hash__ = int.__hash__\n\n\n"
     "def add(a, b):\n    return Number(0)\n", "add returned a Number, not plain data"),
    ("a str subclass equal to everything", ADD,
     "class Text(str):\n    __eq__ = lambda self, other: True\n    __hash__ = str.__hash__\n\n\n"
     "def add(a, b):\n    return Text('')\n", "add returned a Text, not plain data"),
    ("a __class__ that claims int", ADD,
     "class Liar:\n    __class__ = property(lambda self: int)\n    __eq__ = lambda self, other: True\n\n\n"
     "def add(a, b):\n    return Liar()\n", "add returned a Liar, not plain data"),
    ("a list holding a cheat", REVERSED, ALWAYS_EQUAL + "def backwards(items):\n    return [Anything()] * len(items)\n",
     "backwards returned a Anything, not plain data"),
    ("cheats as dict keys, which tuple() lists", REVERSED,
     "class Key:\n    __eq__ = lambda self, other: True\n    __hash__ = object.__hash__\n\n\n"
     "def backwards(items):\n    return items[::-1] if len(items) == 2 else {Key(): item for item in items}\n",
     "backwards returned a Key, not plain data"),
    ("a generator, run after the result was handed over", REVERSED,
     ALWAYS_EQUAL + "def backwards(items):\n    return items[::-1] if len(items) == 2 else (Anything() for _ in items)\n",
     "backwards returned a generator, not plain data"),
    ("type and isinstance overridden first", ADD,
     "import builtins\nbuiltins.type = lambda value: int\nbuiltins.isinstance = lambda *args: True\n"
     + ALWAYS_EQUAL + "def add(a, b):\n    return Anything()\n", "add returned a Anything, not plain data"),
    ("the wrapper's name bound first", ADD,
     "_picochat_plain_data_only = lambda *args: None\n" + ALWAYS_EQUAL + "def add(a, b):\n    return Anything()\n",
     "add returned a Anything, not plain data"),
    ("plain data here, a cheat when the tests call the function by name", BY_NAME,
     ALWAYS_EQUAL + "calls = []\n\n\ndef add(a, b):\n    calls.append(1)\n"
     "    return Anything() if len(calls) % 2 == 0 else a + b\n", "add returned a Anything, not plain data"),
    ("the function's name rebound to an unchecked one during the tests", BY_NAME,
     ALWAYS_EQUAL + "def cheat(a, b):\n    return Anything()\n\n\n"
     "def add(a, b):\n    globals()['add'] = cheat\n    return a + b\n", "add was rebound during the tests"),
    ("an earlier result changed by a later call", KEPT,
     ALWAYS_EQUAL + "kept = []\n\n\ndef pair(n):\n    if kept:\n        kept[0].extend([Anything(), Anything()])\n"
     "        return [2, 2]\n    kept.append([])\n    return kept[0]\n", "pair returned a Anything, not plain data"),
    ("check replaced by a patched __import__ after the tests define it", IMPORTS_AFTER,
     "import builtins\n_real_import = builtins.__import__\n\n\n"
     "def _import(*args, **kwargs):\n    globals()['check'] = lambda candidate: None\n"
     "    return _real_import(*args, **kwargs)\n\n\nbuiltins.__import__ = _import\n\n\n"
     "def add(a, b):\n    return 0\n", "check is not the tests' own function"),
]


@pytest.mark.parametrize("case, problem, answer, reason", CHEATS, ids=[row[0] for row in CHEATS])
def test_cheats_fail(case, problem, answer, reason):
    assert_refused(problem, answer, reason)


def truncate_number() -> humaneval_task.Problem:
    """HumanEval/2, whose last two tests read `abs(candidate(x) - y) < 1e-6`: a completion that returns
    0.5 (right for the first test) passes them all when `abs` always answers 0."""
    return humaneval_task.load(FIXTURES)[2]


TAMPERED_BUILTINS = [  # (case, completion)
    ("builtins.abs replaced first", "import builtins\nbuiltins.abs = lambda value: 0\n\n\n"
     "def truncate_number(number):\n    return 0.5\n"),
    ("a global abs shadows the builtin", "def abs(value):\n    return 0\n\n\n"
     "def truncate_number(number):\n    return 0.5\n"),
    ("another __builtins__ for the tests", "import builtins\n"
     "__builtins__ = dict(vars(builtins), abs=lambda value: 0)\n\n\ndef truncate_number(number):\n    return 0.5\n"),
    ("a real builtin of another name", "import builtins\nbuiltins.abs = builtins.round\n\n\n"
     "def truncate_number(number):\n    return 0.5\n"),
    ("builtins.abs replaced during the first call", "def truncate_number(number):\n    import builtins\n"
     "    builtins.abs = lambda value: 0\n    return 0.5\n"),
]


@pytest.mark.parametrize("case, answer", TAMPERED_BUILTINS, ids=[row[0] for row in TAMPERED_BUILTINS])
def test_the_builtins_the_tests_use_must_be_the_real_ones(case, answer):
    assert_refused(truncate_number(), answer, "abs")
    assert "picochat" in run(truncate_number(), answer).stderr


def test_every_kind_of_plain_data_passes_and_nesting_is_bounded():
    kinds = humaneval_task.Problem(
        task_id="integrity/kinds", prompt='def value(which):\n    """Plain data."""\n', entry_point="value", canonical_solution="",
        test="def check(candidate):\n"
             "    assert candidate(0) == [None, True, 1, 2.5, 3j, 's', b'b', (1,), {'k': [{2}]}, frozenset({4})]\n"
             "    assert candidate(1) == {(1, 'a'): frozenset({(2,)})}\n")
    answer = ("def value(which):\n    if which == 0:\n"
              "        return [None, True, 1, 2.5, 3j, 's', b'b', (1,), {'k': [{2}]}, frozenset({4})]\n"
              "    return {(1, 'a'): frozenset({(2,)})}\n")
    result = run(kinds, answer)
    assert result.passed, result.stderr

    nested = humaneval_task.Problem(
        task_id="integrity/nested", prompt='def value():\n    """Nested lists."""\n', entry_point="value", canonical_solution="",
        test="def check(candidate):\n    candidate()\n")
    assert run(nested, "def value():\n    data = []\n    for _ in range(99):\n        data = [data]\n"
                       "    return data\n").passed
    assert_refused(nested, "def value():\n    data = []\n    for _ in range(100):\n        data = [data]\n"
                           "    return data\n", "value returned data nested over 100 deep")
    assert_refused(nested, "def value():\n    data = []\n    data.append(data)\n    return data\n",
                   "value returned data nested over 100 deep")


def test_an_entry_point_named_check_is_bad_input(tmp_path):
    record = ('{"task_id": "x", "prompt": "def check():\\n", "entry_point": "check", '
              '"canonical_solution": "    pass\\n", "test": "def check(candidate):\\n    pass\\n"}\n')
    path = tmp_path / "HumanEval.jsonl"
    path.write_text(record, encoding="utf-8")
    with pytest.raises(BadInput, match="entry_point 'check' is the tests' own name"):
        humaneval_task.load(path)


def test_tests_that_do_not_compile_fail_the_program_not_the_scorer():
    broken = humaneval_task.Problem(task_id="integrity/broken", prompt=ADD.prompt, entry_point="add",
                                    canonical_solution=ADD.canonical_solution, test="def check(candidate:\n")
    result = run(broken, ADD.canonical_solution)
    assert result.status == "failed" and "SyntaxError" in result.stderr


def test_the_program_still_reads_prompt_completion_tests_check():
    program = humaneval_task.assemble_program(ADD, ADD.canonical_solution)
    assert program.startswith(ADD.prompt + ADD.canonical_solution + "\n\n" + ADD.test)
    assert program.rstrip().endswith("check(add)")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not beside this checkout")
def test_all_164_canonical_solutions_still_pass():
    problems = humaneval_task.load(SHARED)
    scored = humaneval.score(problems, [p.canonical_solution for p in problems], timeout=20, workers=2)
    assert scored.details["failures"] == [] and scored.accuracy == 1.0 and len(problems) == 164
