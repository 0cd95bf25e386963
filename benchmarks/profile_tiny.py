"""Where fitorch's time goes on the "tiny" workload: `python benchmarks/profile_tiny.py [--py-spy]`.

Three views, printed and written to `benchmarks/out/profile.md`:

1. In-process A/B: the reference loop, the Accelerate loop and `Learner.fit` (verbose 0 and 1)
   alternated in one process; the median difference per optimizer step is fitorch's overhead,
   with less noise than the process-per-run numbers of `run.py`.
2. Micro-timings: each piece of fitorch's per-step path timed alone (no profiler), times how
   often a training step runs it, against what the hand-written loop does instead.
3. cProfile of one `Learner.fit` (and, with `--py-spy`, py-spy's sampled inclusive times, which
   carry no tracing overhead), for the functions that matter.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from contenders import FIT_FUNCTIONS
from torch import nn
from workloads import WORKLOADS, make_data, make_model, warm_up

HERE = Path(__file__).resolve().parent
WORKLOAD = WORKLOADS["tiny"]
STEPS = WORKLOAD.total_steps
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?):\d+\)$")  # py-spy: "function (file:line)"


def per_call_us(function: Callable[[], Any], number: int = 2000, repeat: int = 7) -> float:
    """Median over `repeat` runs of the mean microseconds per call of `function`."""
    function()
    return statistics.median(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def in_process_ab(rounds: int) -> list[list[str]]:
    """Alternate the contenders in this process; report median seconds and overhead per step."""
    names = ["torch", "accelerate", "fitorch_verbose0", "fitorch"]
    data = make_data(WORKLOAD)
    warm_up(WORKLOAD)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            model = make_model(WORKLOAD)
            started = time.perf_counter()
            FIT_FUNCTIONS[name](WORKLOAD, model, data)
            times[name].append(time.perf_counter() - started)
    reference = statistics.median(times["torch"])
    rows = []
    for name in names:
        value = statistics.median(times[name])
        rows.append([name, f"{value:.3f}", f"{value / reference:.3f}", f"{(value - reference) / STEPS * 1e6:+.0f}"])
    return rows


class _Setup:
    """One batch of the tiny workload through a prepared model, for timing the pieces of a step."""

    def __init__(self) -> None:
        from accelerate import Accelerator

        from fitorch import Learner, callbacks
        from fitorch.metrics import Tracker, resolve_metrics

        x, y, _, _ = make_data(WORKLOAD)
        self.accelerator = Accelerator(cpu=True)
        self.model = make_model(WORKLOAD)
        raw_optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
        self.plain_loader = loader
        self.model, self.optimizer, self.loader = self.accelerator.prepare(self.model, raw_optimizer, loader)
        self.inputs, self.targets = x[:64], y[:64]
        self.batch = [self.inputs, self.targets]
        self.outputs = self.model(self.inputs)
        self.loss = nn.functional.cross_entropy(self.outputs, self.targets)
        self.learner = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0)
        self.learner.accelerator, self.learner.prepared_model = self.accelerator, self.model
        self.learner.optimizers, self.learner.grad_accum_steps = [self.optimizer], 1
        self.tracker = Tracker(resolve_metrics(["accuracy"]))
        self.callbacks = callbacks


def _trivial_optimizers(accelerator: Any) -> tuple[torch.optim.Optimizer, Any]:
    """An SGD over one gradient-less parameter, raw and wrapped: its step costs only the wrappers."""
    raw = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    wrapped = accelerator.prepare_optimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    return raw, wrapped


def micro_costs() -> list[list[str]]:
    """Each per-step piece timed alone: microseconds per call, calls per training step, per step."""
    from accelerate.utils.imports import is_lomo_available

    from fitorch import CallbackList, LazyLogs
    from fitorch.data import batch_length, unpack_batch
    from fitorch.losses import model_predictions

    s = _Setup()
    learner, tracker, callbacks = s.learner, s.tracker, s.callbacks
    raw_sgd, wrapped_sgd = _trivial_optimizers(s.accelerator)
    parameter = nn.Parameter(torch.zeros(64))

    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)

    def reference_accumulate() -> None:
        nonlocal loss_sum, correct
        loss_sum += s.loss.detach() * 64
        correct += (s.outputs.argmax(dim=1) == s.targets).sum()

    def tracker_update() -> None:
        tracker.update(s.loss, s.outputs, s.targets, 64)

    defaults = CallbackList([callbacks.History(), callbacks.ProgressBar()], learner)
    running_logs = learner._running_logs(tracker)  # noqa: SLF001 - the learner's own per-batch factory
    verbose_learner = s.learner
    bar = callbacks.ProgressBar(file=open(os.devnull, "w"))  # the file lives for the process
    bar.set_learner(verbose_learner)

    def loader_per_batch(loader: Any) -> float:
        batches = len(s.plain_loader)
        return statistics.median(timeit.repeat(lambda: [None for _ in loader], number=1, repeat=5)) / batches * 1e6

    rows: list[tuple[str, float, float, str]] = []

    def add(name: str, us: float, calls: float, note: str) -> None:
        rows.append((name, us, calls, note))

    # Accelerate's wrappers, used by fitorch and by the hand-written Accelerate loop alike.
    add("accelerate.utils.is_lomo_available()", per_call_us(is_lomo_available, 500), 2, "importlib find_spec, uncached")
    wrapped_step = per_call_us(wrapped_sgd.step, 500) - per_call_us(raw_sgd.step, 500)
    add("AcceleratedOptimizer.step wrapper (total)", wrapped_step, 1, "includes the 2 is_lomo_available above")
    wrapped_zero = per_call_us(lambda: wrapped_sgd.zero_grad(set_to_none=True)) - per_call_us(
        lambda: raw_sgd.zero_grad(set_to_none=True)
    )
    add("AcceleratedOptimizer.zero_grad wrapper", wrapped_zero, 1, "inspect.signature per call")
    plain_backward = per_call_us(lambda: (parameter * 2).sum().backward(), 1000)
    accelerate_backward = per_call_us(lambda: s.accelerator.backward((parameter * 2).sum()), 1000)
    add("Accelerator.backward extra", accelerate_backward - plain_backward, 1, "loss / 1: one more op + autograd node")
    shard, plain = loader_per_batch(s.loader), loader_per_batch(s.plain_loader)
    add("DataLoaderShard vs DataLoader, per batch", shard - plain, 1, f"plain DataLoader itself: {plain:.0f} µs/batch")
    # fitorch's own per-step work.
    add("CallbackList.fire, event nobody handles", per_call_us(lambda: defaults.fire("on_optimizer_step")), 5, "")
    add(
        "fire(on_train_batch_end) -> ProgressBar, verbose=0",
        per_call_us(lambda: defaults.fire("on_train_batch_end", 0, running_logs())),
        1,
        "LazyLogs creation included",
    )
    add("running_logs() -> LazyLogs(...)", per_call_us(running_logs), 1, "")
    add("LazyLogs.__init__ alone", per_call_us(lambda: LazyLogs(tracker.results)), 1, "")
    add("unpack_batch(batch)", per_call_us(lambda: unpack_batch(s.batch)), 2, "_train_epoch and train_step")
    add("batch_length(targets)", per_call_us(lambda: batch_length(s.targets)), 2, "_train_epoch and _track")
    add("model_predictions(outputs)", per_call_us(lambda: model_predictions(s.outputs)), 1, "getattr on a tensor")
    tracker.reset()
    add("Tracker.update (loss + accuracy)", per_call_us(tracker_update), 1, "")
    add("  reference: loss/accuracy accumulation", per_call_us(reference_accumulate), 1, "what the loop does instead")
    add(
        "  MeanMetric.update (accuracy)",
        per_call_us(lambda: tracker.metrics["accuracy"].update(s.outputs, s.targets)),
        1,
        "",
    )
    tracker.reset()
    add(
        "Learner._track (incl. Tracker.update)",
        per_call_us(lambda: learner._track(tracker, s.loss, s.outputs, s.targets)),
        1,
        "",
    )  # noqa: SLF001
    add(
        "optimizer_step bookkeeping",
        per_call_us(
            lambda: (
                [p for g in s.optimizer.param_groups for p in g["params"] if p.grad is not None],
                s.accelerator.unscale_gradients(s.optimizer),
            )
        ),
        1,
        "params list + unscale_gradients",
    )
    add(
        "loop checks (training flag, window, sync ctx, stop vote)",
        per_call_us(
            lambda: (
                s.model.training,
                learner._ends_window(),  # noqa: SLF001
                learner._gradient_sync().__enter__(),  # noqa: SLF001
                learner._any_process(False),  # noqa: SLF001
            )
        ),
        1,
        "",
    )
    tracker.reset()
    tracker_update()
    add(
        "Tracker.results (one redraw or epoch end)",
        per_call_us(tracker.results, 500),
        0,
        "once per redraw, not per step",
    )
    verbose_learner.verbose, verbose_learner.num_batches, verbose_learner.epochs = 1, 10**9, 1
    bar.on_epoch_begin(0, {})
    add(
        "ProgressBar.on_train_batch_end, verbose=1",
        per_call_us(lambda: bar.on_train_batch_end(0, running_logs())),
        1,
        "tqdm.update; redraw <= 4/s",
    )
    bar._close()  # noqa: SLF001
    table = []
    for name, us, calls, note in rows:
        per_step = f"{us * calls:.1f}" if calls else "-"
        table.append([name, f"{us:.1f}", f"{calls:g}", per_step, note])
    return table


def cprofile_rows(contender: str, pattern: tuple[str, ...]) -> tuple[list[list[str]], float]:
    """cProfile one fit; rows for functions whose location contains any of `pattern`, by cumulative time."""
    data = make_data(WORKLOAD)
    warm_up(WORKLOAD)
    profiler = cProfile.Profile()
    model = make_model(WORKLOAD)
    profiler.enable()
    FIT_FUNCTIONS[contender](WORKLOAD, model, data)
    profiler.disable()
    profiler.dump_stats(HERE / "out" / f"{contender}.prof")
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        location = f"{Path(filename).name}:{line}({function})"
        if any(p in f"{filename}:{function}" for p in pattern):
            rows.append(
                (cumtime, [location, str(calls), f"{tottime * 1e6 / STEPS:.1f}", f"{cumtime * 1e6 / STEPS:.1f}"])
            )
    rows.sort(key=lambda row: -row[0])
    return [row for _, row in rows], stats.total_tt  # type: ignore[attr-defined]


def run_fits(count: int = 3) -> None:
    """Run `Learner.fit` with its defaults `count` times: what `--py-spy` samples."""
    data = make_data(WORKLOAD)
    warm_up(WORKLOAD)
    for _ in range(count):
        FIT_FUNCTIONS["fitorch"](WORKLOAD, make_model(WORKLOAD), data)


def py_spy_rows() -> list[list[str]]:
    """Sample `Learner.fit` (defaults) with py-spy; inclusive share of the fit for the top functions."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return [["py-spy is not installed (pip install -e .[bench])", "", ""]]
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder, "stacks.txt")
        target = [sys.executable, str(Path(__file__)), "--fits-only"]
        subprocess.run([py_spy, "record", "-r", "500", "-f", "raw", "-o", str(raw), "--", *target], check=True)
        inclusive, total = Counter(), 0
        for line in raw.read_text().splitlines():
            stack, count = line.rsplit(" ", 1)
            frames = [FRAME.match(frame) for frame in stack.split(";")]
            names = {f"{m['function']} ({Path(m['file']).name})" for m in frames if m}
            if "Learner._fit_loop (learner.py)" in names:
                total += int(count)
                inclusive.update({name: int(count) for name in names})
    return [[name, str(count), f"{100 * count / total:.1f}%"] for name, count in inclusive.most_common(45)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    """Run the three views and write `benchmarks/out/profile.md`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the in-process A/B (default %(default)s)")
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy (the bench extra)")
    parser.add_argument("--fits-only", action="store_true", help=argparse.SUPPRESS)  # what py-spy samples
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.fits_only:
        run_fits()
        return
    import accelerate  # noqa: F401 - imported before any timing

    import fitorch.callbacks  # noqa: F401

    (HERE / "out").mkdir(exist_ok=True)
    sections = [f"# Profile of the tiny workload ({STEPS} training steps, torch threads: 1)"]
    header = ["contender", "fit s (median)", "ratio", "µs/step over loop"]
    sections.append(f"## In-process A/B, {args.rounds} rounds\n\n" + _table(header, in_process_ab(args.rounds)))
    header = ["piece", "µs/call", "calls/train step", "µs/train step", "note"]
    sections.append("## Micro-timings (no profiler)\n\n" + _table(header, micro_costs()))
    pattern = ("fitorch", "callbacks/", "accelerate/", "tqdm", "inspect.py:signature", "importlib.util")
    for contender in ("fitorch", "fitorch_verbose0"):
        rows, total = cprofile_rows(contender, pattern)
        header = ["function", "calls", "own µs/step", "cumulative µs/step"]
        sections.append(
            f"## cProfile: {contender} (total {total:.2f} s under the profiler)\n\n" + _table(header, rows[:40])
        )
    if args.py_spy:
        sections.append(
            "## py-spy: inclusive samples within the fit (3 fits, defaults)\n\n"
            + _table(["function", "samples", "share"], py_spy_rows())
        )
    report = "\n\n".join(sections) + "\n"
    (HERE / "out" / "profile.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
