"""The documentation: the site builds with `mkdocs build --strict`, the API reference covers every public
name with its docstring, and the code on the pages runs as written.

Code blocks fenced as ```python run; a block right after a `<!-- not run -->` line is shown only
(Keras or Lightning code, fragments). The blocks of one page run in order in one process, as a reader
pasting them one after another would run them.
"""

from __future__ import annotations

import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fitorch
import fitorch.checks
from fitorch import callbacks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- not run -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)

# One torch thread: the models are tiny, and on a small machine shared with other tests torch's thread
# pool spends its time spinning (ten times slower here, with the same results).
SNIPPET_ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed: pip install -e '.[docs]'"
)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """The runnable ```python blocks of a Markdown page, as (line number, dedented code)."""
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP_MARK:
            continue
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, textwrap.dedent(match.group("code"))))
    return blocks


def run_blocks(page: Path, blocks: list[tuple[int, str]], tmp_path: Path, timeout: int = 240) -> str:
    """Run `blocks` as one script in a fresh interpreter in `tmp_path`; return what it printed."""
    parts = [f"# --- {page.relative_to(ROOT)}, line {line}\n{code}" for line, code in blocks]
    script = tmp_path / f"{page.stem}_snippets.py"
    script.write_text("\n".join(parts))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=SNIPPET_ENV
    )
    assert result.returncode == 0, f"{page.name} snippets failed (script: {script}):\n{result.stderr[-4000:]}"
    return result.stdout


def public_names() -> list[str]:
    modules = (fitorch, callbacks, fitorch.checks)
    return [f"{module.__name__}.{name}" for module in modules for name in module.__all__]


def api_directives() -> set[str]:
    """The identifiers of every `::: identifier` directive in docs/api/."""
    pattern = re.compile(r"^:::[ \t]+(\S+)", re.MULTILINE)
    return {match.group(1) for page in (DOCS / "api").glob("*.md") for match in pattern.finditer(page.read_text())}


def test_every_public_name_has_an_entry_in_the_api_reference():
    missing = [name for name in public_names() if name not in api_directives()]
    assert missing == [], f"add `::: NAME` to a page in docs/api/ for each of: {', '.join(missing)}"


def test_api_reference_names_only_public_objects():
    stale = sorted(api_directives() - set(public_names()))
    assert stale == [], f"docs/api/ documents names the package no longer exports: {', '.join(stale)}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once with `mkdocs build --strict` (every warning is an error)."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return site_dir


@needs_mkdocs
def test_site_builds_strict_with_every_page(site: Path):
    for page in ["index.html", "guide/index.html", "migrating/index.html", "api/learner/index.html"]:
        assert (site / page).is_file(), page


def visible_text(markup: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", markup)))


@needs_mkdocs
def test_api_reference_shows_each_public_name_with_its_docstring(site: Path):
    pages = {path: path.read_text() for path in (site / "api").rglob("index.html")}
    for name in public_names():
        page = next((text for text in pages.values() if f'id="{name}"' in text), None)
        assert page is not None, f"{name} has no entry in the rendered API reference"
        module, _, attribute = name.rpartition(".")
        obj = getattr(sys.modules[module], attribute)
        if callable(obj):  # classes and functions; the name tables (LOSSES, ...) have no docstring of their own
            docstring = inspect.getdoc(obj)
            assert docstring, f"{name} has no docstring"
            summary = docstring.splitlines()[0].replace("`", "")
            assert re.sub(r"\s+", " ", summary) in visible_text(page), f"{name}: docstring summary not rendered"


@pytest.mark.slow
def test_index_quickstart_runs_as_pasted(tmp_path: Path):
    # The quickstart is the page's first block, so it runs with nothing before it, exactly as pasted.
    output = run_blocks(DOCS / "index.md", python_blocks(DOCS / "index.md"), tmp_path)
    accuracy = float(re.search(r"'accuracy': ([0-9.]+)", output).group(1))
    assert accuracy > 0.9, output


# The pages whose code runs, each as one script; index.md's runs in test_index_quickstart_runs_as_pasted.
SNIPPET_PAGES = [
    "guide.md",
    "migrating.md",
    "callbacks.md",
    "writing-callbacks.md",
    "checkpoints.md",
    "training-tools.md",
    "api/index.md",
]


@pytest.mark.slow
@pytest.mark.parametrize("page", SNIPPET_PAGES)
def test_page_snippets_run_in_order(page: str, tmp_path: Path):
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no runnable python block"
    run_blocks(DOCS / page, blocks, tmp_path)


def test_every_page_with_code_runs_it():
    pages = {page.relative_to(DOCS).as_posix() for page in DOCS.rglob("*.md") if python_blocks(page)}
    untested = sorted(pages - {"index.md", *SNIPPET_PAGES})
    assert untested == [], f"add to SNIPPET_PAGES, or mark blocks that cannot run with {SKIP_MARK}: {untested}"


def test_snippet_extraction_honours_the_skip_mark(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nprint(1)\n```\n\n<!-- not run -->\n```python\nimport keras\n```\n\n"
        '=== "fitorch"\n\n    ```python\n    if True:\n        print(2)\n    ```\n'
    )
    assert [code for _, code in python_blocks(page)] == ["print(1)\n", "if True:\n    print(2)\n"]


def test_readme_example_is_the_tested_quickstart():
    readme = python_blocks(ROOT / "README.md")[0][1]
    quickstart = python_blocks(DOCS / "index.md")[0][1]
    assert readme == quickstart, "README.md's example and the first block of docs/index.md must stay the same"


def heading_anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as MkDocs and GitHub make them."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.lower())) for heading in headings}


def test_readme_links_point_to_existing_files_and_headings():
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", (ROOT / "README.md").read_text())
    local = [(target, anchor) for target, anchor in links if "://" not in target]
    assert local, "README.md links into docs/"
    for target, anchor in local:
        path = ROOT / target
        assert path.exists(), f"README.md links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(path), f"README.md links to {target}#{anchor}: no such heading"
