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
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, load_model, save_file
from torch import nn
from torch.utils.data import DataLoader

import fitorch
from conftest import StopAtStep
from fitorch import (
    Callback,
    Learner,
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
    with pytest.raises(ValueError, match="checkpoint.json is damaged"):
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


def test_a_bare_state_dict_file_saved_by_safetensors_loads(tmp_path):
    model = job.make_model(seed=8)
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    fresh = job.make_model(seed=9)
    load_weights(fresh, tmp_path / "weights.safetensors")
    assert_same_tensors(clone_state(model), clone_state(fresh))


# ---------------------------------------------------------------------------- checked before anything is touched


class Counters(Callback):
    """State a resume would overwrite: a callback whose state must survive a refused checkpoint."""

    def __init__(self):
        self.value = 123

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = int(state["value"])


def snapshot(learner, model, counters):
    """Everything a refused checkpoint must leave as it was: weights, optimizer state, RNGs, a callback."""
    optimizer = learner._raw_optimizers[0].state_dict() if learner._raw_optimizers else {}
    rng = (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state())
    return clone_state(model), json.dumps(optimizer, default=lambda t: t.tolist()), rng, counters.value


def assert_refused_untouched(learner, model, path, match):
    counters = Counters()
    before = snapshot(learner, model, counters)
    if learner.seed is not None:  # fit itself seeds every RNG first; the checkpoint must change nothing after that
        fitorch.seed_everything(learner.seed)
        before = (*before[:2], snapshot(learner, model, counters)[2], before[3])
    with pytest.raises(ValueError, match=match):
        job.fit(learner, model, 3, resume=path, callbacks=[counters])
    after = snapshot(learner, model, counters)
    assert_same_tensors(before[0], after[0])
    assert before[1] == after[1] and before[3] == after[3]
    assert before[2][0] == after[2][0] and before[2][1] == after[2][1] and torch.equal(before[2][2], after[2][2])


def edited(source, target, edit):
    """A copy of a checkpoint whose checkpoint.json `edit` changed, with a valid checksum (a hand edit or a bug)."""
    from fitorch import storage

    shutil.copytree(source, target)
    metadata = json.loads((target / "checkpoint.json").read_text())
    edit(metadata)
    storage.write_json(str(target / "checkpoint.json"), metadata)
    return target


def test_single_bit_flips_in_checkpoint_json_are_refused_or_change_nothing(trained):
    """59 of 400 random flips used to load silently with other values (an lr of 0.03 for 0.01)."""
    from fitorch import storage

    path = trained[1]
    data = (path / "checkpoint.json").read_bytes()
    original = storage.read_metadata(str(path))
    generator = random.Random(0)
    outcomes = {"refused": 0, "same": 0}
    for _ in range(400):
        flipped = bytearray(data)
        flipped[generator.randrange(len(flipped))] ^= 1 << generator.randrange(8)
        (path / "checkpoint.json").write_bytes(bytes(flipped))
        try:
            read = storage.read_metadata(str(path))
        except ValueError:
            outcomes["refused"] += 1
        else:
            assert read == original  # whitespace or an equal spelling: the same content
            outcomes["same"] += 1
    (path / "checkpoint.json").write_bytes(data)
    assert outcomes["refused"] > 350


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["loop"].update(epoch=-1), r"loop.epoch is -1, not an int >= 0"),
        (lambda m: m["loop"].update(batch="3"), r"loop.batch is '3'"),
        (lambda m: m["loop"].update(shuffle_seed=2**70), r"loop.shuffle_seed.*beyond the range"),
        (lambda m: m["loop"].update(epoch=9), r"continues at epoch 10, beyond this fit's epochs=3"),
        (lambda m: m["loop"].update(batch=50), r"after batch 50 of an epoch, but an epoch of this data has 9"),
        (
            lambda m: m["rng"][0]["__tuple__"].__setitem__(0, 7) if "__tuple__" in m["rng"][0] else m["rng"].clear(),
            r"RNG",
        ),
        (
            lambda m: m["rng"][0]["numpy"].update(__tuple__=m["rng"][0]["numpy"]["__tuple__"][:2]),
            r"process 0 is invalid",
        ),
        (lambda m: m["callbacks"].update({"Counters[0]": 5}), r"callback states are not a mapping of mappings"),
        (lambda m: m["optimizers"][0]["state_dict"]["param_groups"][0].update(lr="0.01"), r"group 0: lr is '0.01'"),
        (lambda m: m["optimizers"][0]["state_dict"]["param_groups"][0].pop("betas"), r"lacks 'betas'"),
        (lambda m: m.update(optimizers={}), r"optimizer"),
        (lambda m: m["loop"].pop("global_step"), r"loop.global_step is None"),
    ],
)
def test_a_consistent_but_bad_checkpoint_json_is_refused_before_anything_changes(trained, tmp_path, edit, match):
    """Loop counters, RNG and callback states used to be checked while applied, after the model was replaced."""
    learner = job.make_learner()
    model = job.make_model(seed=5)
    job.fit(learner, model, 1)
    assert_refused_untouched(learner, model, edited(trained[1], tmp_path / "bad", edit), match)


def test_optimizer_state_of_parameters_in_another_order_is_refused(tmp_path):
    """Same class and group sizes, parameters reversed: the fit used to die inside adam.py, model replaced."""
    forward = Learner(
        loss="cross_entropy", optimizer=lambda m: torch.optim.AdamW(list(m.parameters())), seed=1, verbose=0
    )
    job.fit(forward, job.make_model(), 1)
    save_checkpoint(forward, tmp_path / "forward")
    backward = Learner(
        loss="cross_entropy", optimizer=lambda m: torch.optim.AdamW(list(m.parameters())[::-1]), seed=1, verbose=0
    )
    model = job.make_model(seed=2)
    job.fit(backward, model, 1)
    assert_refused_untouched(backward, model, tmp_path / "forward", r"belongs to another model or parameter order")


def test_weights_of_another_dtype_are_refused_on_resume_and_cast_with_a_warning_by_load_weights(
    trained, tmp_path, caplog
):
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 1)
    learner.model.double()  # float64 weights in the checkpoint
    save_checkpoint(learner, tmp_path / "f64")
    target = job.make_learner()
    model = job.make_model(seed=3)
    job.fit(target, model, 1)
    assert_refused_untouched(target, model, tmp_path / "f64", r"float64 -> float32.*a resume must continue")
    with caplog.at_level("WARNING", logger="fitorch"):
        load_weights(model, tmp_path / "f64")
    assert "casting 4 weight(s)" in caplog.text and model[0].weight.dtype == torch.float32
    save_file({key: value.long() for key, value in model.state_dict().items()}, tmp_path / "ints.safetensors")
    with pytest.raises(ValueError, match="only floating-point weights are cast"):
        load_weights(model, tmp_path / "ints.safetensors")


def test_leftovers_of_killed_deletions_are_cleaned_and_bad_paths_fail_before_training(trained, tmp_path):
    learner, source = trained
    shutil.copytree(source, tmp_path / ".epoch001.del-0a1b2c3d")  # a kill inside delete_checkpoint (keep=N)
    shutil.copytree(source, tmp_path / ".epoch002.tmp-999999999-abcd")  # an unfinished write of a dead process
    save_checkpoint(learner, tmp_path / "epoch003")
    assert sorted(os.listdir(tmp_path)) == ["epoch003"]

    (tmp_path / "a_file").write_text("not a folder")
    model = job.make_model()
    before = clone_state(model)
    for callback in (ModelCheckpoint(tmp_path / "a_file" / "best"), BackupAndRestore(tmp_path / "a_file" / "b")):
        with pytest.raises(ValueError, match=r"(a_file' is a file|is under the file .*a_file'), so no folder can be"):
            job.fit(job.make_learner(), model, 2, callbacks=[callback])
    assert_same_tensors(before, clone_state(model))


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(trained, tmp_path, monkeypatch):
    import errno

    from fitorch import storage

    learner, _ = trained
    save_checkpoint(learner, tmp_path / "ckpt")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "write_tensors", full)
    with pytest.raises(OSError, match=r"Cannot write the checkpoint .*ckpt.*No space left.*previous checkpoint there"):
        save_checkpoint(learner, tmp_path / "ckpt")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    load_weights(job.make_model(), tmp_path / "ckpt")


@pytest.mark.parametrize("version", [None, "1", 0])
def test_a_missing_or_malformed_format_version_is_called_damaged_not_newer(trained, tmp_path, version):
    path = edited(
        trained[1],
        tmp_path / "v",
        lambda m: m.update(format_version=version) if version is not None else m.pop("format_version"),
    )
    with pytest.raises(ValueError, match=r"format_version is .*, not a version number"):
        load_weights(job.make_model(), path)


# ---------------------------------------------------------------------------- loader workers


class NoisyDataset(torch.utils.data.Dataset):
    """A non-tensor dataset that draws random numbers per sample (an augmentation), in the workers."""

    def __init__(self):
        self.x, self.y = job.make_data()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index] + 0.1 * torch.randn(self.x.shape[1]), self.y[index]


def resume_with_workers(tmp_path, data_for, crash_step, **learner_options):
    """A fit straight through, and one crashed at `crash_step` and started again; returns both models."""

    def attempt(crash, backup):
        model, data = job.make_model(), data_for()
        callbacks = [BackupAndRestore(tmp_path / backup, save_freq=2)] + ([StopAtStep(crash)] if crash else [])
        learner = job.make_learner(**learner_options)
        options = {} if isinstance(data, DataLoader) else {"batch_size": job.BATCH_SIZE}
        try:
            learner.fit(model, data, epochs=3, callbacks=callbacks, **options)
        except KeyboardInterrupt:
            return None
        return model

    straight = attempt(None, "straight")
    assert attempt(crash_step, "backup") is None
    return straight, attempt(None, "backup")


@pytest.mark.parametrize("crash_step", [5, 8])  # inside epoch 1 (9 batches, windows of 2), and inside epoch 2
def test_resume_with_loader_workers_is_bit_identical(tmp_path, crash_step):
    """Workers' base seed was drawn when the iterator was created, a different epoch in a resumed process."""
    straight, resumed = resume_with_workers(tmp_path, NoisyDataset, crash_step, num_workers=2)
    assert_same_tensors(clone_state(straight), clone_state(resumed))


def test_resume_with_a_users_shuffling_dataloader_and_workers_is_bit_identical(tmp_path):
    loader = lambda: DataLoader(NoisyDataset(), batch_size=8, shuffle=True, num_workers=2)  # noqa: E731
    straight, resumed = resume_with_workers(tmp_path, loader, 5)
    assert_same_tensors(clone_state(straight), clone_state(resumed))
    with pytest.raises(ValueError, match="persistent_workers=True: each worker's random state would carry over"):
        job.make_learner().fit(
            job.make_model(), DataLoader(NoisyDataset(), batch_size=8, num_workers=1, persistent_workers=True)
        )


# ---------------------------------------------------------------------------- preemption


def run_preempt(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "preempt", *arguments], capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize(("step", "signal_name"), [("7", "SIGTERM"), ("12", "SIGUSR1")])
def test_a_preemption_signal_saves_at_the_step_exits_with_its_code_and_the_same_command_resumes(
    tmp_path, step, signal_name
):
    """SIGTERM used to kill the fit at once, with nothing saved since the last backup."""
    straight = run_preempt(str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    preempted = run_preempt(str(tmp_path / "run"), step, signal_name)
    assert preempted.returncode == 128 + getattr(signal, signal_name), preempted.stderr[-3000:]
    assert f"preempted by {signal_name}" in preempted.stderr
    backup = json.loads((tmp_path / "run" / "backup" / "checkpoint.json").read_text())
    assert backup["loop"]["global_step"] == int(step)  # the step that was running when the signal came
    resumed = run_preempt(str(tmp_path / "run"))  # the same command as the first start
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_tensors(
        load_file(tmp_path / "straight" / "final.safetensors"), load_file(tmp_path / "run" / "final.safetensors")
    )
    history = [json.loads((tmp_path / name / "final.json").read_text())["history"] for name in ("straight", "run")]
    assert history[0] == history[1]


def test_preemption_handlers_are_put_back_after_fit():
    previous = signal.getsignal(signal.SIGTERM)
    job.fit(job.make_learner(), job.make_model(), 1)
    assert signal.getsignal(signal.SIGTERM) is previous
