"""steps_per_epoch: epochs as stretches of an endless stream of passes, reproducible, and resumed exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import BackupAndRestore


class Ids(Learner):
    """Records the sample ids (the first feature) of every training batch."""

    def train_step(self, batch):
        self.seen.append(batch[0][:, 0].long().tolist())
        return super().train_step(batch)


def ids_data(n=40):
    return torch.stack([torch.arange(n, dtype=torch.float32), torch.randn(n)], 1), torch.arange(n) % 3


def run(data, **options):
    learner = Ids(loss="cross_entropy", verbose=0, seed=5, **options.pop("learner", {}))
    learner.seen = []
    learner.fit(nn.Linear(2, 3), data, **options)
    return learner


def test_epochs_take_the_next_batches_of_a_stream_of_reshuffled_passes():
    x, y = ids_data()
    learner = run((x, y), epochs=5, batch_size=8, steps_per_epoch=3)  # 5 batches per pass, 15 in all
    passes = []
    for number in range(3):
        generator = torch.Generator().manual_seed(learner.state.shuffle_seed + number)
        loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=generator)
        passes += [batch[0][:, 0].long().tolist() for batch in loader]
    assert learner.seen == passes  # epoch 2 goes on where epoch 1 stopped; no batch is left out
    assert learner.global_step == 15 and learner.history.epoch == [0, 1, 2, 3, 4]


def test_a_loader_without_a_length_is_read_on_across_epochs():
    x, y = ids_data()

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    learner = run(Stream(), epochs=3, batch_size=8, shuffle=False, steps_per_epoch=3)
    firsts = [batch[0] for batch in learner.seen]
    assert firsts == [0, 8, 16, 24, 32, 0, 8, 16, 24]


def test_accumulation_windows_close_at_the_end_of_each_epoch():
    x, y = ids_data()
    learner = run((x, y), epochs=2, batch_size=8, steps_per_epoch=3, learner={"grad_accum_steps": 2})
    assert learner.global_step == 4  # windows of 2 + 1 batches in each epoch


def fit(callbacks, epochs=4, model_seed=0):
    x, y = make_classification(n=70)
    learner = Learner(loss="cross_entropy", lr=1e-2, verbose=0, seed=0, grad_accum_steps=2)
    learner.fit(
        make_mlp(dropout=0.2, seed=model_seed), (x, y), epochs=epochs, batch_size=8, steps_per_epoch=4,
        validation_data=(x[:16], y[:16]), callbacks=callbacks,
    )  # fmt: skip
    return learner


class Crash(Exception):
    pass


class CrashAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, batch, logs):
        if self.learner.global_step == self.step and self.learner.sync_gradients:
            raise Crash


# 2 steps per epoch of 4 batches, 9 batches per pass: the step-3 backup sits inside epoch 2 and pass 1.
@pytest.mark.parametrize(("save_freq", "crash"), [("epoch", 7), (3, 5)])
def test_a_run_resumed_inside_an_epoch_of_a_stream_ends_bit_identical(tmp_path, save_freq, crash):
    straight = fit([])
    with pytest.raises(Crash):
        fit([CrashAtStep(crash), BackupAndRestore(tmp_path / "backup", save_freq=save_freq)])
    resumed = fit([BackupAndRestore(tmp_path / "backup", save_freq=save_freq)], model_seed=1)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history.history["val_loss"] == straight.history.history["val_loss"]
    assert resumed.history.history["loss"] == pytest.approx(straight.history.history["loss"], rel=1e-12)
