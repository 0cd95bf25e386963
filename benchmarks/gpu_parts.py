"""The pieces of `benchmarks/gpu.py`: models, data, the three training contenders, and the probes.

Models start from a fixed seed with random weights (nothing is downloaded): torchvision's ResNet-18,
a small transformer encoder classifier written here in plain torch, and the MLP of the CPU
benchmarks' "tiny" workload. Data are random tensors in host memory (pinned on CUDA) served one
whole batch per item, so the host does no per-sample work and what is timed is the framework and
the device.

The contenders train the same model on the same loader with the same optimizer (AdamW), loss
(cross-entropy), batch size and precision, and call `tick(index)` on their tickers after each step
(a `StepClock` that times the steady state, a `SyncWindow` that counts host syncs):

- `fit_fitorch`: `Learner.fit(verbose=0)`;
- `fit_accelerate`: a hand-written Accelerate loop (`prepare`, `accelerator.backward`), with the
  non-blocking copies fitorch asks for on CUDA;
- `fit_torch`: a hand-written PyTorch loop under `torch.autocast`, with `torch.amp.GradScaler` for fp16.
"""

from __future__ import annotations

import gc
import io
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fitorch import Callback, Learner

LR = 1e-3
DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SYNC_WARNING = "synchroniz"  # CUDA's sync debug mode warns "called a synchronizing CUDA operation"


# ---------------------------------------------------------------------------- models and data


class TinyTransformer(nn.Module):
    """A small transformer encoder classifier: token embedding, learned positions, encoder, mean pool, head."""

    def __init__(self, vocab: int, dim: int, heads: int, layers: int, length: int, classes: int = 10) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embedding(tokens) + self.position).mean(dim=1))


@dataclass(frozen=True)
class Workload:
    """One model, its batches and how long to train it.

    Attributes:
        name: the key in the results.
        description: one line for the report.
        build: builds the model (random weights, fixed seed).
        batch: draws one batch `(inputs, targets)` on the CPU from a generator.
        batch_size: samples per batch.
        steps: training steps of one run (one epoch).
        warmup: steps before the clock starts.
        probe: the name of an inner layer whose outputs show the precision of the forward pass.
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    batch_size: int
    steps: int
    warmup: int
    probe: str

    def model(self) -> nn.Module:
        """A fresh model, initialised from the fixed seed."""
        torch.manual_seed(0)
        return self.build()


def resnet18(batch_size: int, image: int, steps: int, warmup: int) -> Workload:
    """torchvision's ResNet-18 (1000 classes) on random `image`-pixel RGB inputs."""
    from torchvision.models import resnet18 as build

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.randn(batch_size, 3, image, image, generator=generator)
        return inputs, torch.randint(1000, (batch_size,), generator=generator)

    description = f"ResNet-18 (torchvision, random init), {image}x{image} RGB, batch {batch_size}"
    return Workload("resnet18", description, build, batch, batch_size, steps, warmup, "fc")


def transformer(batch_size: int, length: int, dim: int, layers: int, steps: int, warmup: int) -> Workload:
    """`TinyTransformer` over random token ids, 10 classes."""

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(1000, (batch_size, length), generator=generator)
        return tokens, torch.randint(10, (batch_size,), generator=generator)

    def build() -> nn.Module:
        return TinyTransformer(1000, dim, max(1, dim // 64), layers, length)

    description = f"transformer encoder ({layers} layers, width {dim}), {length} tokens, batch {batch_size}"
    return Workload("transformer", description, build, batch, batch_size, steps, warmup, "head")


def mlp(batch_size: int, steps: int, warmup: int) -> Workload:
    """The MLP 64-256-256-10 of the CPU "tiny" workload: a step short enough for per-step overhead to show."""

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.randn(batch_size, 64, generator=generator)
        return inputs, torch.randint(10, (batch_size,), generator=generator)

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    description = f"MLP 64-256-256-10, batch {batch_size}"
    return Workload("mlp", description, build, batch, batch_size, steps, warmup, "4")


class BatchPool(Dataset):
    """`length` items, each a whole batch, cycling over a few distinct batches held in host memory."""

    def __init__(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        self.batches, self.length = list(batches), length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches[index % len(self.batches)]


def pooled_loader(workload: Workload, device: torch.device, pool: int = 4) -> DataLoader:
    """A loader of `workload.steps` batches from a pool of `pool` random batches (pinned on CUDA).

    Pinning a pinned tensor returns it, so the loader copies nothing on the host; `batch_size=None`
    because every item already is a batch.
    """
    generator = torch.Generator().manual_seed(0)
    batches = [workload.batch(generator) for _ in range(pool)]
    cuda = device.type == "cuda"
    if cuda:
        batches = [(inputs.pin_memory(), targets.pin_memory()) for inputs, targets in batches]
    return DataLoader(BatchPool(batches, workload.steps), batch_size=None, pin_memory=cuda)


def host_tensors(workload: Workload, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batches` random batches as one `(x, y)` pair of CPU tensors, for fitorch to build its own loader."""
    generator = torch.Generator().manual_seed(0)
    drawn = [workload.batch(generator) for _ in range(batches)]
    return torch.cat([inputs for inputs, _ in drawn]), torch.cat([targets for _, targets in drawn])


class NullTerminal(io.TextIOBase):
    """A stream that discards what it gets and says it is a terminal, so a progress bar draws as on a console.

    To a stream that is not a terminal, fitorch's `ProgressBar` writes one line per epoch instead of
    a bar; a benchmark of the bar needs the bar.
    """

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


# ---------------------------------------------------------------------------- tickers


class Ticker(Protocol):
    """Something told the index of each training step once the step is done."""

    def tick(self, index: int) -> None: ...


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Times the steady state: from the end of step `warmup - 1` to the end of step `steps - 1`.

    The device is synchronised at both ends (two host syncs per run, the same for every contender).
    """

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        if not 1 <= warmup < steps:
            raise ValueError(f"StepClock needs 1 <= warmup < steps, got warmup={warmup}, steps={steps}.")
        self.warmup, self.steps, self.device = warmup, steps, device
        self.started: float | None = None
        self.seconds: float | None = None

    def tick(self, index: int) -> None:
        if index == self.warmup - 1:
            synchronize(self.device)
            self.started = time.perf_counter()
        elif index == self.steps - 1 and self.started is not None:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self.started

    def samples_per_second(self, batch_size: int) -> float:
        """Training samples per second over the timed steps."""
        if self.seconds is None:
            raise RuntimeError("the run ended before its last step: no time was taken")
        return (self.steps - self.warmup) * batch_size / self.seconds


class SyncCounter:
    """Counts host-device synchronisations while open, through CUDA's sync debug mode.

    `torch.cuda.set_sync_debug_mode("warn")` makes every synchronising CUDA call (a blocking copy,
    `.item()`, `cudaStreamSynchronize`) raise a warning; they are recorded inside `with counter:`,
    only between `open()` and `close()`, with the Python line that caused each. Without CUDA the
    counter records nothing and says so (`measured` is False).
    """

    def __init__(self, device: torch.device) -> None:
        self.measured = device.type == "cuda"
        self.is_open = False
        self.where: Counter[str] = Counter()
        self._catcher: Any = None
        self._records: list[warnings.WarningMessage] = []

    def __enter__(self) -> SyncCounter:
        self._catcher = warnings.catch_warnings(record=True)
        self._records = self._catcher.__enter__()
        warnings.simplefilter("always")  # every sync, not once per line
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
        self._catcher.__exit__(*exc_info)
        for record in self._records:
            if SYNC_WARNING in str(record.message):
                self.where[f"{record.filename}:{record.lineno}"] += 1

    def open(self) -> None:
        self.is_open = True
        if self.measured:
            torch.cuda.set_sync_debug_mode("warn")

    def close(self) -> None:
        if self.is_open and self.measured:
            torch.cuda.set_sync_debug_mode("default")
        self.is_open = False

    @property
    def count(self) -> int | None:
        """Syncs seen while open; None when nothing could be measured (no CUDA)."""
        return sum(self.where.values()) if self.measured else None


class SyncWindow:
    """Opens `counter` after step `first` and closes it after step `last`: the steady-state steps between."""

    def __init__(self, counter: SyncCounter, first: int, last: int) -> None:
        self.counter, self.first, self.last = counter, first, last

    @property
    def steps(self) -> int:
        """Steps whose loading and training happen inside the window."""
        return self.last - self.first

    def tick(self, index: int) -> None:
        if index == self.first:
            self.counter.open()
        elif index == self.last:
            self.counter.close()


class Ticks(Callback):
    """Tells the tickers about each training step of a fit, from `on_train_batch_end` (logs left unread)."""

    def __init__(self, tickers: Sequence[Ticker]) -> None:
        self.tickers = list(tickers)

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        for ticker in self.tickers:
            ticker.tick(batch)


# ---------------------------------------------------------------------------- contenders


def fit_fitorch(
    model: nn.Module,
    data: Any,
    precision: str,
    device: torch.device,
    tickers: Sequence[Ticker] = (),
    callbacks: Sequence[Callback] = (),
    **fit_options: Any,
) -> float:
    """`Learner.fit(verbose=0)` for one epoch; returns the epoch's mean loss."""
    learner = Learner(
        loss="cross_entropy", optimizer="adamw", lr=LR, mixed_precision=precision, verbose=0, cpu=device.type == "cpu"
    )
    history = learner.fit(model, data, epochs=1, callbacks=[Ticks(tickers), *callbacks], **fit_options)
    return history.history["loss"][-1]


def fresh_accelerator(precision: str, device: torch.device) -> Any:
    """An `Accelerator` for `precision`, with non-blocking copies on CUDA (what fitorch asks for)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    AcceleratorState._reset_state()  # one global state per process; each run asks for its own precision
    return Accelerator(
        mixed_precision=precision,
        cpu=device.type == "cpu",
        dataloader_config=DataLoaderConfiguration(non_blocking=device.type == "cuda"),
    )


def fit_accelerate(
    model: nn.Module, loader: DataLoader, precision: str, device: torch.device, tickers: Sequence[Ticker] = ()
) -> float:
    """A hand-written Accelerate loop for one epoch; returns the mean loss over its batches."""
    accelerator = fresh_accelerator(precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    total, steps = torch.zeros((), device=accelerator.device), 0
    for index, (inputs, targets) in enumerate(loader):
        loss = F.cross_entropy(model(inputs), targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
        steps = index + 1
        for ticker in tickers:
            ticker.tick(index)
    mean = total.item() / steps  # read once, after the epoch
    accelerator.free_memory()
    return mean


def fit_torch(
    model: nn.Module, loader: DataLoader, precision: str, device: torch.device, tickers: Sequence[Ticker] = ()
) -> float:
    """A hand-written PyTorch loop for one epoch (autocast over the forward, as Accelerate does)."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    total, steps = torch.zeros((), device=device), 0
    for index, (inputs, targets) in enumerate(loader):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(inputs)
        loss = F.cross_entropy(outputs.float(), targets)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
        steps = index + 1
        for ticker in tickers:
            ticker.tick(index)
    return total.item() / steps


CONTENDERS: dict[str, Callable[..., float]] = {"fitorch": fit_fitorch, "accelerate": fit_accelerate, "torch": fit_torch}
LABELS = {
    "fitorch": "Learner.fit(verbose=0)",
    "accelerate": "hand-written Accelerate loop",
    "torch": "hand-written PyTorch loop (torch.autocast)",
}


# ---------------------------------------------------------------------------- memory and precision probes


def release(device: torch.device) -> None:
    """Free what the last run left on the GPU (cycles included) and restart the peak-memory count."""
    if device.type != "cuda":
        return  # nothing is measured on the CPU, and a full collection costs a tenth of a second
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def allocated(device: torch.device) -> int | None:
    """Bytes the caching allocator holds for tensors now; None on the CPU."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def peak_allocated(device: torch.device) -> int | None:
    """Peak bytes held for tensors since the last `release`; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def autocast_state(device_type: str) -> tuple[bool, str | None]:
    """Whether autocast is on for `device_type` here, and its dtype."""
    enabled = torch.is_autocast_enabled(device_type)
    return enabled, str(torch.get_autocast_dtype(device_type)).replace("torch.", "") if enabled else None


class PrecisionProbe:
    """Records, for each labelled call, the autocast state and output dtype of every forward of one inner layer.

    The hook sits on an inner layer because Accelerate applies autocast around the model's own
    `forward`: an inner layer's hook runs inside it, a hook on the model itself would not.
    """

    def __init__(self, model: nn.Module, layer: str, device_type: str) -> None:
        self.device_type = device_type
        self.label = "unlabelled"
        self.seen: dict[str, Counter[str]] = {}
        model.get_submodule(layer).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        enabled, dtype = autocast_state(self.device_type)
        key = (
            f"autocast {dtype} -> {str(output.dtype).replace('torch.', '')}"
            if enabled
            else (f"no autocast -> {str(output.dtype).replace('torch.', '')}")
        )
        self.seen.setdefault(self.label, Counter())[key] += 1

    def summary(self) -> dict[str, dict[str, int]]:
        """`{call label: {"autocast bf16 -> bfloat16": forwards, ...}}`."""
        return {label: dict(counts) for label, counts in self.seen.items()}
