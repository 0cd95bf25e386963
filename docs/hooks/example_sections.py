"""Griffe extension: render Google-style `Example:` sections (singular, as STYLE.md writes them) as code.

Griffe's Google parser reads only `Examples:` as a section of runnable examples; `Example:` becomes a
plain note, where the `>>>` prompts turn into nested quotes. This renames the heading before any
docstring is parsed, so prompts and outputs render as a Python console session, and doctest flags
such as `# doctest: +SKIP` are trimmed as in every other examples section.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename `Example:` section headings to `Examples:` in every docstring mkdocstrings loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)
