"""`Throughput`: samples and tokens per second, and peak memory, of each epoch's training, in the epoch logs.

It owns the counting: samples from each batch's shape on the host (`learner.batch_samples`), non-padding
tokens as an attention-mask sum accumulated on the device and read once when the epoch's training ends,
the clock around the training phase, and the one collective per epoch that sums the counts over processes.
The values go into the epoch logs, and from there to `History`, the progress bar, train.log, metrics.csv
and TensorBoard.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import torch

from fitorch import Callback
from fitorch.checks import check_bool

try:
    import resource
except ImportError:  # Windows: no getrusage, so no CPU peak memory
    resource = None

MIB = 2**20


class Throughput(Callback):
    """Adds the training speed and the peak memory of every epoch to its logs.

    Keys (in `History`, the progress bar's epoch line, train.log, metrics.csv and TensorBoard):

    - `samples_per_second`: samples trained in the epoch over the wall time of its training phase
      (from `on_epoch_begin` to the start of validation, or to `on_epoch_end` without validation;
      the device's queued work is waited for, once, so the time is the true one).
    - `tokens_per_second`: for dict batches with an `attention_mask` (non-padding tokens: the mask's
      sum) or only `input_ids` (every token); absent for other batches.
    - `peak_memory_mib`: with `memory=True`, the peak memory of the epoch in MiB: on a GPU
      `torch.cuda.max_memory_allocated` (the peak is reset when each epoch begins); on the CPU the
      process's peak resident set size (`resource.getrusage`), which cannot be reset, so it is the
      peak so far. Not on Windows' CPU.

    Nothing is synchronised per step: samples are counted on the host from batch shapes, tokens on
    the device, read once per epoch. Under several processes the counts are summed over processes
    (the repeats the distributed sampler pads the last batch with are not counted), the time and the
    memory are the largest of any process, so the figures are those of the whole job. After an epoch,
    `samples`, `tokens`, `seconds` and `peak_memory_mib` hold its totals. A run resumed inside an
    epoch counts from the resume. List it before loggers you pass yourself, so that they record it.

    Args:
        memory: also log `peak_memory_mib`.

    Raises:
        TypeError: `memory` is not a bool.

    Example:
        >>> learner.fit(model, train, epochs=3, callbacks=[Throughput()])  # doctest: +SKIP
        >>> learner.history.history["samples_per_second"]  # doctest: +SKIP
        [10250.3, 11022.9, 10987.1]
    """

    def __init__(self, memory: bool = True) -> None:
        self.memory = check_bool(memory, "memory", owner="Throughput")
        self.samples, self.tokens, self.seconds = 0, 0, 0.0
        self.peak_memory_mib: float | None = None
        self._device_tokens: torch.Tensor | None = None
        self._started = 0.0
        self._phase_ended = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        device = self.learner.accelerator.device
        if self.memory and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.samples, self.tokens, self._device_tokens, self._phase_ended = 0, 0, None, False
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        samples = self.learner.batch_samples
        self.samples += samples
        inputs = self.learner.inputs
        if not isinstance(inputs, Mapping):
            return
        mask = inputs.get("attention_mask")
        if mask is not None:
            count = mask[:samples].sum()  # stays on the device: no sync
            self._device_tokens = count if self._device_tokens is None else self._device_tokens + count
        elif inputs.get("input_ids") is not None:
            self.tokens += inputs["input_ids"][:samples].numel()

    def on_test_begin(self, logs: dict[str, Any]) -> None:
        if self.learner.fitting:
            self._end_training_phase()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._end_training_phase()
        learner = self.learner
        totals = [float(self.samples), float(self.tokens), self.seconds, self._peak_memory_mib()]
        values = torch.tensor(totals, dtype=torch.float64, device=learner.accelerator.device)
        if learner.accelerator.num_processes > 1:  # every process ends every epoch, so each makes this call
            gathered = learner.accelerator.gather(values.unsqueeze(0))
            values = torch.cat([gathered[:, :2].sum(dim=0), gathered[:, 2:].amax(dim=0)])
        samples, tokens, seconds, memory = values.tolist()
        self.samples, self.tokens, self.seconds = int(samples), int(tokens), seconds
        logs["samples_per_second"] = samples / seconds
        if self.tokens:
            logs["tokens_per_second"] = tokens / seconds
        if self.memory and memory >= 0:
            self.peak_memory_mib = logs["peak_memory_mib"] = memory

    def _end_training_phase(self) -> None:
        """Stop the clock once per epoch, after the device has run the epoch's queued work."""
        if self._phase_ended:
            return
        self._phase_ended = True
        device = self.learner.accelerator.device
        if self._device_tokens is not None:
            self.tokens += int(self._device_tokens)  # the epoch's one read from the device (it waits for it)
        elif device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds = time.perf_counter() - self._started

    def _peak_memory_mib(self) -> float:
        """The epoch's peak memory in MiB; -1 when it cannot be measured (not asked for, or no getrusage)."""
        device = self.learner.accelerator.device
        if not self.memory:
            return -1.0
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / MIB
        if resource is None:
            return -1.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / MIB if sys.platform == "darwin" else peak / 1024
