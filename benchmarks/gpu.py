"""fitorch on a GPU, against hand-written loops: precision, speed, host syncs, data path, memory, checkpoints.

One run of a few minutes on one CUDA GPU writes every figure of issue 17 to `--output` (JSON) and a
Markdown report beside it (same name, `.md`). Sections (`--sections`, default all):

- precision: bf16 and fp16 fits of ResNet-18 and a small transformer; the autocast state and output
  dtype inside the forward of a first fit, a second fit, `evaluate` and `predict`; fp16's grad scaler:
  a step with inf gradients must leave `global_step` and a step-interval schedule where they were;
  callbacks and clipping must see unscaled gradients.
- speed: samples/s in the steady state of `Learner.fit(verbose=0)`, a hand-written Accelerate loop
  and a hand-written PyTorch loop, interleaved (ResNet-18 bf16 at batch 256; a per-step-bound MLP).
- syncs: host-device synchronisations per steady-state training step (CUDA's sync debug mode).
- data: fitorch's own loader on CUDA with pinned memory and non-blocking copies, and without.
- memory: peak `torch.cuda.max_memory_allocated` of each contender; allocated memory at each epoch end.
- checkpoint: save and load of ResNet-18 + AdamW from the GPU, fitorch against `torch.save` with
  fsync and rename; exact resume in deterministic mode (save mid-fit, resume in a new learner).
- launch: `accelerate launch --mixed_precision bf16 examples/distributed.py --fast`.

`--dry-run` runs every section but `launch` at tiny sizes on the CPU (bf16 autocast; fp16 needs
CUDA), so the code cannot rot; its figures are not GPU measurements and the report says so.

Example:
    python benchmarks/gpu.py                       # on the GPU machine: benchmarks/out/gpu.json and gpu.md
    python benchmarks/gpu.py --dry-run --output /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling modules, also when run from elsewhere

import gpu_checks  # noqa: E402
import gpu_report  # noqa: E402
from gpu_parts import Workload, mlp, resnet18, transformer  # noqa: E402

SECTIONS = ("precision", "speed", "syncs", "data", "memory", "checkpoint", "resume", "launch")


@dataclass(frozen=True)
class Config:
    """Sizes and settings of one run (`full` on a GPU, `dry` on the CPU)."""

    dry_run: bool
    device: torch.device
    precisions: tuple[str, ...]
    speed_precision: str
    repeats: int
    precision_workloads: tuple[Workload, ...]
    speed_workloads: tuple[Workload, ...]
    sync_workloads: tuple[Workload, ...]
    data_workload: Workload
    data_batches: int
    memory_workload: Workload
    memory_epochs: int
    checkpoint_workload: Workload


def full_config() -> Config:
    """The GPU run: about three minutes on an H200."""
    return Config(
        dry_run=False,
        device=torch.device("cuda", torch.cuda.current_device()),
        precisions=("bf16", "fp16"),
        speed_precision="bf16",
        repeats=5,
        precision_workloads=(resnet18(64, 64, 8, 1), transformer(32, 128, 256, 4, 8, 1)),
        speed_workloads=(resnet18(256, 224, 40, 10), mlp(64, 600, 100)),
        sync_workloads=(mlp(64, 60, 1), resnet18(32, 64, 30, 1)),
        data_workload=resnet18(256, 224, 10, 3),
        data_batches=10,
        memory_workload=resnet18(64, 64, 8, 1),
        memory_epochs=4,
        checkpoint_workload=resnet18(2, 64, 1, 0),
    )


def dry_config() -> Config:
    """Tiny sizes on the CPU: every code path but CUDA's, in seconds."""
    return Config(
        dry_run=True,
        device=torch.device("cpu"),
        precisions=("bf16",),
        speed_precision="bf16",
        repeats=1,
        precision_workloads=(resnet18(2, 16, 2, 1), transformer(4, 8, 32, 1, 3, 1)),
        speed_workloads=(resnet18(2, 16, 3, 1), mlp(16, 6, 2)),
        # The MLP where the model does not matter to the code path: a ResNet-18 costs time on a CPU.
        sync_workloads=(mlp(16, 8, 1), mlp(16, 6, 1)),
        data_workload=mlp(16, 3, 1),
        data_batches=3,
        memory_workload=mlp(16, 2, 1),
        memory_epochs=2,
        checkpoint_workload=mlp(2, 1, 0),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, no GPU figure")
    parser.add_argument(
        "--output", type=Path, default=HERE / "out" / "gpu.json", help="JSON results; the report goes beside as .md"
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of %(default)s")
    parser.add_argument("--resume-child", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        parser.error(f"--sections takes names from {', '.join(SECTIONS)}; got {unknown or 'none'}")
    return args


def machine(config: Config) -> dict[str, Any]:
    """What ran: device, versions, time."""
    versions = {}
    for package in ("torch", "accelerate", "torchvision", "fitorch", "safetensors", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cuda = config.device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(config.device) if cuda else f"CPU ({platform.processor() or 'unknown'})",
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        **versions,
    }


def run_section(name: str, config: Config) -> dict[str, Any]:
    """Run one section; a failure is recorded (with its message) instead of ending the whole run."""
    started = time.perf_counter()
    try:
        result = SECTION_FUNCTIONS[name](config)
    except Exception as error:  # a benchmark reports what broke and carries on with the next section
        import traceback

        result = {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    result.setdefault("status", "dry run" if config.dry_run else "measured")
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(f"[gpu.py] {name}: {result['status']} in {result['seconds']} s", flush=True)
    return result


def resume_section(config: Config) -> dict[str, Any]:
    """Exact resume in deterministic mode; on CUDA in a child process, so that cuBLAS is configured first."""
    if config.dry_run:
        try:
            return {"runs": [gpu_checks.resume_check(p, config.device) for p in ("no", *config.precisions)]}
        finally:
            torch.use_deterministic_algorithms(False)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder, "resume.json")
        env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # before cuBLAS starts: deterministic GEMMs
        command = [sys.executable, __file__, "--resume-child", str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return {"status": "failed", "error": done.stderr[-3000:]}
        return json.loads(out.read_text())


def resume_child(out: Path) -> None:
    config = full_config()
    out.write_text(
        json.dumps({"runs": [gpu_checks.resume_check(p, config.device) for p in ("no", *config.precisions)]})
    )


def launch_section(config: Config) -> dict[str, Any]:
    """`accelerate launch --mixed_precision bf16` of the distributed example: the precision must reach fitorch."""
    if config.dry_run:
        return {
            "status": "skipped",
            "note": "not run in a dry run (a second interpreter); bash benchmarks/gpu.sh runs it",
        }
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder, "run")
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "bf16",
            "--dynamo_backend",
            "no",
            str(ROOT / "examples" / "distributed.py"),
            "--fast",
            "--run-dir",
            str(run_dir),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=folder)
        log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
        return {
            "command": "accelerate launch --num_processes 1 --mixed_precision bf16 examples/distributed.py --fast",
            "returncode": done.returncode,
            "stdout": done.stdout[-1500:],
            "stderr_tail": done.stderr[-1500:] if done.returncode else "",
            "config_says_bf16": '"mixed_precision": "bf16"' in log,
            "config_says_cuda": '"device": "cuda' in log,
        }


SECTION_FUNCTIONS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "precision": gpu_checks.precision_section,
    "speed": gpu_checks.speed_section,
    "syncs": gpu_checks.syncs_section,
    "data": gpu_checks.data_section,
    "memory": gpu_checks.memory_section,
    "checkpoint": gpu_checks.checkpoint_section,
    "resume": resume_section,
    "launch": launch_section,
}


def write(results: dict[str, Any], output: Path) -> str:
    """Write the results (JSON) and the report (Markdown, beside it); return the report."""
    results["summary"] = gpu_report.summary(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    markdown = gpu_report.markdown(results)
    output.with_suffix(".md").write_text(markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resume_child is not None:
        resume_child(args.resume_child)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu.py: no CUDA device here. On a GPU machine run `bash benchmarks/gpu.sh OUT`; "
            "on the CPU, `python benchmarks/gpu.py --dry-run` checks the code paths.",
            file=sys.stderr,
        )
        return 2
    config = dry_config() if args.dry_run else full_config()
    if not config.dry_run:
        torch.backends.cudnn.benchmark = True  # what a speed-minded user sets; the same for every contender
    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, Any] = {
        "meta": {**machine(config), "dry_run": config.dry_run, "started": started.isoformat(timespec="seconds")},
        "sections": {},
    }
    for name in args.sections:
        results["sections"][name] = run_section(name, config)
        elapsed = datetime.datetime.now(datetime.timezone.utc) - started
        results["meta"]["seconds"] = round(elapsed.total_seconds(), 1)
        markdown = write(results, args.output)  # after every section: a run cut short keeps what it measured
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
