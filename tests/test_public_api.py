"""Built-in callbacks use the public API only, exactly as a user's callback would."""

from __future__ import annotations

import ast
from pathlib import Path

import fitorch
import fitorch.callbacks
import fitorch.checks

CALLBACKS_DIR = Path(__file__).resolve().parents[1] / "callbacks"


def private_uses(path: Path) -> list[str]:
    """Imports from private fitorch modules and underscored attributes of objects other than self."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fitorch"):
            parts = node.module.split(".") + [alias.name for alias in node.names]
            problems += [f"{path.name}:{node.lineno} imports {node.module}.{p}" for p in parts if p.startswith("_")]
        elif isinstance(node, ast.Import):
            problems += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if "._" in a.name]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                problems.append(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
    return problems


def test_callbacks_import_only_public_fitorch_names():
    files = sorted(CALLBACKS_DIR.glob("*.py"))
    assert files, "no callbacks found"
    problems = [problem for path in files for problem in private_uses(path)]
    assert problems == []


def test_the_checker_catches_private_access(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from fitorch.learner import _length\nx = learner._skip_batches\n")
    assert len(private_uses(bad)) == 2


def test_every_exported_name_exists_and_has_a_docstring():
    for module in (fitorch, fitorch.callbacks, fitorch.checks):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
