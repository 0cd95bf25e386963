"""The named learning-rate schedules of `LRScheduler`, and its warm-up, as pure functions of a counter.

Each schedule is built for a `span` of epochs or steps and returns a factor of the base rate for
every `t` in `[0, span)`. The end point follows torch's `CosineAnnealingLR(T_max=span)` and
`LinearLR(total_iters=span)`: a schedule reaches its end value at `t == span`, the step after the
last one trained, so no step of a fit trains at a cosine's or a line's end value of 0. Warm-up
follows the same rule at its other end: the default linear warm-up rises in equal steps from 0
(before the first step, never trained) to 1 (the first step after warm-up).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

from fitorch.checks import check_int, check_number

Factor = Callable[[int], float]
# The default first warm-up factor per mode; None for "linear": 1 / (warmup + 1), one equal step above 0.
WARMUP_STARTS: dict[str, float | None] = {"linear": None, "exponential": 0.01, "constant": 0.1}


def _progress(t: int, span: int) -> float:
    """Where `t` lies in a schedule of `span` steps: 0 at the first step, 1 at the step after the last."""
    return min(t / span, 1.0)


def _cosine(span: int, min_factor: float = 0.0) -> Factor:
    _check_fraction(min_factor, "min_factor")
    return lambda t: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * _progress(t, span)))


def _linear(span: int, end_factor: float = 0.0) -> Factor:
    _check_fraction(end_factor, "end_factor")
    return lambda t: 1 + (end_factor - 1) * _progress(t, span)


def _exponential(span: int, gamma: float | None = None) -> Factor:
    if gamma is None:
        gamma = 0.01 ** (1 / span)  # reaches 1% of the base rate at the end of the schedule
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


def build_schedule(name: str, span: int, options: dict[str, Any]) -> Factor:
    """The factor function of the named schedule over `span` epochs or steps.

    Raises:
        ValueError: a bad option value.
        TypeError: an option the schedule does not take.
    """
    try:
        return SCHEDULES[name](span, **options)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        raise TypeError(f"LRScheduler({name!r}) got an unknown option: {error}.") from None


def warmup_start(mode: str, start: float | None, warmup: int) -> float:
    """The first warm-up factor: `start` when given, else the mode's default."""
    if start is not None:
        return start
    default = WARMUP_STARTS[mode]
    return 1 / (warmup + 1) if default is None else default


def warmup_factor(mode: str, start: float, count: int, warmup: int) -> float:
    """The warm-up multiplier at `count` (0 <= count < warmup); it reaches 1 at `count == warmup`."""
    fraction = count / warmup
    if mode == "linear":
        return start + (1 - start) * fraction
    if mode == "exponential":
        return start ** (1 - fraction)
    return start


def _check_fraction(value: Any, name: str) -> None:
    check_number(value, name, minimum=0, maximum=1, owner="LRScheduler")


def _check_positive(value: Any, name: str) -> None:
    check_number(value, name, minimum=0, open_min=True, owner="LRScheduler")
