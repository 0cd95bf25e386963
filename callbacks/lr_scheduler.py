"""`LRScheduler`: learning-rate schedules with warm-up, per epoch or per real optimizer step.

It owns the schedule's bookkeeping: the base rates, where the schedule started and how long the fit
is. Named and function schedules are pure functions of a counter (the epoch, or `global_step`, both
restored on resume), so the rate is recomputed rather than accumulated; torch schedulers built by a
factory are stepped, and replayed up to the counter after a resume.
"""

from __future__ import annotations

import bisect
import math
import numbers
import re
import warnings
from collections.abc import Callable
from typing import Any

from torch.optim import lr_scheduler

from fitorch import Callback
from fitorch.checks import check_choice, check_int, check_number

Factor = Callable[[int], float]
INTERVALS = ("epoch", "step")
WARMUP_STARTS = {"linear": 0.0, "exponential": 0.01, "constant": 0.1}  # the default first factor per mode


def _progress(t: int, span: int) -> float:
    """Where `t` lies in a schedule of `span` steps: 0 at the first, 1 at the last (and after)."""
    return min(t / max(span - 1, 1), 1.0)


def _cosine(span: int, min_factor: float = 0.0) -> Factor:
    _check_fraction(min_factor, "min_factor")
    return lambda t: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * _progress(t, span)))


def _linear(span: int, end_factor: float = 0.0) -> Factor:
    _check_fraction(end_factor, "end_factor")
    return lambda t: 1 + (end_factor - 1) * _progress(t, span)


def _exponential(span: int, gamma: float | None = None) -> Factor:
    if gamma is None:
        gamma = 0.01 ** (1 / max(span - 1, 1))  # reaches 1% of the base rate at the last step
    _check_positive(gamma, "gamma")
    return lambda t: gamma**t


def _step(span: int, step_size: int | None = None, gamma: float = 0.1) -> Factor:
    step_size = max(1, math.ceil(span / 3)) if step_size is None else step_size
    check_int(step_size, "step_size", minimum=1, owner="LRScheduler('step')")
    _check_positive(gamma, "gamma")
    return lambda t: gamma ** (t // step_size)


def _multistep(span: int, milestones: list[int] | None = None, gamma: float = 0.1) -> Factor:
    milestones = [span // 2, (3 * span) // 4] if milestones is None else milestones
    for milestone in milestones:
        check_int(milestone, "each of milestones", minimum=0, owner="LRScheduler('multistep')")
    _check_positive(gamma, "gamma")
    ordered = sorted(milestones)
    return lambda t: gamma ** bisect.bisect_right(ordered, t)


def _constant(span: int) -> Factor:
    return lambda t: 1.0


def _onecycle(span: int, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4) -> Factor:
    """Torch's `OneCycleLR` (cosine annealing, rates only) with the optimizer's rate as `max_lr`."""
    check_number(pct_start, "pct_start", minimum=0, maximum=1, open_min=True, open_max=True, owner="LRScheduler")
    _check_positive(div_factor, "div_factor")
    _check_positive(final_div_factor, "final_div_factor")
    first, last = 1 / div_factor, 1 / (div_factor * final_div_factor)
    peak, end = float(pct_start * span) - 1, span - 1  # torch's phase ends

    def anneal(start: float, stop: float, fraction: float) -> float:
        return stop + (start - stop) / 2 * (math.cos(math.pi * fraction) + 1)

    def factor(t: int) -> float:
        if peak > 0 and t <= peak:
            return anneal(first, 1.0, t / peak)
        down_from = max(peak, 0.0)  # a run too short for a rising phase only anneals down
        if t >= end or end <= down_from:
            return last
        return anneal(1.0, last, (t - down_from) / (end - down_from))

    return factor


SCHEDULES: dict[str, Callable[..., Factor]] = {
    "cosine": _cosine,
    "onecycle": _onecycle,
    "step": _step,
    "multistep": _multistep,
    "exponential": _exponential,
    "linear": _linear,
    "constant": _constant,
}


def _check_fraction(value: Any, name: str) -> None:
    check_number(value, name, minimum=0, maximum=1, owner="LRScheduler")


def _check_positive(value: Any, name: str) -> None:
    check_number(value, name, minimum=0, open_min=True, owner="LRScheduler")


def warmup_factor(mode: str, start: float, count: int, warmup: int) -> float:
    """The warm-up multiplier at `count` (0 <= count < warmup); it reaches 1 at `count == warmup`."""
    fraction = count / warmup
    if mode == "linear":
        return start + (1 - start) * fraction
    if mode == "exponential":
        return start ** (1 - fraction)
    return start


class LRScheduler(Callback):
    """Sets the learning rate from a schedule, every epoch or every real optimizer step, with warm-up.

    `schedule` is one of:

    - a name, sized from the fit: `"cosine"` (to `min_factor`, default 0), `"linear"` (to
      `end_factor`, default 0), `"exponential"` (to 1% unless `gamma` is given), `"step"` (x `gamma`
      = 0.1 every third of the run unless `step_size` is given), `"multistep"` (x 0.1 at half and
      three quarters unless `milestones` is given), `"onecycle"` (torch's `OneCycleLR` with the
      optimizer's rate as the peak; `pct_start`, `div_factor`, `final_div_factor`), `"constant"`.
      A named schedule spans the rest of the fit after warm-up: it starts at the base rate and
      reaches its end value at the last step of the last epoch. Options go as keyword arguments:
      `LRScheduler("cosine", min_factor=0.01)`.
    - a function `t -> factor` of the epoch (or step) index counted from the end of warm-up; each
      parameter group's rate is its base rate times the factor, so groups keep their ratios.
    - a factory `optimizer -> torch scheduler`, e.g. `lambda opt: StepLR(opt, step_size=30)`,
      called once per optimizer; the scheduler is stepped once per epoch (or per step) after warm-up.

    A callable is told apart at construction by calling it with 0: a function returns a number, a
    factory fails (torch schedulers reject anything but an optimizer at once).

    `interval="epoch"` sets the rate at the start of each epoch, so the epoch's logged `lr` is the
    rate used during that epoch. `interval="step"` sets it after every real optimizer step
    (accumulation-aware: once per `grad_accum_steps` micro-batches), so the epoch's logged `lr` is
    the rate of the next step. For `interval="step"` a fit lasts `ceil(batches / grad_accum_steps)
    * epochs` steps.

    Warm-up lasts `warmup` epochs or steps (the unit of `interval`), multiplying the base rate by a
    factor that rises from `warmup_start` to 1: linearly (`start + (1 - start) * t / warmup`,
    default start 0), exponentially (`start ** (1 - t / warmup)`, default 0.01) or not at all
    (`"constant"`: `start` throughout, default 0.1). Then the schedule takes over from its own
    beginning.

    The base rates are the optimizer's rates when the first fit starts (torch's `initial_lr`, so a
    second fit starts from them again). `state_dict()` holds the base rates, the starting counter and
    the fit length; a resumed run recomputes the rate from the restored epoch and `global_step`
    (torch schedulers are rebuilt and stepped up to it).

    Args:
        schedule: a name, a function `t -> factor`, or a factory `optimizer -> torch scheduler`.
        interval: `"epoch"` or `"step"`.
        warmup: epochs or steps of warm-up (>= 0).
        warmup_mode: `"linear"`, `"exponential"` or `"constant"`.
        warmup_start: the first warm-up factor (default per mode, see above).
        **options: options of a named schedule (see above).

    Raises:
        ValueError: an unknown name, interval or warm-up mode; a negative `warmup`; a bad option value;
            at the start of fit, a named schedule that cannot be sized (data without a length, or a
            warm-up as long as the fit).
        TypeError: `schedule` of the wrong type, an option the schedule does not take, a factory that
            does not return a torch scheduler.

    Example:
        >>> schedule = LRScheduler("cosine", interval="step", warmup=500)
        >>> learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, callbacks=[schedule])  # doctest: +SKIP
    """

    def __init__(
        self,
        schedule: str | Callable[..., Any],
        *,
        interval: str = "epoch",
        warmup: int = 0,
        warmup_mode: str = "linear",
        warmup_start: float | None = None,
        **options: Any,
    ) -> None:
        check_choice(interval, "interval", INTERVALS, owner="LRScheduler")
        check_int(warmup, "warmup", minimum=0, owner="LRScheduler")
        check_choice(warmup_mode, "warmup_mode", tuple(WARMUP_STARTS), owner="LRScheduler")
        self.warmup_start = WARMUP_STARTS[warmup_mode] if warmup_start is None else warmup_start
        check_number(self.warmup_start, "warmup_start", minimum=0, owner="LRScheduler")
        if warmup_mode == "exponential" and self.warmup_start == 0:
            raise ValueError("LRScheduler: an exponential warm-up cannot start at 0; use warmup_start=0.01, say.")
        self.schedule, self.interval, self.options = schedule, interval, options
        self.warmup, self.warmup_mode = warmup, warmup_mode
        self.kind = self._classify(schedule, options)
        self.base_lrs: list[float] | None = None
        self.start: int | None = None
        self.total: int | None = None
        self.schedulers: list[Any] = []  # torch schedulers, for a factory
        self._factor: Factor | None = None
        self._pending: dict[str, Any] | None = None
        self._ready = False
        self._stepped, self._handed_over, self._replay = 0, False, False

    @staticmethod
    def _classify(schedule: Any, options: dict[str, Any]) -> str:
        if isinstance(schedule, str):
            if schedule not in SCHEDULES:
                raise ValueError(
                    f"LRScheduler: unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}, "
                    "or pass a function t -> factor or a factory optimizer -> torch scheduler."
                )
            _build_named(schedule, 100, options)  # checks the options now rather than at fit time
            return "name"
        if not callable(schedule):
            raise TypeError(f"LRScheduler: schedule must be a name or a callable, got {schedule!r}.")
        if options:
            raise TypeError(f"LRScheduler: options {sorted(options)} apply to named schedules only.")
        try:
            first = schedule(0)  # a factory fails here: torch schedulers reject a non-optimizer at once
        except (TypeError, AttributeError):
            return "factory"
        _check_factor(first, 0)
        return "function"

    # ------------------------------------------------------------------ events

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self._ready = False  # set up at the first epoch begin, when the length of an epoch is known

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self._ready:
            self._setup()
        self._apply(self._count())

    def on_optimizer_step(self) -> None:
        if self.interval == "step":
            self._apply(self._count())  # global_step is already incremented: this is the next step's rate

    # ------------------------------------------------------------------ set-up

    def _groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.learner.optimizers for group in optimizer.param_groups]

    def _counter(self) -> int:
        return self.learner.epoch if self.interval == "epoch" else self.learner.global_step

    def _count(self) -> int:
        return self._counter() - self.start

    def _setup(self) -> None:
        groups, state = self._groups(), self._pending
        if state is not None:
            self.base_lrs, self.start, self.total = list(state["base_lrs"]), int(state["start"]), state.get("total")
            if len(self.base_lrs) != len(groups):
                raise ValueError(
                    f"LRScheduler: the saved state has {len(self.base_lrs)} base rates but the optimizers "
                    f"have {len(groups)} parameter groups; resume with the same optimizer configuration."
                )
        else:
            # torch's convention: `initial_lr` is the base rate, so a second fit starts from it again.
            self.base_lrs = [float(group.setdefault("initial_lr", group["lr"])) for group in groups]
            self.start, self.total = self._counter(), self._fit_length()
        self._replay, self._pending = state is not None, None
        if self.kind == "name":
            self._factor = _build_named(self.schedule, self._span(), self.options)
        elif self.kind == "function":
            self._factor = self.schedule
        else:
            self._build_schedulers(groups)
        self._ready = True

    def _fit_length(self) -> int | None:
        learner = self.learner
        epochs = learner.epochs - learner.epoch
        if self.interval == "epoch":
            return epochs
        if learner.num_batches is None:
            return None
        return math.ceil(learner.num_batches / learner.grad_accum_steps) * epochs

    def _span(self) -> int:
        unit = f"{self.interval}s"
        if self.total is None:
            raise ValueError(
                f"LRScheduler({self.schedule!r}, interval='step') is sized from the number of batches, "
                "but the training data has no length; give the data a __len__, use interval='epoch', "
                "or pass a function t -> factor."
            )
        if self.total - self.warmup < 1:
            raise ValueError(
                f"LRScheduler({self.schedule!r}): warmup={self.warmup} {unit} covers the whole fit "
                f"({self.total} {unit}); shorten the warm-up or train longer."
            )
        return self.total - self.warmup

    def _build_schedulers(self, groups: list[dict[str, Any]]) -> None:
        for group, base in zip(groups, self.base_lrs):
            group["lr"] = group["initial_lr"] = base  # torch schedulers start from the base rates
        self.schedulers = [self.schedule(optimizer) for optimizer in self.learner.optimizers]
        for scheduler in self.schedulers:
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                raise TypeError("LRScheduler: for ReduceLROnPlateau use fitorch.callbacks.ReduceLROnPlateau.")
            if not isinstance(scheduler, lr_scheduler.LRScheduler):
                raise TypeError(
                    "LRScheduler: schedule is neither a function t -> factor (calling it with 0 failed) nor a "
                    f"factory optimizer -> torch scheduler (calling it with the optimizer returned {scheduler!r})."
                )
        self._stepped, self._handed_over = 0, False

    # ------------------------------------------------------------------ setting the rate

    def _apply(self, count: int) -> None:
        if count < self.warmup:
            factor = warmup_factor(self.warmup_mode, self.warmup_start, count, self.warmup)
            self._set_factor(factor)
        elif self.kind == "factory":
            self._advance(count - self.warmup)
        else:
            self._set_factor(_check_factor(self._factor(count - self.warmup), count - self.warmup))

    def _set_factor(self, factor: float) -> None:
        for group, base in zip(self._groups(), self.base_lrs):
            group["lr"] = base * factor

    def _advance(self, steps: int) -> None:
        if not self._handed_over:  # warm-up overwrote the rates; give each scheduler its own back
            for scheduler in self.schedulers:
                for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
                    group["lr"] = lr
            self._handed_over = True
        with warnings.catch_warnings():
            if self._replay:  # catching up after a resume, before this process stepped the optimizer
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            while self._stepped < steps:
                for scheduler in self.schedulers:
                    scheduler.step()
                self._stepped += 1
        self._replay = False

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The base rates, the counter the schedule started at and the fit length (JSON-able)."""
        if self._pending is not None or self.base_lrs is None:
            return dict(self._pending or {})
        return {"base_lrs": list(self.base_lrs), "start": self.start, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the schedule of `state_dict()` in the next `fit` (the counters come from the learner)."""
        self._pending = dict(state) if state else None


def _build_named(name: str, span: int, options: dict[str, Any]) -> Factor:
    try:
        return SCHEDULES[name](span, **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise TypeError(f"LRScheduler({name!r}) got an unknown option: {error}.") from None


def _check_factor(value: Any, t: int) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"LRScheduler: a function schedule must return a finite factor >= 0 of the base rate; "
            f"at t={t} it returned {value!r}."
        )
    return float(value)
