"""Compiled models: `Learner(compile=...)` and models the user compiled train through the compiled module,
and every checkpoint, `load_weights`, `ModelCheckpoint` and `EarlyStopping` reads and writes plain names.

Most tests use `torch.compile`'s "eager" backend: it wraps the model exactly as the default does (the
`_orig_mod.` names come from that wrapper) without the C++ compilation, which takes seconds per graph.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner, load_checkpoint, load_weights, save_checkpoint
from fitorch.callbacks import EarlyStopping, ModelCheckpoint
from fitorch.compiled import is_compiled

EAGER = {"backend": "eager"}
PLAIN_NAMES = list(make_mlp().state_dict())


class ForwardKinds(Callback):
    """Records whether the module that ran the training batches was a compiled one."""

    def __init__(self) -> None:
        self.compiled: set[bool] = set()

    def on_train_batch_end(self, batch, logs):
        self.compiled.add(is_compiled(self.learner.prepared_model))


def compiled_by(who: str) -> tuple[Learner, torch.nn.Module]:
    """A learner and the model to give it: compiled by the learner, or by the user beforehand."""
    if who == "learner":
        return Learner(loss="cross_entropy", verbose=0, seed=0, compile=EAGER), make_mlp()
    return Learner(loss="cross_entropy", verbose=0, seed=0), torch.compile(make_mlp(), **EAGER)


@pytest.mark.parametrize("who", ["learner", "user"])
def test_checkpoints_best_weights_and_learner_model_have_the_plain_names(who, tmp_path):
    x, y = make_classification(n=48)
    learner, model = compiled_by(who)
    kinds, stopper = ForwardKinds(), EarlyStopping(patience=5, restore_best_weights=True)
    best = ModelCheckpoint(tmp_path / "best", save_best_only=True)
    learner.fit(model, (x, y), 3, validation_split=0.25, callbacks=[kinds, stopper, best])
    assert kinds.compiled == {True}  # the training batches ran through a compiled module
    assert list(learner.model.state_dict()) == PLAIN_NAMES and not is_compiled(learner.model)
    assert sorted(load_file(tmp_path / "best" / "model.safetensors")) == sorted(PLAIN_NAMES)
    assert list(stopper.best_weights) == PLAIN_NAMES
    save_checkpoint(learner, tmp_path / "final")
    assert sorted(load_file(tmp_path / "final" / "model.safetensors")) == sorted(PLAIN_NAMES)

    plain = make_mlp(seed=1)
    load_weights(plain, tmp_path / "final")  # compiled -> plain
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), learner.model.state_dict().values()))


@pytest.mark.parametrize("who", ["learner", "user"])
def test_a_compiled_model_loads_and_resumes_from_a_plain_models_checkpoint_and_back(who, tmp_path):
    x, y = make_classification(n=48)
    plain_learner, plain = Learner(loss="cross_entropy", verbose=0, seed=0), make_mlp()
    plain_learner.fit(plain, (x, y), 2, batch_size=8)
    save_checkpoint(plain_learner, tmp_path / "plain")

    learner, model = compiled_by(who)
    load_weights(model, tmp_path / "plain")  # plain -> compiled, by hand ...
    load_checkpoint(model, tmp_path / "plain")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))
    learner.fit(model, (x, y), 3, batch_size=8, resume=tmp_path / "plain")  # ... and by resuming
    straight = make_mlp()
    Learner(loss="cross_entropy", verbose=0, seed=0).fit(straight, (x, y), 3, batch_size=8)
    for ours, theirs in zip(learner.model.parameters(), straight.parameters()):
        torch.testing.assert_close(ours, theirs)  # compiled kernels may round differently; eager ones do not here


def test_a_bare_file_saved_from_a_compiled_state_dict_loads_into_a_plain_model(tmp_path):
    compiled = torch.compile(make_mlp(seed=3), **EAGER)
    assert list(compiled.state_dict())[0].startswith("_orig_mod.")  # what PyTorch issue 101107 is about
    save_file(compiled.state_dict(), str(tmp_path / "compiled.safetensors"))
    plain = make_mlp()
    load_weights(plain, tmp_path / "compiled.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), compiled.state_dict().values()))


def test_the_compile_option_is_checked_where_it_is_given():
    with pytest.raises(TypeError, match=r"compile \(True, False or a dict of torch.compile options\) must be True"):
        Learner(compile="yes")
    with pytest.raises(TypeError, match="compile options must be keyword arguments of torch.compile .*got 'modes'"):
        Learner(compile={"modes": "max-autotune"})
    assert Learner(compile=True).config()["compile"] is True
    assert Learner(compile={"mode": "reduce-overhead"}).config()["compile"] == {"mode": "reduce-overhead"}


@pytest.mark.slow
def test_the_default_inductor_backend_trains_like_the_plain_model():
    # One real compilation (C++ on the CPU; seconds): the same fit, compiled and not, ends at the same weights.
    x, y = make_classification(n=32)
    plain, compiled = make_mlp(), make_mlp()
    Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0, seed=0).fit(plain, (x, y), 2, batch_size=16)
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, verbose=0, seed=0, compile=True)
    learner.fit(compiled, (x, y), 2, batch_size=16)
    for ours, theirs in zip(compiled.parameters(), plain.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
