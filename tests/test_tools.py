"""The calculator tool: what it computes, how it formats, and what it refuses."""

from __future__ import annotations

import ast
import random
import threading
import tracemalloc
import warnings
from pathlib import Path

import pytest

from workbench import tools
from workbench.tools import CalculatorError, calculate


@pytest.mark.parametrize("expression, expected", [
    ("1 + 2", "3"),
    ("12 * 7 - 4", "80"),
    ("7 / 2", "3.5"),
    ("10 / 5", "2"),  # an integral float has no .0, like a GSM8K answer
    ("10 / 3", "3.333333"),
    ("2 ** 10", "1024"),
    ("2 ** -2", "0.25"),
    ("17 // 5", "3"),
    ("17 % 5", "2"),
    ("-(3 + 4) * 2", "-14"),
    ("0.1 + 0.2", "0.3"),
    ("1.5e3 + 1", "1501"),
    ("123456789 * 987654321", "121932631112635269"),
    ("((((1 + 2))))", "3"),
    ("(" * 150 + "1" + ")" * 150, "1"),  # parentheses alone add no work
    ('"strawberry".count("r")', "3"),
    ('len("hello")', "5"),
    ('"Hello".upper()', "HELLO"),
    ('"Hello".lower()', "hello"),
    ('"  pad  ".strip()', "pad"),
    ('"a-b-c".replace("-", "+")', "a+b+c"),
    ('"ab" * 3', "ababab"),
    ('"ab" + "cd"', "abcd"),
    ('len("ab" * 3) + 1', "7"),
])
def test_calculates(expression, expected):
    assert calculate(expression) == expected


@pytest.mark.parametrize("expression", [
    "__import__('os').system('echo hi')",
    "import os",
    "open('/etc/passwd').read()",
    "().__class__.__bases__[0].__subclasses__()",
    "(1).real",
    "'a'.__class__",
    "'abc'.format(1)",
    "'{0.__class__}'.format(1)",
    "eval('1+1')",
    "exec('x=1')",
    "x + 1",
    "lambda: 1",
    "[1, 2, 3]",
    "{1: 2}",
    "[x for x in 'abc']",
    "1 if 1 else 2",
    "1 < 2",
    "True + 1",
    "None",
    "b'bytes'",
    "1j * 1j",
    "f'{1+1}'",
    "x := 5",
    "1; 2",
    "'a' % 3",
    "len('a', 'b')",
    "'abc'.count()",
    "'abc'.count(1)",
    "'abc'.split()",
    "1 & 2",
    "~1",
    "not 1",
])
def test_refuses_anything_outside_the_whitelist(expression):
    with pytest.raises(CalculatorError):
        calculate(expression)


@pytest.mark.parametrize("expression", [
    "9 ** 9 ** 9",
    "2 ** 100000",
    "10 ** 400",
    "(10 ** 200) * (10 ** 200)",
    "2.0 ** 5000",
    "1e308 * 10",
    "'a' * 10 ** 9",
    "'ab' * 10000",
    "'ab'.replace('', 'x' * 4000)",
    "'x' * 9000 + 'y' * 9000",
    "1 / 0",
    "1 // 0",
    "5 % 0",
    "0 ** -1",
    "(-8) ** 0.5",
])
def test_refuses_huge_or_undefined_results(expression):
    with pytest.raises(CalculatorError):
        calculate(expression)


@pytest.mark.parametrize("expression", [
    "-(" * 100 + "1" + ")" * 100,
    "(" * 250 + "1" + ")" * 250,
    "-" * 300 + "1",
    "1" + "+1" * 240,
    "1" * 600,
    "'" + "a" * 1000 + "'",
    "",
    "   ",
    "1 +",
    "((1)",
    "\x00",
])
def test_refuses_deep_long_or_malformed_expressions(expression):
    with pytest.raises(CalculatorError):
        calculate(expression)


def test_error_is_a_value_error_and_never_something_else():
    assert issubclass(CalculatorError, ValueError)
    with pytest.raises(CalculatorError):
        calculate(123)  # type: ignore[arg-type]


def test_hostile_input_is_fast_and_works_off_the_main_thread():
    hostile = ["9 ** 9 ** 9", "2 ** 1023 * 2 ** 1023", "'a' * 10 ** 8", "(" * 199 + "1" + ")" * 199,
               "-" * 400 + "1", "10 ** 300 // 3 ** 600", "'ab' * 5000 + 'c' * 5000"]
    results: list[str] = []

    def work():
        for expression in hostile:
            try:
                results.append(calculate(expression))
            except CalculatorError as error:
                results.append(f"error: {error}")

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=60)  # a hang guard, not a speed limit: the bounds make each one cheap
    assert not thread.is_alive()
    assert len(results) == len(hostile)


# ---- fuzzing: whatever a model writes, the calculator answers or says why not (issue 16, item 14) ----

# Atoms chosen to reach every limit: huge and negative repeat counts, floats at the edges,
# strings that grow when upper-cased, ints at the size cap.
ATOMS = ["0", "1", "-1", "2", "3", "7", "10", "255", "0.5", "-0.0", "1e308", "1e-308", "1e999", "2**63", "2**64",
         "-2**63", "2**1023", "10**300", "9**9", "''", "'a'", "'abc'", "'ﬃ'", "'ß'", "'İ'", "'x' * 10000",
         "len('abc')", "'\\d'"]
OPERATORS = ["+", "-", "*", "/", "//", "%", "**"]
METHODS = {"count": 1, "lower": 0, "upper": 0, "strip": 0, "replace": 2}
SOUP = list("0123456789+-*/%().'\"ejx_ \\abN{}[]:,") + ["**", "//", "len(", ".count(", ".replace(", ".upper()",
                                                       "1e308", "2**63", "'ﬃ'", "lambda", "import"]


def random_expression(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice(ATOMS)
    if roll < 0.75:
        return f"({random_expression(rng, depth + 1)}){rng.choice(OPERATORS)}({random_expression(rng, depth + 1)})"
    if roll < 0.82:
        return f"-({random_expression(rng, depth + 1)})"
    if roll < 0.88:
        return f"len({random_expression(rng, depth + 1)})"
    method = rng.choice(list(METHODS))
    args = ", ".join(random_expression(rng, depth + 1) for _ in range(METHODS[method]))
    return f"({random_expression(rng, depth + 1)}).{method}({args})"


def random_soup(rng: random.Random) -> str:
    return "".join(rng.choice(SOUP) for _ in range(rng.randint(1, 60)))


def check_bounded(expression: str) -> None:
    """Answers with a bounded string or raises CalculatorError, never anything else; peak memory
    stays far below what a huge power or repetition would take; no warning leaks out."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings(record=True) as leaked:
            warnings.simplefilter("always")
            try:
                result = calculate(expression)
            except CalculatorError:
                result = ""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, str) and len(result) <= tools.MAX_STRING_CHARS, expression
    assert peak < 2_000_000, (expression, peak)
    assert not leaked, (expression, [str(w.message) for w in leaked])


@pytest.mark.parametrize("expression", [
    "''*2**63", "'' * 2**64", "2**63 * ''", "'a' * -2**63", "-2**63 * 'a'", "'' * 10**300",
    "('ﬃ' * 10000).upper()", "('İ' * 10000).lower()", "'\\d'", "'\\N{nope}'",
])
def test_reported_and_found_failures_are_errors_or_answers(expression):
    check_bounded(expression)


def test_fuzzed_expressions_never_escape_and_stay_bounded():
    rng = random.Random(16)
    for _ in range(1500):
        check_bounded(random_expression(rng))
    for _ in range(1500):
        check_bounded(random_soup(rng))


def test_hypothesis_expressions_never_escape():
    hypothesis = pytest.importorskip("hypothesis")
    strategies = hypothesis.strategies
    atom = strategies.sampled_from(ATOMS) | strategies.integers(-2**70, 2**70).map(str) | strategies.floats().map(repr)
    expression = strategies.recursive(
        atom, lambda inner: strategies.tuples(inner, strategies.sampled_from(OPERATORS), inner).map(
            lambda parts: f"({parts[0]}){parts[1]}({parts[2]})") | inner.map(lambda e: f"len({e})")
        | inner.map(lambda e: f"({e}).upper()"), max_leaves=12)

    @hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @hypothesis.given(strategies.one_of(expression, strategies.text(max_size=80)))
    def never_escapes(text):
        check_bounded(text)

    never_escapes()


def test_the_calculator_never_evals_or_execs_model_output():
    source = Path(tools.__file__).read_text(encoding="utf-8")
    called = {node.func.id for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}
    assert "ast.parse" in source and 'mode="eval"' in source  # parsed to a tree, walked by _Evaluator


def test_a_tool_call_answered_with_a_lone_surrogate_keeps_the_generation_going(tiny_tokenizer):
    """'"\\udcff"' is a valid expression whose result no tokenizer takes (a lone surrogate): the
    engine hands the model its answer as U+FFFD instead of ending the generation with a TypeError."""
    from workbench.engine.rows import _Row
    from workbench.engine.sampling import SamplingParams

    row = _Row(tiny_tokenizer, SamplingParams(max_tokens=100), use_tools=True)
    special = tiny_tokenizer.special_id
    for token in [special("<|python_start|>"), *tiny_tokenizer.encode('"\\udcff" + "!"'), special("<|python_end|>")]:
        row.push(token, sampled=True)
    forced = list(row.forced)
    assert forced[0] == special("<|output_start|>") and forced[-1] == special("<|output_end|>")
    assert tiny_tokenizer.decode(forced[1:-1]) == "\ufffd!"
