"""The modules of `fitorch/` import each other one way down: no cycle, and only the modules that must
(the package itself) import the learner at module level."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fitorch"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
# fitorch/__init__.py exports Learner; no other module needs the Learner class at import time.
MAY_IMPORT_LEARNER = {"learner"}


def module_level_imports(module: str) -> set[str]:
    """fitorch modules that `module` imports when it is imported (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.startswith("fitorch"):
                names = [inner.module.split(".")[1]] if "." in inner.module else [a.name for a in inner.names]
                found.update(name for name in names if name in MODULES)
            elif isinstance(inner, ast.Import):
                found.update(a.name.split(".")[1] for a in inner.names if a.name.startswith("fitorch."))
    return found - {module}


def test_the_module_graph_has_no_cycle():
    graph = {module: module_level_imports(module) for module in MODULES}
    visiting, done = set(), set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        visiting.add(module)
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in MODULES:
        visit(module, [])


# Each module imported alone (in one fresh interpreter, forgetting every fitorch module between two),
# with the package's __init__ left out since it imports everything: what it loads is its own closure.
ALONE = """
import importlib, json, sys, types
loaded = {{}}
for module in {modules!r}:
    for name in [name for name in sys.modules if name == "fitorch" or name.startswith("fitorch.")]:
        del sys.modules[name]
    package = types.ModuleType("fitorch")
    package.__path__ = [{path!r}]
    sys.modules["fitorch"] = package
    importlib.import_module("fitorch." + module)
    loaded[module] = sorted(name for name in sys.modules if name.startswith("fitorch."))
print(json.dumps(loaded))
"""


def test_each_module_imports_alone_without_the_learner_unless_it_must():
    code = ALONE.format(path=str(PACKAGE), modules=MODULES)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    offenders = {
        module: names
        for module, names in loaded.items()
        if module not in MAY_IMPORT_LEARNER and "fitorch.learner" in names
    }
    assert offenders == {}, f"these modules import the learner when imported: {sorted(offenders)}"
