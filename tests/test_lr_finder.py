"""`Learner.lr_find`: the sweep, the suggestion rules, the plot, and the guarantee that nothing changes."""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import Recorder, make_classification, make_mlp
from fitorch import Learner, LRFindResult, seed_everything
from fitorch.lr_finder import suggestion_index


def snapshot(learner: Learner, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Model weights and every optimizer state tensor, for a bit-exact comparison."""
    tensors = {f"model.{key}": value.clone() for key, value in model.state_dict().items()}
    for index, state in learner.optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{index}.{key}": value.clone() for key, value in state.items()})
    return tensors


def assert_same(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []


def random_draws() -> tuple:
    """One draw from each global generator: equal draws mean equal states."""
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def user_loader(x, y) -> DataLoader:
    """A DataLoader with its own generator, which iterating it advances."""
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("case", ["tensors, seeded learner", "own DataLoader, unseeded learner", "second fit"])
def test_a_fit_after_lr_find_is_bit_identical_to_the_same_fit_without_it(case):
    x, y = make_classification(n=72)

    def run(sweep: bool) -> tuple:
        seed_everything(11)
        recorder = Recorder()
        learner = Learner(
            loss="cross_entropy",
            optimizer="adamw",
            lr=1e-2,
            metrics=["accuracy"],
            verbose=0,
            grad_accum_steps=2,
            callbacks=[recorder],
            seed=3 if case == "tensors, seeded learner" else None,
        )
        model = make_mlp(dropout=0.3)
        data = user_loader(x, y) if case == "own DataLoader, unseeded learner" else (x, y)
        options = {} if case == "own DataLoader, unseeded learner" else {"batch_size": 8}
        if case == "second fit":  # the learner keeps this model's optimizer (and its state) for the next fit
            learner.fit(model, data, epochs=1, **options)
        before = (learner.optimizer, learner.history, learner.global_step, len(recorder.events))
        if sweep:
            result = learner.lr_find(model, data, num_steps=12, **options)
            assert len(result.rates) == 12
            # The learner, its optimizer and its callbacks saw nothing of the sweep.
            assert (learner.optimizer, learner.history, learner.global_step, len(recorder.events)) == before
        history = learner.fit(model, data, epochs=3, initial_epoch=1 if case == "second fit" else 0, **options)
        return snapshot(learner, model), history.history, random_draws()

    straight, swept = run(sweep=False), run(sweep=True)
    assert_same(straight[0], swept[0])
    assert straight[1:] == swept[1:]


def test_the_model_comes_back_with_its_gradients_training_flags_and_buffers():
    x, y = make_classification(n=64)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model.eval()
    model[3].train()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    Learner(loss="cross_entropy", verbose=0).lr_find(model, (x, y), num_steps=8)
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())  # BN statistics too
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight)) and model[3].weight.grad is None
    assert [module.training for module in model.modules()] == [False, False, False, False, True]


def test_the_sweep_is_exponential_over_the_range_and_stops_when_the_loss_diverges():
    x, y = make_classification(n=128)
    learner = Learner(loss="cross_entropy", optimizer="sgd", verbose=0, seed=0)
    full = learner.lr_find(make_mlp(), (x, y), start_lr=1e-4, end_lr=1e-1, num_steps=20, diverge_threshold=None)
    assert len(full.rates) == len(full.losses) == len(full.raw_losses) == 20 and not full.diverged
    assert full.rates[0] == pytest.approx(1e-4) and full.rates[-1] == pytest.approx(1e-1)
    ratios = np.diff(np.log(full.rates))
    assert np.allclose(ratios, ratios[0])  # the same factor every step
    # 16 samples, batch 8: the 20 steps run over 10 epochs of the data.
    diverging = learner.lr_find(make_mlp(), (x, y), start_lr=1e-2, end_lr=1e6, num_steps=60, batch_size=16)
    assert diverging.diverged and len(diverging.losses) < 60
    last = diverging.losses[-1]
    assert not math.isfinite(last) or last > 4 * min(diverging.losses)
    assert isinstance(diverging, LRFindResult) and diverging.suggestion in diverging.rates


def test_each_parameter_group_keeps_its_ratio_and_the_learners_own_steps_run():
    x, y = make_classification(n=64)

    class RecordsRates(Learner):
        def optimizer_step(self, optimizer=None):
            self.seen.append([group["lr"] for group in (optimizer or self.optimizer).param_groups])
            super().optimizer_step(optimizer)

    def two_groups(model):
        groups = [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters()}]
        return torch.optim.SGD(groups, lr=0.3)

    learner = RecordsRates(loss="cross_entropy", optimizer=two_groups, verbose=0)
    learner.seen = []
    result = learner.lr_find(make_mlp(), (x, y), start_lr=1e-3, end_lr=1.0, num_steps=6, diverge_threshold=None)
    assert [first for first, _ in learner.seen] == pytest.approx(result.rates)
    assert [second / first for first, second in learner.seen] == pytest.approx([3.0] * 6)


def test_the_suggestion_rules_on_known_curves():
    rates = list(np.geomspace(1e-6, 1.0, 62))
    # A plateau creeping down, a fall from index 20 to 40, then an explosion: a typical finder curve.
    plateau = [2.0 - 1e-4 * i for i in range(20)]
    losses = plateau + list(np.linspace(1.99, 0.5, 21)[1:]) + list(np.linspace(0.6, 8.0, 21)) + [math.inf]
    valley = suggestion_index(losses, rates, "valley")
    steepest = suggestion_index(losses, rates, "steepest")
    assert 20 <= valley < 40 and 20 <= steepest < 40  # on the descent, before the minimum
    assert suggestion_index(losses[:4], rates[:4], "valley") is None  # too short to say anything
    result = LRFindResult(rates, losses, losses, "valley", rates[valley], False)
    assert result.suggest("valley") == result.suggestion and result.suggest("steepest") == rates[steepest]
    with pytest.raises(ValueError, match="rule must be one of 'valley', 'steepest', got 'min'"):
        result.suggest("min")


def test_save_plot_writes_a_png_into_run_dir(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = make_classification(n=64)
    learner = Learner(loss="cross_entropy", verbose=0, run_dir=tmp_path / "run")
    result = learner.lr_find(make_mlp(), (x, y), num_steps=10)
    path = result.save_plot()
    assert path == str(tmp_path / "run" / "lr_find.png")
    assert (tmp_path / "run" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "run").iterdir()) == [tmp_path / "run" / "lr_find.png"]  # the sweep wrote nothing else
    with pytest.raises(ValueError, match="give a path, or set Learner"):
        LRFindResult([1.0], [1.0], [1.0], "valley", None, False).save_plot()


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = LRFindResult([1e-3, 1e-2], [1.0, 0.9], [1.0, 0.9], "valley", None, False)
    with pytest.raises(ImportError, match=r"pip install 'fitorch\[plot\]'"):
        result.plot()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"start_lr": 0}, ValueError, "lr_find: start_lr must be a positive number, got 0"),
        ({"start_lr": 1e-3, "end_lr": 1e-4}, ValueError, "lr_find: end_lr must be a number > 0.001, got 0.0001"),
        ({"num_steps": 1}, ValueError, "lr_find: num_steps must be an int >= 2, got 1"),
        ({"num_steps": 10.0}, TypeError, "num_steps must be an int >= 2, got 10.0"),
        ({"smoothing": 1}, ValueError, r"smoothing must be a number in \[0, 1\), got 1"),
        ({"diverge_threshold": 0.5}, ValueError, "diverge_threshold must be a number > 1 or None"),
        ({"rule": "minimum"}, ValueError, "rule must be one of 'valley', 'steepest', got 'minimum'"),
    ],
)
def test_bad_arguments_fail_before_anything_is_touched(options, error, message):
    x, y = make_classification(n=16)
    model = make_mlp()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(error, match=message):
        Learner(loss="cross_entropy", verbose=0).lr_find(model, (x, y), **options)
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())


def test_a_failing_sweep_still_restores_the_model():
    x, y = make_classification(n=16)
    model = make_mlp()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="every array must hold the same number of samples"):
        Learner(loss="cross_entropy", verbose=0).lr_find(model, (x, y[:8]))
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
