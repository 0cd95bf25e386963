"""Preemption: SIGTERM and SIGUSR1 during `fit` end in an agreed checkpoint and a documented exit code.

Slurm, Kubernetes and spot instances send SIGTERM (Slurm can send SIGUSR1 ahead of time) before they
stop a job. While `fit` runs, `PreemptionWatch` turns these signals into a flag; the learner reads it
at the next end of an optimizer step, every process agrees, the fit stops there, the checkpoint
writers save (they see `learner.preempted`), and `fit` raises `Preempted`, whose exit code is
128 + the signal number (143 for SIGTERM, as a process killed by it). The previous handlers are put
back when `fit` ends.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Preempted(SystemExit):
    """Raised by `fit` after a preemption signal, once the fit stopped at a step and the checkpoints are saved.

    A `SystemExit`, so an uncaught one ends the process quietly with `code` = 128 + the signal
    number (143 for SIGTERM), the code a scheduler expects of a preempted job, and the same command
    resumes from the checkpoint. Catch it (`except fitorch.Preempted`) to do something else first.

    Attributes:
        signal: the signal number that asked for the stop.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal = signum


class PreemptionWatch:
    """Records SIGTERM and SIGUSR1 while installed; only the main thread can install signal handlers."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch the preemption signals (in the main thread; elsewhere they keep their handlers)."""
        self.signal = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum  # only a flag: the loop stops at the next step boundary

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
