"""Checkpoints: exact resume in a new process, crash safety under SIGKILL, no pickle, bad input, atomic writes.

The training recipe (AdamW, dropout, shuffling, accumulation windows of 2) lives in
tests/scripts/checkpoint_job.py, shared with the processes these tests start.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, load_model, save_file
from torch import nn

from conftest import StopAtStep
from fitorch import (
    Learner,
    delete_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from fitorch.callbacks import BackupAndRestore, ModelCheckpoint

SCRIPT = Path(__file__).parent / "scripts" / "checkpoint_job.py"
_spec = importlib.util.spec_from_file_location("checkpoint_job", SCRIPT)
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)


def run_script(*arguments: str, timeout: int = 240) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == [], f"not bit-identical: {different}"


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Learner, Path]:
    """A learner after a short fit, and a full checkpoint of it."""
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 2)
    path = tmp_path_factory.mktemp("trained") / "checkpoint"
    save_checkpoint(learner, path)
    return learner, path


# ---------------------------------------------------------------------------- exact resume


@pytest.mark.slow
def test_resume_in_a_new_process_is_bit_identical_at_an_epoch_end_and_mid_epoch(tmp_path):
    straight, patience = job.make_learner(), job.Patience()
    job.fit(straight, job.make_model(), 6, callbacks=[patience])
    expected = job.final_state(straight)

    # 3 epochs, then the process "ends": the checkpoint of epoch 3 is all that is left.
    job.fit(job.make_learner(), job.make_model(), 3, callbacks=[job.Patience(), ModelCheckpoint(tmp_path / "epoch")])
    # A run that dies in the middle of epoch 2, at step 13; its last backup is from step 12.
    with pytest.raises(KeyboardInterrupt):
        job.fit(
            job.make_learner(),
            job.make_model(),
            6,
            callbacks=[job.Patience(), StopAtStep(13), BackupAndRestore(tmp_path / "backup", save_freq=3)],
        )
    loop = json.loads((tmp_path / "backup" / "checkpoint.json").read_text())["loop"]
    assert (loop["epoch"], loop["global_step"]) == (2, 12) and 0 < loop["batch"] < 9  # mid-epoch

    run_script(
        "resume",
        "6",
        str(tmp_path / "epoch"),
        str(tmp_path / "out_epoch"),
        str(tmp_path / "backup"),
        str(tmp_path / "out_mid"),
    )
    for out in ("out_epoch", "out_mid"):
        assert_same_tensors(expected, load_file(tmp_path / out / "final.safetensors"))
        result = json.loads((tmp_path / out / "final.json").read_text())
        assert result["patience"] == patience.state_dict()  # the patience counter and best value survived
        assert result["history"]["val_loss"] == straight.history.history["val_loss"]  # one continuous History
    assert patience.wait > 0  # the counter really moved, so restoring it mattered
    assert json.loads((tmp_path / "out_epoch" / "final.json").read_text())["history"] == straight.history.history


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash test's server forks its training children")
def test_sigkill_at_random_moments_never_breaks_the_backup_and_the_run_ends_as_if_uninterrupted(tmp_path):
    run_script("crash", str(tmp_path), "24", "0")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["kills"] >= 20
    assert summary["mid_save_kills"] >= 3, summary  # some kills landed inside a save ...
    assert summary["between_renames"] >= 1, summary  # ... and some between its two renames
    children = [json.loads(line) for line in (tmp_path / "children.jsonl").read_text().splitlines()]
    steps = [child["resumed_at_step"] for child in children]
    assert len(steps) == summary["kills"] + 1  # every child after a kill loaded the newest backup
    assert steps == sorted(steps) and steps[-1] > 0  # progress was kept across kills
    assert_same_tensors(
        load_file(tmp_path / "reference" / "final.safetensors"), load_file(tmp_path / "resumed" / "final.safetensors")
    )


def test_resume_restores_the_learner_in_process_and_load_checkpoint_restores_rng(tmp_path):
    straight = job.make_learner()
    job.fit(straight, job.make_model(), 4)
    first = job.make_learner()
    job.fit(first, job.make_model(), 2, callbacks=[ModelCheckpoint(tmp_path / "ckpt")])
    draws = (random.random(), np.random.rand(), torch.rand(3))  # right after the save at the end of fit
    resumed = job.make_learner()
    history = job.fit(resumed, job.make_model(seed=5), 4, resume=tmp_path / "ckpt")
    assert_same_tensors(job.final_state(straight), job.final_state(resumed))
    assert history.epoch == [0, 1, 2, 3]
    assert isinstance(resumed.optimizer.param_groups[0]["betas"], tuple)  # tuples come back as tuples

    load_checkpoint(first, tmp_path / "ckpt")
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(3), draws[2])


def test_resume_true_takes_the_newest_checkpoint_of_the_run(tmp_path):
    learner = job.make_learner(run_dir=tmp_path)
    job.fit(learner, job.make_model(), 3, callbacks=[ModelCheckpoint(tmp_path / "ckpt" / "e{epoch}")])
    assert latest_checkpoint(tmp_path) == str(tmp_path / "ckpt" / "e3")
    resumed = job.make_learner(run_dir=tmp_path)
    job.fit(resumed, job.make_model(), 3, resume=True)
    assert resumed.global_step == learner.global_step  # nothing left to train: it resumed at the end


def test_resume_true_without_a_checkpoint_or_run_dir_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint under run_dir"):
        job.fit(job.make_learner(run_dir=tmp_path), job.make_model(), 1, resume=True)
    with pytest.raises(ValueError, match="run_dir is None"):
        job.fit(job.make_learner(), job.make_model(), 1, resume=True)
    with pytest.raises(TypeError, match="resume must be"):
        job.fit(job.make_learner(), job.make_model(), 1, resume=3)


def test_callback_states_are_keyed_by_class_and_index(tmp_path):
    counters = [job.Patience(), job.Patience()]
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 1, callbacks=counters)
    counters[0].wait, counters[1].wait = 5, 7
    save_checkpoint(learner, tmp_path / "ckpt")
    states = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())["callbacks"]
    assert states["Patience[0]"]["wait"] == 5 and states["Patience[1]"]["wait"] == 7
    assert "History[0]" in states
    fresh = [job.Patience(), job.Patience()]
    job.fit(job.make_learner(), job.make_model(), 1, callbacks=fresh, resume=tmp_path / "ckpt")
    assert (fresh[0].wait, fresh[1].wait) == (5, 7)


def test_the_grad_scaler_state_is_saved_and_restored(tmp_path):
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 1)
    learner.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1234.0)  # as under fp16 on a GPU
    save_checkpoint(learner, tmp_path / "ckpt")
    learner.accelerator.scaler = torch.amp.GradScaler("cpu")
    load_checkpoint(learner, tmp_path / "ckpt")
    assert learner.accelerator.scaler.get_scale() == 1234.0


# ---------------------------------------------------------------------------- the format


def test_model_safetensors_loads_with_plain_safetensors(trained):
    learner, path = trained
    model = job.make_model(seed=99)
    model.load_state_dict(load_file(path / "model.safetensors"))  # strict, no fitorch involved
    assert_same_tensors(clone_state(learner.model), clone_state(model))
    assert not any(name.endswith((".bin", ".pkl", ".pt", ".pth")) for name in os.listdir(path))


class TiedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens):
        return self.head(self.embed(tokens))


def test_tied_weights_are_saved_once_and_loading_keeps_the_tie(tmp_path):
    torch.manual_seed(0)
    model = TiedModel()
    learner = Learner(loss="cross_entropy", verbose=0)
    learner.fit(model, (torch.randint(10, (8,)), torch.randint(10, (8,))), epochs=1, batch_size=4)
    save_checkpoint(learner, tmp_path / "tied")
    assert set(load_file(tmp_path / "tied" / "model.safetensors")) == {"embed.weight"}
    files = json.loads((tmp_path / "tied" / "checkpoint.json").read_text())["files"]
    assert files["model.safetensors"]["aliases"] == {"head.weight": "embed.weight"}

    for loader in (
        lambda m: load_weights(m, tmp_path / "tied"),
        lambda m: load_weights(m, tmp_path / "tied" / "model.safetensors"),  # a bare file
        lambda m: load_model(m, tmp_path / "tied" / "model.safetensors"),
    ):  # plain safetensors
        fresh = TiedModel()
        loader(fresh)
        assert torch.equal(fresh.embed.weight, model.embed.weight)
        assert fresh.head.weight is fresh.embed.weight


class Payload:
    """Unpickling this creates the marker file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_never_unpickled(tmp_path, monkeypatch):
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 1)
    path = tmp_path / "ckpt"
    save_checkpoint(learner, path)
    marker = tmp_path / "unpickled"
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "pytorch_model.bin", "model.pt"):
        (path / name).write_bytes(pickle.dumps(Payload(marker)))

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(owner, name, forbidden)
    load_weights(job.make_model(), path)
    load_checkpoint(job.make_model(), path)
    job.fit(job.make_learner(), job.make_model(), 2, resume=path)
    assert not marker.exists()

    # A pickle in place of a file the loader reads is refused as a damaged file, not run.
    (path / "training_state.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="training_state.safetensors"):
        job.fit(job.make_learner(), job.make_model(), 2, resume=path)
    assert not marker.exists()


# ---------------------------------------------------------------------------- bad input


def test_a_checkpoint_of_another_architecture_lists_the_keys_and_changes_nothing(trained):
    _, path = trained
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))  # the checkpoint's has a Dropout at 2
    before = clone_state(model)
    with pytest.raises(ValueError) as error:
        load_weights(model, path)
    message = str(error.value)
    assert "does not fit Sequential" in message and "was not changed" in message
    assert "missing keys (2): 2.weight, 2.bias" in message
    assert "unexpected keys (2): 3.weight, 3.bias" in message
    assert "mis-shaped keys (2): 0.weight (checkpoint [16, 8], model [32, 8]), 0.bias" in message
    assert_same_tensors(before, clone_state(model))


def test_load_weights_strict_false_skips_missing_and_unexpected_keys_but_never_shapes(trained):
    learner, path = trained
    bigger = nn.Sequential(*job.make_model(), nn.Linear(3, 3))
    result = load_weights(bigger, path, strict=False)
    assert result.missing_keys == ["4.weight", "4.bias"]
    assert torch.equal(bigger[0].weight, learner.model[0].weight)
    with pytest.raises(ValueError, match="mis-shaped"):
        load_weights(nn.Sequential(nn.Linear(8, 5)), path, strict=False)


def test_resuming_with_another_optimizer_fails_before_touching_the_model(trained, tmp_path):
    learner = Learner(loss="cross_entropy", optimizer="sgd", lr=0.1, momentum=0.9, verbose=0)
    model = job.make_model(seed=3)
    job.fit(learner, model, 1)
    save_checkpoint(learner, tmp_path / "sgd")
    target = job.make_model(seed=4)
    adamw = job.make_learner()
    before = clone_state(target)
    with pytest.raises(ValueError, match="SGD optimizer, the learner uses AdamW"):
        job.fit(adamw, target, 2, resume=tmp_path / "sgd")
    assert_same_tensors(before, clone_state(target))


def test_a_truncated_or_corrupted_file_is_refused_and_the_model_is_untouched(trained, tmp_path):
    copy = shutil.copytree(trained[1], tmp_path / "copy")
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    model = job.make_model(seed=42)
    before = clone_state(model)

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_weights(model, copy)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(model, weights)  # a bare file: safetensors itself finds it truncated
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # one byte of a weight: the size is right, the checksum is not
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(model, copy)
    weights.write_bytes(b"\x00" * 8 + data[8:])  # a header length of zero
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(model, weights)
    assert_same_tensors(before, clone_state(model))


def test_a_newer_format_version_a_missing_path_and_a_foreign_folder_are_refused(trained, tmp_path):
    newer = shutil.copytree(trained[1], tmp_path / "newer")
    metadata = json.loads((newer / "checkpoint.json").read_text())
    (newer / "checkpoint.json").write_text(json.dumps({**metadata, "format_version": 99}))
    model = job.make_model(seed=42)
    before = clone_state(model)
    with pytest.raises(ValueError, match="format version 99, written by a newer fitorch.*Upgrade fitorch"):
        load_weights(model, newer)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_checkpoint(model, tmp_path / "does_not_exist")
    (tmp_path / "foreign").mkdir()
    with pytest.raises(ValueError, match="not a fitorch checkpoint"):
        load_weights(model, tmp_path / "foreign")
    (newer / "checkpoint.json").write_text("{ not json")
    with pytest.raises(ValueError, match="cannot read checkpoint.json"):
        load_weights(model, newer)
    assert_same_tensors(before, clone_state(model))


def test_a_weights_only_checkpoint_cannot_be_resumed(tmp_path):
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 1)
    save_checkpoint(learner, tmp_path / "weights", weights_only=True)
    assert sorted(os.listdir(tmp_path / "weights")) == ["checkpoint.json", "model.safetensors"]
    with pytest.raises(ValueError, match="holds weights only"):
        job.fit(job.make_learner(), job.make_model(), 2, resume=tmp_path / "weights")
    load_weights(job.make_model(), tmp_path / "weights")


def test_save_and_load_reject_what_is_not_a_learner_or_model(tmp_path):
    with pytest.raises(ValueError, match="has no model yet"):
        save_checkpoint(job.make_learner(), tmp_path / "x")
    with pytest.raises(TypeError, match="expected a fitorch.Learner"):
        save_checkpoint("learner", tmp_path / "x")
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        load_weights("model", tmp_path / "x")


# ---------------------------------------------------------------------------- atomic writes


def test_a_kill_between_the_two_renames_leaves_the_old_checkpoint_loadable(tmp_path, monkeypatch):
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 1)
    path = tmp_path / "ckpt"
    save_checkpoint(learner, path)
    old_weights = load_file(path / "model.safetensors")
    real_replace, calls = os.replace, []

    def die_at_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", die_at_second_rename)
    with torch.no_grad():
        learner.model[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(learner, path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not path.exists() and (tmp_path / ".ckpt.old").is_dir()  # the state a kill there leaves

    model = job.make_model(seed=1)
    load_weights(model, path)  # falls back to the copy set aside
    assert torch.equal(model[0].weight, old_weights["0.weight"])
    assert latest_checkpoint(tmp_path) == str(path) and latest_checkpoint(path) == str(path)

    save_checkpoint(learner, path)  # the next save restores order, then replaces
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert torch.equal(load_file(path / "model.safetensors")["0.weight"], learner.model[0].weight)


def test_stale_temporary_folders_are_ignored_and_cleaned_on_the_next_save(trained, tmp_path):
    learner, source = trained
    shutil.copytree(source, tmp_path / ".ckpt.tmp-123-abcd")  # complete-looking, yet unfinished for all we know
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        load_weights(job.make_model(), tmp_path / "ckpt")
    save_checkpoint(learner, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_saving_over_or_deleting_something_that_is_not_a_checkpoint_is_refused(trained, tmp_path):
    learner, path = trained
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a fitorch checkpoint"):
        save_checkpoint(learner, precious)
    with pytest.raises(ValueError, match="is not a fitorch checkpoint"):
        delete_checkpoint(precious)
    assert (precious / "keep.txt").read_text() == "mine"

    save_checkpoint(learner, tmp_path / "ckpt")
    assert delete_checkpoint(tmp_path / "ckpt") is True
    assert delete_checkpoint(tmp_path / "ckpt") is False
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_bare_state_dict_file_saved_by_safetensors_loads(tmp_path):
    model = job.make_model(seed=8)
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    fresh = job.make_model(seed=9)
    load_weights(fresh, tmp_path / "weights.safetensors")
    assert_same_tensors(clone_state(model), clone_state(fresh))


def test_the_tensor_writer_produces_standard_safetensors_for_every_dtype(tmp_path):
    """fitorch writes safetensors files itself (no intermediate copy); safetensors must read them back."""
    from safetensors import safe_open

    from fitorch.checkpoint import _write_tensors

    tensors = {
        "f64": torch.randn(3, dtype=torch.float64),
        "bf16": torch.randn(2, 3).to(torch.bfloat16),
        "f16": torch.randn(5).half(),
        "i64": torch.arange(7),
        "u8": torch.arange(3, dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 4).t(),  # not contiguous
    }
    info = _write_tensors(str(tmp_path / "t.safetensors"), tensors)
    assert info["bytes"] == (tmp_path / "t.safetensors").stat().st_size
    loaded = load_file(tmp_path / "t.safetensors")
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(tmp_path / "t.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
