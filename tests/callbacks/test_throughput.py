"""Throughput: samples per second against the wall time measured around the epoch, non-padding tokens,
peak memory, every place the logs go, and no host sync in training batches."""

from __future__ import annotations

import csv
import resource
import time

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.callbacks import ProgressBar, Throughput


class Slow(Callback):
    """Makes every training batch take at least 2 ms, so that an epoch lasts long next to event dispatch."""

    def on_train_batch_end(self, batch, logs):
        time.sleep(0.002)


class BeginClock(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs):
        self.times.append(time.perf_counter())


class EndClock(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_test_begin(self, logs):
        if self.learner.fitting:
            self.times.append(time.perf_counter())


def test_samples_per_second_is_the_samples_over_the_wall_time_of_the_epochs_training(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = make_classification(n=203)  # 26 batches of 8, the last one of 3
    begin, end, throughput = BeginClock(), EndClock(), Throughput()
    log = tmp_path / "bar.txt"
    learner = Learner(loss="cross_entropy", verbose=2, run_dir=tmp_path / "run")
    with log.open("w") as bar:
        history = learner.fit(
            make_mlp(),
            (x, y),
            2,
            batch_size=8,
            validation_data=(x[:40], y[:40]),
            callbacks=[begin, Slow(), throughput, end, ProgressBar(file=bar)],
        )
    assert throughput.samples == 203
    for epoch, rate in enumerate(history.history["samples_per_second"]):
        outer = 203 / (end.times[epoch] - begin.times[epoch])  # measured around Throughput's own interval
        assert outer <= rate <= 1.05 * outer
    run = tmp_path / "run"
    assert "samples_per_second: " in log.read_text() and "peak_memory_mib: " in log.read_text()  # progress line
    assert "samples_per_second: " in (run / "train.log").read_text()
    with (run / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [float(row["samples_per_second"]) for row in rows] == history.history["samples_per_second"]
    events = EventAccumulator(str(run / "tensorboard" / "train"))
    events.Reload()
    logged = [event.value for event in events.Scalars("epoch_samples_per_second")]
    assert logged == pytest.approx(history.history["samples_per_second"], rel=1e-6)


def test_peak_memory_is_the_process_peak_on_the_cpu_and_can_be_left_out():
    x, y = make_classification(n=32)
    learner = Learner(loss="cross_entropy", verbose=0)
    history = learner.fit(make_mlp(), (x, y), 1, callbacks=[Throughput()])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 0 < history.history["peak_memory_mib"][0] <= after
    history = learner.fit(make_mlp(), (x, y), 1, callbacks=[Throughput(memory=False)])
    assert "peak_memory_mib" not in history.history and "tokens_per_second" not in history.history
    with pytest.raises(TypeError, match="Throughput: memory must be True or False, got 'yes'"):
        Throughput(memory="yes")


class Tokens(Dataset):
    """Hugging Face style samples: `input_ids`, an `attention_mask` with sample i holding 1 + i % 7 real tokens."""

    def __init__(self, n: int, mask: bool = True) -> None:
        self.n, self.mask = n, mask

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"input_ids": torch.arange(8) % 5, "labels": torch.tensor(i % 2)}
        if self.mask:
            sample["attention_mask"] = (torch.arange(8) <= i % 7).long()
        return sample


class Bag(nn.Module):
    """A masked mean of token embeddings, returning its loss Hugging Face style."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.head = nn.Embedding(5, 4), nn.Linear(4, 2)

    def forward(self, input_ids, labels, attention_mask=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = (self.embedding(input_ids) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return {"loss": nn.functional.cross_entropy(self.head(pooled), labels)}


@pytest.mark.parametrize(("mask", "tokens"), [(True, sum(1 + i % 7 for i in range(45))), (False, 45 * 8)])
def test_tokens_per_second_counts_the_non_padding_tokens_of_dict_batches(mask, tokens):
    throughput = Throughput()
    history = Learner(verbose=0).fit(Bag(), Tokens(45, mask), 2, batch_size=8, callbacks=[throughput])
    assert throughput.tokens == tokens and throughput.samples == 45
    rates = zip(history.history["tokens_per_second"], history.history["samples_per_second"])
    assert all(token_rate == pytest.approx(sample_rate * tokens / 45) for token_rate, sample_rate in rates)


def test_training_batches_read_nothing_from_the_device(monkeypatch):
    inside = []

    class Watched(Throughput):
        def on_train_batch_end(self, batch, logs):
            inside.append(True)
            super().on_train_batch_end(batch, logs)
            inside.pop()

    def refuse(name):
        original = getattr(torch.Tensor, name)

        def read(tensor, *args, **kwargs):
            assert not inside, f"Tensor.{name} in a training batch: a host sync per step"
            return original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    for name in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__"):
        refuse(name)
    throughput = Watched()
    Learner(verbose=0).fit(Bag(), Tokens(24), 1, batch_size=8, callbacks=[throughput])
    assert throughput.tokens == sum(1 + i % 7 for i in range(24))
