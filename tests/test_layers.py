"""The package's layers point one way, no two modules import each other, and imports sit at the top.

    cli > harness > converter > targets > runtimes > measure > models > (errors, registry, optional, ...)

Inside the converter, the engine imports nothing of the rest of the converter (front-ends,
back-ends, loaders, the pipeline) and no graph format. Read from the source with ``ast``, so an
import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compactify"
LAYERS = ["cli", "harness", "converter", "targets", "runtimes", "measure", "models"]  # highest first
# Imports that may sit inside a function: the CLI answers argument errors before it imports torch
# (seconds), platform modules exist only where they are used, and optional heavy dependencies go
# through compactify.optional (importlib, not an import statement).
DEFERRED_OK_UNDER = ("cli",)
PLATFORM_MODULES = {"fcntl", "resource", "ctypes", "msvcrt"}
# Required but heavy, and needed by one path only: imported where that path starts, so that every
# other command does not pay for them (scikit-learn adds 0.8 s to a conversion's start-up, onnxsim 0.5 s).
HEAVY_FOR_ONE_PATH = {"sklearn": "the built-in digits data", "matplotlib": "the sweep's and the latency plots",
                      "onnxsim": "the simplify step (0.5 s with sympy)"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _guards_import_error(node: ast.AST) -> bool:
    return isinstance(node, ast.Try) and any(
        h.type is not None and any(n in ast.unparse(h.type) for n in ("ImportError", "ModuleNotFoundError"))
        for h in node.handlers)


def _imports(path: Path):
    """(imported module, line, inside a function, inside a try that handles its failure) for each
    import of the file, less those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function, in_try):
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno, in_function, in_try))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno, in_function, in_try))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)),
                  in_try or _guards_import_error(node))

    visit(tree, False, False)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None  # the base: errors, registry, optional, tensors, outputs, the package itself
    return LAYERS.index(parts[1])


def _internal(name: str) -> str | None:
    """The compactify module an import names (a package's __init__ for a package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _, _, _ in _imports(path):
            if name.split(".")[0] == "compactify":
                target = _internal(name)
                if target and target != module:
                    edges[module].add(target)
    return edges


def test_layers_point_one_way():
    upward = []
    for module, targets in _edges().items():
        if module == "compactify.__main__":
            continue
        own = _layer(module)
        for target in targets:
            theirs = _layer(target)
            if theirs is None:
                continue  # the base sits below every layer
            if own is None or theirs < own:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_the_engine_imports_no_other_part_of_the_converter_and_no_graph_format():
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("compactify.converter.engine"):
            continue
        for name, line, _, _ in _imports(path):
            top = name.split(".")[0]
            if top in ("onnx", "onnxruntime") or name.startswith("torch.fx") or (
                    name.startswith("compactify.") and not name.startswith(("compactify.converter.engine",
                                                                            "compactify.errors",
                                                                            "compactify.registry"))):
                bad.append(f"{module}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_two_modules_import_each_other_directly_or_in_a_cycle():
    edges = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = [0]

    def connect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            # A package's __init__ that gathers its own submodules is not a cycle of two jobs.
            real = [m for m in component if not any(o != m and o.startswith(m + ".") for o in component)]
            if len(real) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            connect(v)
    assert not cycles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_sit_at_the_top_of_modules():
    inside = []
    for module, path in MODULES.items():
        if module.split(".")[1:2] and module.split(".")[1] in DEFERRED_OK_UNDER:
            continue
        for name, line, in_function, guarded in _imports(path):
            top = name.split(".")[0]
            # A guarded import of a private API that may move between releases is a probe, not a dependency.
            if in_function and not guarded and top not in PLATFORM_MODULES and top not in HEAVY_FOR_ONE_PATH:
                inside.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not inside, (f"{len(inside)} imports inside functions (optional heavy dependencies go through "
                        "compactify.optional.optional_import):\n" + "\n".join(inside))
