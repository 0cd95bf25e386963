"""Losses: names, the targets check that turns broadcasting and dtype slips into messages, model-computed losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_classification, make_mlp
from fitorch import Learner


def test_regression_shape_mismatch_is_caught_instead_of_broadcasting():
    x = torch.randn(16, 4)
    y = torch.randn(16)  # model outputs (16, 1): mse would silently broadcast to (16, 16)
    with pytest.raises(ValueError, match=r"targets of the same shape as the outputs.*y.reshape"):
        Learner(loss="mse", verbose=0).fit(nn.Linear(4, 1), (x, y))
    with pytest.raises(TypeError, match="floating-point targets.*y.float()"):
        Learner(loss="bce_with_logits", verbose=0).fit(nn.Linear(4, 1), (x, (y > 0).long().unsqueeze(1)))


def test_model_without_loss_and_no_loss_given():
    x, y = make_classification(n=8)
    with pytest.raises(ValueError, match="No loss was given to Learner"):
        Learner(verbose=0).fit(make_mlp(), (x, y))


class Wrapped(nn.Module):
    """The same network, returning its logits inside a tuple, a dict or an output object."""

    def __init__(self, kind):
        super().__init__()
        self.net, self.kind = make_mlp(), kind

    def forward(self, inputs):
        logits = self.net(inputs)
        if self.kind == "tuple":
            return logits, inputs  # (logits, hidden states)
        if self.kind == "dict":
            return {"logits": logits, "hidden": inputs}
        return type("ModelOutput", (), {"logits": logits, "loss": None})()


@pytest.mark.parametrize("kind", ["tuple", "dict", "object"])
@pytest.mark.parametrize("loss", ["cross_entropy", nn.CrossEntropyLoss()])
def test_a_named_loss_reads_logits_from_outputs_that_are_not_a_tensor(kind, loss):
    x, y = make_classification()
    options = {"epochs": 2, "shuffle": False, "validation_split": 0.25}
    expected = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0).fit(make_mlp(), (x, y), **options)
    learner = Learner(loss=loss, metrics=["accuracy"], verbose=0)
    history = learner.fit(Wrapped(kind), (x, y), **options)
    assert history.history == expected.history


def test_a_function_of_your_own_gets_the_outputs_as_the_model_returned_them():
    x, y = make_classification()
    received = []

    def own(outputs, targets):
        received.append(type(outputs))
        return F.cross_entropy(outputs[0], targets)

    Learner(loss=own, verbose=0).fit(Wrapped("tuple"), (x, y), batch_size=64)
    assert received == [tuple]


def test_a_loss_class_is_instantiated_and_one_needing_arguments_is_refused():
    x, y = make_classification()
    by_class = Learner(loss=nn.CrossEntropyLoss, verbose=0).fit(make_mlp(), (x, y), shuffle=False)
    by_name = Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), shuffle=False)
    assert by_class.history["loss"] == by_name.history["loss"]

    class NeedsWeight(nn.Module):
        def __init__(self, weight):
            super().__init__()

    with pytest.raises(
        TypeError, match=r"loss=NeedsWeight is a class that cannot be built without arguments.*NeedsWeight\(\.\.\.\)"
    ):
        Learner(loss=NeedsWeight)
    with pytest.raises(TypeError, match="loss=int is a class but not an nn.Module"):
        Learner(loss=int)


def test_fit_without_targets_and_a_named_loss_says_so():
    x, _ = make_classification()
    model = make_mlp()
    with pytest.raises(ValueError, match=r"loss='cross_entropy' needs targets, but the batches carry inputs only"):
        Learner(loss="cross_entropy", verbose=0).fit(model, x)
    with pytest.raises(ValueError, match="needs targets, but the batches carry inputs only"):
        Learner(loss="cross_entropy", verbose=0).fit(model, [(x,)])  # batches without targets


def test_a_negative_label_is_not_told_to_add_outputs():
    x, y = make_classification()
    y[3] = -1
    with pytest.raises(ValueError) as error:
        Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y))
    message = str(error.value)
    assert "got values from -1 to 2" in message and "mark samples to ignore with -100" in message
    assert "give the model" not in message


def test_labels_out_of_range_in_a_later_batch_name_the_batch_and_the_values():
    x, y = make_classification()
    y[45] = 7  # batch 2 of batch_size 16: the first batch is fine
    model = make_mlp()
    with pytest.raises(ValueError) as error:
        Learner(loss="cross_entropy", verbose=0).fit(model, (x, y), batch_size=16, shuffle=False)
    message = str(error.value)
    assert "got values from 0 to 7 in training batch 2 of epoch 1" in message
    assert "give the model 8 outputs" in message
    with pytest.raises(ValueError, match="in evaluation batch 2"):
        Learner(loss="cross_entropy", verbose=0).evaluate(model, (x, y), batch_size=16)


def test_the_device_guard_reports_the_first_bad_batch_without_a_sync_per_step():
    """The accelerator path of the check, run on CPU tensors (the learner uses it on GPUs only)."""
    from fitorch.losses import DeviceLabelGuard

    guard = DeviceLabelGuard()
    good = torch.tensor([0, 1, 2, -100])
    assert torch.equal(guard.check(good, 3, -100, ("training", 0, 0)), good)
    safe = guard.check(torch.tensor([0, 5, -1, 1]), 3, -100, ("training", 0, 1))
    assert safe.tolist() == [0, -100, -100, 1]  # no kernel sees an index out of range
    # The next batch reads the flag (on a GPU, copied without waiting) and reports the first bad batch.
    with pytest.raises(ValueError, match="got values from -1 to 5 in training batch 1 of epoch 1"):
        guard.check(torch.tensor([9, 9]), 3, -100, ("training", 0, 2))
    guard.check(torch.tensor([1, 7]), 3, -100, ("validation", 2, 4))
    with pytest.raises(ValueError, match="got values from 0 to 7 in validation batch 4 of epoch 3"):
        guard.verify()  # the end of a phase reads the device
