"""`BackupAndRestore`: keep a backup of the running fit and continue from it after a crash, Keras style.

It owns the backup's life: written every epoch or every N steps, offered to `fit` as the state to
resume from when the same fit starts again, deleted when the fit completes. The checkpoint format,
the atomic writes and the restore itself belong to `fitorch.save_checkpoint` and `fitorch.load_checkpoint`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fitorch import Callback, Every, delete_checkpoint, latest_checkpoint, save_checkpoint
from fitorch.checks import check_bool, check_path

logger = logging.getLogger("fitorch")


class BackupAndRestore(Callback):
    """Backs up the fit as it runs; the same fit started again after a crash continues from the backup.

    The backup is one checkpoint directory, replaced atomically at every save, so a process killed
    at any moment (even during a save) leaves a backup that loads. When `fit` starts and a backup
    exists, the learner restores it before `on_train_begin` (model, optimizers, grad scaler,
    counters, RNG states and every callback's state, History included) and continues at the saved
    epoch and step, skipping the batches already trained. A backup takes precedence over
    `fit(resume=...)`: it is the newer state of this same fit. When the fit ends without an error
    (early stopping included), the backup is deleted; after an error or an interruption it stays.

    Checkpoint writers run after every other callback (`saves_checkpoints = True`), so the backup
    holds the other callbacks' state after the epoch or step.

    Args:
        backup_dir: the backup's checkpoint directory; None uses `run_dir/checkpoints/backup`.
            Give each fit its own: a backup of another model fails to load with a message.
        save_freq: `"epoch"`, or a positive int: back up every that many optimizer steps
            (never inside an accumulation window).
        delete_checkpoint: delete the backup when the fit completes.

    Raises:
        TypeError: `backup_dir` is not a path, or `delete_checkpoint` is not a bool.
        ValueError: a bad `save_freq`; at the start of `fit`, no `backup_dir` and no `run_dir`.

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
    ) -> None:
        self.backup_dir = check_path(backup_dir, "backup_dir", allow_none=True, owner="BackupAndRestore")
        self.save_freq = save_freq
        self.save_every = Every.parse(save_freq, "save_freq", owner="BackupAndRestore")
        self.delete_checkpoint = check_bool(delete_checkpoint, "delete_checkpoint", owner="BackupAndRestore")
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
        """The backup to resume from when `fit` starts, or None when there is none (a fresh fit)."""
        path = self.path()
        found = latest_checkpoint(path)
        if found is not None and found != path:
            raise ValueError(
                f"BackupAndRestore(backup_dir={path!r}) is a folder holding other checkpoints ({found}); "
                "give the backup a path of its own, such as 'runs/exp1/backup'."
            )
        if found is not None:
            logger.info("BackupAndRestore: continuing the interrupted fit from %s.", found)
        return found

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.failed = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.save_every.epoch_due(epoch):
            save_checkpoint(self.learner, self.path())

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        if self.save_every.step_due(self.learner):  # the last batch of an epoch too, as ModelCheckpoint does
            save_checkpoint(self.learner, self.path())

    def on_exception(self, exception: BaseException) -> None:
        self.failed = True  # keep the backup: the next start of this fit continues from it

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.failed or not self.delete_checkpoint:
            return
        if self.learner.is_main_process:
            delete_checkpoint(self.path())
        # No process may start another fit and find the backup before it is gone.
        self.learner.accelerator.wait_for_everyone()
