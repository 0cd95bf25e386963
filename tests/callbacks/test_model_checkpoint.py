"""ModelCheckpoint: Keras file names and semantics, best-only, step saves, last, keep, state, arguments."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import Script, make_classification, make_mlp
from fitorch import Callback, Learner, load_weights
from fitorch.callbacks import ModelCheckpoint


class Counter(Callback):
    """Counts epochs, with state: what a checkpoint taken at the same event must already include."""

    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, epoch, logs):
        self.epochs += 1

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]


def fit(callbacks, epochs=3, validation=True, resume=None, **learner_options):
    x, y = make_classification(n=70)
    learner = Learner(
        loss="cross_entropy", optimizer="adamw", lr=1e-2, metrics=["accuracy"], verbose=0, seed=0, **learner_options
    )
    learner.fit(
        make_mlp(),
        (x, y),
        epochs=epochs,
        batch_size=8,
        callbacks=callbacks,
        resume=resume,
        validation_data=(x[:16], y[:16]) if validation else None,
    )
    return learner


def loop(path) -> dict:
    return json.loads((path / "checkpoint.json").read_text())["loop"]


def test_filepath_fields_take_the_one_based_epoch_and_the_logs(tmp_path):
    learner = fit([ModelCheckpoint(tmp_path / "epoch{epoch:02d}-{val_loss:.3f}")])
    losses = learner.history.history["val_loss"]
    assert sorted(os.listdir(tmp_path)) == [f"epoch{e + 1:02d}-{loss:.3f}" for e, loss in enumerate(losses)]
    assert loop(tmp_path / f"epoch01-{losses[0]:.3f}")["epoch"] == 1  # the next epoch to train
    model = make_mlp(seed=5)
    load_weights(model, tmp_path / f"epoch03-{losses[2]:.3f}")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), learner.model.state_dict().values()))


def test_save_best_only_saves_on_improvement_and_mode_auto_says_what_it_chose(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fitorch"):
        checkpoint = ModelCheckpoint(tmp_path / "best{epoch}", monitor="val_f1", save_best_only=True)
    assert "chose 'max'" in caplog.text
    fit([Script("val_f1", [0.5, 0.7, 0.6, 0.8]), checkpoint], epochs=4)
    assert sorted(os.listdir(tmp_path)) == ["best1", "best2", "best4"]
    assert checkpoint.best == 0.8


def test_the_best_value_and_the_kept_list_survive_a_resume(tmp_path):
    first = ModelCheckpoint(tmp_path / "best{epoch}", monitor="val_f1", save_best_only=True, keep=2, save_last=True)
    fit([Script("val_f1", [0.5, 0.9, 0.6, 0.7, 0.95]), first], epochs=2)
    assert sorted(os.listdir(tmp_path)) == ["best1", "best2", "last"]
    again = ModelCheckpoint(tmp_path / "best{epoch}", monitor="val_f1", save_best_only=True, keep=2, save_last=True)
    fit([Script("val_f1", [0.5, 0.9, 0.6, 0.7, 0.95]), again], epochs=5, resume=tmp_path / "last")
    assert again.best == 0.95  # 0.6 and 0.7 did not beat the restored 0.9
    assert sorted(os.listdir(tmp_path)) == ["best2", "best5", "last"]  # keep=2 counted the first run's saves
    assert loop(tmp_path / "last")["epoch"] == 5


def test_a_missing_monitor_is_an_error_that_lists_the_available_keys(tmp_path):
    with pytest.raises(ValueError, match=r"monitor='val_acc'.*available: loss, accuracy, lr"):
        fit([ModelCheckpoint(tmp_path / "best", monitor="val_acc", save_best_only=True)], validation=False)
    with pytest.raises(ValueError, match=r"no value for the field 'val_loss'; available: loss, accuracy, lr"):
        fit([ModelCheckpoint(tmp_path / "e{epoch}-{val_loss:.2f}")], validation=False)


def test_step_saves_come_after_real_optimizer_steps_only(tmp_path):
    # 70 samples in batches of 8: 9 batches, windows of 2 end at batches 1, 3, 5, 7 and 8 (the last).
    fit([ModelCheckpoint(tmp_path / "s{step}-b{batch}", save_freq=2)], epochs=2, grad_accum_steps=2)
    names = sorted(os.listdir(tmp_path), key=lambda name: int(name[1:].split("-")[0]))
    # Step 10 ends epoch 1 at its last batch, and saves there too, as Keras does.
    assert names == ["s2-b4", "s4-b8", "s6-b2", "s8-b6", "s10-b9"]
    for name in names:
        state = loop(tmp_path / name)
        assert state["global_step"] == int(name[1:].split("-")[0]) and state["batch"] == int(name.split("-b")[1])


def test_weights_only_checkpoints_hold_no_training_state(tmp_path):
    learner = fit([ModelCheckpoint(tmp_path / "w", save_weights_only=True)], epochs=1)
    assert sorted(os.listdir(tmp_path / "w")) == ["checkpoint.json", "model.safetensors"]
    weights = load_file(tmp_path / "w" / "model.safetensors")
    assert torch.equal(weights["0.weight"], learner.model[0].weight)


def test_keep_deletes_the_oldest_checkpoints(tmp_path):
    fit([ModelCheckpoint(tmp_path / "e{epoch}", keep=2)], epochs=4)
    assert sorted(os.listdir(tmp_path)) == ["e3", "e4"]


def test_a_checkpoint_holds_the_state_of_callbacks_listed_after_it(tmp_path):
    counter = Counter()
    fit([ModelCheckpoint(tmp_path / "e{epoch}"), counter], epochs=2)  # the checkpoint writer runs last anyway
    saved = json.loads((tmp_path / "e2" / "checkpoint.json").read_text())["callbacks"]
    assert saved["Counter[0]"] == {"epochs": 2}
    assert saved["History[0]"]["epoch"] == [0, 1]


def test_without_a_filepath_it_saves_under_the_runs_checkpoints_folder(tmp_path):
    fit([ModelCheckpoint(save_best_only=True, save_last=True)], epochs=1, run_dir=tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["best", "last"]
    with pytest.raises(ValueError, match="give a filepath, or set Learner"):
        fit([ModelCheckpoint()], epochs=1)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"save_freq": 0}, ValueError, "save_freq must be 'epoch' or a positive int"),
        ({"save_freq": "batch"}, ValueError, "got 'batch'"),
        ({"keep": 0}, ValueError, "keep must be a positive int or None, got 0"),
        ({"save_best_only": "yes"}, TypeError, "save_best_only must be True or False"),
        ({"filepath": 3}, TypeError, r"filepath must be a path \(str or os.PathLike\) or None, got 3"),
        ({"mode": "up"}, ValueError, "mode must be one of 'auto', 'min', 'max'"),
        ({"filepath": "e{epoch"}, ValueError, "'}'"),
        ({"filepath": "runs/best.weights.h5"}, ValueError, "a checkpoint is a folder"),
    ],
)
def test_bad_arguments_fail_at_construction(options, error, match):
    with pytest.raises(error, match=match):
        ModelCheckpoint(**{"filepath": "x", **options})


def test_a_second_model_on_the_same_learner_starts_with_no_best(tmp_path):
    """The best value of the first model's fit used to block every save of the second model."""
    x, y = make_classification(n=64)
    best = ModelCheckpoint(tmp_path / "best", monitor="loss", save_best_only=True)
    learner = Learner(loss="cross_entropy", lr=0.05, verbose=0, callbacks=[best])
    learner.fit(make_mlp(seed=0), (x, y), epochs=6)
    first_best = best.best
    second = make_mlp(seed=1)
    with torch.no_grad():
        second[2].weight.mul_(50)  # a much worse start: its losses never beat the first model's
    learner.fit(second, (x, y), epochs=1)
    assert best.best > first_best
    saved = load_file(tmp_path / "best" / "model.safetensors")
    assert torch.equal(saved["2.weight"], second[2].weight.detach())


def test_a_step_save_on_the_last_batch_resumes_exactly(tmp_path):
    # 9 batches an epoch: step 9 is epoch 0's last batch. Its checkpoint resumes into an epoch with no
    # batch left, which validates and ends as the uninterrupted run's epoch 0 did.
    straight = fit([ModelCheckpoint(tmp_path / "s{step}", save_freq=9)], epochs=3)
    assert sorted(os.listdir(tmp_path)) == ["s18", "s27", "s9"]
    assert loop(tmp_path / "s9") == {**loop(tmp_path / "s9"), "epoch": 0, "batch": 9, "global_step": 9}
    resumed = fit([], epochs=3, resume=tmp_path / "s9")
    assert resumed.history.history == straight.history.history
    for ours, theirs in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(ours, theirs)
