"""The package's shape: folders are layers and a module imports only from its own layer or
below; no import loops; no module-level mutable state; functions fit on a screen; the training
loop reads top to bottom."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "emunet"

# Bottom to top. A module may import modules of its own layer and of the layers before it.
LAYERS = [
    ("base", {"errors", "progress", "device"}),
    ("io", {"io"}),
    ("model", {"model"}),
    ("config", {"config"}),
    ("infer", {"infer"}),
    ("score", {"score"}),
    ("train", {"train"}),
    ("jobs", {"jobs"}),
    ("cli", {"cli", "__main__", "__init__"}),
    ("napari", {"napari_plugin"}),  # the viewer's front end, beside the command line's
]


def _name(path: Path) -> str:
    """Dotted module name inside the package: 'io.data', 'cli', 'infer' (for infer/__init__)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    head = module.split(".")[0]
    return next(i for i, (_, members) in enumerate(LAYERS) if head in members)


def _imports(path: Path) -> set[str]:
    return _imports_in(path.read_text(), _name(path), path.name == "__init__.py")


def _imports_in(source: str, module: str, is_package: bool) -> set[str]:
    """Package modules a module imports, at the top or inside functions, as dotted names."""
    here = module.split(".")
    package = here if is_package else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            prefix = base + (node.module.split(".") if node.module else [])
        elif node.module and node.module.startswith("emunet."):
            prefix = node.module.split(".")[1:]
        else:
            continue
        for alias in node.names:
            found.add(".".join(prefix + [alias.name]) if _is_module(prefix + [alias.name]) else ".".join(prefix))
    return {m for m in found if m}


def _is_module(parts: list[str]) -> bool:
    return (PACKAGE.joinpath(*parts).with_suffix(".py")).exists() or (PACKAGE.joinpath(*parts) / "__init__.py").exists()


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)  # StopIteration names a module outside every layer


def _upward(name: str, deps: set[str]) -> list[str]:
    return [f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})"
            for dep in sorted(deps) if _layer(dep) > _layer(name)]


def test_imports_only_go_down_the_layers():
    wrong = [line for name, path in _modules().items() for line in _upward(name, _imports(path))]
    assert not wrong, "\n".join(wrong)


def test_no_import_loops():
    modules = _modules()
    graph = {name: {d for d in _imports(p) if d in modules and d != name and not name.startswith(d + ".")}
             for name, p in modules.items()}
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


def test_the_layer_rule_catches_an_upward_import():
    """The checker itself: relative and absolute imports resolved, upward ones reported."""
    deps = _imports_in("from ..train.loop import train\nfrom ..errors import DataError\nfrom emunet.io import files\n",
                       "io.data", False)
    assert deps == {"train.loop", "errors", "io.files"}
    assert _upward("io.data", deps) == ["io.data (io) imports train.loop (train)"]


# Module-level objects that are mutable by design, each with its reason.
MUTABLE_BY_DESIGN = {
    "model.unet._PRESET_REGISTRY": "the timm-style preset registry that register_preset extends; read as PRESETS, a read-only view",
}


def _assigned_names(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, name) of every name a module assigns at its top level."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out += [(node.lineno, t.id) for t in targets if isinstance(t, ast.Name)]
    return out


def _immutable(value, depth: int = 0) -> bool:
    """Whether a module constant's value cannot be changed in place (containers looked into)."""
    import re
    import types
    import typing
    from contextvars import ContextVar
    from dataclasses import is_dataclass

    import numpy as np

    if depth > 4:
        return True
    if value is None or isinstance(value, (str, bytes, int, float, complex, bool, Path, re.Pattern, ContextVar, type,
                                           types.FunctionType, types.BuiltinFunctionType, np.dtype)):
        return True
    if isinstance(value, (np.generic, types.GenericAlias, type(typing.Optional[int]))):
        return True  # NumPy scalars; type aliases such as tuple[int, int]
    if isinstance(value, np.ndarray):
        return not value.flags.writeable
    if isinstance(value, (tuple, frozenset)):
        return all(_immutable(v, depth + 1) for v in value)
    if isinstance(value, types.MappingProxyType):
        return all(_immutable(k, depth + 1) and _immutable(v, depth + 1) for k, v in value.items())
    if is_dataclass(value):
        return type(value).__dataclass_params__.frozen
    return False


def test_no_module_level_mutable_state():
    """No ``global`` rebinding and no module-level container or object that code could mutate:
    settings travel as arguments, caches live in the objects that own them, and constants are
    immutable (tuples, frozensets, ``MappingProxyType``, read-only arrays, frozen dataclasses),
    checked on the imported values, whatever their names' case."""
    import importlib

    found = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        found += [f"{name}:{n.lineno} global" for n in ast.walk(tree) if isinstance(n, ast.Global)]
        if name == "__main__":
            continue  # runs the command line when imported
        module = importlib.import_module("emunet" if name == "__init__" else f"emunet.{name}")
        for lineno, var in _assigned_names(tree):
            if var.startswith("__") or var == "log" or f"{name}.{var}" in MUTABLE_BY_DESIGN:
                continue  # dunders, the logger, the registry
            if not _immutable(getattr(module, var)):
                found.append(f"{name}:{lineno} {var} is a mutable {type(getattr(module, var)).__name__}")
    assert not found, "\n".join(found)


def test_the_state_rule_catches_a_mutable_constant():
    """The checker itself: a dict or a writeable array is mutable whatever its name; their
    frozen forms are not."""
    import types

    import numpy as np

    frozen = np.zeros(3)
    frozen.flags.writeable = False
    assert not _immutable({"a": 1}) and not _immutable(np.zeros(3)) and not _immutable(("a", [1]))
    assert _immutable(types.MappingProxyType({"a": (1, 2)})) and _immutable(frozen) and _immutable(frozenset({1}))


def test_functions_fit_on_a_screen():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_training_loop_fits_on_one_screen():
    tree = ast.parse((PACKAGE / "train" / "loop.py").read_text())
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_train")
    loop = next(n for n in ast.walk(body) if isinstance(n, ast.While))
    assert loop.end_lineno - loop.lineno + 1 <= 30, f"the loop is {loop.end_lineno - loop.lineno + 1} lines"
