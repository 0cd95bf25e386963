"""`BackupAndRestore`: keep a backup of the running fit and continue from it after a crash, Keras style.

It owns the backup's life: written every epoch or every N steps (with the one before it, when asked),
offered to `fit` as the state to resume from when the same fit starts again, and, when the fit
completes, replaced by a record that it did. The checkpoint format, the atomic writes and the restore
itself belong to `fitorch.save_checkpoint` and `fitorch.load_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

from fitorch import Callback, Every, delete_checkpoint, latest_checkpoint, save_checkpoint, verify_checkpoint
from fitorch.checks import check_bool, check_folder_creatable, check_path

logger = logging.getLogger("fitorch")


class BackupAndRestore(Callback):
    """Backs up the fit as it runs; the same fit started again after a crash continues from the backup.

    The backup is one checkpoint directory, replaced atomically at every save, so a process killed
    at any moment (even during a save) leaves a backup that loads. When `fit` starts and a backup
    exists, the learner restores it before `on_train_begin` (model, optimizers, grad scaler,
    counters, RNG states and every callback's state, History included) and continues at the saved
    epoch and step, skipping the batches already trained. A backup takes precedence over
    `fit(resume=...)`: it is the newer state of this same fit.

    A preemption signal (SIGTERM, SIGUSR1) during the fit ends it at the next optimizer step with a
    backup of that point (see `fitorch.Preempted`); the same command continues from it.

    When the fit ends without an error (early stopping included), the backup is deleted, and a
    small record, `<backup_dir>.completed`, says the fit completed; after an error or an
    interruption the backup stays. The same command started again after completion (a requeued
    job, a kill after the end) does not train from scratch: it resumes from the newest checkpoint
    the run wrote under `run_dir` (`checkpoints/last` of a finished run trains nothing), and without
    one it refuses with a message. Delete the record to train again from scratch.

    Checkpoint writers run after every other callback (`saves_checkpoints = True`), so the backup
    holds the other callbacks' state after the epoch or step.

    Args:
        backup_dir: the backup's checkpoint directory; None uses `run_dir/checkpoints/backup`.
            Give each fit its own: a backup of another model fails to load with a message.
        save_freq: `"epoch"`, or a positive int: back up every that many optimizer steps
            (never inside an accumulation window).
        delete_checkpoint: delete the backup when the fit completes (keeping the record); False
            keeps it, and the same command then resumes from it and trains nothing.
        double_checkpoint: also keep the backup before the newest one (`<backup_dir>.previous`);
            when the newest is damaged, the fit continues from the previous one (Keras's option).

    Raises:
        TypeError: `backup_dir` is not a path, or a flag is not a bool.
        ValueError: a bad `save_freq`; at the start of `fit`, no `backup_dir` and no `run_dir`, a
            path under a file, or a completed fit with nothing to resume from.

    Example:
        >>> backup = BackupAndRestore("runs/exp1/backup")
        >>> learner.fit(model, train, epochs=50, callbacks=[backup])  # killed at epoch 17 ...  # doctest: +SKIP
        >>> learner.fit(model, train, epochs=50, callbacks=[backup])  # ... continues at epoch 17  # doctest: +SKIP
    """

    saves_checkpoints = True

    def __init__(
        self,
        backup_dir: str | os.PathLike | None = None,
        save_freq: str | int = "epoch",
        delete_checkpoint: bool = True,
        double_checkpoint: bool = False,
    ) -> None:
        self.backup_dir = check_path(backup_dir, "backup_dir", allow_none=True, owner="BackupAndRestore")
        self.save_freq = save_freq
        self.save_every = Every.parse(save_freq, "save_freq", owner="BackupAndRestore")
        self.delete_checkpoint = check_bool(delete_checkpoint, "delete_checkpoint", owner="BackupAndRestore")
        self.double_checkpoint = check_bool(double_checkpoint, "double_checkpoint", owner="BackupAndRestore")
        self.failed = False

    def path(self) -> str:
        """The backup's directory.

        Raises:
            ValueError: no `backup_dir` was given and the learner has no `run_dir`.
        """
        if self.backup_dir is not None:
            return self.backup_dir
        run_dir = self.learner.run_dir if self.learner is not None else None
        if run_dir is None:
            raise ValueError(
                "BackupAndRestore: give a backup_dir, or set Learner(run_dir=...) to back up under "
                "run_dir/checkpoints/backup."
            )
        return os.path.join(run_dir, "checkpoints", "backup")

    def resume_checkpoint(self) -> str | None:
        """The checkpoint to resume from when `fit` starts, or None for a fresh fit.

        The backup (or, when it is damaged and `double_checkpoint` is on, the one before it); after a
        completed fit, the newest checkpoint under `run_dir`.
        """
        path = self.path()
        found = latest_checkpoint(path)
        if found is not None and found != path:
            raise ValueError(
                f"BackupAndRestore(backup_dir={path!r}) is a folder holding other checkpoints ({found}); "
                "give the backup a path of its own, such as 'runs/exp1/backup'."
            )
        if found is None and self.double_checkpoint:
            found = latest_checkpoint(_previous(path))
        elif found is not None and self.double_checkpoint:
            found = _intact_or_previous(found)
        if found is not None:
            logger.info("BackupAndRestore: continuing the interrupted fit from %s.", found)
            return found
        return self._after_completion(path)

    def _after_completion(self, path: str) -> str | None:
        record = _record_path(path)
        if not os.path.isfile(record):
            return None
        run_dir = self.learner.run_dir
        newest = latest_checkpoint(run_dir) if run_dir is not None and os.path.isdir(run_dir) else None
        if newest is None:
            raise ValueError(
                f"BackupAndRestore: this fit already completed ({record}), and its backup was deleted with "
                "no other checkpoint of the run to continue from, so starting it again would train from "
                f"scratch. To train again from scratch, delete {record}; to keep the final state for a rerun, "
                "use BackupAndRestore(delete_checkpoint=False) or Learner(run_dir=...)."
            )
        logger.info("BackupAndRestore: this fit already completed (%s); continuing from %s.", record, newest)
        return newest

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.failed = False
        if self.learner.is_main_process:  # a path under a file fails now, not after an epoch of training
            check_folder_creatable(self.path(), "backup_dir", owner="BackupAndRestore")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.save_every.epoch_due(epoch):
            self._back_up()

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        if self.save_every.step_due(self.learner):  # the last batch of an epoch too, as ModelCheckpoint does
            self._back_up()

    def _back_up(self) -> None:
        path = self.path()
        if self.double_checkpoint and self.learner.is_main_process and os.path.isdir(path):
            # The newest becomes the previous one; a kill before the new save leaves the previous to resume.
            delete_checkpoint(_previous(path))
            os.replace(path, _previous(path))
        save_checkpoint(self.learner, path)

    def on_exception(self, exception: BaseException) -> None:
        self.failed = True  # keep the backup: the next start of this fit continues from it

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.learner.preempted is not None and not self.failed:
            self._back_up()  # stopped by SIGTERM/SIGUSR1 at a step boundary: the same command resumes here
            return
        if self.failed or not self.delete_checkpoint:
            return
        if self.learner.is_main_process:
            path = self.path()
            _write_record(_record_path(path), self.learner)  # first: a kill after it still knows the fit ended
            delete_checkpoint(path)
            delete_checkpoint(_previous(path))
        # No process may start another fit and find the backup before it is gone.
        self.learner.accelerator.wait_for_everyone()


def _previous(path: str) -> str:
    return os.path.abspath(path) + ".previous"


def _record_path(path: str) -> str:
    return os.path.abspath(path) + ".completed"


def _intact_or_previous(path: str) -> str | None:
    try:
        verify_checkpoint(path)
        return path
    except ValueError as error:
        previous = latest_checkpoint(_previous(path))
        logger.warning("BackupAndRestore: the backup %s is damaged (%s); continuing from %s.", path, error, previous)
        return previous


def _write_record(record: str, learner: Any) -> None:
    """Write the completion record atomically (beside it, then renamed into place)."""
    content = {
        "completed": datetime.now(timezone.utc).isoformat(),
        "epochs": learner.epochs,
        "epoch": learner.epoch,
        "global_step": learner.global_step,
    }
    temporary = f"{record}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(content, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, record)
