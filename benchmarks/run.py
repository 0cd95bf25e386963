"""fitorch's benchmarks: `make bench`, or `python benchmarks/run.py --help` for a subset.

Runs every contender of every workload in its own process (`benchmarks/child.py`), interleaved
(A B C ... A B C ...) for `--repeats` rounds, prints medians and ratios to the hand-written PyTorch
loop, and writes `benchmarks/RESULTS.md` (plus the raw runs as JSON in `benchmarks/out/`).

Workloads: "tiny" (an MLP, where per-step overhead shows), "cnn" (a small conv net), the same two
under two processes ("tiny_2proc", "cnn_2proc": `torchrun --nproc_per_node 2`, gloo, against a
hand-written DDP loop; `benchmarks/multiprocess.py`), "checkpoint" (saving and loading a
ResNet-18-sized state), "import" (`import fitorch` against `import torch`), "ab" (tiny and cnn
again, the loop and `Learner.fit(verbose=0)` interleaved inside one process) and "workers" (an
in-memory Dataset with no worker processes, fitorch's default, against two).

Example:
    python benchmarks/run.py --workloads tiny --contenders torch,fitorch_verbose0 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from checkpointing import CONTENDERS as CHECKPOINT_CONTENDERS
from contenders import FIT_FUNCTIONS, available
from multiprocess import FIT_FUNCTIONS as MULTIPROCESS_FUNCTIONS
from multiprocess import PROCESSES, WORKLOAD_OF, steps_per_process
from report import Raw, console_report, results_markdown
from workloads import WORKLOADS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ALL_WORKLOADS = ("tiny", "cnn", *WORKLOAD_OF, "checkpoint", "import", "ab", "workers")
AB_WORKLOADS = ("tiny", "cnn")
IMPORT_MODULES = ("torch", "fitorch")
CHILD_TIMEOUT_S = 600
# One thread everywhere: stable numbers on a shared machine, and no contender gains from threads.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}
# For the training workloads: glibc's malloc hands freed blocks of a few MiB (a conv net's
# activations) back to the system and takes them again with page faults; how often depends on
# each process's heap layout, by chance: 30,000 to 190,000 faults in identical cnn fits, up to a
# third of their time. Fixed thresholds keep those blocks in the heap, for every contender alike
# (docs/performance.md). Checkpoints and imports run with the allocator as it comes.
TRAINING_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(128 * 2**20)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--quick` lowers the repeats for a fast look."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS), help="comma-separated subset of %(default)s")
    parser.add_argument(
        "--contenders",
        default=",".join(FIT_FUNCTIONS),
        help="training contenders, comma-separated subset of %(default)s (the reference 'torch' is always run; "
        "under two processes, the reference 'ddp' and those of fitorch's that are chosen)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds of interleaved runs (default %(default)s)")
    parser.add_argument(
        "--multiprocess-repeats",
        type=int,
        default=9,
        help="rounds for the two-process workloads, whose run-to-run spread is wider (default %(default)s)",
    )
    parser.add_argument("--import-runs", type=int, default=10, help="processes per import (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="3 repeats and 5 import runs: a look, not a result")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write the Markdown report (default: benchmarks/RESULTS.md, for a full run only)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS until other processes use under a quarter of a core",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.add_argument(
        "--report-from", type=Path, default=None, help="measure nothing: write the report of a saved results.json"
    )
    parser.add_argument("--note", default="", help="conditions worth recording in the report (e.g. other load)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.multiprocess_repeats, args.import_runs = 3, 3, 5
    args.workloads = _choices(args.workloads, ALL_WORKLOADS, "--workloads")
    contenders = _choices(args.contenders, tuple(FIT_FUNCTIONS), "--contenders")
    args.contenders = ["torch", *[c for c in contenders if c != "torch"]]
    if min(args.repeats, args.multiprocess_repeats, args.import_runs) < 1:
        parser.error("--repeats, --multiprocess-repeats and --import-runs must be at least 1")
    return args


def _choices(text: str, known: tuple[str, ...], flag: str) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}.")
    return chosen


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy since boot (Linux), else None."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class ProcessRun:
    """One finished child process: its output and what it cost.

    `other_load` is how many cores other processes of the machine kept busy meanwhile, on average
    (None where the machine does not tell): the noise behind a measurement.
    """

    completed: subprocess.CompletedProcess
    wall_s: float
    cpu_s: float
    other_load: float | None


def run_process(command: list[str], env: dict[str, str] | None = None) -> ProcessRun:
    """Run `command` with the benchmark environment (and `env`); time it and the machine's other load."""
    busy, usage, started = busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    environment = {**os.environ, **CHILD_ENV, **(env or {})}
    completed = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=CHILD_TIMEOUT_S
    )
    wall = time.perf_counter() - started
    after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    other = None if busy is None or busy_after is None else max(0.0, (busy_after - busy - cpu) / wall)
    return ProcessRun(completed, wall, cpu, other)


def wait_until_quiet(longest_s: float, threshold: float = 0.25) -> None:
    """Wait (up to `longest_s`) until other processes use less than `threshold` cores over a second."""
    deadline = time.monotonic() + longest_s
    while time.monotonic() < deadline:
        before = busy_cpu_seconds()
        time.sleep(1.0)
        after = busy_cpu_seconds()
        if before is None or after is None or after - before < threshold:
            return


def child_command(workload: str, contender: str) -> list[str]:
    """The command of one measurement: `child.py` in one process, or `multiprocess.py` under torchrun."""
    if workload in WORKLOAD_OF:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES)]
        return [*launcher, str(HERE / "multiprocess.py"), workload, contender]
    return [sys.executable, str(HERE / "child.py"), workload, contender]


def run_child(workload: str, contender: str) -> dict[str, Any]:
    """Run one measurement in fresh processes; adds the whole-job seconds and the other load.

    Raises:
        RuntimeError: the child failed or printed no result; the message holds the end of its output.
    """
    training = workload in WORKLOADS or workload in WORKLOAD_OF
    run = run_process(child_command(workload, contender), TRAINING_ENV if training else None)
    for line in reversed(run.completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line.removeprefix("RESULT ")), "process_s": run.wall_s, "other_load": run.other_load}
    tail = (run.completed.stdout + run.completed.stderr)[-2000:]
    raise RuntimeError(f"{workload}/{contender} failed (exit {run.completed.returncode}):\n{tail}")


def time_import(module: str) -> dict[str, Any]:
    """Wall-clock and CPU (user + system) seconds of a whole `python -c 'import module'` process.

    Raises:
        RuntimeError: the import failed.
    """
    run = run_process([sys.executable, "-c", f"import {module}"])
    if run.completed.returncode != 0:
        raise RuntimeError(f"import {module} failed:\n{run.completed.stderr[-2000:]}")
    return {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "other_load": run.other_load}


def run_interleaved(
    workload: str, contenders: list[str], repeats: int, quiet: float = 0.0
) -> dict[str, list[dict[str, Any]]]:
    """Run every contender once per round, in the same order, for `repeats` rounds.

    With `quiet` > 0, each run first waits up to that many seconds for the rest of the machine to idle.
    """
    runs: dict[str, list[dict[str, Any]]] = {contender: [] for contender in contenders}
    active = list(contenders)
    for round_index in range(repeats):
        for contender in list(active):
            if quiet:
                wait_until_quiet(quiet)
            result = run_child(workload, contender)
            runs[contender].append(result)
            if "unavailable" in result:  # e.g. fitorch's checkpoint functions are not written yet
                active.remove(contender)
                _log(f"{workload} {contender}: {result['unavailable']}")
                continue
            shown = result.get("fit_s", result.get("save_s", 0.0) + result.get("load_s", 0.0))
            _log(f"{workload} round {round_index + 1}/{repeats} {contender}: {shown:.3f} s")
    return runs


def run_in_process(what: str, workload: str, rounds: int, quiet: float = 0.0) -> dict[str, Any]:
    """One `benchmarks/inprocess.py` measurement (an in-process A/B, or the workers comparison).

    Raises:
        RuntimeError: the child failed or printed no result.
    """
    if quiet:
        wait_until_quiet(quiet)
    command = [sys.executable, str(HERE / "inprocess.py"), what, workload, "--rounds", str(rounds)]
    run = run_process(command, TRAINING_ENV)
    for line in reversed(run.completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            _log(f"{what} {workload}: done in {run.wall_s:.1f} s")
            return {**json.loads(line.removeprefix("RESULT ")), "other_load": run.other_load}
    tail = (run.completed.stdout + run.completed.stderr)[-2000:]
    raise RuntimeError(f"inprocess {what} {workload} failed (exit {run.completed.returncode}):\n{tail}")


def run_imports(runs: int, quiet: float = 0.0) -> dict[str, list[dict[str, Any]]]:
    """Time each import `runs` times, interleaved (waiting up to `quiet` seconds for an idle machine first)."""
    times: dict[str, list[dict[str, Any]]] = {module: [] for module in IMPORT_MODULES}
    for index in range(runs):
        for module in IMPORT_MODULES:
            if quiet:
                wait_until_quiet(quiet)
            times[module].append(time_import(module))
        shown = ", ".join(f"{module} {samples[-1]['wall_s']:.3f} s" for module, samples in times.items())
        _log(f"import round {index + 1}/{runs}: {shown}")
    return times


def machine_info() -> dict[str, Any]:
    """CPU, cores and the versions of everything measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for package in ("torch", "accelerate", "fitorch", "numpy", "tqdm", "lightning", "keras"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def workload_notes(skipped: list[str]) -> dict[str, str]:
    """The description of each workload for the report, with the contenders skipped."""
    notes = {
        name: f"Workload: {workload.description}; {workload.total_steps} optimizer steps."
        for name, workload in WORKLOADS.items()
    }
    for name, single in WORKLOAD_OF.items():
        workload = WORKLOADS[single]
        notes[name] = (
            f"Workload: {single}, under `torchrun --nproc_per_node {PROCESSES}` (gloo, CPU), batch "
            f"{workload.batch_size} per process; {steps_per_process(workload)} optimizer steps per process. "
            "Both processes start the clock together, after a barrier; *fit s* is the slower process's, "
            "*CPU s* both processes' together, memory rank 0's."
        )
    if skipped:
        for name in WORKLOADS:
            notes[name] += " Skipped (not installed; `pip install -e .[bench]`): " + ", ".join(skipped) + "."
    notes["checkpoint"] = (
        "ResNet-18 (torchvision) with AdamW state after one real step; one untimed save and load, then one timed "
        "save and load per process. Loading includes `load_state_dict` into the live model and optimizer."
    )
    return notes


def _command_line(argv: list[str]) -> str:
    """The command as typed, less the `--note` text (the report shows the note on its own)."""
    shown, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--note="):
            skip = False
            continue
        skip = arg == "--note"
        if not skip:
            shown.append(arg)
    return " ".join(["python benchmarks/run.py", *shown])


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[Raw, dict[str, Any]]:
    """Run the chosen workloads; returns the raw runs and what the report says about them."""
    skipped = [c for c in args.contenders if not available(c)]
    contenders = [c for c in args.contenders if c not in skipped]
    for contender in skipped:
        _log(f"skipping {contender}: not installed (pip install -e .[bench])")
    started, load_before = datetime.datetime.now().astimezone(), os.getloadavg()[0]
    raw: Raw = {}
    for workload in args.workloads:
        if workload == "import":
            raw["import"] = run_imports(args.import_runs, args.wait_quiet)
        elif workload == "ab":
            raw["ab"] = {name: run_in_process("ab", name, args.repeats + 2, args.wait_quiet) for name in AB_WORKLOADS}
        elif workload == "workers":
            raw["workers"] = {"fit": run_in_process("workers", "-", 3, args.wait_quiet)}
        elif workload in WORKLOAD_OF:
            chosen = [c for c in contenders if c in MULTIPROCESS_FUNCTIONS and c != "ddp"]
            raw[workload] = run_interleaved(workload, ["ddp", *chosen], args.multiprocess_repeats, args.wait_quiet)
        elif workload == "checkpoint":
            raw["checkpoint"] = run_interleaved(
                "checkpoint", list(CHECKPOINT_CONTENDERS), args.repeats, args.wait_quiet
            )
        else:
            raw[workload] = run_interleaved(workload, contenders, args.repeats, args.wait_quiet)
    meta = {
        "command": _command_line(argv),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "repeats": args.repeats,
        "multiprocess_repeats": args.multiprocess_repeats,
        "import_runs": args.import_runs,
        "machine": machine_info(),
        "skipped": skipped,
        "wait_quiet": args.wait_quiet,
        "note": args.note,
    }
    return raw, meta


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks, print the report and write RESULTS.md; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        raw, meta, full_run = saved["raw"], saved["meta"], True
    else:
        raw, meta = measure(args, argv)
        full_run = (
            set(args.workloads) == set(ALL_WORKLOADS)
            and min(args.repeats, args.multiprocess_repeats) >= 5
            and not args.quick
        )
    print(console_report(raw))
    if args.no_write:
        return 0
    if not args.report_from:
        out = HERE / "out"
        out.mkdir(exist_ok=True)
        (out / "results.json").write_text(json.dumps({"meta": meta, "raw": raw}, indent=1))
    output = args.output or (HERE / "RESULTS.md" if full_run else None)
    if output is None:
        _log("partial run: RESULTS.md left as it is (pass --output PATH to write a report)")
        return 0
    analysis = HERE / "analysis.md"
    notes = workload_notes(meta.get("skipped", []))
    gpu = HERE / "gpu_results.md"  # written on a GPU machine by benchmarks/gpu.py; kept as it is
    output.write_text(
        results_markdown(raw, meta, notes, *(path.read_text() if path.exists() else "" for path in (analysis, gpu)))
    )
    _log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
