"""Where `Learner.fit` spends its time under two processes: `python benchmarks/profile_multiprocess.py [--py-spy]`.

Two views of the two-process workloads (`torchrun --nproc_per_node 2`, gloo), printed and written to
`benchmarks/out/profile_multiprocess.md`:

1. In-process A/B: the hand-written DDP loop, `Learner.fit(verbose=0)`, `Learner.fit` with the bar,
   and two ablations of `Learner.fit(verbose=0)`: its stop vote after every batch instead of every
   16th, and no stop vote at all (together they show what the vote costs), alternated in the same
   two processes for `--rounds` rounds. Ratios are paired (each
   round's time over the same round's DDP time), steadier than `run.py`'s process-per-run medians
   on a shared machine; wall time is the slower rank's, CPU time both ranks' together.
2. With `--py-spy`: py-spy samples both ranks while they alternate the DDP loop and `Learner.fit(verbose=0)`,
   and the samples of each are sorted into the parts of a step (forward, backward, optimizer, data,
   stop vote, tracking, validation, ...): the difference per part is fitorch's overhead, part by part.

The script relaunches itself under torchrun (and py-spy); `--worker` marks the launched processes.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from run import CHILD_ENV, TRAINING_ENV

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
ROOTS = {"fit_ddp": "ddp", "_fit_learner": "fitorch"}
# The parts of a step, each recognised by a frame of its stack; the first match wins.
PARTS = [
    ("stop vote", ["StopVote."]),
    ("validation", ["evaluate_epoch", "Learner._evaluate_loader"]),
    ("backward (DDP all-reduce included)", ["_engine_run_backward"]),
    ("optimizer step", ["Optimizer.profile_hook_step"]),
    ("forward", ["DistributedDataParallel.forward"]),
    ("loss", ["CrossEntropyLoss.forward", "Learner.compute_loss"]),
    ("data: torch DataLoader", ["_BaseDataLoaderIter.__next__"]),
    ("data: Accelerate's DataLoaderShard", ["DataLoaderShard.__iter__"]),
    ("metric tracking", ["Learner._track"]),
    ("end of epoch (global sums)", ["Tracker.results", "_global"]),
    ("set-up and teardown", ["Learner._start_call", "Learner._end_call", "DistributedDataParallel.__init__"]),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="tiny", choices=["tiny", "cnn"])
    parser.add_argument("--rounds", type=int, default=7, help="alternations of the A/B (default %(default)s)")
    parser.add_argument("--py-spy", action="store_true", help="also sample both ranks with py-spy (pip install py-spy)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "ab" or "sampled", set by the launch
    return parser.parse_args()


def launch(args: argparse.Namespace, mode: str, wrapper: list[str]) -> str:
    """Run this script under torchrun (inside `wrapper`, e.g. py-spy); returns rank 0's report lines."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    command += ["--workload", args.workload, "--rounds", str(args.rounds), "--worker", mode]
    env = {**os.environ, **CHILD_ENV, **TRAINING_ENV}  # run.py's: one thread, fixed malloc thresholds
    done = subprocess.run([*wrapper, *command], capture_output=True, text=True, env=env, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"profiling run failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return "\n".join(line.removeprefix("REPORT ") for line in done.stdout.splitlines() if line.startswith("REPORT "))


def worker(args: argparse.Namespace) -> None:
    """Inside torchrun: alternate the contenders in these two processes and report from rank 0."""
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from contenders import import_framework
    from multiprocess import FIT_FUNCTIONS
    from workloads import WORKLOADS, make_data, make_model, warm_up

    import fitorch.distributed

    import_framework("fitorch")
    workload, every = WORKLOADS[args.workload], fitorch.distributed.VOTE_EVERY
    never = 10**9  # batches between votes: no vote inside an epoch
    variants: dict[str, tuple[str, int]] = {
        "hand-written DDP loop": ("ddp", every),
        "Learner.fit(verbose=0)": ("fitorch_verbose0", every),
        "Learner.fit, progress bar": ("fitorch", every),
        "Learner.fit(verbose=0), stop vote after every batch (ablation)": ("fitorch_verbose0", 1),
        "Learner.fit(verbose=0), no stop vote inside epochs (ablation)": ("fitorch_verbose0", never),
    }
    if args.worker == "sampled":  # py-spy attributes samples by contender: two are enough
        variants = dict(list(variants.items())[:2])
    data = make_data(workload)
    warm_up(workload)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (contender, vote_every) in variants.items():
            fitorch.distributed.VOTE_EVERY = vote_every
            model = make_model(workload)
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            FIT_FUNCTIONS[contender](workload, model, data)
            mine = (time.perf_counter() - wall, time.process_time() - cpu)
            fitorch.distributed.VOTE_EVERY = every
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
            times[name].append((max(rank[0] for rank in ranks), sum(rank[1] for rank in ranks)))
    if dist.get_rank() == 0:
        for line in ab_table(times).splitlines():
            print("REPORT " + line, flush=True)
    gc.collect()  # before the group goes: a cycle still holding it aborts the process at exit (docs/distributed.md)
    dist.destroy_process_group()


def ab_table(times: dict[str, list[tuple[float, float]]]) -> str:
    """Medians and paired ratios to the first variant (the DDP loop), as a Markdown table."""
    reference = next(iter(times.values()))
    header = "| variant | wall s (median) | wall ratio (paired) | CPU s (median) | CPU ratio (paired) |"
    rows = [header, "|---|---|---|---|---|"]
    for name, runs in times.items():
        wall = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        wall_ratio = statistics.median(run[0] / ref[0] for run, ref in zip(runs, reference))
        cpu_ratio = statistics.median(run[1] / ref[1] for run, ref in zip(runs, reference))
        rows.append(f"| {name} | {wall:.3f} | {wall_ratio:.3f} | {cpu:.3f} | {cpu_ratio:.3f} |")
    return "\n".join(rows)


def parts_table(raw: Path) -> str:
    """py-spy's samples of each contender sorted into the parts of a step, with the difference per part."""
    counts = {who: Counter() for who in ROOTS.values()}
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        frames = stack.split(";")
        who = next((ROOTS[f.split(" ")[0]] for f in frames if f.split(" ")[0] in ROOTS), None)
        if who is None:
            continue
        part = next((name for name, keys in PARTS if any(k in f for f in frames for k in keys)), "other")
        counts[who][part] += int(number)
    total = sum(counts["ddp"].values()) or 1
    header = "| part of the fit | DDP loop samples | Learner.fit samples | difference, % of the DDP loop |"
    rows = [header, "|---|---|---|---|"]
    for part in [name for name, _ in PARTS] + ["other"]:
        ddp, fit = counts["ddp"][part], counts["fitorch"][part]
        rows.append(f"| {part} | {ddp} | {fit} | {100 * (fit - ddp) / total:+.1f}% |")
    fit_total = sum(counts["fitorch"].values())
    rows.append(f"| **total** | {total} | {fit_total} | {100 * (fit_total - total) / total:+.1f}% |")
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    OUT.mkdir(exist_ok=True)
    title = f"# Two processes, {args.workload}: where the time goes\n"
    sections = [title, "## In-process A/B\n", launch(args, "ab", [])]
    if args.py_spy:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        raw = OUT / "py-spy-multiprocess.txt"
        launch(args, "sampled", [py_spy, "record", "--subprocesses", "-r", "200", "-f", "raw", "-o", str(raw), "--"])
        sections += ["\n## py-spy samples by part (both ranks)\n", parts_table(raw)]
    report = "\n".join(sections) + "\n"
    (OUT / "profile_multiprocess.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
