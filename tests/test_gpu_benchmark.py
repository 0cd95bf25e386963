"""`benchmarks/gpu.py --dry-run` runs every section on the CPU, so the GPU benchmark cannot rot between GPU runs.

The figures of a dry run are not GPU measurements (the report says so on its first line); what this
test checks is that each section ran, wrote its results, and that the report holds them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"precision", "speed", "syncs", "data", "memory", "checkpoint", "resume"}


@pytest.mark.slow
def test_gpu_benchmark_dry_run_runs_every_section_on_the_cpu(tmp_path):
    pytest.importorskip("torchvision")
    output = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(output.read_text())
    assert results["meta"]["dry_run"] is True
    statuses = {name: section["status"] for name, section in results["sections"].items()}
    assert statuses == {**{name: "dry run" for name in SECTIONS}, "launch": "skipped"}, results["sections"]

    sections = results["sections"]
    calls = {label for run in sections["precision"]["runs"] for label in run["forwards"]}
    assert calls == {"fit", "second fit", "evaluate", "predict"}  # every call was probed
    speeds = sections["speed"]["workloads"]
    assert {w["workload"] for w in speeds} == {"resnet18", "mlp"}
    assert all(run["samples_per_s"] > 0 for w in speeds for runs in w["runs"].values() for run in runs)
    assert all(run["bit_identical"] for run in sections["resume"]["runs"])  # exact resume holds on the CPU
    report = output.with_suffix(".md").read_text()
    assert report.startswith("## GPU\n\n**DRY RUN on the CPU")
    assert all(f"### {name} (dry run" in report for name in SECTIONS)


def test_gpu_benchmark_without_cuda_and_without_dry_run_says_what_to_do(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--output", str(tmp_path / "gpu.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2
    assert "--dry-run" in done.stderr and "benchmarks/gpu.sh" in done.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_benchmark_results_end_with_the_gpu_section_a_gpu_run_wrote():
    """`benchmarks/run.py` copies `benchmarks/gpu_results.md` (the report of a GPU run) into RESULTS.md."""
    gpu = (ROOT / "benchmarks" / "gpu_results.md").read_text()
    assert gpu.startswith("## GPU")
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text().endswith("\n\n" + gpu.strip() + "\n")
