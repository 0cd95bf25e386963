"""The sections of `benchmarks/gpu.py`: each takes the run's `Config` and returns JSON-able results.

Every section trains real models and records what it saw (never an expected value): the autocast
state inside the forward pass, samples per second, host syncs and where they came from, bytes of
device memory, seconds to save and load, whether two weight sets are bit-identical.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from gpu_parts import (
    CONTENDERS,
    LR,
    NullTerminal,
    PrecisionProbe,
    StepClock,
    SyncCounter,
    SyncWindow,
    Workload,
    allocated,
    fit_fitorch,
    host_tensors,
    mlp,
    peak_allocated,
    pooled_loader,
    release,
    synchronize,
)
from torch import nn

import fitorch
from fitorch import Callback, Learner
from fitorch.callbacks import LRScheduler, ProgressBar

TOP_SOURCES = 6  # lines of code listed per sync count


def _learner(config: Any, precision: str, **options: Any) -> Learner:
    return Learner(
        loss="cross_entropy",
        optimizer="adamw",
        lr=LR,
        mixed_precision=precision,
        cpu=config.device.type == "cpu",
        **{"verbose": 0, **options},
    )


# ---------------------------------------------------------------------------- 1. precision


class SkippedSteps(Callback):
    """Records the batches whose optimizer step the fp16 grad scaler skipped, and the scaler's last scale."""

    def __init__(self) -> None:
        self.batches, self.skipped, self.optimizer_steps = 0, [], 0
        self.scale: float | None = None

    def on_optimizer_step(self) -> None:
        self.optimizer_steps += 1

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        self.batches += 1
        if self.learner.accelerator.optimizer_step_was_skipped:
            self.skipped.append(batch)

    def on_train_end(self, logs: Any) -> None:
        scaler = self.learner.accelerator.scaler
        self.scale = float(scaler.get_scale()) if scaler is not None else None


def precision_run(config: Any, workload: Workload, precision: str) -> dict[str, Any]:
    """A fit, a second fit, `evaluate` and `predict` on one model, probing the precision of each forward."""
    model = workload.model()
    probe = PrecisionProbe(model, workload.probe, config.device.type)
    x, y = host_tensors(workload, workload.steps)
    learner, steps = _learner(config, precision), SkippedSteps()
    size = workload.batch_size
    probe.label = "fit"
    history = learner.fit(model, (x, y), epochs=1, batch_size=size, callbacks=[steps])
    first_fit = {"batches": steps.batches, "global_step": learner.global_step, "skipped": steps.skipped}
    first_fit.update(optimizer_steps=steps.optimizer_steps, scale=steps.scale)
    probe.label = "second fit"
    second = learner.fit(model, (x, y), epochs=1, batch_size=size)
    probe.label = "evaluate"
    logs = learner.evaluate(model, (x, y), batch_size=size)
    probe.label = "predict"
    outputs = learner.predict(model, x, batch_size=size)
    expected = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    seen = probe.summary()
    return {
        "workload": workload.description,
        "precision": precision,
        "forwards": seen,
        "autocast_in_every_call": {
            label: list(counts) == [f"autocast {expected} -> {expected}"] for label, counts in seen.items()
        },
        "first_fit": first_fit,
        "losses": {
            "fit": history.history["loss"][-1],
            "second fit": second.history["loss"][-1],
            "evaluate": logs["loss"],
        },
        "predict_dtype": str(outputs.dtype).replace("torch.", ""),
    }


class InjectInf(Callback):
    """Writes inf into one gradient after the backward of batch `batch`, as an fp16 overflow would."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_after_backward(self) -> None:
        if self.learner.batch == self.batch:
            next(p for p in self.learner.model.parameters() if p.grad is not None).grad.fill_(float("inf"))


class StepTrace(Callback):
    """Per batch: global_step, the learning rate after the batch, whether Accelerate says the step was skipped."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        learner = self.learner
        self.rows.append(
            {
                "batch": batch,
                "global_step": learner.global_step,
                "lr": learner.optimizer.param_groups[0]["lr"],
                "skipped": learner.accelerator.optimizer_step_was_skipped,
            }
        )


def skipped_step_check(config: Any, precision: str, inject_at: int = 3, batches: int = 8) -> dict[str, Any]:
    """A step whose gradients hold inf: the scaler skips it; `global_step` and a step schedule must stay put."""
    workload = mlp(16, batches, 1)
    x, y = host_tensors(workload, batches)
    trace, steps = StepTrace(), SkippedSteps()
    learner = _learner(config, precision)
    callbacks = [InjectInf(inject_at), LRScheduler("linear", interval="step"), trace, steps]
    learner.fit(workload.model(), (x, y), epochs=1, batch_size=16, shuffle=False, callbacks=callbacks)
    skipped = [row["batch"] for row in trace.rows if row["skipped"]]
    before = {row["batch"]: row for row in trace.rows}
    lr_moved_on_skip = any(before[b]["lr"] != before[b - 1]["lr"] for b in skipped if b > 0)
    step_moved_on_skip = any(before[b]["global_step"] != before[b - 1]["global_step"] for b in skipped if b > 0)
    return {
        "precision": precision,
        "inf_injected_at_batch": inject_at,
        "skipped_batches": skipped,
        "batches": batches,
        "global_step": learner.global_step,
        "on_optimizer_step_fired": steps.optimizer_steps,
        "global_step_moved_on_a_skipped_step": step_moved_on_skip,
        "step_schedule_moved_on_a_skipped_step": lr_moved_on_skip,
        "trace": trace.rows,
    }


def _total_norm(learner: Learner) -> float:
    grads = [p.grad for p in learner.model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


class GradientNorms(Callback):
    """The gradient norm after backward (scaled under fp16, with the scale) and in `on_before_optimizer_step`."""

    def __init__(self) -> None:
        self.after_backward: list[tuple[float, float]] = []
        self.before_step: list[float] = []

    def on_after_backward(self) -> None:
        scaler = self.learner.accelerator.scaler
        self.after_backward.append((_total_norm(self.learner), float(scaler.get_scale()) if scaler else 1.0))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.before_step.append(_total_norm(self.learner))


def clipping_check(config: Any, precision: str, clip: float = 1e-3) -> dict[str, Any]:
    """Callbacks and clipping must see unscaled gradients: the norm seen = scaled norm / scale; clipped norm = clip."""
    workload = mlp(16, 8, 1)
    x, y = host_tensors(workload, 8)
    ratios: dict[str, list[float]] = {}
    for grad_clip in (None, clip):
        norms = GradientNorms()
        _learner(config, precision, grad_clip=grad_clip).fit(
            workload.model(), (x, y), epochs=1, batch_size=16, shuffle=False, callbacks=[norms]
        )
        pairs = [(seen, scaled / scale) for seen, (scaled, scale) in zip(norms.before_step, norms.after_backward)]
        pairs = [(seen, unscaled) for seen, unscaled in pairs if math.isfinite(unscaled)]
        if grad_clip is None:
            ratios["seen_over_unscaled"] = [seen / unscaled for seen, unscaled in pairs]
            ratios["unscaled_norms"] = [unscaled for _, unscaled in pairs]
        else:
            ratios["clipped_over_clip"] = [seen / clip for seen, _ in pairs]
    return {
        "precision": precision,
        "clip": clip,
        "median_seen_over_unscaled": statistics.median(ratios["seen_over_unscaled"] or [float("nan")]),
        "median_clipped_over_clip": statistics.median(ratios["clipped_over_clip"] or [float("nan")]),
        "smallest_unscaled_norm": min(ratios["unscaled_norms"], default=float("nan")),
    }


def precision_section(config: Any) -> dict[str, Any]:
    runs = [precision_run(config, w, p) for w in config.precision_workloads for p in config.precisions]
    scaler_precision = "fp16" if "fp16" in config.precisions else config.precisions[0]
    notes = (
        []
        if "fp16" in config.precisions
        else [
            "fp16 not run: fitorch refuses mixed_precision='fp16' on the CPU (Accelerate would train in "
            f"float32). The scaler checks ran under {scaler_precision}, which has no grad scaler: their "
            "figures say nothing about skipping."
        ]
    )
    return {
        "runs": runs,
        "skipped_step": skipped_step_check(config, scaler_precision),
        "clipping": clipping_check(config, scaler_precision),
        "notes": notes,
    }


# ---------------------------------------------------------------------------- 2. speed (and 5. peak memory)


def speed_run(config: Any, workload: Workload, name: str, loader: Any) -> dict[str, Any]:
    """One contender, one epoch; samples/s over the steady-state steps and the peak memory of the run."""
    model = workload.model()
    release(config.device)
    base = allocated(config.device)
    clock = StepClock(workload.warmup, workload.steps, config.device)
    loss = CONTENDERS[name](model, loader, config.speed_precision, config.device, [clock])
    peak = peak_allocated(config.device)
    del model
    release(config.device)
    return {
        "samples_per_s": clock.samples_per_second(workload.batch_size),
        "peak_bytes": None if peak is None else peak - base,
        "loss": loss,
    }


def speed_section(config: Any) -> dict[str, Any]:
    """Every contender on every speed workload, `repeats` rounds, the order rotated each round."""
    workloads = []
    for workload in config.speed_workloads:
        loader = pooled_loader(workload, config.device)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
        names = list(CONTENDERS)
        for repeat in range(config.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                runs[name].append(speed_run(config, workload, name, loader))
        workloads.append(
            {
                "workload": workload.name,
                "description": f"{workload.description}, {config.speed_precision}, AdamW, "
                f"{workload.steps} steps of which {workload.warmup} warm-up",
                "runs": runs,
                "median_samples_per_s": {
                    n: statistics.median(r["samples_per_s"] for r in rs) for n, rs in runs.items()
                },
                "median_peak_bytes": {n: _median_or_none([r["peak_bytes"] for r in rs]) for n, rs in runs.items()},
            }
        )
    return {"precision": config.speed_precision, "repeats": config.repeats, "workloads": workloads}


def _median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


# ---------------------------------------------------------------------------- 3. host syncs


class Redraws:
    """Counts the progress bar's redraws while `counter` is open (each one reads the running values)."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter, self.count = counter, 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        from fitorch.callbacks import progress

        original = progress.format_logs

        def counted(logs: Any) -> str:
            self.count += self.counter.is_open
            return original(logs)

        progress.format_logs = counted
        try:
            yield
        finally:
            progress.format_logs = original


def sync_run(config: Any, label: str, workload: Workload, run: Any, bar: bool = False) -> dict[str, Any]:
    """Count the host syncs of the steady-state steps of one run (`run(model, loader, tickers)`)."""
    loader = pooled_loader(workload, config.device)
    counter = SyncCounter(config.device)
    window = SyncWindow(counter, first=min(10, workload.steps // 4), last=workload.steps - 2)
    redraws = Redraws(counter)
    with counter, redraws.watching() if bar else contextlib.nullcontext():
        run(workload.model(), loader, [window])
    result = {"run": label, "workload": workload.description, "steps": window.steps, "syncs": counter.count}
    result["syncs_per_step"] = None if counter.count is None else counter.count / window.steps
    result["where"] = dict(counter.where.most_common(TOP_SOURCES))
    if bar:
        result["redraws"] = redraws.count
    return result


def _fitorch_run(config: Any, precision: str, **learner_options: Any) -> Any:
    def run(model: nn.Module, loader: Any, tickers: Any) -> float:
        from gpu_parts import Ticks

        learner = _learner(config, precision, **learner_options)
        extra = [ProgressBar(file=NullTerminal(), refresh_seconds=0.0)] if learner_options.get("verbose") else []
        return learner.fit(model, loader, epochs=1, callbacks=[Ticks(tickers), *extra]).history["loss"][-1]

    return run


def _contender_run(config: Any, name: str, precision: str) -> Any:
    return lambda model, loader, tickers: CONTENDERS[name](model, loader, precision, config.device, tickers)


def syncs_section(config: Any) -> dict[str, Any]:
    small, resnet = config.sync_workloads
    precision = config.speed_precision
    runs = [
        sync_run(config, f"Learner.fit(verbose=0), {precision}", small, _fitorch_run(config, precision)),
        sync_run(
            config,
            f"Learner.fit(verbose=0), {precision}, grad_clip=1.0",
            small,
            _fitorch_run(config, precision, grad_clip=1.0),
        ),
        sync_run(
            config,
            f"Learner.fit, progress bar redrawn every step, {precision}",
            small,
            _fitorch_run(config, precision, verbose=1),
            bar=True,
        ),
        sync_run(
            config, f"hand-written Accelerate loop, {precision}", small, _contender_run(config, "accelerate", precision)
        ),
        sync_run(config, f"hand-written PyTorch loop, {precision}", small, _contender_run(config, "torch", precision)),
        sync_run(config, f"Learner.fit(verbose=0), {precision}", resnet, _fitorch_run(config, precision)),
    ]
    if "fp16" in config.precisions:
        runs.append(sync_run(config, "Learner.fit(verbose=0), fp16 (grad scaler)", small, _fitorch_run(config, "fp16")))
        runs.append(
            sync_run(
                config, "hand-written PyTorch loop, fp16 (GradScaler)", small, _contender_run(config, "torch", "fp16")
            )
        )
    notes = ["The window opens after a warm-up and closes before the last step, so epoch-end reads are outside it."]
    if config.device.type != "cuda":
        notes.append("No CUDA: CUDA's sync debug mode cannot count anything here; the runs only exercise the code.")
    return {"runs": runs, "notes": notes}


# ---------------------------------------------------------------------------- 4. data path


@contextlib.contextmanager
def pinned_transfers(enabled: bool) -> Iterator[None]:
    """fitorch's choice of pinned memory and non-blocking copies, left as is or turned off for one comparison."""
    import fitorch.learner

    original = fitorch.learner.pins_memory
    if not enabled:
        fitorch.learner.pins_memory = lambda device: False
    try:
        yield
    finally:
        fitorch.learner.pins_memory = original


class NonBlocking(Callback):
    """Reads whether the running call's accelerator copies batches without blocking."""

    value: bool | None = None

    def on_train_begin(self, logs: Any) -> None:
        self.value = bool(self.learner.accelerator.non_blocking)


def data_run(config: Any, data: Any, pinned: bool, count_syncs: bool) -> dict[str, Any]:
    """One fit on CPU tensors through the loader fitorch builds; samples/s, or syncs per step when `count_syncs`."""
    workload = config.data_workload
    clock = StepClock(workload.warmup, workload.steps, config.device)
    counter = SyncCounter(config.device)
    window = SyncWindow(counter, first=workload.warmup, last=workload.steps - 2)
    probe = NonBlocking()
    tickers = [window] if count_syncs else [clock]
    with pinned_transfers(pinned), counter:
        fit_fitorch(
            workload.model(),
            data,
            config.speed_precision,
            config.device,
            tickers,
            callbacks=[probe],
            batch_size=workload.batch_size,
            shuffle=False,
        )
    release(config.device)
    if count_syncs:
        return {
            "syncs_per_step": None if counter.count is None else counter.count / window.steps,
            "where": dict(counter.where.most_common(TOP_SOURCES)),
            "non_blocking": probe.value,
        }
    return {"samples_per_s": clock.samples_per_second(workload.batch_size), "non_blocking": probe.value}


def data_section(config: Any) -> dict[str, Any]:
    workload = config.data_workload
    data = host_tensors(workload, config.data_batches)
    modes = {"pinned, non-blocking (fitorch's default on CUDA)": True, "pageable, blocking (turned off)": False}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for repeat in range(1 if config.dry_run else 4):
        for mode in sorted(modes, reverse=repeat % 2 == 1):  # alternate which goes first
            runs[mode].append(data_run(config, data, modes[mode], count_syncs=False))
    syncs = {mode: data_run(config, data, pinned, count_syncs=True) for mode, pinned in modes.items()}
    switched = [run["non_blocking"] == pinned for mode, pinned in modes.items() for run in runs[mode]]
    notes = (
        []
        if config.device.type != "cuda" or all(switched)
        else ["turning pinned transfers off did not take: the learner no longer calls fitorch.learner.pins_memory"]
    )
    return {
        "notes": notes,
        "workload": f"{workload.description}, {config.speed_precision}; (x, y) CPU tensors, fitorch builds the loader "
        f"(no workers, as for in-memory tensors); {workload.steps} steps of which {workload.warmup} warm-up",
        "runs": runs,
        "median_samples_per_s": {mode: statistics.median(r["samples_per_s"] for r in rs) for mode, rs in runs.items()},
        "syncs": syncs,
    }


# ---------------------------------------------------------------------------- 5. memory across epochs


class EpochMemory(Callback):
    """Device memory allocated at each epoch end (after the epoch's values were read)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, []

    def on_epoch_end(self, epoch: int, logs: Any) -> None:
        synchronize(self.device)
        self.bytes.append(allocated(self.device))


def memory_section(config: Any) -> dict[str, Any]:
    """Allocated memory at every epoch end of a fit with validation, with and without the progress bar."""
    workload = config.memory_workload
    x, y = host_tensors(workload, workload.steps)
    runs = []
    for verbose in (0, 1):
        release(config.device)
        probe = EpochMemory(config.device)
        extra = [ProgressBar(file=NullTerminal())] if verbose else []
        _learner(config, config.speed_precision, verbose=verbose).fit(
            workload.model(),
            (x, y),
            epochs=config.memory_epochs,
            batch_size=workload.batch_size,
            validation_data=(x[: workload.batch_size * 2], y[: workload.batch_size * 2]),
            callbacks=[probe, *extra],
        )
        known = [b for b in probe.bytes if b is not None]
        runs.append(
            {
                "verbose": verbose,
                "allocated_at_epoch_ends": probe.bytes,
                "growth_bytes": known[-1] - known[0] if known else None,
            }
        )
    return {
        "workload": f"{workload.description}, {config.speed_precision}, {config.memory_epochs} epochs with validation",
        "runs": runs,
    }


# ---------------------------------------------------------------------------- 6. checkpoints


def _trained_learner(config: Any, workload: Workload) -> Learner:
    """A learner after one real AdamW step on `workload`'s model, its state on the device."""
    learner = _learner(config, "no")
    inputs, targets = workload.batch(torch.Generator().manual_seed(0))
    learner.fit(workload.model(), (inputs, targets), epochs=1, batch_size=workload.batch_size)
    return learner


def _timed(action: Any, path: Path, device: torch.device) -> float:
    os.sync()  # start with no dirty pages of an earlier write still being flushed
    started = time.perf_counter()
    action(path)
    synchronize(device)
    return time.perf_counter() - started


def checkpoint_section(config: Any) -> dict[str, Any]:
    """Save and load a model + AdamW state from the device: fitorch against durable `torch.save`, interleaved."""
    from checkpointing import _size_mb, _torch_load, _torch_save

    workload = config.checkpoint_workload
    learner = _trained_learner(config, workload)
    model, optimizer = learner.model, learner.optimizer
    on_device = next(model.parameters()).device.type
    contenders = {
        "fitorch": (lambda p: fitorch.save_checkpoint(learner, p), lambda p: fitorch.load_checkpoint(learner, p)),
        "torch_fsync": (
            lambda p: _torch_save(model, optimizer, p, durable=True),
            lambda p: _torch_load(model, optimizer, p),
        ),
    }
    times: dict[str, dict[str, list[float]]] = {name: {"save_s": [], "load_s": []} for name in contenders}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="fitorch-gpu-") as folder:
        warm_up = 0 if config.dry_run else 1  # a first round, not recorded
        for round_ in range(warm_up + config.repeats):
            for name, (save, load) in contenders.items():
                path = Path(folder, f"{name}-{round_}")
                save_s, load_s = _timed(save, path, config.device), _timed(load, path, config.device)
                if round_ >= warm_up:
                    times[name]["save_s"].append(save_s)
                    times[name]["load_s"].append(load_s)
                sizes[name] = _size_mb(path)
    medians = {name: {key: statistics.median(values) for key, values in t.items()} for name, t in times.items()}
    return {"model": workload.description, "state_on": on_device, "size_mb": sizes, "times": times, "median": medians}


class SaveAt(Callback):
    """Saves a full checkpoint right after optimizer step `step` (mid-epoch), then lets the fit go on."""

    saves_checkpoints = True

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        if self.learner.global_step == self.step and self.learner.step_taken:
            fitorch.save_checkpoint(self.learner, self.path)


def _resume_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 16, 10),
    )  # no pooling: adaptive pooling has no deterministic CUDA backward


def resume_check(precision: str, device: torch.device, save_at: int = 24) -> dict[str, Any]:
    """Straight 2-epoch fit vs. resumed from a mid-epoch checkpoint in a new learner and model: bit-identical?"""
    fitorch.seed_everything(0, deterministic=True)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 3, 16, 16, generator=generator), torch.randn(256, 10, generator=generator)

    def learner() -> Learner:  # mse: CUDA's nll_loss refuses deterministic mode
        return Learner(
            loss="mse",
            optimizer="adamw",
            lr=1e-2,
            seed=0,
            mixed_precision=precision,
            verbose=0,
            cpu=device.type == "cpu",
        )

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "mid")
        straight_model, straight = _resume_model(0), learner()
        straight.fit(straight_model, (x, y), epochs=2, batch_size=16, callbacks=[SaveAt(save_at, path)])
        resumed_model, resumed = _resume_model(1), learner()
        resumed.fit(resumed_model, (x, y), epochs=2, batch_size=16, resume=path)
    expected, actual = straight_model.state_dict(), resumed_model.state_dict()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    gap = max((float((expected[k].double() - actual[k].double()).abs().max()) for k in different), default=0.0)
    return {
        "precision": precision,
        "device": str(next(straight_model.parameters()).device),
        "saved_at_step": save_at,
        "steps": straight.global_step,
        "bit_identical": not different,
        "different_tensors": different,
        "largest_difference": gap,
        "same_history": straight.history.history == resumed.history.history,
    }
