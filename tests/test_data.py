"""Every accepted form of data and batch, and the errors for data that cannot work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from conftest import make_classification, make_mlp
from fitorch import Learner


def quiet(**kwargs):
    return Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0, **kwargs)


def test_numpy_arrays_float64_are_cast_to_float32(data):
    x, y = data
    history = quiet().fit(make_mlp(), (x.double().numpy(), y.numpy()), epochs=1)
    assert np.isfinite(history.history["loss"][0])


def test_dataloader_dataset_and_iterable_dataset(data):
    x, y = data

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    for train in [DataLoader(TensorDataset(x, y), batch_size=16), TensorDataset(x, y), Stream()]:
        history = quiet().fit(make_mlp(), train, epochs=2, validation_data=TensorDataset(x, y))
        assert len(history.history["val_accuracy"]) == 2


def test_several_inputs_reach_the_model_positionally():
    x, y = make_classification(n=16)

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.left, self.right = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, a, b):
            return self.left(a) + self.right(b)

    learner = quiet()
    learner.fit(TwoInputs(), (x[:, :4], x[:, 4:], y), epochs=1)
    assert learner.predict(TwoInputs(), (x[:, :4], x[:, 4:])).shape == (16, 3)


class DictDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "labels": self.y[i]}


class HuggingFaceStyle(nn.Module):
    """Returns an object with .loss and .logits, as transformers models do."""

    def __init__(self):
        super().__init__()
        self.net = make_mlp()

    def forward(self, features, labels=None):
        logits = self.net(features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return type("Output", (), {"loss": loss, "logits": logits})()


def test_dict_batches_use_the_models_own_loss_and_logits(data):
    x, y = data
    learner = Learner(metrics=["accuracy"], verbose=0)
    history = learner.fit(HuggingFaceStyle(), DictDataset(x, y), epochs=3, validation_data=DictDataset(x, y))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert 0 <= history.history["val_accuracy"][-1] <= 1
    predictions = learner.predict(learner.model, DictDataset(x, y))
    assert predictions.shape == (len(x), 3)


def test_predict_returns_outputs_in_dataset_order_on_cpu(data):
    x, _ = data
    model = make_mlp()
    predictions = quiet().predict(model, x, batch_size=5)
    assert predictions.device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(predictions, model(x))


def test_predict_keeps_tuple_outputs():
    x, _ = make_classification(n=10)

    class Pair(nn.Module):
        def forward(self, inputs):
            return inputs.sum(1), inputs * 2

    sums, doubled = quiet().predict(Pair(), x, batch_size=3)
    torch.testing.assert_close(sums, x.sum(1))
    torch.testing.assert_close(doubled, x * 2)


def test_evaluate_returns_logs_without_prefix(data):
    x, y = data
    logs = quiet().evaluate(make_mlp(), (x, y))
    assert set(logs) == {"loss", "accuracy"}


# ---------------------------------------------------------------- errors before any training


def untrained_check(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "crossentropy"}, "Unknown loss 'crossentropy'. Known losses: bce,"),
        ({"loss": "cross_entropy", "optimizer": "adamm"}, "Unknown optimizer 'adamm'. Known optimizers: adamw,"),
        ({"loss": "cross_entropy", "metrics": ["acuracy"]}, "Unknown metric 'acuracy'. Known metrics: accuracy,"),
        (
            {"loss": "cross_entropy", "optimizer": "sgd", "momentun": 0.9},
            "SGD takes no option 'momentun'. Did you mean 'momentum'?",
        ),
        ({"loss": "cross_entropy", "mixed_precision": "fp8"}, "mixed_precision must be one of"),
        (
            {"loss": "cross_entropy", "verbose": 3},
            "verbose (0 silent, 1 progress bar, 2 one line per epoch) must be one of 0, 1, 2, got 3",
        ),
        ({"loss": "cross_entropy", "grad_clip": -1}, "grad_clip must be a positive number or None, got -1"),
        ({"loss": "cross_entropy", "grad_accum_steps": 0}, "grad_accum_steps must be a positive int or None, got 0"),
        ({"loss": "cross_entropy", "seed": -1}, "seed must be an int >= 0 or None, got -1"),
        ({"loss": "cross_entropy", "lr": -0.1}, "lr must be a number >= 0, got -0.1"),
    ],
)
def test_bad_learner_arguments_fail_at_construction(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as error:
        Learner(**kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x, y: quiet().fit(m, (x, y), epochs=0), "epochs must be a positive int, got 0"),
        (
            lambda m, x, y: quiet().fit(m, (x, y[:-1])),
            "data: every array must hold the same number of samples, got x: 64, y: 63",
        ),
        (lambda m, x, y: quiet().fit(m, (x[:0], y[:0])), "data holds no samples"),
        (lambda m, x, y: quiet().fit(m, TensorDataset(x[:0], y[:0])), "data holds no samples"),
        (
            lambda m, x, y: quiet().fit(m, (x, y), validation_split=1.0),
            "validation_split must be a number in [0, 1), got 1.0",
        ),
        (
            lambda m, x, y: quiet().fit(m, (x, y), validation_split=-0.1),
            "validation_split must be a number in [0, 1), got -0.1",
        ),
        (lambda m, x, y: quiet().fit(m, (x, y), batch_size=0), "batch_size must be a positive int or None, got 0"),
        (lambda m, x, y: quiet().fit(m, [1, 2, 3]), "data must be a DataLoader, a Dataset, or a tuple"),
        (
            lambda m, x, y: quiet().fit(m, DataLoader(TensorDataset(x, y)), batch_size=8),
            "set them when you build the DataLoader",
        ),
        (lambda m, x, y: quiet().fit(m, (x, y.float())), "needs class indices as integers (int64) of shape (32,)"),
        (lambda m, x, y: quiet().fit(m, (x, y.unsqueeze(1))), "Fix: use y.squeeze(1)"),
        (
            lambda m, x, y: quiet().fit(m, (x, y + 5)),
            "class indices must lie in [0, 2] for 3 outputs, got values from 5 to 7",
        ),
        (lambda m, x, y: quiet().fit("model", (x, y)), "model must be a torch.nn.Module, got str"),
    ],
)
def test_bad_fit_input_fails_clearly_before_any_training(data, call, message):
    x, y = data
    model = make_mlp()
    before = untrained_check(model)
    with pytest.raises((ValueError, TypeError)) as error:
        call(model, x, y)
    assert message in str(error.value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), "no optimizer step may happen before the error"


def test_batches_bound_for_cuda_are_pinned_and_copied_without_blocking_elsewhere_not():
    from fitorch.data import pins_memory

    assert pins_memory(torch.device("cuda", 0))
    assert not any(pins_memory(torch.device(kind)) for kind in ("cpu", "mps", "meta"))


def test_a_loader_fitorch_builds_pins_tensors_on_the_cpu_but_not_tensors_already_on_a_device():
    from fitorch.data import LoaderOptions, make_loader

    pinned = LoaderOptions(pin_memory=True)
    host = (torch.zeros(8, 2), torch.zeros(8))
    assert make_loader(host, "data", pinned, train=True).pin_memory
    assert make_loader(Subset(TensorDataset(*host), range(4)), "data", pinned, train=False).pin_memory
    # Tensors already on a device (CUDA in practice; "meta" stands in here) cannot be pinned:
    # DataLoader's pinning would raise on the first batch.
    device = (torch.zeros(8, 2, device="meta"), torch.zeros(8, device="meta"))
    assert not make_loader(device, "data", pinned, train=True).pin_memory
    assert not make_loader(Subset(TensorDataset(*device), range(4)), "data", pinned, train=False).pin_memory
    assert not make_loader(host, "data", LoaderOptions(pin_memory=False), train=True).pin_memory
