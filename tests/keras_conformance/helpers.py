"""What the Keras conformance tests share: the Keras commit they were ported from, the `ports` mark, the
inventory of Keras's callback test cases (ported or not, and why), and Keras-like tiny data and models.

Each test in this folder ports one case of Keras 3's own callback tests (`keras/src/callbacks/*_test.py`
in keras-team/keras at `KERAS_COMMIT`), rewritten for fitorch, and says so with `@ports(case, outcome)`:

- `"same"`: fitorch behaves as Keras does, and the test asserts what the Keras test asserts;
- `"different"`: fitorch deliberately differs, the test asserts fitorch's behaviour, and the difference
  is a row of the table in docs/migrating.md;
- `"pending"`: the case needs a feature another change is building; the test is an `xfail(strict=True)`.

`test_inventory.py` checks that every Keras case is ported or listed in `NOT_PORTED` with a reason,
and that the counts in docs/migrating.md are these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

KERAS_COMMIT = "3422977a5e38fb2f7709aaa9a08e47f0c43d0f60"
OUTCOMES = ("same", "different", "pending")

# Every case of the Keras tests in scope, by file::Class::test; a test holding numbered cases counts each
# case, a parametrized test each parameter.
INVENTORY: tuple[str, ...] = (
    *(
        f"backup_and_restore_test.py::BackupAndRestoreCallbackTest::{name}"
        for name in (
            "test_save_freq_unknown_error",
            "test_best_case_step",
            "test_best_case_epoch",
            "test_backup_corrupted",
            "test_model_deleted_case_epoch",
            "test_backup_dir_empty_error",
            "test_backup_dir_none_error",
        )
    ),
    "callback_test.py::CallbackTest::test_model_state_is_current_on_epoch_end",
    *(f"csv_logger_test.py::CSVLoggerTest::test_CSVLogger (case {case})" for case in ("1", "2", "3", "3b")),
    "csv_logger_test.py::CSVLoggerTest::test_stop_training_csv",
    *(
        f"early_stopping_test.py::EarlyStoppingTest::{name}"
        for name in (
            "test_early_stopping",
            "test_early_stopping_patience",
            "test_early_stopping_reuse",
            "test_state_reset_across_fit_calls",
            "test_early_stopping_with_baseline",
            "test_early_stopping_final_weights_when_restoring_model_weights",
            "test_early_stopping_with_start_from_epoch",
        )
    ),
    *(
        f"lambda_callback_test.py::LambdaCallbackTest::{name}"
        for name in (
            "test_lambda_callback",
            "test_lambda_callback_with_batches",
            "test_lambda_callback_with_kwargs",
            "test_lambda_callback_no_args",
            "test_lambda_callback_with_additional_kwargs",
            "test_lambda_callback_during_prediction",
        )
    ),
    *(
        f"learning_rate_scheduler_test.py::LearningRateSchedulerTest::{name}"
        for name in (
            "test_updates_learning_rate",
            "test_verbose_logging",
            "test_schedule_dependent_on_previous_learning_rate",
            "test_throws_when_optimizer_has_schedule",
            "test_learning_rate_in_history",
        )
    ),
    *(
        f"model_checkpoint_test.py::ModelCheckpointTest::test_model_checkpoint_options (case {case})"
        for case in ("1", "2", "3", "4", "5", "6", "8a", "8b", "9", "10a", "10b", "11", "12", "13", "14", "15")
    ),
    *(
        f"model_checkpoint_test.py::ModelCheckpointTest::test_model_checkpoint_loading ({case})"
        for case in ("model", "weights")
    ),
    "monitor_callback_test.py::MonitorCallbackTest::test_monitor_op_logic",
    "monitor_callback_test.py::MonitorCallbackTest::test_min_delta",
    *(
        f"reduce_lr_on_plateau_test.py::ReduceLROnPlateauTest::{name}"
        for name in (
            "test_reduces_lr_with_model_fit",
            "test_throws_when_optimizer_has_schedule",
            "test_verbose_logging",
            "test_honors_min_lr",
            "test_cooldown",
            "test_state_reset_across_fit_calls",
        )
    ),
    *(
        f"tensorboard_test.py::TestTensorBoardV2::{name}"
        for name in (
            "test_TensorBoard_basic",
            "test_TensorBoard_across_invocations",
            "test_TensorBoard_no_spurious_event_files",
            "test_TensorBoard_batch_metrics",
            "test_TensorBoard_learning_rate_schedules",
            "test_TensorBoard_global_step",
            "test_TensorBoard_weight_histograms",
            "test_TensorBoard_weight_images",
            "test_TensorBoard_projector_callback",
            "test_custom_summary",
            "test_TensorBoard_non_blocking",
            "test_TensorBoard_write_sequential_model_no_input_shape",
            "test_TensorBoard_write_sequential_model_with_input_shape",
            "test_TensorBoard_write_model",
            "test_TensorBoard_auto_trace",
        )
    ),
    *(
        f"terminate_on_nan_test.py::TerminateOnNaNTest::{name}"
        for name in (
            "test_TerminateOnNaN",
            "test_terminate_on_nan_graceful_stop",
            "test_terminate_on_nan_raise_error_raises_error",
            "test_raise_error_terminate_does_not_trigger_on_train_end",
            "test_raise_error_terminate_preserves_backup",
            "test_normal_training_does_not_raise[raise_error_false]",
            "test_normal_training_does_not_raise[raise_error_true]",
            "test_raise_error_terminate_stops_on_later_batch",
        )
    ),
)

# The cases with no fitorch counterpart, and why (docs/migrating.md lists them too).
NOT_PORTED: dict[str, str] = {
    "tensorboard_test.py::TestTensorBoardV2::test_TensorBoard_global_step": (
        "write_steps_per_second: fitorch's TensorBoard writes no timing (speed belongs to benchmarks/)"
    ),
    "tensorboard_test.py::TestTensorBoardV2::test_TensorBoard_weight_images": (
        "write_images: fitorch writes no weight images"
    ),
    "tensorboard_test.py::TestTensorBoardV2::test_TensorBoard_projector_callback": (
        "embeddings_freq: fitorch writes no embedding projector data"
    ),
    "tensorboard_test.py::TestTensorBoardV2::test_custom_summary": (
        "summaries written from inside Keras layers (keras.ops summary calls); a torch model has no such hook"
    ),
    "tensorboard_test.py::TestTensorBoardV2::test_TensorBoard_non_blocking": (
        "checks that Keras's callbacks keep backend tensors unconverted; fitorch's batch logs are lazy by design"
    ),
    "tensorboard_test.py::TestTensorBoardV2::test_TensorBoard_auto_trace": (
        "profile_batch: fitorch's TensorBoard runs no profiler (use torch.profiler in a callback)"
    ),
}


def ports(case: str, outcome: str = "same", reason: str | None = None) -> Callable[[Any], Any]:
    """Mark a test as the port of Keras test case `case` (an `INVENTORY` entry) with its `outcome`.

    A `"pending"` port is also an `xfail(strict=True)` with `reason`, so it starts failing the suite
    (as an unexpected pass) the day the feature it waits for lands, and is then turned into a port.
    """
    if case not in INVENTORY:
        raise ValueError(f"{case!r} is not a Keras case of INVENTORY")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    marks = [pytest.mark.keras(case=case, commit=KERAS_COMMIT, outcome=outcome)]
    if outcome == "pending":
        marks.append(pytest.mark.xfail(strict=True, reason=reason))

    def apply(test: Any) -> Any:
        for mark in marks:
            test = mark(test)
        return test

    return apply


def keras_data(train: int, test: int, features: int, classes: int, seed: int = 1337):
    """Like Keras's `test_utils.get_test_data`: points around one random centre per class, integer labels."""
    rng = np.random.default_rng(seed)
    centres = rng.random((classes, features))

    def draw(count: int):
        labels = rng.integers(0, classes, count)
        points = centres[labels] + rng.normal(0, 0.1, (count, features))
        return torch.tensor(points, dtype=torch.float32), torch.tensor(labels)

    return draw(train), draw(test)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Keras's `to_categorical`, as float targets for `mse`."""
    return nn.functional.one_hot(labels, classes).float()


def dense(*sizes: int, activation: type[nn.Module] | None = None, seed: int = 0) -> nn.Sequential:
    """Keras's `Sequential([Dense(a), Dense(b), ...])` on `sizes[0]` inputs; `activation` after each hidden layer."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(inputs, outputs))
        if activation is not None and index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
