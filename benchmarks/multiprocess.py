"""Two processes: a hand-written DDP loop against `Learner.fit`, each run under `torchrun --nproc_per_node 2`.

`run.py` starts `python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/multiprocess.py
WORKLOAD CONTENDER` once per (workload, contender, repeat), on the CPU with gloo. Every rank pins torch
to one thread, joins the process group, imports the contender's framework, builds the data and the
model, runs the shared warm-up (which also builds the first optimizer, whose first construction imports
`torch._dynamo`, about 1.5 s), and waits at a barrier; only then does the clock start, on both ranks
at once. The clock stops when the rank has the last epoch's global values in hand. Rank 0 prints one
line `RESULT {json}`: the slower rank's wall time (the job's), the CPU time of both ranks together,
and rank 0's memory.

The reference is `fit_ddp`, the loop a careful user writes for several processes:
`DistributedSampler` (reshuffled per epoch with `set_epoch`), `DistributedDataParallel`, AdamW,
and the epochs of the single-process reference loop (`contenders.train_epoch`, `evaluate_epoch`:
loss and accuracy accumulated as tensors), whose sums are all-reduced once per epoch.
"""

from __future__ import annotations

import gc
import json
import math
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # torchrun starts this file by path
from contenders import (  # noqa: E402
    Data,
    Logs,
    evaluate_epoch,
    fit_fitorch,
    fit_fitorch_verbose0,
    import_framework,
    train_epoch,
)
from workloads import SEED, WORKLOADS, Workload, make_data, make_model, warm_up  # noqa: E402

PROCESSES = 2
RESULT_PREFIX = "RESULT "


def _global(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, float]:
    """Global mean loss and accuracy: the three sums all-reduced in one collective call."""
    sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), dtype=torch.float64)])
    dist.all_reduce(sums)
    loss_total, correct_total, seen_total = sums.tolist()
    return loss_total / seen_total, correct_total / seen_total


def fit_ddp(workload: Workload, model: nn.Module, data: Data) -> Logs:
    """The reference: a hand-written DistributedDataParallel loop."""
    x, y, x_val, y_val = data
    train_set, val_set = TensorDataset(x, y), TensorDataset(x_val, y_val)
    train_sampler = DistributedSampler(train_set, shuffle=True, seed=SEED)
    train_loader = DataLoader(train_set, batch_size=workload.batch_size, sampler=train_sampler)
    val_loader = DataLoader(val_set, batch_size=workload.batch_size, sampler=DistributedSampler(val_set, shuffle=False))
    model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=workload.lr)
    loss_fn = nn.CrossEntropyLoss()
    logs: Logs = {}
    for epoch in range(workload.epochs):
        train_sampler.set_epoch(epoch)
        logs = dict(zip(("loss", "accuracy"), _global(*train_epoch(model, train_loader, optimizer, loss_fn))))
        logs.update(zip(("val_loss", "val_accuracy"), _global(*evaluate_epoch(model, val_loader, loss_fn))))
    return logs


FIT_FUNCTIONS = {"ddp": fit_ddp, "fitorch": fit_fitorch, "fitorch_verbose0": fit_fitorch_verbose0}
LABELS = {
    "ddp": "hand-written DDP loop (reference)",
    "fitorch": "Learner.fit, defaults (progress bar to devnull)",
    "fitorch_verbose0": "Learner.fit(verbose=0)",
}
# The workloads of run.py that run here, and the single-process workload each one trains.
WORKLOAD_OF = {"tiny_2proc": "tiny", "cnn_2proc": "cnn"}


def steps_per_process(workload: Workload) -> int:
    """Optimizer steps each process takes in the whole fit (its shard, the short last batch kept)."""
    return math.ceil(workload.train_samples / PROCESSES / workload.batch_size) * workload.epochs


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(workload: Workload, contender: str) -> dict[str, Any]:
    """Time one fit on this rank, from a barrier to the last epoch's global values; rank 0 gets every rank's."""
    import_framework("fitorch" if contender != "ddp" else "torch")
    data = make_data(workload)
    model = make_model(workload)
    warm_up(workload)
    rss_before = _rss_mb()
    dist.barrier()  # both ranks start the clock together
    wall, cpu = time.perf_counter(), time.process_time()
    logs = FIT_FUNCTIONS[contender](workload, model, data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mine = {"wall": wall, "cpu": cpu, "rss_before": rss_before, "rss": _rss_mb()}
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    return {
        "fit_s": max(rank["wall"] for rank in ranks),
        "fit_cpu_s": sum(rank["cpu"] for rank in ranks),
        "rank_fit_s": [rank["wall"] for rank in ranks],
        "rss_before_mb": ranks[0]["rss_before"],
        "peak_rss_mb": ranks[0]["rss"],
        "steps": steps_per_process(workload),
        "processes": len(ranks),
        "logs": logs,
    }


def main() -> None:
    """Join the process group, run one measurement, print rank 0's result line."""
    workload_name, contender = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # frameworks' advice (e.g. "use more workers") is noise here
    # Joined before the clock for every contender, the way a user's script (or Accelerate) joins it.
    dist.init_process_group("gloo")
    result = measure(WORKLOADS[WORKLOAD_OF.get(workload_name, workload_name)], contender)
    if dist.get_rank() == 0:
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    dist.barrier()
    gc.collect()  # before the group goes: a cycle still holding it aborts the process at exit (docs/distributed.md)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
