"""TensorBoard: event files read back equal History and the schedule; batch loss, histograms, graph, import."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import LRScheduler, TensorBoard


def events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, batch, logs):
        self.losses[self.learner.global_step] = float(self.learner.loss.detach())


def fit(board, epochs=3, extra=(), model=None, **learner_options):
    x, y = make_classification(n=40)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, metrics=["accuracy"], verbose=0, **learner_options)
    callbacks = [LRScheduler(lambda epoch: 0.5**epoch), *extra, board]
    return learner.fit(
        model or make_mlp(),
        (x[:32], y[:32]),
        epochs=epochs,
        batch_size=8,
        validation_data=(x[32:], y[32:]),
        callbacks=callbacks,
    )


def test_epoch_scalars_equal_history_and_train_and_validation_share_a_chart(tmp_path):
    history = fit(TensorBoard(tmp_path / "tb"), hparams={"width": 16, "note": "tiny"})
    train, validation = events(tmp_path / "tb" / "train"), events(tmp_path / "tb" / "validation")
    for key in ("loss", "accuracy"):
        # One tag, two runs: TensorBoard draws the training and validation curves on one chart.
        assert scalars(train, f"epoch_{key}") == [
            (e, pytest.approx(v, rel=1e-6)) for e, v in enumerate(history.history[key])
        ]
        validation_values = history.history[f"val_{key}"]
        assert scalars(validation, f"epoch_{key}") == [
            (e, pytest.approx(v, rel=1e-6)) for e, v in enumerate(validation_values)
        ]
    assert scalars(train, "epoch_lr") == [(0, pytest.approx(0.1)), (1, pytest.approx(0.05)), (2, pytest.approx(0.025))]
    assert "config" in "".join(train.Tags()["tensors"])
    text = train.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "width" in text and "cross_entropy" in text


def test_batch_loss_every_n_steps(tmp_path):
    steps = StepLosses()
    fit(TensorBoard(tmp_path, update_freq=3), epochs=2, extra=[steps])  # 4 steps per epoch, 8 in all
    train = events(tmp_path / "train")
    assert [step for step, _ in scalars(train, "batch_loss")] == [3, 6]
    assert scalars(train, "batch_loss") == [(s, pytest.approx(steps.losses[s], rel=1e-6)) for s in (3, 6)]
    assert [step for step, _ in scalars(train, "batch_lr")] == [3, 6]


def test_histograms_and_graph_do_not_change_training(tmp_path):
    plain, traced = make_mlp(dropout=0.5), make_mlp(dropout=0.5)  # same initial weights
    fit(TensorBoard(tmp_path / "plain"), seed=1, model=plain)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(TensorBoard(tmp_path / "full", histogram_freq=2, write_graph=True), seed=1, model=traced)
    assert not [w for w in caught if "jit" in str(w.message)]  # torch's deprecation of the tracer it uses
    for ours, theirs in zip(traced.parameters(), plain.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    train = events(tmp_path / "full" / "train")
    assert {"0.weight", "3.bias"} <= set(train.Tags()["histograms"])
    assert [event.step for event in train.Histograms("0.weight")] == [1]
    assert train.Tags()["graph"]


def test_needs_a_log_dir_or_run_dir():
    with pytest.raises(ValueError, match=r"needs a log_dir, or Learner\(run_dir=...\)"):
        fit(TensorBoard())


def test_missing_tensorboard_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        fit(TensorBoard(tmp_path))


def test_import_fitorch_does_not_import_tensorboard():
    code = (
        "import sys, fitorch, fitorch.callbacks; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorboard' or 'utils.tensorboard' in m))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"update_freq": "batch"}, "update_freq must be 'epoch' or a positive int"),
        ({"update_freq": 0}, "update_freq must be 'epoch' or a positive int"),
        ({"histogram_freq": -1}, "histogram_freq must be an int >= 0"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TensorBoard(**kwargs)
