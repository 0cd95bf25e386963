"""`LRScheduler`: learning-rate schedules with warm-up, per epoch or per real optimizer step.

It owns the schedule's bookkeeping: the base rates, where the schedule started, and the scale that
other rate changes (`ReduceLROnPlateau`, a callback of yours) put on top of it. Named and function
schedules are pure functions of a counter (the epoch, or `global_step`, both restored on resume)
and of the fit's `epochs`, so the rate is recomputed rather than accumulated; torch schedulers built
by a factory are stepped, and replayed up to the counter after a resume. The named schedules and
the warm-up themselves live in `schedules.py`.

Every rate it sets is `schedule's own rate x scale`, per parameter group. Before setting a rate it
compares the group's rate with the one it set last: a difference was made by something else, and
is kept as a factor of the scale. So a plateau's reduction scales the rest of the schedule instead
of being overwritten, and the scale, saved with the state, makes a resumed run set the same rates.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

from torch.optim import lr_scheduler

from fitorch import Callback, Monitor
from fitorch.callbacks.schedules import SCHEDULES, WARMUP_STARTS, build_schedule, warmup_factor, warmup_start
from fitorch.checks import check_callable, check_choice, check_int, check_number, check_str

logger = logging.getLogger("fitorch")
INTERVALS = ("epoch", "step")
VERBOSITY = (0, 1, False, True)


class LRScheduler(Callback):
    """Sets the learning rate from a schedule, every epoch or every real optimizer step, with warm-up.

    `schedule` is one of:

    - a name, sized from the fit: `"cosine"` (to `min_factor`, default 0), `"linear"` (to
      `end_factor`, default 0), `"exponential"` (to 1% unless `gamma` is given), `"step"` (x `gamma`
      = 0.1 every third of the run unless `step_size` is given), `"multistep"` (x 0.1 at half and
      three quarters unless `milestones` is given), `"onecycle"` (torch's `OneCycleLR` with the
      optimizer's rate as the peak; `pct_start`, `div_factor`, `final_div_factor`), `"constant"`.
      A named schedule spans the fit after warm-up, from the epoch it started at to the fit's
      `epochs`, with torch's end point: the end value is reached one step after the last one, so
      `"cosine"` and `"linear"` never train a step at 0. Options go as keyword arguments:
      `LRScheduler("cosine", min_factor=0.01)`.
    - a function `t -> factor` of the epoch (or step) index counted from the end of warm-up; each
      parameter group's rate is its base rate times the factor, so groups keep their ratios.
    - a factory `optimizer -> torch scheduler`, e.g. `lambda opt: StepLR(opt, step_size=30)`,
      called once per optimizer; the scheduler is stepped once per epoch (or per step) after warm-up.
      A factory of torch's `ReduceLROnPlateau` is stepped at the end of every epoch with the log
      value `monitor` (torch's plateau rule; `fitorch.callbacks.ReduceLROnPlateau` has Keras's),
      except an epoch without validation (`fit(validation_freq=...)`).

    A callable is told apart at construction by calling it with 0: a function returns a number, a
    factory fails (torch schedulers reject anything but an optimizer at once). A function of two
    arguments `(epoch, lr) -> rate` is Keras's form and is refused here: it belongs to
    `fitorch.callbacks.LearningRateScheduler`, which sets the rate the function returns.

    `interval="epoch"` sets the rate at the start of each epoch, so the epoch's logged `lr` is the
    rate used during that epoch. `interval="step"` sets it after every real optimizer step
    (accumulation-aware: once per `grad_accum_steps` micro-batches), so the epoch's logged `lr` is
    the rate of the next step (after the fit's last step, the rate of that step stays). For
    `interval="step"` a fit lasts `ceil(batches / grad_accum_steps) * epochs` steps.

    Warm-up lasts `warmup` epochs or steps (the unit of `interval`), multiplying the base rate by a
    factor that rises from `warmup_start` to 1: linearly (`start + (1 - start) * t / warmup`,
    default start `1 / (warmup + 1)`, so the steps are equal and none is at 0), exponentially
    (`start ** (1 - t / warmup)`, default 0.01) or not at all (`"constant"`: `start` throughout,
    default 0.1). Then the schedule takes over from its own beginning.

    Other changes to the rate compose with the schedule: a rate found different from the one this
    callback set last (a `ReduceLROnPlateau` reduction, a callback of yours) is kept as a scale on
    the rest of the schedule, per parameter group. Two schedules in one fit (two `LRScheduler`s, or
    one and a `LearningRateScheduler`) are refused when `fit` starts.

    The base rates are the optimizer's rates when the first fit starts (torch's `initial_lr`, so a
    second fit starts from them again). `state_dict()` holds the base rates, where the schedule
    started, the scale and the last rates; a resumed run recomputes the rate from the restored
    epoch and `global_step`, with the `epochs` of the resumed fit (so a resume with a larger
    `epochs` follows the longer fit's schedule from where it stands); torch schedulers are rebuilt
    and stepped up to it.

    Args:
        schedule: a name, a function `t -> factor`, or a factory `optimizer -> torch scheduler`.
        interval: `"epoch"` or `"step"`.
        warmup: epochs or steps of warm-up (>= 0).
        warmup_mode: `"linear"`, `"exponential"` or `"constant"`.
        warmup_start: the first warm-up factor (default per mode, see above); 0 is allowed, but then
            the first epoch or step trains at 0, as asked.
        verbose: 1 (or True) logs the rate set at the start of every epoch (`Epoch 3: LRScheduler
            setting learning rate to 0.05.`) to the `fitorch` logger, as Keras's `verbose=1` prints it.
        monitor: the log key a torch `ReduceLROnPlateau` from a factory is stepped with.
        **options: options of a named schedule (see above).

    Raises:
        ValueError: an unknown name, interval or warm-up mode; a negative `warmup`; a bad option value;
            at the start of fit, a second schedule in the same fit, or a named schedule that cannot be
            sized (data without a length, or a warm-up as long as the fit).
        TypeError: `schedule` of the wrong type or a two-argument function, an option the schedule
            does not take, a factory that does not return a torch scheduler.

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
        verbose: int | bool = 0,
        monitor: str = "val_loss",
        **options: Any,
    ) -> None:
        owner = type(self).__name__
        check_choice(interval, "interval", INTERVALS, owner=owner)
        check_int(warmup, "warmup", minimum=0, owner=owner)
        check_choice(warmup_mode, "warmup_mode", tuple(WARMUP_STARTS), owner=owner)
        check_number(warmup_start, "warmup_start", minimum=0, allow_none=True, owner=owner)
        if warmup_mode == "exponential" and warmup_start == 0:
            raise ValueError(f"{owner}: an exponential warm-up cannot start at 0; use warmup_start=0.01, say.")
        self.verbose = check_choice(verbose, "verbose", VERBOSITY, owner=owner)
        self.monitor = check_str(monitor, "monitor", owner=owner)
        self.schedule, self.interval, self.options = schedule, interval, options
        self.warmup, self.warmup_mode, self.warmup_start = warmup, warmup_mode, warmup_start
        self.kind = self._classify(schedule, options)
        self.base_lrs: list[float] | None = None
        self.start: int | None = None  # the counter (epoch or global step) the schedule started at
        self.start_epoch: int | None = None  # the epoch it started at, which sizes a named schedule
        self.scales: list[float] = []  # per group: the changes others made to the rate, as factors
        self.last_rates: list[float] | None = None  # per group: the rates this callback set last (not saved)
        self.unscaled: list[float] | None = None  # per group: the schedule's own rates, before the scale
        self.at: int | None = None  # the count those rates were set for
        self.schedulers: list[Any] = []  # torch schedulers, for a factory
        self._factor: Callable[[int], float] | None = None
        self._pending: dict[str, Any] | None = None
        self._ready = False
        self._stepped, self._replay = 0, False

    def _classify(self, schedule: Any, options: dict[str, Any]) -> str:
        if isinstance(schedule, str):
            if schedule not in SCHEDULES:
                raise ValueError(
                    f"LRScheduler: unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}, "
                    "or pass a function t -> factor or a factory optimizer -> torch scheduler."
                )
            build_schedule(schedule, 100, options)  # checks the options now rather than at fit time
            return "name"
        what = "a schedule name, a function t -> factor, or a factory optimizer -> torch scheduler"
        check_callable(schedule, "schedule", what=what, owner="LRScheduler")
        if options:
            raise TypeError(f"LRScheduler: options {sorted(options)} apply to named schedules only.")
        if positional_arity(schedule)[0] >= 2:
            raise TypeError(
                "LRScheduler: schedule takes two arguments, like Keras's schedule(epoch, lr) -> rate. LRScheduler "
                "takes a function t -> factor of the base rate, or a factory optimizer -> torch scheduler; for a "
                "function that returns the rate itself, use fitorch.callbacks.LearningRateScheduler(schedule)."
            )
        try:
            first = schedule(0)  # a factory fails here: torch schedulers reject a non-optimizer at once
        except (TypeError, AttributeError):
            return "factory"
        self._check_factor(first, 0)
        return "function"

    # ------------------------------------------------------------------ events

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        others = [cb for cb in self.learner.active_callbacks if isinstance(cb, LRScheduler) and cb is not self]
        if others:
            # Each would take the other's rates for outside changes and scale its own schedule by them.
            names = ", ".join(type(callback).__name__ for callback in [self, *others])
            raise ValueError(
                f"Two learning-rate schedules in one fit ({names}) would each overwrite the other's rate. "
                "Use one: combine them into one function, or chain torch schedulers "
                "(LRScheduler(lambda opt: SequentialLR(opt, [...], milestones=[...])))."
            )
        self._ready = False  # set up at the first epoch begin, when the length of an epoch is known

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        if not self._ready:
            self._setup()
        if self.kind == "plateau":
            return  # torch's ReduceLROnPlateau moves the rate at epoch ends only
        self._apply(self._count())
        if self.verbose:
            rates = ", ".join(f"{key}: {rate}" for key, rate in self.learner.learning_rates().items() if key != "lr")
            logger.info(
                "Epoch %d: %s setting learning rate to %s%s.",
                epoch + 1,
                type(self).__name__,
                self.last_rates[0],
                f" ({rates})" if rates else "",
            )

    def on_optimizer_step(self) -> None:
        if self.interval == "step":
            self._apply(self._count())  # global_step is already incremented: this is the next step's rate

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.kind == "plateau":
            # The mode is torch's scheduler's own; the Monitor only reads the value (and lists the keys when missing).
            current = Monitor(self.monitor, "min", owner=type(self).__name__).agreed_value(logs, self.learner)
            if current is None:  # an epoch without validation (fit's validation_freq): no step, as Keras
                return
            for scheduler in self.schedulers:
                scheduler.step(current)

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
            self._restore(state, len(groups))
        else:
            # torch's convention: `initial_lr` is the base rate, so a second fit starts from it again.
            self.base_lrs = [float(group.setdefault("initial_lr", group["lr"])) for group in groups]
            self.start, self.start_epoch = self._counter(), self.learner.epoch
            self.scales, self.last_rates, self.unscaled, self.at = [1.0] * len(groups), None, None, None
        self._replay, self._pending = state is not None, None
        if self.kind == "name":
            self._factor = build_schedule(self.schedule, self._span(), self.options)
        elif self.kind == "function":
            self._factor = self.schedule
        elif self.kind in ("factory", "plateau"):
            self._build_schedulers(groups, state)
        self._ready = True

    def _restore(self, state: dict[str, Any], groups: int) -> None:
        self.base_lrs = [float(rate) for rate in state["base_lrs"]]
        if len(self.base_lrs) != groups:
            raise ValueError(
                f"{type(self).__name__}: the saved state has {len(self.base_lrs)} base rates but the optimizers "
                f"have {groups} parameter groups; resume with the same optimizer configuration."
            )
        self.start = int(state["start"])
        self.start_epoch = int(state.get("start_epoch", self.start if self.interval == "epoch" else 0))
        self.scales = [float(scale) for scale in state.get("scales") or [1.0] * groups]
        # The saved scales already hold every change made before the save (see state_dict), so
        # nothing is compared with the restored rates: a resume sets what the saved run would have set.
        self.last_rates, self.unscaled, self.at = None, state.get("unscaled"), state.get("at")

    def _fit_length(self) -> int | None:
        """Epochs or steps from the schedule's start to the end of this fit (None when unknown)."""
        learner = self.learner
        epochs = learner.epochs - self.start_epoch
        if self.interval == "epoch":
            return epochs
        if learner.num_batches is None:
            return None
        return math.ceil(learner.num_batches / learner.grad_accum_steps) * epochs

    def _span(self) -> int:
        unit, total = f"{self.interval}s", self._fit_length()
        if total is None:
            raise ValueError(
                f"LRScheduler({self.schedule!r}, interval='step') is sized from the number of batches, "
                "but the training data has no length; give the data a __len__, use interval='epoch', "
                "or pass a function t -> factor."
            )
        if total - self.warmup < 1:
            raise ValueError(
                f"LRScheduler({self.schedule!r}): warmup={self.warmup} {unit} covers the whole fit "
                f"({total} {unit}); shorten the warm-up or train longer."
            )
        return total - self.warmup

    def _build_schedulers(self, groups: list[dict[str, Any]], state: dict[str, Any] | None) -> None:
        in_use = [group["lr"] for group in groups]
        for group, base in zip(groups, self.base_lrs):
            group["lr"] = group["initial_lr"] = base  # torch schedulers start from the base rates
        self.schedulers = [self.schedule(optimizer) for optimizer in self.learner.optimizers]
        for scheduler in self.schedulers:
            if not isinstance(scheduler, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)):
                raise TypeError(
                    "LRScheduler: schedule is neither a function t -> factor (calling it with 0 failed) nor a "
                    f"factory optimizer -> torch scheduler (calling it with the optimizer returned {scheduler!r})."
                )
        if isinstance(self.schedulers[0], lr_scheduler.ReduceLROnPlateau):
            self._start_plateau(state)
        for group, rate in zip(groups, in_use):
            group["lr"] = rate  # the rates in use stay until the schedule sets its own
        self._stepped = 0

    def _start_plateau(self, state: dict[str, Any] | None) -> None:
        if self.interval != "epoch" or self.warmup:
            raise ValueError(
                "LRScheduler: torch's ReduceLROnPlateau steps once per epoch on a monitored value; "
                f"use interval='epoch' and no warm-up (got interval={self.interval!r}, warmup={self.warmup})."
            )
        self.kind = "plateau"
        for scheduler in self.schedulers:
            plateau = (state or {}).get("plateau") or {}
            best = plateau.get("best")
            scheduler.best = scheduler.mode_worse if best is None else float(best)
            scheduler.num_bad_epochs = int(plateau.get("num_bad_epochs", 0))
            scheduler.cooldown_counter = int(plateau.get("cooldown_counter", 0))
            scheduler.last_epoch = int(plateau.get("last_epoch", 0))

    # ------------------------------------------------------------------ setting the rate

    def _apply(self, count: int) -> None:
        total = self._fit_length()
        if total is not None:
            # After the fit's last step no step follows: its rate stays (rather than the end value, 0 for a cosine).
            count = min(count, total - 1)
        self._absorb_changes()
        unscaled = self._schedule_rates(count)
        rates = [rate * scale for rate, scale in zip(unscaled, self.scales)]
        for group, rate in zip(self._groups(), rates):
            group["lr"] = rate
        self.unscaled, self.last_rates, self.at = unscaled, rates, count

    def _absorb_changes(self) -> None:
        self.scales = self._scales_now()

    def _scales_now(self) -> list[float]:
        """The scales with what others did to the rates since this callback set them, as a factor."""
        scales = list(self.scales)
        if self.last_rates is None:
            return scales
        for index, (group, last) in enumerate(zip(self._groups(), self.last_rates)):
            if group["lr"] != last and last > 0:
                scales[index] *= group["lr"] / last
        return scales

    def _schedule_rates(self, count: int) -> list[float]:
        """The schedule's own rate of every parameter group at `count`, before the scale."""
        if count < self.warmup:
            start = warmup_start(self.warmup_mode, self.warmup_start, self.warmup)
            factor = warmup_factor(self.warmup_mode, start, count, self.warmup)
        elif self.kind == "factory":
            return self._advance(count - self.warmup)
        else:
            factor = self._check_factor(self._factor(count - self.warmup), count - self.warmup)
        return [base * factor for base in self.base_lrs]

    def _advance(self, steps: int) -> list[float]:
        # Each scheduler continues from its own last rates (chainable schedulers read them), not the scaled ones.
        for scheduler in self.schedulers:
            for group, rate in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = rate
        with warnings.catch_warnings():
            if self._replay:  # catching up after a resume, before this process stepped the optimizer
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            while self._stepped < steps:
                for scheduler in self.schedulers:
                    scheduler.step()
                self._stepped += 1
        self._replay = False
        return [float(group["lr"]) for group in self._groups()]

    def _check_factor(self, value: Any, t: int) -> float:
        return check_number(value, f"the factor a function schedule returned at t={t}", minimum=0, owner="LRScheduler")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Where the schedule started, its base rates, the scale others put on it so far, its own last rates (JSON).

        The scales include the changes made since the last rate was set (a reduction at this epoch's
        end), so the state is complete whenever a checkpoint is written.
        """
        if self._pending is not None or self.base_lrs is None:
            return dict(self._pending or {})
        state = {
            "base_lrs": list(self.base_lrs),
            "start": self.start,
            "start_epoch": self.start_epoch,
            "scales": self._scales_now(),
            "unscaled": self.unscaled,
            "at": self.at,
        }
        if self.kind == "plateau":
            scheduler = self.schedulers[0]
            best = None if math.isinf(scheduler.best) else scheduler.best
            state["plateau"] = {
                "best": best,
                "num_bad_epochs": scheduler.num_bad_epochs,
                "cooldown_counter": scheduler.cooldown_counter,
                "last_epoch": scheduler.last_epoch,
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the schedule of `state_dict()` in the next `fit` (the counters come from the learner)."""
        self._pending = dict(state) if state else None


def positional_arity(function: Callable[..., Any]) -> tuple[int, float]:
    """How many positional arguments `function` needs, and how many it takes (inf with `*args`).

    A callable whose signature cannot be read counts as taking any number from 0.
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return 0, math.inf
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    most = math.inf if any(p.kind is p.VAR_POSITIONAL for p in parameters) else len(positional)
    return required, most
