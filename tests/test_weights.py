"""Keras's class_weight and sample_weight: the loss weighted as Keras weighs it, epoch values and windows exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from conftest import make_classification, make_mlp
from fitorch import Learner

CLASS_WEIGHT = {0: 1.0, 1: 3.0, 2: 0.5}


def per_sample(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_class_weight_weighs_the_training_loss_exactly_over_samples_and_not_validation():
    x, y = make_classification(n=50)
    model = make_mlp()
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.0, verbose=0)  # lr 0: the model stays as it is
    history = learner.fit(model, (x, y), batch_size=16, class_weight=CLASS_WEIGHT, validation_data=(x, y))
    weights = torch.tensor([CLASS_WEIGHT[int(c)] for c in y])
    losses = per_sample(model, x, y)
    # Keras's weighted loss: sum(w * loss) / N per batch; batches of 16, 16, 16 and 2 count for what they hold
    assert history.history["loss"][0] == pytest.approx(float((weights * losses).mean()), rel=1e-6)
    assert history.history["val_loss"][0] == pytest.approx(float(losses.mean()), rel=1e-6)  # training only


def hand_written(model, x, y, w, batch_size, window, epochs=2, lr=0.1):
    """The plain-PyTorch loop: windows of `window` batches, each step the mean of sum(w * loss) over its samples."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    starts = list(range(0, len(x), batch_size))
    for _ in range(epochs):
        for first in range(0, len(starts), window):
            group = starts[first : first + window]
            samples = sum(len(x[s : s + batch_size]) for s in group)
            total = sum(
                (F.cross_entropy(model(x[s : s + batch_size]), y[s : s + batch_size], reduction="none")
                 * w[s : s + batch_size]).sum()
                for s in group
            )  # fmt: skip
            optimizer.zero_grad()
            (total / samples).backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("accumulate", [1, 2])
def test_sample_weight_trains_like_the_hand_written_weighted_loop_with_and_without_accumulation(accumulate):
    x, y = make_classification(n=50)
    w = torch.rand(50, generator=torch.Generator().manual_seed(1))
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0, grad_accum_steps=accumulate)
    trained = learner.fit(make_mlp(), (x, y), epochs=2, batch_size=16, shuffle=False, sample_weight=w.numpy())
    expected = hand_written(make_mlp(), x, y, w, batch_size=16, window=accumulate)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(learner.model.state_dict()[name], value, msg=name)
    assert trained.history["loss"][-1] > 0


def test_weighted_accumulation_equals_one_big_batch():
    x, y = make_classification(n=48)
    w = torch.rand(48, generator=torch.Generator().manual_seed(2))
    small = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0, grad_accum_steps=3)
    small.fit(make_mlp(), (x, y), batch_size=8, shuffle=False, class_weight=CLASS_WEIGHT, sample_weight=w)
    big = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0)
    big.fit(make_mlp(), (x, y), batch_size=24, shuffle=False, class_weight=CLASS_WEIGHT, sample_weight=w)
    for name, value in big.model.state_dict().items():
        torch.testing.assert_close(small.model.state_dict()[name], value, msg=name)
    assert small.history.history["loss"] == pytest.approx(big.history.history["loss"], rel=1e-6)


class WeightedRows(Dataset):
    def __init__(self, x, y, w):
        self.x, self.y, self.w = x, y, w

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.w[i]


def test_batches_ending_with_weights_and_a_weighted_validation_split():
    x, y = make_classification(n=40)
    w = torch.rand(40, generator=torch.Generator().manual_seed(3))
    model = make_mlp()
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.0, verbose=0)
    rows = WeightedRows(x, y, w)
    history = learner.fit(model, rows, batch_size=16, sample_weight=True, validation_data=rows)
    expected = float((per_sample(model, x, y) * w).mean())
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-6)
    assert history.history["val_loss"][0] == pytest.approx(expected, rel=1e-6)
    split = learner.fit(model, (x, y), batch_size=16, sample_weight=w, validation_split=0.25)
    tail = per_sample(model, x[30:], y[30:]) * w[30:]  # the weights are split with the data, as in Keras
    assert split.history["val_loss"][0] == pytest.approx(float(tail.mean()), rel=1e-6)


def test_weights_that_cannot_work_are_refused_before_training():
    x, y = make_classification(n=40)
    model = make_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def own(outputs, targets):
        return F.cross_entropy(outputs, targets)

    cases = [
        (TypeError, "need a loss fitorch can evaluate per sample", {"loss": own}, {"class_weight": CLASS_WEIGHT}),
        (ValueError, "this learner has none", {}, {"sample_weight": torch.ones(40)}),
        (
            ValueError,
            r"map every class index 0..K-1 to a weight, got keys \[0, 2\]",
            {},
            {"class_weight": {0: 1, 2: 1}},
        ),
        (ValueError, r"class_weight\[1\] must be a number >= 0, got -1", {}, {"class_weight": {0: 1, 1: -1, 2: 1}}),
        (ValueError, "weights for 2 classes .* the model's outputs have 3", {}, {"class_weight": {0: 1, 1: 2}}),
        (ValueError, "sample_weight: 39", {}, {"sample_weight": torch.ones(39)}),
        (TypeError, "sample_weight must be an array or tensor", {}, {"sample_weight": [1.0] * 40}),
    ]
    for error, match, learner_options, fit_options in cases:
        learner = Learner(**{"loss": "cross_entropy", "verbose": 0, **learner_options})
        if "sample_weight" in fit_options and not learner_options and "none" in match:
            learner = Learner(verbose=0)
        with pytest.raises(error, match=match):
            learner.fit(model, (x, y), **fit_options)
    with pytest.raises(ValueError, match="yield \\(inputs, targets, weights\\) batches and pass sample_weight=True"):
        Learner(loss="cross_entropy", verbose=0).fit(model, WeightedRows(x, y, y), sample_weight=torch.ones(40))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
