"""The package's shape: no module imports one that imports it back, and the training loop
reads top to bottom on one screen."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "emunet"


def _imports(path: Path) -> set[str]:
    """Package modules a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("emunet."):
                found.add(node.module.split(".")[1])
    return found


def test_no_import_loops():
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py")}
    graph = {name: {d for d in deps if d in graph and d != name} for name, deps in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                raise AssertionError("import loop: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_training_loop_fits_on_one_screen():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_train")
    loop = next(n for n in ast.walk(body) if isinstance(n, ast.While))
    assert loop.end_lineno - loop.lineno + 1 <= 30, f"the loop is {loop.end_lineno - loop.lineno + 1} lines"
