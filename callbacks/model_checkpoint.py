"""`ModelCheckpoint`: save checkpoints during `fit`, every epoch or every N steps, Keras style.

It owns when to save (the frequency, "only when the monitored value improves"), where (the
`filepath` pattern) and how many to keep. What a checkpoint holds and how it is written atomically
belongs to `fitorch.save_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import string
from typing import Any

from fitorch import Callback, Every, Monitor, delete_checkpoint, save_checkpoint
from fitorch.checks import check_bool, check_folder_creatable, check_int, check_number, check_path

logger = logging.getLogger("fitorch")

# Endings of single-file checkpoints in other tools (Keras, PyTorch, Lightning), a likely slip here.
FILE_SUFFIXES = (".safetensors", ".keras", ".h5", ".pt", ".pth", ".ckpt", ".bin")


class ModelCheckpoint(Callback):
    """Saves checkpoints during `fit`: every epoch or every `save_freq` steps, or only the best.

    Keras semantics. `filepath` is a directory path that may hold format fields, filled with the
    logs and `epoch` (1-based, as Keras names files), `batch` (1-based, step saves only) and `step`
    (the global optimizer step): `"runs/x/epoch{epoch:03d}-{val_loss:.3f}"`. A path without
    fields is overwritten at each save, atomically. Each checkpoint is a directory that
    `fit(resume=path)` continues from exactly and whose `model.safetensors` loads without fitorch.

    Checkpoint writers run after every other callback (they declare `saves_checkpoints = True`),
    so a checkpoint holds the other callbacks' state after the epoch, History's latest row included.

    Args:
        filepath: the checkpoint directory, a pattern as above. None uses `run_dir/checkpoints/`:
            `best` with `save_best_only`, else `epoch{epoch:03d}` (or `step{step:08d}` for step saves).
        monitor: the log key that `save_best_only` watches, e.g. `"val_loss"` or `"val_accuracy"`.
        mode: `"min"`, `"max"`, or `"auto"` (from the name; the choice is logged).
        save_best_only: save only when `monitor` improves on the best value so far. With step saves
            the monitor is read from the running training logs (`loss`, metrics).
        save_weights_only: save `model.safetensors` and the JSON only, not the training state
            (for inference; such a checkpoint cannot be resumed).
        save_freq: `"epoch"`, or a positive int: save every that many optimizer steps.
        save_last: also save, at every save point, a checkpoint named `last` beside the others
            (in the folder of the formatted `filepath`).
        keep: keep only the `keep` newest checkpoints this callback wrote (with `save_best_only`, the
            `keep` best); older ones are deleted. None keeps all. `last` is never counted.
        initial_value_threshold: with `save_best_only`, a value the monitored quantity must beat
            before the first checkpoint is written.

    Raises:
        TypeError: `filepath` is not a path, or a flag is not a bool.
        ValueError: a bad `mode`, `save_freq` or `keep`; during `fit`, a `monitor` missing from the
            logs (the message lists the keys there), or a `filepath` field with no value.

    Example:
        >>> best = ModelCheckpoint("runs/exp1/best", monitor="val_loss", save_best_only=True)
        >>> learner.fit(model, train, epochs=20, validation_data=val, callbacks=[best])  # doctest: +SKIP
        >>> fitorch.load_weights(model, "runs/exp1/best")  # doctest: +SKIP
    """

    saves_checkpoints = True

    def __init__(
        self,
        filepath: str | os.PathLike | None = None,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best_only: bool = False,
        save_weights_only: bool = False,
        save_freq: str | int = "epoch",
        save_last: bool = False,
        keep: int | None = None,
        initial_value_threshold: float | None = None,
    ) -> None:
        owner = "ModelCheckpoint"
        self.filepath = check_path(filepath, "filepath", allow_none=True, owner=owner)
        for name, flag in (
            ("save_best_only", save_best_only),
            ("save_weights_only", save_weights_only),
            ("save_last", save_last),
        ):
            check_bool(flag, name, owner=owner)
        check_int(keep, "keep", minimum=1, allow_none=True, owner=owner)
        check_number(initial_value_threshold, "initial_value_threshold", allow_none=True, owner=owner)
        if self.filepath is not None:
            list(string.Formatter().parse(self.filepath))  # a malformed pattern fails here, not at epoch 1
            if self.filepath.endswith(FILE_SUFFIXES):
                raise ValueError(
                    f"ModelCheckpoint(filepath={self.filepath!r}): a checkpoint is a folder (model.safetensors "
                    "and its training state inside); give a folder path without a file extension."
                )
        self.monitored = Monitor(monitor, mode, baseline=initial_value_threshold, owner="ModelCheckpoint")
        self.save_best_only, self.save_weights_only, self.save_last = save_best_only, save_weights_only, save_last
        self.save_freq = save_freq
        self.save_every = Every.parse(save_freq, "save_freq", owner=owner)
        self.keep = keep
        self.saved: list[str] = []  # the checkpoints written and kept, oldest first

    @property
    def best(self) -> float | None:
        """The best monitored value so far (None before the first)."""
        return self.monitored.best

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if self.learner.is_main_process:  # a path under a file fails now, not after an epoch of training
            check_folder_creatable(self._folder(), "filepath", owner="ModelCheckpoint")
        if not self.learner.resumed:  # a new fit (another model, say) starts with no best and nothing kept
            self.monitored.best = None
            self.saved = []

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.save_last and self.learner.preempted is not None and self.learner.exception is None:
            # Stopped by SIGTERM/SIGUSR1 at a step boundary: `last` is where fit(resume="auto") continues.
            save_checkpoint(self.learner, os.path.join(self._folder(), "last"), weights_only=self.save_weights_only)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.save_every.epoch_due(epoch):
            self._save_point(logs, {"epoch": epoch + 1})

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        # The last batch of an epoch saves too (as in Keras): such a checkpoint resumes into an epoch
        # with no batch left, which then validates and ends as the uninterrupted run did.
        if self.save_every.step_due(self.learner):
            self._save_point(dict(logs), {"epoch": self.learner.epoch + 1, "batch": batch + 1})

    def _save_point(self, logs: dict[str, Any], counters: dict[str, int]) -> None:
        # Every process takes the same decision (on the main process's value) and calls save_checkpoint,
        # which gathers the RNG states; only the main process writes and deletes.
        fields = {**logs, **counters, "step": self.learner.global_step}
        path = self._format(fields)
        value = self.monitored.agreed_value(logs, self.learner) if self.save_best_only else None
        improved = value is not None and self.monitored.observe(value)  # None: an epoch without validation
        if not self.save_best_only or improved:
            self._save(
                path,
                f"{self.monitored.monitor} = {self.monitored.best:.6g}, the best so far" if self.save_best_only else "",
            )
        if self.save_last:
            save_checkpoint(
                self.learner, os.path.join(os.path.dirname(path), "last"), weights_only=self.save_weights_only
            )

    def _save(self, path: str, reason: str) -> None:
        # The list is updated first, so that the checkpoint records itself among the kept ones.
        self.saved = [*(kept for kept in self.saved if kept != path), path]
        dropped = self.saved[: -self.keep] if self.keep else []
        self.saved = self.saved[len(dropped) :]
        save_checkpoint(self.learner, path, weights_only=self.save_weights_only)
        logger.info("ModelCheckpoint: saved %s%s", path, f" ({reason})" if reason else "")
        if self.learner.is_main_process:
            for old in dropped:
                delete_checkpoint(old)

    def _format(self, fields: dict[str, Any]) -> str:
        pattern = self.filepath or self._default_filepath()
        try:
            return pattern.format(**fields)
        except KeyError as error:
            raise ValueError(
                f"ModelCheckpoint(filepath={pattern!r}): no value for the field {error}; "
                f"available: {', '.join(fields)}."
            ) from None
        except (ValueError, IndexError) as error:
            raise ValueError(
                f"ModelCheckpoint(filepath={pattern!r}): cannot format it ({error}). "
                "Fields look like {epoch:03d} or {val_loss:.3f}."
            ) from None

    def _folder(self) -> str:
        """The folder the checkpoints go into: the filepath's directory, up to its first field."""
        pattern = self.filepath or self._default_filepath()
        return os.path.dirname(pattern.split("{", 1)[0]) or "."

    def _default_filepath(self) -> str:
        run_dir = self.learner.run_dir
        if run_dir is None:
            raise ValueError(
                "ModelCheckpoint: give a filepath, or set Learner(run_dir=...) to save under run_dir/checkpoints/."
            )
        name = "best" if self.save_best_only else "epoch{epoch:03d}" if self.save_freq == "epoch" else "step{step:08d}"
        return os.path.join(run_dir, "checkpoints", name)

    def state_dict(self) -> dict[str, Any]:
        """The best value and the checkpoints kept so far, so that `keep` and `save_best_only` survive a resume."""
        return {**self.monitored.state_dict(), "saved": list(self.saved)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitored.load_state_dict(state)
        self.saved = list(state.get("saved", []))
