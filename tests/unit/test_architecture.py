"""The product's import graph: no cycle, and arrows point down.

Every `import` in slurm_scratch/ counts, function-local ones included (a lazy import is still a
dependency). The rule: the base floor (the modules directly in slurm_scratch/, but for cli.py at
the top) imports no wing, but for FLOOR_USES; a wing (a folder: volume/, jobs/, health/) imports
the floor and itself, and another wing only as listed in WING_USES; cli.py and __main__.py may
import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "slurm_scratch"
TOP = {"slurm_scratch.cli", "slurm_scratch.__main__"}
# The only arrows from the floor up: config validates `[jobs] dir` with the one pattern language
# (jobs/__init__.py is empty, so this loads that module alone).
FLOOR_USES = {"slurm_scratch.config": {"slurm_scratch.jobs.pattern"}}
# The only arrows between wings (importer wing -> imported wings): the health check's housekeeping
# runs the sweep and the reaper (jobs), and its repair runs volume setup and reads the record
# (volume). jobs and volume use no other wing.
WING_USES: dict[str, set[str]] = {"health": {"jobs", "volume"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The product modules `path` imports (`from slurm_scratch import x` names module x when x is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("slurm_scratch"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    # Only what a module names: the packages above an imported module (their __init__, which the
    # import machinery runs) are not counted, or every package importing its own parts would be a cycle.
    edges = {name: imports_of(path, names) for name, path in known.items()}
    for name, targets in edges.items():
        targets.discard(name)
    return edges


def wing(name: str) -> str | None:
    """The wing a module belongs to (its folder below slurm_scratch), or None for the floor."""
    parts = name.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read() -> None:
    edges = graph()
    assert "slurm_scratch.layout" in edges["slurm_scratch.cli"] | set().union(*edges.values())
    assert edges["slurm_scratch.cli"], "cli.py imports the product"


def test_no_import_cycle_among_the_products_modules() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_floor_imports_no_wing() -> None:
    wrong = sorted(f"{name} -> {target}" for name, targets in graph().items() if name not in TOP and wing(name) is None
                   for target in targets if wing(target) is not None and target not in FLOOR_USES.get(name, set()))
    assert not wrong, "the base floor imports a wing: " + ", ".join(wrong)


def test_wings_import_each_other_only_as_listed() -> None:
    wrong = sorted(f"{name} -> {target}" for name, targets in graph().items() if wing(name) is not None
                   for target in targets if wing(target) not in (None, wing(name)) and wing(target) not in WING_USES.get(wing(name) or "", set()))
    assert not wrong, "a wing imports another wing: " + ", ".join(wrong)
