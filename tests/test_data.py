"""Every accepted form of data and batch, and the errors for data that cannot work."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner
from fitorch.data import ArrayDataset


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


# ---------------------------------------------------------------- data as users bring it (issue 14)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, torch.int8, torch.int16, torch.int32])
def test_class_indices_of_any_integer_dtype_train_like_int64(data, dtype):
    x, y = data
    labels = y.numpy().astype(dtype) if isinstance(dtype, type) else y.to(dtype)
    expected = quiet().fit(make_mlp(), (x, y), epochs=2, shuffle=False)
    history = quiet().fit(make_mlp(), (x, labels), epochs=2, shuffle=False, validation_data=(x, labels))
    assert history.history["loss"] == expected.history["loss"]
    assert history.history["accuracy"] == expected.history["accuracy"]
    assert "val_accuracy" in history.history


def test_float64_tensors_are_cast_to_the_models_dtype_like_numpy_arrays(data):
    x, y = data
    expected = quiet().fit(make_mlp(), (x, y), epochs=1, shuffle=False).history["loss"]
    assert quiet().fit(make_mlp(), (x.double(), y), epochs=1, shuffle=False).history["loss"] == expected
    regression = Learner(loss="mse", verbose=0).fit(nn.Linear(8, 1), (x.double(), x[:, :1].double()), epochs=1)
    assert np.isfinite(regression.history["loss"][0])
    model = make_mlp().double()  # a float64 model gets float64 inputs, not float32 ones
    assert quiet().predict(model, x.numpy()).dtype == torch.float64
    points = Points(x.double(), y)  # a Dataset's float64 samples are cast batch by batch
    assert quiet().fit(make_mlp(), points, epochs=1, shuffle=False).history["loss"] == expected


class Points(Dataset):
    """A plain map-style dataset: one `__getitem__` per sample."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.left, self.right = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, left, right):
        return self.left(left) + self.right(right)


def test_a_dict_of_arrays_is_passed_as_keyword_arguments(data):
    x, y = data
    inputs = {"right": x[:, 4:].numpy(), "left": x[:, :4]}
    learner = quiet()
    history = learner.fit(TwoInputs(), (inputs, y), epochs=2, validation_split=0.25, shuffle=False)
    positional = quiet().fit(TwoInputs(), (x[:, :4], x[:, 4:], y), epochs=2, validation_split=0.25, shuffle=False)
    assert history.history == positional.history
    predictions = learner.predict(learner.model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(predictions, learner.model(x[:, :4], x[:, 4:]))
    bad = {"left": x[:, :4], "right": x[:10, 4:]}
    with pytest.raises(ValueError, match=r"x\['right'\]: 10"):
        quiet().fit(TwoInputs(), (bad, y))


def test_a_generator_of_batches_with_steps_per_epoch_reads_on_across_epochs():
    x, y = ids_data(64)

    def endless():
        while True:
            for start in range(0, 64, 16):
                yield x[start : start + 16].numpy(), y[start : start + 16]  # arrays in batches are converted

    learner = recorded(endless(), epochs=3, steps_per_epoch=5, validation_data=[(x, y)])
    starts = [batch[0] for batch in learner.seen]
    assert starts == [0, 16, 32, 48] * 3 + [0, 16, 32]  # epoch 2 goes on where epoch 1 stopped
    assert len(learner.history.history["val_loss"]) == 3 and learner.global_step == 15


def test_a_used_up_generator_fails_naming_the_fix(data):
    x, y = data
    with pytest.raises(ValueError, match="data ran out of batches.*steps_per_epoch"):
        quiet().fit(make_mlp(), ((x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)), epochs=2)
    with pytest.raises(ValueError, match="validation_data ran out of batches.*validation_steps"):
        quiet().fit(make_mlp(), (x, y), epochs=2, validation_data=(b for b in [(x, y)]))
    with pytest.raises(ValueError, match="yields whole batches, so batch_size does not apply"):
        quiet().fit(make_mlp(), [(x, y)], batch_size=8)


def test_pandas_frames_are_read_as_their_values_as_keras_reads_them(data):
    pandas = pytest.importorskip("pandas")
    x, y = data
    frame, labels = pandas.DataFrame(x.double().numpy()), pandas.Series(y.numpy().astype("int32"))
    expected = quiet().fit(make_mlp(), (x, y), epochs=1, shuffle=False).history
    assert quiet().fit(make_mlp(), (frame, labels), epochs=1, shuffle=False).history == expected
    assert quiet().predict(make_mlp(), frame).shape == (64, 3)


def test_validation_split_of_an_iterable_dataset_is_a_clear_error(data):
    x, y = data

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(x, y))

    with pytest.raises(ValueError, match="validation_split needs data with a length.*pass validation_data"):
        quiet().fit(make_mlp(), Stream(), validation_split=0.2)
    with pytest.raises(ValueError, match="validation_split needs data with a length"):
        quiet().fit(make_mlp(), iter([(x, y)]), validation_split=0.2)


def test_loaders_fitorch_builds_use_no_worker_processes_unless_asked(data):
    x, y = data
    learner = quiet()
    seen = []

    class Workers(Callback):  # worker processes alive while the epoch runs
        def on_train_batch_end(self, batch, logs):
            if batch == 0:
                seen.append(len(multiprocessing.active_children()))

    learner.fit(make_mlp(), Points(x, y), epochs=1, callbacks=[Workers()])
    Learner(loss="cross_entropy", verbose=0, num_workers=1).fit(make_mlp(), Points(x, y), callbacks=[Workers()])
    assert seen == [0, 1]


def test_a_loader_without_batches_is_refused_before_training(data):
    x, y = data
    model = make_mlp()
    before = untrained_check(model)
    empty = DataLoader(TensorDataset(x[:20], y[:20]), batch_size=32, drop_last=True)
    with pytest.raises(ValueError, match="20 samples with batch_size=32 and drop_last=True drops the only"):
        quiet().fit(model, empty)
    with pytest.raises(ValueError, match="validation_data gives no batches"):
        quiet().fit(model, (x, y), validation_data=empty)
    with pytest.raises(ValueError, match="data gives no batches"):
        quiet().evaluate(model, empty)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


# ---------------------------------------------------------------- dict batches, Hugging Face style


class LabelRows(Dataset):
    """Rows as Hugging Face `datasets` yields them before a collator renames `label`."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i]}


def test_dict_batches_with_label_work_with_a_named_loss_and_with_the_models_own(data):
    x, y = data

    class Plain(nn.Module):  # takes no labels at all: `label` is only the learner's targets
        def __init__(self):
            super().__init__()
            self.net = make_mlp()

        def forward(self, features):
            return self.net(features)

    named = quiet().fit(Plain(), LabelRows(x, y), epochs=2, shuffle=False)
    expected = quiet().fit(make_mlp(), (x, y), epochs=2, shuffle=False)
    assert named.history["loss"] == expected.history["loss"]
    # a model that computes its own loss from `labels` gets the `label` column under that name
    own = Learner(metrics=["accuracy"], verbose=0).fit(HuggingFaceStyle(), LabelRows(x, y), epochs=2, shuffle=False)
    assert own.history["loss"] == pytest.approx(expected.history["loss"])
    assert own.history["accuracy"] == pytest.approx(expected.history["accuracy"])


# ---------------------------------------------------------------- batched fetching (issue 18)


class BatchRecorder(Learner):
    """Records the first feature of every training batch (the sample ids, with `ids_data`)."""

    def train_step(self, batch):
        self.seen.append(batch[0][:, 0].long().tolist())
        return super().train_step(batch)


def ids_data(n=50):
    ids = torch.arange(n, dtype=torch.float32)
    return torch.stack([ids, torch.randn(n)], 1), (torch.arange(n) % 3)


def recorded(data, **options):
    learner = BatchRecorder(loss="cross_entropy", seed=3, verbose=0)
    learner.seen = []
    torch.manual_seed(0)
    learner.fit(nn.Sequential(nn.Linear(2, 3)), data, **options)
    return learner


def test_tensors_are_fetched_a_batch_at_a_time_in_the_order_a_plain_dataloader_draws(monkeypatch):
    import torch.utils.data._utils.collate as collate

    stacked = []  # torch's per-sample path stacks samples with default_collate: arrays never take it
    monkeypatch.setattr(collate, "default_collate", lambda batch: stacked.append(len(batch)) or batch)
    x, y = ids_data()
    learner = recorded((x, y), epochs=3, batch_size=8)
    recorded(TensorDataset(x, y), epochs=1, batch_size=8, validation_split=0.2)
    monkeypatch.undo()
    assert stacked == []
    for epoch in range(3):
        generator = torch.Generator().manual_seed(learner.state.shuffle_seed + epoch)
        plain = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=generator)
        expected = [batch[0][:, 0].long().tolist() for batch in plain]
        assert learner.seen[epoch * 7 : (epoch + 1) * 7] == expected, epoch
        assert sorted(sum(expected, [])) == list(range(50))  # every sample once per epoch


def test_batched_fetching_trains_bit_identically_to_the_per_sample_path(data):
    x, y = ids_data()
    fast = recorded((x, y), epochs=2, batch_size=8, validation_split=0.2)
    slow = recorded(Points(x, y), epochs=2, batch_size=8, validation_split=0.2)  # __getitem__ + default_collate
    assert fast.seen == slow.seen
    for a, b in zip(fast.model.state_dict().values(), slow.model.state_dict().values()):
        assert torch.equal(a, b)
    assert fast.history.history == slow.history.history
    given = recorded(TensorDataset(x, y), epochs=2, batch_size=8, validation_split=0.2)  # a TensorDataset too
    assert given.seen == fast.seen


def test_a_dataset_with_getitems_returning_a_batch_is_fetched_once_per_batch(data):
    x, y = ids_data()
    calls = []

    class Batched(Points):
        def __getitems__(self, indices):
            calls.append(len(indices))
            index = torch.tensor(indices)
            return self.x[index], self.y[index]

    fast = recorded(Batched(x, y), epochs=1, batch_size=8)
    assert calls == [8] * 6 + [2]
    assert fast.seen == recorded(Points(x, y), epochs=1, batch_size=8).seen

    class SampleList(Points):  # torch's own contract: a list of samples, collated as usual
        def __getitems__(self, indices):
            return [(self.x[i], self.y[i]) for i in indices]

    assert recorded(SampleList(x, y), epochs=1, batch_size=8).seen == fast.seen


def test_pinned_memory_only_for_cpu_tensors_on_a_gpu_run():
    from fitorch.data import LoaderOptions, make_loader

    x, y = ids_data()
    loader = make_loader((x, y), "data", LoaderOptions(pin_memory=True), train=True)
    assert loader.pin_memory and isinstance(loader.dataset, ArrayDataset)
    meta = make_loader((x.to("meta"), y.to("meta")), "data", LoaderOptions(pin_memory=True), train=True)
    assert not meta.pin_memory  # tensors already on a device are indexed there, never pinned
