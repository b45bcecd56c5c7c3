"""HumanEval: write the body of a Python function; right when the function passes its tests.

Records are {"task_id", "prompt", "entry_point", "canonical_solution", "test"}. The model gets the
function's signature and docstring (as plain text for base models, as a chat message for chat
models). Its answer (the completion's text outside thoughts, tasks.answers) becomes code in one of
two ways:
- it contains (in a ``` block or not) a whole `def <entry_point>(...)`: the program is the prompt
  (for its imports and helpers) followed by that code, whose definition replaces the stub;
- otherwise it is the function's body continuing the prompt, cut at the first top-level
  "def"/"class"/"if"/"print"/"#" line, as in OpenAI's human-eval.
The program = that + the task's tests + a plain-data check that ends in `check(<entry_point>)`, run in
the sandbox (evals/sandbox.py) with a time and memory limit; the completion is right when the program
exits 0, and the reward is 1.0 then, else 0.0. Model output never runs outside the sandbox.

Plain data only. HumanEval's tests read `assert candidate(x) == y`, which an object whose __eq__
always answers True passes without solving anything (and an RL policy rewarded by this scoring would
find that). So the tests get the candidate through a wrapper that fails the program unless every value
it returns is plain data, by exact type and recursively: None, bool, int, float, complex, str, bytes,
list, tuple, dict (keys too), set, frozenset, nested at most 100 deep. Exact types, never isinstance:
an int or str subclass with a lying __eq__ fails too, and so does a generator or iterator (its code
would run after the check). The completion runs before the check exists and may have rebound any name
or builtin, hence how the check is made (PLAIN_DATA_CHECK):
- it comes after the tests and is reached through no name: a decorator hands the function to a call
  right away, and the tests' check is called through that function's parameters. The completion's
  code, which ran earlier, cannot rebind or replace it;
- it names no global or builtin: `type` and the plain types come from literals (`(0).__class__`),
  whose types no program can change, and types are compared by identity;
- `check` must be the tests' own function (its code named check, its first line where the tests put
  it), not one that code the completion left behind (a patched __import__, say) bound later;
- the tests' own calls of the function by its name go through the same wrapper, and the name must
  still be bound to it after each call; every result returned so far is checked again after each
  call (a later call could have changed one the tests still hold);
- the builtins the tests look up by name (abs, tuple, `__import__` for an import, ...; found when the
  program is made) must be the interpreter's own, before the tests start and after each call: not
  shadowed by a global, and a built-in class or function of that name from the module builtins.
What it does NOT stop: code that rewrites Python state after the check looked (a finalizer that
replaces check.__code__, a key in the module's dict whose __eq__ runs during a name lookup), and
tampering with modules the tests import (math.fabs, random, copy) or with helpers the prompt defines
(HumanEval/38's encode_cyclic): a program can rewrite any Python-level check it can reach, and the
sandbox's job is to contain harm, not to prove honesty. This check only raises the bar for score
cheating from one line to deliberate tampering, which a reader of the completions can see.
"""

from __future__ import annotations

import builtins
import dis
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

from workbench.errors import BadInput
from workbench.evals.common import require
from workbench.evals.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, SandboxResult, run_program
from workbench.tasks.answers import parse
from workbench.tasks.base import Completion, read_records

STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S)


@dataclass
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str
    where: str = field(default="", compare=False)


def load(path: str | Path) -> list[Problem]:
    return read_records(path, _problem)


def _problem(record: dict[str, Any], where: str) -> Problem:
    fields = {key: require(record, key, str, where)
              for key in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}
    if not fields["entry_point"].isidentifier():
        raise BadInput(f"{where}: entry_point {fields['entry_point']!r} is not a Python identifier")
    if fields["entry_point"] == "check":
        raise BadInput(f"{where}: entry_point 'check' is the tests' own name; the program could not call both")
    if "def check(" not in fields["test"]:
        raise BadInput(f"{where}: field 'test' does not define check(candidate)")
    return Problem(**fields, where=where)


def messages(problem: Problem) -> list[dict[str, str]]:
    """The chat prompt: the stub in a Python block, to be completed."""
    return [{"role": "user", "content": f"Complete this Python function:\n\n```python\n{problem.prompt}```"}]


def plain_prompt(problem: Problem) -> str:
    """The prompt for a base model: the stub itself, which its body continues."""
    return problem.prompt


def truncate_at_stops(code: str) -> str:
    cut = len(code)
    for stop in STOP_SEQUENCES:
        index = code.find(stop)
        if index != -1:
            cut = min(cut, index)
    return code[:cut]


def completion_code(problem: Problem, answer: str) -> str:
    """Python source that defines the function, from the model's answer (see the module doc)."""
    blocks = _CODE_BLOCK.findall(answer)
    code = blocks[0] if blocks else answer
    if re.search(rf"^[ \t]*def[ \t]+{re.escape(problem.entry_point)}[ \t]*\(", code, re.M):
        return problem.prompt + "\n" + code.strip("\n") + "\n"
    return problem.prompt + truncate_at_stops(code)


def assemble_program(problem: Problem, answer: str) -> str:
    return completion_code(problem, answer) + "\n\n" + problem.test + "\n\n" + _plain_data_check(problem)


# The program's last lines (see the module doc). ENTRY_POINT, BUILTIN_NAMES and LINES_AFTER_CHECK are
# filled in by _plain_data_check. Every name here but `check` and ENTRY_POINT in the first line (whose
# values it checks) is a parameter or a local: none can have been rebound.
PLAIN_DATA_CHECK = '''
# picochat: the tests see only plain data from the candidate (workbench/tasks/humaneval.py says why)
@(lambda run_the_tests: run_the_tests(check, ENTRY_POINT))
def _picochat_plain_data_only(check, candidate):
    kind = (0).__class__.__class__  # `type`, and below the plain types, from literals
    function, builtin_function = kind(lambda: 0), kind([].append)
    frozen = kind((lambda: 0 in {0, 1}).__code__.co_consts[-1])  # only the compiler makes a frozenset literal
    plain = (kind(None), kind(True), kind(0), kind(0.0), kind(0j), kind(""), kind(b""), kind([]), kind(()),
             kind({}), kind({0}), frozen)
    in_order, mapping = (kind([]), kind(()), kind({0}), frozen), kind({})
    made_by_python = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class statement made it, not the interpreter

    def one_of(value_kind, kinds):  # by identity: `in` would ask a metaclass's __eq__
        for allowed in kinds:
            if value_kind is allowed:
                return True
        return False

    def require_plain(value, depth):
        value_kind = kind(value)
        assert one_of(value_kind, plain), f"picochat: ENTRY_POINT returned a {value_kind.__name__}, not plain data"
        assert depth < 100, "picochat: ENTRY_POINT returned data nested over 100 deep"
        if value_kind is mapping:
            for key, item in value.items():
                require_plain(key, depth + 1)
                require_plain(item, depth + 1)
        elif one_of(value_kind, in_order):
            for item in value:
                require_plain(item, depth + 1)

    def interpreters_own(name, value):
        if kind(value) is kind:
            return not value.__flags__ & made_by_python and value.__name__ == name and value.__module__ == "builtins"
        if kind(value) is builtin_function:
            return (value.__name__ == name and interpreters_own("module", kind(value.__self__))
                    and value.__self__.__name__ == "builtins")
        return False

    def require_real_builtins():
        looked_up = check.__builtins__
        for name in BUILTIN_NAMES:
            assert name not in check.__globals__, f"picochat: a global {name} hides the builtin the tests use"
            value = looked_up.get(name) if kind(looked_up) is mapping else None
            assert interpreters_own(name, value), f"picochat: the builtin {name} the tests use was replaced"

    returned = []  # every result so far: a later call could change one the tests still hold

    def checked(*args, **kwargs):
        returned.append(candidate(*args, **kwargs))
        for result in returned:
            require_plain(result, 0)
        require_real_builtins()
        assert check.__globals__.get("ENTRY_POINT") is checked, "picochat: ENTRY_POINT was rebound during the tests"
        return returned[-1]

    check.__globals__["ENTRY_POINT"] = checked  # the tests' calls by name are checked too
    here = (lambda: "where the plain-data check is").__code__.co_firstlineno
    assert (kind(check) is function and check.__code__.co_name == "check"
            and here - check.__code__.co_firstlineno == LINES_AFTER_CHECK), "picochat: check is not the tests' own function"
    require_real_builtins()

    @(lambda call_check: call_check(check, checked))
    def call_check(check, ENTRY_POINT):
        check(ENTRY_POINT)
'''
LINE_MARKER = "where the plain-data check is"


def _plain_data_check(problem: Problem) -> str:
    """PLAIN_DATA_CHECK for this problem: its entry point, the builtins its tests look up by name and
    how many lines its check's `def` is above the marker, all read here from the tests' text (which
    the model never wrote) by compiling, never running, it."""
    try:
        tests = compile(problem.test + "\n\n" + PLAIN_DATA_CHECK, "tests", "exec")
        codes = {code.co_name: code for code in tests.co_consts if isinstance(code, CodeType)}
    except (SyntaxError, ValueError):
        codes = {}
    check = codes.get("check")
    if check is None:  # no tests to run: the program fails in the sandbox, which says why
        names, lines = (), 0
    else:
        names = tuple(sorted(_names_looked_up(check) & set(vars(builtins)) - {problem.entry_point}))
        lines = _marker_line(codes["_picochat_plain_data_only"]) - check.co_firstlineno
    return (PLAIN_DATA_CHECK.replace("BUILTIN_NAMES", repr(names)).replace("LINES_AFTER_CHECK", str(lines))
            .replace("ENTRY_POINT", problem.entry_point))  # last: the name itself is never read again


def _nested_codes(code: CodeType) -> Iterator[CodeType]:
    yield code
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            yield from _nested_codes(constant)


def _marker_line(code: CodeType) -> int:
    return next(inner.co_firstlineno for inner in _nested_codes(code) if LINE_MARKER in inner.co_consts)


def _names_looked_up(code: CodeType) -> set[str]:
    """The global (or builtin) names a function and the functions inside it look up; `__import__` for
    an import statement, which calls it."""
    names = set()
    for inner in _nested_codes(code):
        for instruction in dis.get_instructions(inner):
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                names.add(instruction.argval)
            elif instruction.opname == "IMPORT_NAME":
                names.add("__import__")
    return names


def run_tests(problem: Problem, completion: Completion, timeout: float = DEFAULT_TIMEOUT,
              memory_mb: int = DEFAULT_MEMORY_MB) -> SandboxResult:
    """The completion's program (its answer's code, the tests, the check) run in the sandbox."""
    return run_program(assemble_program(problem, parse(completion).answer), timeout, memory_mb)


def correct(completion: Completion, problem: Problem) -> bool:
    return run_tests(problem, completion).passed


def reward(completion: Completion, problem: Problem) -> float:
    return 1.0 if correct(completion, problem) else 0.0
