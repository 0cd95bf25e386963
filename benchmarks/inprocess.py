"""Measurements that run inside one process: `python benchmarks/inprocess.py ab WORKLOAD ROUNDS` or `workers`.

- `ab`: an in-process interleaved A/B of the hand-written loop and `Learner.fit(verbose=0)` on a
  training workload: both warmed up, then ROUNDS rounds in which each runs once (the order
  alternating round by round), so that both see the same machine at the same moments. It
  complements the one-process-per-run figures of `run.py`, whose medians carry each process's
  start-up luck (memory layout, CPU frequency, other load).
- `workers`: `fit` + `evaluate` + `predict` of an in-memory map-style `Dataset` (one
  `__getitem__` per sample, as users write them) with fitorch's default (no worker processes)
  against `num_workers=2`, for 512 and 20,000 samples: the figure behind the default.

Each prints one line `RESULT {json}`, as `child.py` does; `run.py` starts it and reports the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

RESULT_PREFIX = "RESULT "


def _timed(function: Any, *args: Any) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def ab(workload_name: str, rounds: int) -> dict[str, Any]:
    """`rounds` interleaved fits of the reference loop and of `Learner.fit(verbose=0)` in this process."""
    from contenders import FIT_FUNCTIONS, import_framework
    from workloads import WORKLOADS, make_data, make_model, warm_up

    workload = WORKLOADS[workload_name]
    contenders = ["torch", "fitorch_verbose0"]
    for contender in contenders:
        import_framework(contender)
    data = make_data(workload)
    warm_up(workload)
    for contender in contenders:  # one untimed fit each: first-call costs out of the rounds
        FIT_FUNCTIONS[contender](workload, make_model(workload), data)
    runs: dict[str, list[dict[str, float]]] = {contender: [] for contender in contenders}
    for index in range(rounds):
        for contender in contenders if index % 2 == 0 else contenders[::-1]:
            model = make_model(workload)
            runs[contender].append(_timed(FIT_FUNCTIONS[contender], workload, model, data))
    return {"workload": workload_name, "rounds": rounds, "runs": runs}


class InMemory(Dataset):
    """A map-style dataset over in-memory tensors, one sample per `__getitem__`, as users write them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def workers(rounds: int) -> dict[str, Any]:
    """fit + evaluate + predict of `InMemory` with no worker processes (the default) and with 2."""
    from fitorch import Learner

    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for samples in (512, 20_000):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(samples, 64, generator=generator)
        y = torch.randint(10, (samples,), generator=generator)
        data = InMemory(x, y)

        def run(num_workers: int | None, data: Dataset = data) -> None:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
            learner = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0, cpu=True, num_workers=num_workers)
            learner.fit(model, data, epochs=1, batch_size=64)
            learner.evaluate(model, data, batch_size=64)
            learner.predict(model, data, batch_size=64)

        times: dict[str, list[dict[str, float]]] = {"default": [], "num_workers=2": []}
        for index in range(rounds):
            order = [("default", None), ("num_workers=2", 2)]
            for label, count in order if index % 2 == 0 else order[::-1]:
                times[label].append(_timed(run, count))
        results[str(samples)] = times
    return {"rounds": rounds, "results": results}


def main() -> None:
    """Parse the arguments, measure, and print the result line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["ab", "workers"])
    parser.add_argument("workload", nargs="?", default="tiny")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    result = ab(args.workload, args.rounds) if args.what == "ab" else workers(args.rounds)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
