"""One writer per run_dir: the lock a fit holds, a live second writer refused, a dead owner's lock taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_classification, make_mlp
from fitorch import Callback, Learner, RunDirLocked
from fitorch.run_lock import LOCK_FILE, acquire

# A fit on run_dir whose first callback reports its pid and then waits until its input closes.
HOLDER = """
import sys
from conftest import make_classification, make_mlp
from fitorch import Callback, Learner

class Hold(Callback):
    def on_train_begin(self, logs):
        print("holding", flush=True)
        sys.stdin.read()

x, y = make_classification(n=32)
Learner(loss="cross_entropy", verbose=0, run_dir=sys.argv[1], callbacks=[Hold()]).fit(make_mlp(), (x, y), epochs=1)
"""


class LockSeen(Callback):
    def on_train_begin(self, logs):
        self.owner = json.loads(Path(self.learner.run_dir, LOCK_FILE).read_text())


def fit(run_dir: Path, model=None, callbacks=()) -> Learner:
    x, y = make_classification(n=32)
    learner = Learner(loss="cross_entropy", verbose=0, run_dir=run_dir, callbacks=list(callbacks))
    learner.fit(model or make_mlp(), (x, y), epochs=1, batch_size=8)
    return learner


def test_a_fit_holds_the_lock_while_it_runs_and_releases_it_even_when_it_fails(tmp_path):
    seen = LockSeen()
    fit(tmp_path / "run", callbacks=[seen])
    assert seen.owner["pid"] == os.getpid() and seen.owner["host"] == socket.gethostname()
    assert not (tmp_path / "run" / LOCK_FILE).exists()

    class Fail(Callback):
        def on_epoch_end(self, epoch, logs):
            raise RuntimeError("planned")

    with pytest.raises(RuntimeError, match="planned"):
        fit(tmp_path / "second", callbacks=[Fail()])
    assert not (tmp_path / "second" / LOCK_FILE).exists()


def test_a_live_second_writer_is_refused_before_training_and_its_lock_is_taken_over_once_it_is_killed(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        model = make_mlp()
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(RunDirLocked) as refused:
            fit(run, model)
        message = str(refused.value)
        assert f"process {holder.pid} on host {socket.gethostname()!r}" in message
        assert str(run / LOCK_FILE) in message and "delete the lock file" in message
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not trained
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="fitorch"):
        seen = LockSeen()
        fit(run, callbacks=[seen])
    assert seen.owner["pid"] == os.getpid()
    assert f"taking over the lock of process {holder.pid}" in caplog.text
    assert not (run / LOCK_FILE).exists()


def write_lock(run: Path, **changes) -> None:
    """A lock file as this process would write it, with `changes`."""
    lock = acquire(str(run))
    owner = {**lock.owner, **changes}
    lock.release()
    (run / LOCK_FILE).write_text(json.dumps(owner))


def test_a_lock_whose_pid_now_belongs_to_a_younger_process_is_stale(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.05)
        write_lock(tmp_path / "run", pid=sleeper.pid, start_ticks=1)  # the pid's process started later than that
        with caplog.at_level(logging.WARNING, logger="fitorch"):
            fit(tmp_path / "run")
        assert f"taking over the lock of process {sleeper.pid}" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_held_on_another_host_is_refused_since_it_cannot_be_checked(tmp_path):
    write_lock(tmp_path / "run", host="node-7", pid=4242)
    with pytest.raises(RunDirLocked, match="process 4242 on host 'node-7'"):
        fit(tmp_path / "run")
    assert not (tmp_path / "run" / "train.log").exists()  # nothing written
    (tmp_path / "run" / LOCK_FILE).unlink()  # what the message says to do once that process is known to be gone
    fit(tmp_path / "run")
