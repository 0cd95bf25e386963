"""The storage layer on its own: tensors inside JSON, atomic directory writes, verified reads, the writer.

Most tests here drive it through `save_checkpoint` and `load_weights`, as a user reaches it; the
ones at the top use `fitorch.storage` directly, with no learner, as a reuse of the layer would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fitorch import delete_checkpoint, latest_checkpoint, load_weights, save_checkpoint, storage

SCRIPT = Path(__file__).parent / "scripts" / "checkpoint_job.py"
_spec = importlib.util.spec_from_file_location("checkpoint_job", SCRIPT)
job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(job)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A learner after a short fit, and a full checkpoint of it."""
    learner = job.make_learner()
    job.fit(learner, job.make_model(), 1)
    path = tmp_path_factory.mktemp("trained") / "checkpoint"
    save_checkpoint(learner, path)
    return learner, path


# ---------------------------------------------------------------------------- the layer alone


def test_encode_and_decode_round_trip_nested_state_with_tensors_tuples_and_int_keys():
    value = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}}, "pair": (1, "a"), "lr": [0.1]}
    tensors: dict[str, torch.Tensor] = {}
    encoded = storage.encode(value, "optimizer", tensors)
    json.dumps(encoded)  # the JSON part holds no tensor and no tuple
    assert sorted(tensors) == ["optimizer.state.0.exp_avg", "optimizer.state.0.step"]
    decoded = storage.decode(encoded, tensors, "here")
    assert decoded["pair"] == (1, "a") and decoded["lr"] == [0.1]
    assert torch.equal(decoded["state"][0]["exp_avg"], torch.ones(2))


def test_a_directory_written_and_read_without_any_learner(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    metadata = {"format": storage.FORMAT_NAME, "format_version": storage.FORMAT_VERSION, "files": {}, "note": "x"}
    storage.write_directory(str(tmp_path / "c"), {storage.MODEL_FILE: tensors}, metadata)
    read = storage.read_metadata(str(tmp_path / "c"))
    assert read["note"] == "x"
    assert torch.equal(storage.read_tensors(str(tmp_path / "c"), storage.MODEL_FILE, read)["w"], tensors["w"])
    assert storage.find_checkpoints(str(tmp_path)) == [str(tmp_path / "c")]
    assert storage.delete_directory(str(tmp_path / "c")) and os.listdir(tmp_path) == []


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


def test_the_tensor_writer_produces_standard_safetensors_for_every_dtype(tmp_path):
    """fitorch writes safetensors files itself (no intermediate copy); safetensors must read them back."""
    from safetensors import safe_open

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
    info = storage.write_tensors(str(tmp_path / "t.safetensors"), tensors)
    assert info["bytes"] == (tmp_path / "t.safetensors").stat().st_size
    loaded = load_file(tmp_path / "t.safetensors")
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(tmp_path / "t.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
