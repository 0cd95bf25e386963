"""When does `Learner(compile=True)` pay off? Eager against compiled fits, each in a fresh process.

For each model, a fit of a few epochs runs eagerly and compiled (`torch.compile`'s default inductor
backend), in turns, each in its own process with one torch thread and inductor's caches disabled, so
that every compiled run pays the full compilation as a first fit on a new machine would. Reported:
the steady training speed (median over the epochs after the first) in samples per CPU second on the
CPU (on a machine shared with other jobs CPU time is the steadier clock, and with one thread it is
the wall time of an idle machine) and in samples per wall second, from `Throughput`, on a GPU (where
the CPU only queues the work); the first epoch's wall time (which holds the compilation); and the
number of epochs after which the compiled run has made up for it.

Models (AdamW, cross-entropy, no validation):
- "mlp": the "tiny" workload's MLP (64-256-256-10, batch 64): three matrix products and two ReLUs a step.
- "residual": 8 residual blocks (LayerNorm, Linear 64-64, x * sigmoid(1.702 x)), batch 64: many small
  element-wise operations between the matrix products, which inductor fuses.
- "transformer": a 2-layer transformer encoder (width 128, 4 heads, sequence 64, batch 32).

Usage:
    python benchmarks/compile.py                    # every model, 3 repeats: about 5 minutes on 2 cores
    python benchmarks/compile.py --models mlp --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

MODELS = ("mlp", "residual", "transformer")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}


class Residual(nn.Module):
    """x + h * sigmoid(1.702 h), h = Linear(LayerNorm(x)): a block of small element-wise operations."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.linear = nn.LayerNorm(width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(self.norm(x))
        return x + h * torch.sigmoid(1.702 * h)


class Encoder(nn.Module):
    """Token embeddings, a 2-layer transformer encoder, mean pooling and a linear head."""

    def __init__(self, vocabulary: int = 1000, width: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embedding(tokens)).mean(dim=1))


def workload(name: str) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], int, int]:
    """The model, the data, the batch size and the epochs of one benchmark model."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "mlp":
        x = torch.randn(8192, 64, generator=generator)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        return model, (x, x[:, :10].argmax(dim=1)), 64, 5
    if name == "residual":
        x = torch.randn(4096, 16, generator=generator)
        model = nn.Sequential(nn.Linear(16, 64), *[Residual(64) for _ in range(8)], nn.Linear(64, 10))
        return model, (x, x[:, :10].argmax(dim=1)), 64, 5
    tokens = torch.randint(1000, (512, 64), generator=generator)
    return Encoder(), (tokens, tokens[:, 0] % 10), 32, 3


class CpuClock:
    """A callback (made lazily: fitorch is imported in the child only) timing each epoch in CPU seconds."""

    @staticmethod
    def make() -> object:
        from fitorch import Callback

        class Clock(Callback):
            def __init__(self) -> None:
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs):
                self._started = time.process_time()

            def on_epoch_end(self, epoch, logs):
                self.seconds.append(time.process_time() - self._started)

        return Clock()


def child(name: str, compiled: bool) -> dict[str, float]:
    """One fit in this process; returns its speed figures."""
    from fitorch import Learner
    from fitorch.callbacks import Throughput

    torch.set_num_threads(1)
    model, data, batch_size, epochs = workload(name)
    throughput, clock = Throughput(memory=False), CpuClock.make()
    learner = Learner(loss="cross_entropy", optimizer="adamw", lr=1e-3, verbose=0, seed=0, compile=compiled)
    history = learner.fit(model, data, epochs, batch_size=batch_size, shuffle=False, callbacks=[throughput, clock])
    samples, wall_rates = len(data[0]), history.history["samples_per_second"]
    on_cpu = learner.accelerator.device.type == "cpu"
    rates = [samples / seconds for seconds in clock.seconds] if on_cpu else wall_rates
    return {
        "first_epoch_seconds": samples / wall_rates[0],
        "steady_samples_per_second": statistics.median(rates[1:]),
        "epoch_samples": samples,
    }


def run(name: str, compiled: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", name, "--compiled" if compiled else "--eager"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f"{name} compiled={compiled} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(name: str, runs: dict[bool, list[dict[str, float]]]) -> str:
    eager, compiled = ({key: statistics.median(r[key] for r in runs[c]) for key in runs[c][0]} for c in (False, True))
    speedup = compiled["steady_samples_per_second"] / eager["steady_samples_per_second"]
    extra = compiled["first_epoch_seconds"] - eager["first_epoch_seconds"]  # mostly compilation
    saved_per_epoch = eager["epoch_samples"] / eager["steady_samples_per_second"] - (
        compiled["epoch_samples"] / compiled["steady_samples_per_second"]
    )
    break_even = f"{extra / saved_per_epoch:.0f} epochs" if saved_per_epoch > 0 else "never"
    return (
        f"| {name} | {eager['steady_samples_per_second']:.0f} | {compiled['steady_samples_per_second']:.0f} | "
        f"{speedup:.2f}x | {eager['first_epoch_seconds']:.1f} s | {compiled['first_epoch_seconds']:.1f} s "
        f"| {break_even} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default %(default)s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(arguments.child, arguments.compiled)))
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    clock = "wall" if torch.cuda.is_available() else "CPU"
    print(f"torch {torch.__version__}, {device}, one thread per process, inductor caches off")
    print(
        f"| model | eager samples/{clock} s | compiled samples/{clock} s | speed-up | eager 1st epoch "
        "| compiled 1st epoch | pays off after |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in arguments.models.split(","):
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(arguments.repeats):
            for compiled in (False, True):  # in turns, so that a busy moment hits both alike
                runs[compiled].append(run(name, compiled))
        print(report(name, runs), flush=True)


if __name__ == "__main__":
    main()
