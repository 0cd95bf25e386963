"""One measured run in a fresh process: `python benchmarks/child.py WORKLOAD CONTENDER`.

`run.py` starts this script once per (workload, contender, repeat). It pins torch to one thread,
imports the contender's framework, builds the data and the model, runs the shared warm-up, and
only then starts the clock around the training call itself. The result is printed as one line
`RESULT {json}` on standard output (anything a framework prints is ignored by the parent).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from typing import Any

import torch

RESULT_PREFIX = "RESULT "


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_training(workload_name: str, contender: str) -> dict[str, Any]:
    """Time one fit of `contender` on the workload; returns seconds, peak RSS and the final logs."""
    from contenders import FIT_FUNCTIONS, import_framework
    from workloads import WORKLOADS, make_data, make_model, warm_up

    workload = WORKLOADS[workload_name]
    import_framework(contender)
    data = make_data(workload)
    model = make_model(workload)
    warm_up(workload)
    rss_before = _rss_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    logs = FIT_FUNCTIONS[contender](workload, model, data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "fit_s": wall,
        "fit_cpu_s": cpu,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _rss_mb(),
        "steps": workload.total_steps,
        "threads": torch.get_num_threads(),
        "logs": logs,
    }


def main() -> None:
    """Parse the arguments, run one measurement and print its result line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workload", choices=["tiny", "cnn", "checkpoint"])
    parser.add_argument("contender")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # frameworks' advice (e.g. "use more workers") is noise here
    if args.workload == "checkpoint":
        import checkpointing

        if args.contender == "fitorch" and not checkpointing.fitorch_checkpoint_available():
            result = {"unavailable": "not available yet: fitorch has no save_checkpoint/load_checkpoint"}
        else:
            result = checkpointing.run(args.contender)
    else:
        result = measure_training(args.workload, args.contender)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
