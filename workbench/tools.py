"""The calculator tool: a safe evaluator for the expressions a model writes between
<|python_start|> and <|python_end|>.

The expression is parsed with `ast` and walked against a whitelist: numbers, string literals,
+ - * / // % **, unary minus/plus, parentheses, `len(str)` and a few string methods
(`"..".count(..)`, `.lower()`, `.upper()`, `.strip()`, `.replace(a, b)`). Nothing else parses:
no names, no attribute access outside those method calls, no imports, no comprehensions, and
never `eval`/`exec`.

Every operation's cost is bounded before it runs (digits of an integer, length of a string, the
size of a power's result), and the expression itself is bounded in length, node count and depth,
so a call finishes in well under a millisecond whatever the input, on any thread and any OS
(no signal.alarm). A wall-clock deadline is checked at every node as a second line of defence.

calculate() raises CalculatorError and nothing else: the expression is a model's output, and a
tool call must come back to the model as an error it can read, never end the generation.
tests/test_tools.py fuzzes it (a seeded grammar, character soup and hypothesis).
"""

from __future__ import annotations

import ast
import math
import time
import warnings

MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
MAX_DEPTH = 40
MAX_INT_BITS = 1024  # about 308 decimal digits
MAX_STRING_CHARS = 10_000
MAX_SECONDS = 0.1

STRING_METHODS = {"count": (1, 1), "lower": (0, 0), "upper": (0, 0), "strip": (0, 1), "replace": (2, 2)}


class CalculatorError(ValueError):
    """The expression is not allowed, malformed, or too expensive to evaluate."""


def calculate(expression: str) -> str:
    """Evaluate `expression` safely and format the result like a GSM8K answer ("12", "3.5")."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    expression = expression.strip()
    if not expression:
        raise CalculatorError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        # junk like "3x" or "'\d'" makes the parser warn (SyntaxWarning, DeprecationWarning) on
        # stderr, or raise where warnings are errors: either way it is just this call's business
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise CalculatorError(f"cannot parse expression: {type(error).__name__}") from None
    _check_shape(tree)
    evaluator = _Evaluator(deadline=time.monotonic() + MAX_SECONDS)
    try:
        return format_result(evaluator.eval(tree.body))
    except CalculatorError:
        raise
    except Exception as error:  # a limit the checks above missed: still an answer for the model
        raise CalculatorError(f"cannot evaluate expression: {type(error).__name__}") from None


def format_result(value) -> str:
    """Ints as digits, floats without a spurious .0 and rounded to 6 decimals, strings as they are."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise CalculatorError("result is not a finite number")
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        rounded = round(value, 6)
        if rounded == 0.0 and value != 0.0:
            return f"{value:.6g}"  # tiny numbers keep their significant digits
        if rounded.is_integer() and abs(rounded) < 1e15:
            return str(int(rounded))
        return repr(rounded)
    if isinstance(value, str):
        return value
    raise CalculatorError(f"unsupported result type {type(value).__name__}")


def _check_shape(tree: ast.AST) -> None:
    """Node count and depth, walked iteratively so hostile nesting cannot overflow the stack."""
    count = 0
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculatorError(f"expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise CalculatorError(f"expression nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


class _Evaluator:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def eval(self, node: ast.AST):
        if time.monotonic() > self.deadline:
            raise CalculatorError("time limit exceeded")
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise CalculatorError(f"constant {value!r} is not allowed")
            return _check_size(value)
        if isinstance(node, ast.UnaryOp):
            operand = self.eval(node.operand)
            if not _is_number(operand):
                raise CalculatorError("unary operator on a non-number")
            if isinstance(node.op, ast.USub):
                return -operand
            if isinstance(node.op, ast.UAdd):
                return operand
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.BinOp):
            return _binary(node.op, self.eval(node.left), self.eval(node.right))
        if isinstance(node, ast.Call):
            return self._call(node)
        raise CalculatorError(f"{type(node).__name__} is not allowed")

    def _call(self, node: ast.Call):
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise CalculatorError("starred arguments are not allowed")
        args = [self.eval(arg) for arg in node.args]
        func = node.func
        if isinstance(func, ast.Name) and func.id == "len":
            if len(args) != 1 or not isinstance(args[0], str):
                raise CalculatorError("len() takes one string")
            return len(args[0])
        if isinstance(func, ast.Attribute) and func.attr in STRING_METHODS:
            receiver = self.eval(func.value)
            if not isinstance(receiver, str):
                raise CalculatorError(f".{func.attr}() works on strings only")
            low, high = STRING_METHODS[func.attr]
            if not low <= len(args) <= high or not all(isinstance(a, str) for a in args):
                raise CalculatorError(f".{func.attr}() takes {low}-{high} string arguments")
            if func.attr == "count":
                return receiver.count(args[0])
            if func.attr == "replace":
                old, new = args
                occurrences = receiver.count(old) if old else len(receiver) + 1
                if len(receiver) + occurrences * (len(new) - len(old)) > MAX_STRING_CHARS:
                    raise CalculatorError("string result too long")
                return receiver.replace(old, new)
            return _check_size(getattr(receiver, func.attr)(*args))  # 'ﬃ'.upper() is 'FFI': 3x longer
        raise CalculatorError("only len() and the string methods " + ", ".join(STRING_METHODS) + " may be called")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_size(value):
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError("number too large")
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise CalculatorError("string too long")
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise CalculatorError("result is not a finite number")
    return value


def _binary(op: ast.operator, left, right):
    if isinstance(left, str) or isinstance(right, str):
        return _string_binary(op, left, right)
    if not (_is_number(left) and _is_number(right)):
        raise CalculatorError("operands must be numbers")
    try:
        if isinstance(op, ast.Add):
            return _check_size(left + right)
        if isinstance(op, ast.Sub):
            return _check_size(left - right)
        if isinstance(op, ast.Mult):
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                    raise CalculatorError("number too large")
            return _check_size(left * right)
        if isinstance(op, ast.Div):
            return _check_size(left / right)
        if isinstance(op, ast.FloorDiv):
            return _check_size(left // right)
        if isinstance(op, ast.Mod):
            return _check_size(left % right)
        if isinstance(op, ast.Pow):
            return _power(left, right)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("number too large") from None
    raise CalculatorError(f"operator {type(op).__name__} is not allowed")


def _power(base, exponent):
    if abs(exponent) > 10_000:
        raise CalculatorError("exponent too large")
    if isinstance(base, int) and isinstance(exponent, int) and exponent >= 0:
        # bits of the result ~ bits(base) * exponent: refuse before computing
        if base not in (0, 1, -1) and (base.bit_length() - 1) * exponent > MAX_INT_BITS:
            raise CalculatorError("number too large")
        return _check_size(base**exponent)
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    result = base**exponent  # a float here (floats overflow with OverflowError, caught by the caller)
    if isinstance(result, complex):
        raise CalculatorError("result is not a real number")
    return _check_size(result)


def _string_binary(op: ast.operator, left, right):
    if isinstance(op, ast.Add) and isinstance(left, str) and isinstance(right, str):
        return _check_size(left + right)
    if isinstance(op, ast.Mult):
        text, times = (left, right) if isinstance(left, str) else (right, left)
        if isinstance(times, int) and not isinstance(times, bool) and isinstance(text, str):
            if not text or times <= 0:
                return ""  # never text * times: '' * 2**63 overflows an index-sized integer
            if len(text) * times > MAX_STRING_CHARS:
                raise CalculatorError("string too long")
            return text * times
    raise CalculatorError("only + between strings and * by an integer are allowed on strings")
