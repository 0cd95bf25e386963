"""MkDocs hook: show mkdocstrings the `fitorch` package as Python imports it, `fitorch.callbacks` included.

The built-in callbacks live in `callbacks/` and are installed as the subpackage `fitorch.callbacks`
(`package_dir` in setup.cfg). Griffe, which mkdocstrings uses to read the sources, finds a package's
submodules by walking its folder, so on its own it never sees `callbacks/` inside `fitorch`. This hook
asks the import system where each package lives (an editable or a regular install alike), copies the
sources into a temporary folder laid out as one package, and puts that folder first on mkdocstrings'
search path. Each build gets its own folder, so builds running side by side never share one.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

PACKAGES = ("fitorch", "fitorch.callbacks")  # the packages of setup.cfg
_folders: list[Path] = []


def mirror_packages(destination: Path) -> None:
    """Copy the sources of every package in `PACKAGES` into `destination`, laid out as Python imports them."""
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"docs: cannot import {package}; install the project first: pip install -e '.[docs]'")
        target = destination.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for location in spec.submodule_search_locations:
            for source in Path(location).glob("*.py"):
                shutil.copy2(source, target / source.name)


@event_priority(100)  # before mkdocstrings, which creates its handler in its own on_config
def on_config(config: Any) -> Any:
    folder = Path(tempfile.mkdtemp(prefix="fitorch-docs-"))
    _folders.append(folder)
    mirror_packages(folder)
    handlers = config.plugins["mkdocstrings"].config.handlers
    handlers.setdefault("python", {})["paths"] = [str(folder)]
    return config


def on_shutdown() -> None:
    while _folders:
        shutil.rmtree(_folders.pop(), ignore_errors=True)
