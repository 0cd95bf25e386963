"""The learning-rate finder behind `Learner.lr_find`: an exponential sweep that leaves nothing changed.

The path: `find_lr` checks its arguments, records everything the sweep could change (`_Snapshot`: the
model's weights, buffers, gradients, device and training flags, the Python, NumPy and torch RNG states,
and the generators of a DataLoader passed in), runs a throwaway copy of the learner (same loss, optimizer
spec, precision, accumulation, clipping and step methods; fresh optimizers, no callbacks of the user's,
nothing written to disk) for a `fit` driven by `_Sweep`, restores the snapshot whatever happened, and
returns an `LRFindResult`. `_Sweep` sets the rate of every optimizer step, records the loss of each
step (averaged over processes, so every process records the same curve), smooths it and stops the fit
once the loss diverges. The suggestion rules are pure functions of the recorded curve.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fitorch.callback import Callback
from fitorch.checks import check_choice, check_int, check_number, check_path
from fitorch.compiled import unwrap_compiled

if TYPE_CHECKING:
    from fitorch.learner import Learner

RULES = ("valley", "steepest")
INSTALL = "pip install 'fitorch[plot]' (or pip install matplotlib)"
MIN_POINTS = 5  # fewer recorded steps than this say nothing about where the loss falls
PLOT_FILE = "lr_find.png"


@dataclass
class LRFindResult:
    """What `Learner.lr_find` recorded: one learning rate and one loss per optimizer step, and a suggestion.

    Attributes:
        rates: the learning rate of each step (of the first parameter group).
        losses: the smoothed loss of each step (exponential moving average, bias-corrected).
        raw_losses: the loss of each step as measured (the mean over the step's samples and processes).
        rule: the rule that chose `suggestion`: `"valley"` or `"steepest"`.
        suggestion: the suggested learning rate; None when fewer than 5 steps were recorded (the
            loss diverged at once: lower `start_lr`).
        diverged: whether the sweep stopped early because the loss diverged.
        run_dir: the learner's `run_dir`, where `save_plot()` writes by default.
        main_process: whether this process writes files (only it saves the plot).
    """

    rates: list[float]
    losses: list[float]
    raw_losses: list[float]
    rule: str
    suggestion: float | None
    diverged: bool
    run_dir: str | None = None
    main_process: bool = field(default=True, repr=False)

    def suggest(self, rule: str = "valley") -> float | None:
        """The rate `rule` suggests for this curve (`"valley"` or `"steepest"`); None under 5 steps.

        Raises:
            ValueError: an unknown rule.
        """
        check_choice(rule, "rule", RULES, owner="LRFindResult.suggest")
        index = suggestion_index(self.losses, self.rates, rule)
        return None if index is None else self.rates[index]

    def plot(self, ax: Any = None) -> Any:
        """Draw the smoothed loss against the learning rate (log scale), with the suggestion marked.

        Args:
            ax: a matplotlib `Axes` to draw on; None makes a new figure with pyplot.

        Returns:
            The `Axes`.

        Raises:
            ImportError: matplotlib is not installed (`pip install 'fitorch[plot]'`).
        """
        if ax is None:
            pyplot = _matplotlib("pyplot")
            _, ax = pyplot.subplots()
        ax.plot(self.rates, self.losses, label="smoothed loss")
        finite = [loss for loss in self.losses if math.isfinite(loss)]
        if finite:  # the diverging tail would flatten everything else: show the curve up to its start
            lowest = finite.index(min(finite))
            top, bottom = max(finite[: lowest + 1]), finite[lowest]
            margin = 0.2 * (top - bottom) or 0.1 * abs(top) or 1.0
            ax.set_ylim(bottom - margin, top + margin)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        if self.suggestion is not None:
            index = self.rates.index(self.suggestion)
            ax.plot([self.suggestion], [self.losses[index]], "o", color="tab:red")
            ax.annotate(f"{self.rule}: {self.suggestion:.2e}", (self.suggestion, self.losses[index]))
        return ax

    def save_plot(self, path: str | os.PathLike | None = None) -> str:
        """Save the plot as a PNG: at `path`, or `run_dir/lr_find.png`. Only the main process writes.

        Returns:
            The file's path.

        Raises:
            ValueError: no `path` and the learner had no `run_dir`.
            ImportError: matplotlib is not installed (`pip install 'fitorch[plot]'`).
        """
        path = check_path(path, "path", allow_none=True, owner="LRFindResult.save_plot")
        if path is None:
            if self.run_dir is None:
                raise ValueError(
                    "LRFindResult.save_plot: give a path, or set Learner(run_dir=...) to save run_dir/lr_find.png."
                )
            path = os.path.join(self.run_dir, PLOT_FILE)
        figure = _matplotlib("figure").Figure()  # no pyplot: no GUI backend, no global figure left open
        self.plot(figure.subplots())
        if self.main_process:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            figure.savefig(path, format="png")
        return path


def _matplotlib(module: str) -> Any:
    try:
        return __import__(f"matplotlib.{module}", fromlist=[module])
    except ImportError as error:
        raise ImportError(f"Plotting the learning-rate finder needs matplotlib: {INSTALL}") from error


# ---------------------------------------------------------------------------- the suggestion rules


def suggestion_index(losses: Sequence[float], rates: Sequence[float], rule: str) -> int | None:
    """The index of the suggested rate on a smoothed loss curve, or None when it is too short.

    Only the finite start of the curve counts (a diverged sweep may end on an infinite loss).
    """
    finite = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    if finite < MIN_POINTS:
        return None
    losses, rates = list(losses[:finite]), list(rates[:finite])
    return _valley(losses) if rule == "valley" else _steepest(losses, rates)


def _valley(losses: Sequence[float]) -> int:
    """Halfway along the longest valley: the longest run of falling losses (not necessarily consecutive
    steps, so noise does not cut it short), taken as that many steps up to its lowest point.

    A fall counts when it is at least 1% of how far the curve falls in all: on a plateau, where the
    loss creeps down by noise-sized amounts, the valley would otherwise start at the first step.
    """
    lowest = int(np.argmin(losses))
    fall = 0.01 * (max(losses[: lowest + 1]) - losses[lowest])
    length = [1] * len(losses)  # length[i]: the longest falling run that ends at step i
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] - fall:
                length[i] = max(length[i], length[j] + 1)
    end = max(range(len(losses)), key=lambda i: (length[i], -i))  # the longest; the earliest among equals
    return (max(0, end - length[end] + 1) + end) // 2


def _steepest(losses: Sequence[float], rates: Sequence[float]) -> int:
    """Where the loss falls fastest per decade of rate, before its lowest point (past it, it only climbs).

    The first tenth of the steps (at most 10) is left out: the moving average rests on few losses there.
    """
    skip = min(10, len(losses) // 10)
    lowest = skip + int(np.argmin(losses[skip:]))
    if lowest - skip < 2:
        return lowest
    section = slice(skip, lowest + 1)
    slopes = np.gradient(np.asarray(losses[section]), np.log10(np.asarray(rates[section])))
    return skip + int(np.argmin(slopes))


# ---------------------------------------------------------------------------- the sweep


class _Sweep(Callback):
    """Drives the throwaway fit: sets each step's rate, records its loss, stops at the end or on divergence."""

    def __init__(self, rates: list[float], smoothing: float, diverge_threshold: float | None) -> None:
        self.rates, self.smoothing, self.diverge_threshold = rates, smoothing, diverge_threshold
        self.raw_losses: list[float] = []
        self.losses: list[float] = []
        self.diverged = False
        self._average = 0.0
        self._ratios: list[float] = []
        self._loss_sum: torch.Tensor | None = None  # the step's sample-weighted loss, on the device
        self._samples = 0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        groups = self._groups()
        base = groups[0]["lr"]
        self._ratios = [group["lr"] / base if base else 1.0 for group in groups]
        self._set_rate(self.rates[0])

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        learner = self.learner
        samples = learner.batch_samples  # under accumulation, a step's loss is the mean over its window
        loss = learner.loss.detach().float() * samples
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._samples += samples
        if not learner.step_taken:
            return
        window = torch.stack([self._loss_sum, self._loss_sum.new_tensor(float(self._samples))])
        self._loss_sum, self._samples = None, 0
        if learner.accelerator.num_processes > 1:  # every process takes the same steps, so each calls this
            window = learner.accelerator.reduce(window, "sum")
        self._record(float(window[0] / window[1]))  # a host sync per step: the sweep needs the value
        step = len(self.losses)
        if self.diverged or step == len(self.rates):
            learner.stop_training = True
        else:
            self._set_rate(self.rates[step])

    def _record(self, loss: float) -> None:
        self.raw_losses.append(loss)
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        smoothed = self._average / (1 - self.smoothing ** len(self.raw_losses))
        self.losses.append(smoothed)
        threshold = self.diverge_threshold
        if not math.isfinite(smoothed) or (threshold is not None and smoothed > threshold * min(self.losses)):
            self.diverged = True

    def _groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.learner.optimizers for group in optimizer.param_groups]

    def _set_rate(self, rate: float) -> None:
        for group, ratio in zip(self._groups(), self._ratios):
            group["lr"] = rate * ratio


# ---------------------------------------------------------------------------- what is restored


def _loader_generators(data: Any) -> list[torch.Generator]:
    """The generators a DataLoader passed in draws from (its own, its sampler's), which iterating advances."""
    if not isinstance(data, DataLoader):
        return []
    holders = [data, data.sampler, getattr(data.batch_sampler, "sampler", None)]
    found = [getattr(holder, "generator", None) for holder in holders]
    return [generator for generator in found if isinstance(generator, torch.Generator)]


@dataclass
class _Snapshot:
    """Everything the sweep may change, recorded before it and put back after it."""

    model: nn.Module
    state: dict[str, torch.Tensor]
    grads: list[tuple[nn.Parameter, torch.Tensor | None]]
    training: list[tuple[nn.Module, bool]]
    device: torch.device | None
    rng: tuple[Any, ...]
    generators: list[tuple[torch.Generator, torch.Tensor]]

    @classmethod
    def take(cls, model: nn.Module, data: Any) -> _Snapshot:
        devices = {tensor.device for tensor in [*model.parameters(), *model.buffers()]}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(
            model=model,
            state={key: value.detach().clone() for key, value in model.state_dict().items()},
            grads=[(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()],
            training=[(module, module.training) for module in model.modules()],
            device=devices.pop() if len(devices) == 1 else None,  # a model spread over devices stays where it is
            rng=(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda),
            generators=[(generator, generator.get_state()) for generator in _loader_generators(data)],
        )

    def restore(self) -> None:
        if self.device is not None:
            self.model.to(self.device)  # in place: the parameters, and so any optimizer's references, are kept
        self.model.load_state_dict(self.state)
        for parameter, grad in self.grads:
            parameter.grad = grad
        for module, training in self.training:
            module.training = training
        python, numpy, torch_cpu, cuda = self.rng
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(torch_cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for generator, state in self.generators:
            generator.set_state(state)


def _sweep_learner(learner: Learner) -> Learner:
    """A throwaway copy of `learner` for the sweep: same configuration and step methods, nothing of its state.

    It has no callbacks, metrics, progress or run folder, and builds its own optimizers, so the
    learner's optimizers (kept across fits of the same model) and its callbacks never see the sweep.
    """
    sweeper = copy.copy(learner)
    sweeper.callbacks, sweeper.metrics, sweeper.verbose, sweeper.run_dir = [], {}, 0, None
    sweeper._start_fresh()  # its own loop state, trackers, optimizers: nothing shared with the learner
    return sweeper


# ---------------------------------------------------------------------------- the entry point


def find_lr(
    learner: Learner,
    model: nn.Module,
    data: Any,
    *,
    start_lr: float,
    end_lr: float,
    num_steps: int,
    smoothing: float,
    diverge_threshold: float | None,
    rule: str,
    batch_size: int | None,
    shuffle: bool | None,
) -> LRFindResult:
    """`Learner.lr_find`; see its docstring."""
    owner = "lr_find"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}.")
    start_lr = check_number(start_lr, "start_lr", minimum=0, open_min=True, owner=owner)
    end_lr = check_number(end_lr, "end_lr", minimum=start_lr, open_min=True, owner=owner)
    check_int(num_steps, "num_steps", minimum=2, owner=owner)
    check_number(smoothing, "smoothing", minimum=0, maximum=1, open_max=True, owner=owner)
    check_number(diverge_threshold, "diverge_threshold", minimum=1, open_min=True, allow_none=True, owner=owner)
    check_choice(rule, "rule", RULES, owner=owner)
    rates = [float(rate) for rate in np.geomspace(start_lr, end_lr, num_steps)]
    sweep = _Sweep(rates, smoothing, diverge_threshold)
    sweeper = _sweep_learner(learner)
    snapshot = _Snapshot.take(unwrap_compiled(model), data)
    try:
        # Each epoch takes at least one step, so num_steps epochs always hold the sweep; it stops itself.
        sweeper.fit(model, data, epochs=num_steps, batch_size=batch_size, shuffle=shuffle, callbacks=[sweep])
    finally:
        snapshot.restore()
    index = suggestion_index(sweep.losses, rates, rule)
    return LRFindResult(
        rates=rates[: len(sweep.losses)],
        losses=sweep.losses,
        raw_losses=sweep.raw_losses,
        rule=rule,
        suggestion=None if index is None else rates[index],
        diverged=sweep.diverged,
        run_dir=learner.run_dir,
        main_process=sweeper.is_main_process,
    )
