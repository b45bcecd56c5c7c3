"""The import graph of workbench, read from the source (nothing is imported): it has no cycle,
function-local imports included; it is layered, from the front ends (cli, tui, serve) at the top to
config, runs and tokenizer at the bottom (LAYERS); and the modules that must start instantly (the
TUI, the CLI dispatcher, the run-folder and checkpoint readers, config, tokenizer) never load torch."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
TORCH_FREE = ("workbench.runs", "workbench.config", "workbench.tokenizer", "workbench.cli",
              "workbench.checkpoint_files", "workbench.tui")  # workbench.tui: every module under it
BASE = ("workbench.errors", "workbench.files", "workbench.input_files", "workbench.config", "workbench.runs",
        "workbench.checkpoint_files", "workbench.tokenizer", "workbench.data")
CLI_MODULES = ("workbench.cli", "workbench.__main__", "workbench.evals.cli", "workbench.serve.cli")  # and *_cli
# (modules, what none of them may import, why): a name covers the modules under it
LAYERS = [
    (BASE, ("workbench.train", "workbench.evals", "workbench.engine", "workbench.serve", "workbench.tui"),
     "the base and the data readers sit below training, evals, generation and the front ends"),
    (("workbench.tasks",), ("workbench.train", "workbench.engine", "workbench.serve", "workbench.tui"),
     "a task scores completions and defines rewards; training imports tasks, never the other way"),
    (("workbench.tui",), ("workbench.train", "workbench.engine", "workbench.serve"),
     "the TUI starts training, generation and serving as worker processes; it never runs them"),
    (("workbench",), ("workbench.tui",), "the TUI is a front end: nothing below it reaches up into it"),
]


def within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def is_cli(module: str) -> bool:
    return module in CLI_MODULES or module.endswith("_cli")


def layer_violations(graph: dict[str, set[str]], layers, verbs: set[str]) -> list[str]:
    """'A -> B (why)' for each import that breaks a layer, and for each CLI module imported by a
    module that is neither a verb nor a CLI module itself (library code never calls up into
    argument parsing and printing)."""
    found = []
    for modules, forbidden, why in layers:
        for module in sorted(m for m in graph if within(m, modules) and not within(m, forbidden)):
            found += [f"{module} -> {target} ({why})" for target in sorted(graph[module]) if within(target, forbidden)]
    for module in sorted(m for m in graph if not is_cli(m) and m not in verbs):
        found += [f"{module} -> {target} (a library module imports a CLI module)"
                  for target in sorted(graph[module]) if is_cli(target)]
    return found


@functools.cache
def module_files(package: Path) -> dict[str, Path]:
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


@functools.cache
def imported_names(module: str, path: Path, at_import_time: bool) -> frozenset[str]:
    """Dotted names `module` imports. at_import_time: only what runs when it is imported (no
    function bodies, no `if TYPE_CHECKING:` block); else every import statement in the file."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if at_import_time and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if at_import_time and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package upwards
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(found)


@functools.cache
def import_graph(package: Path, at_import_time: bool) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a `from pkg import name` of a function counts
    as importing pkg); with at_import_time, importing a module also runs its packages' __init__."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path, at_import_time):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            while name:
                if name != module and not module.startswith(name + "."):
                    targets.add(name)
                name = name.rpartition(".")[0] if at_import_time else ""
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle as the path that closes it (depth-first search, one per back edge)."""
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def third_party_at_import_time(package: Path, module: str) -> dict[str, list[str]]:
    """Top-level packages outside workbench that importing `module` loads -> one import chain."""
    graph, modules = import_graph(package, at_import_time=True), module_files(package)
    parts = module.split(".")
    packages = [".".join(parts[:end]) for end in range(1, len(parts))]  # run first: their __init__
    chains, seen = {}, {name: [name] for name in [module, *packages] if name in modules}
    queue = list(seen)
    while queue:
        current = queue.pop(0)
        for name in imported_names(current, modules[current], at_import_time=True):
            top = name.partition(".")[0]
            if top != package.name:
                chains.setdefault(top, seen[current] + [name])
        for target in sorted(graph[current] - set(seen)):
            seen[target] = seen[current] + [target]
            queue.append(target)
    return chains


def test_no_import_cycle_among_workbench_modules_function_local_imports_included():
    found = cycles(import_graph(PACKAGE, at_import_time=False))
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_the_import_graph_is_layered_from_the_front_ends_down_to_the_base():
    from workbench.cli import VERBS

    verbs = {module for module, _ in VERBS.values()}
    graph = import_graph(PACKAGE, at_import_time=False)
    assert all(any(within(module, modules) for module in graph) for modules, _, _ in LAYERS)  # names still exist
    assert not layer_violations(graph, LAYERS, verbs)


def test_torch_free_modules_never_load_torch():
    checked = [module for module in module_files(PACKAGE)
               if any(module == name or module.startswith(name + ".") for name in TORCH_FREE)]
    assert len(checked) > len(TORCH_FREE)  # the TUI's modules were found
    loading = {module: third_party_at_import_time(PACKAGE, module).get("torch") for module in checked}
    assert not {module: chain for module, chain in loading.items() if chain}


def test_the_walker_sees_function_local_and_type_checking_imports(tmp_path):
    """The checks above can fail: a cycle closed only inside a function, and torch reached through
    a package's __init__, are both found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub import heavy\n")
    (package / "sub" / "heavy.py").write_text("import torch\n")
    (package / "sub" / "light.py").write_text("import json\n")
    (package / "light.py").write_text("import json\n")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.a import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                                  "from pkg.sub import light\n")
    assert cycles(import_graph(package, at_import_time=False)) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert cycles(import_graph(package, at_import_time=True)) == []
    assert third_party_at_import_time(package, "pkg.c")["torch"] == ["pkg.c", "pkg.sub", "pkg.sub.heavy", "torch"]
    assert third_party_at_import_time(package, "pkg.sub.light")["torch"] == ["pkg.sub", "pkg.sub.heavy", "torch"]
    assert "torch" not in third_party_at_import_time(package, "pkg.light")


def test_the_layer_check_sees_an_upward_import_and_a_library_calling_a_cli_module(tmp_path):
    """The layering check can fail: a lower module importing a higher one inside a function, and a
    library module importing a verb's CLI module, are both found; a verb may import a CLI module."""
    package = tmp_path / "lay"
    (package / "low").mkdir(parents=True)
    for name in ("__init__.py", "low/__init__.py", "high.py", "tool_cli.py"):
        (package / name).write_text("import json\n")
    (package / "low" / "reader.py").write_text("def later():\n    from lay import high\n")
    (package / "library.py").write_text("from lay.tool_cli import run\n")
    (package / "verb.py").write_text("from lay import tool_cli\n")
    graph = import_graph(package, at_import_time=False)
    layers = [(("lay.low",), ("lay.high",), "low sits below high")]
    assert layer_violations(graph, layers, verbs={"lay.verb"}) == [
        "lay.low.reader -> lay.high (low sits below high)",
        "lay.library -> lay.tool_cli (a library module imports a CLI module)"]
