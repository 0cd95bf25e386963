"""Every script in examples/ runs in its fast mode, as `python examples/NAME.py --fast`, and says what it did."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# What each example must print to stdout in its fast mode. An example missing here must still run
# and print something; add its line when you add the example.
EXPECTED_OUTPUT = {
    "quickstart.py": r"validation accuracy: 0\.\d+",
    "custom_step.py": r"generated points: radius \d+\.\d+ ± \d+\.\d+, \d/8 sectors",
    "vision.py": r"best val_accuracy (0\.\d+); reloaded model: \1\n",
    "custom_callback.py": r"grad_norm per epoch: \[\d+\.\d+, \d+\.\d+\]",
    "resume.py": r"resumed run equals the uninterrupted run: weights True, history True",
    "distributed.py": r"best val_accuracy: 0\.\d+ after 2 epochs",
    "lr_find.py": r"suggested learning rate \d\.\d+e-\d+ \(valley\).*\n(.*\n)*.*equals the same fit without it: True",
    "weight_averaging.py": r"plain 0\.\d+, EMA 0\.\d+, SWA 0\.\d+\nbest EMA .*: val_accuracy (0\.\d+), reloaded: \1",
    "throughput.py": r"compiled: samples per second by epoch \[\d+, \d+\]\n.*\['0\.bias', '0\.weight'\]",
}

# Arguments after `--fast`; "{tmp}" is the test's temporary folder. Examples that write files take a
# run folder there, so the suite never writes into the repository (the default is under runs/).
ARGUMENTS = {
    "vision.py": ["--run-dir", "{tmp}/runs/vision"],
    "custom_callback.py": ["--run-dir", "{tmp}/runs/custom_callback"],
    "distributed.py": ["--run-dir", "{tmp}/runs/distributed"],
    "lr_find.py": ["--run-dir", "{tmp}/runs/lr_find"],
    "weight_averaging.py": ["--run-dir", "{tmp}/runs/weight_averaging"],
    "throughput.py": ["--run-dir", "{tmp}/runs/throughput"],
}

# One torch thread: the models are tiny, and on a small machine shared with other tests torch's thread
# pool spends its time spinning (ten times slower here, with the same results).
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def example_scripts() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", example_scripts(), ids=lambda path: path.name)
def test_example_runs_in_fast_mode(script: Path, tmp_path: Path):
    arguments = [argument.format(tmp=tmp_path) for argument in ARGUMENTS.get(script.name, [])]
    result = subprocess.run(
        [sys.executable, str(script), "--fast", *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=ENV,
    )
    assert result.returncode == 0, f"{script.name} --fast failed:\n{result.stderr[-4000:]}"
    pattern = EXPECTED_OUTPUT.get(script.name, r"\S")
    assert re.search(pattern, result.stdout), f"{script.name} printed no line matching {pattern!r}:\n{result.stdout}"


def test_expected_outputs_name_existing_examples():
    names = {script.name for script in example_scripts()}
    assert set(EXPECTED_OUTPUT) <= names, f"listed but missing: {sorted(set(EXPECTED_OUTPUT) - names)}"
    assert set(ARGUMENTS) <= names, f"arguments for missing examples: {sorted(set(ARGUMENTS) - names)}"
