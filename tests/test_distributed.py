"""Two real processes on the CPU (gloo), started the way a user starts them: `torchrun --nproc_per_node 2`."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_mlp

SCRIPT = Path(__file__).parent / "scripts" / "distributed_job.py"
TIMEOUT = 120


def torchrun(scenario: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, str(SCRIPT), scenario, str(out), *extra], capture_output=True, text=True, timeout=TIMEOUT
    )


def single(scenario: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), scenario, str(out)], capture_output=True, text=True, timeout=TIMEOUT
    )


def results(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def check(process: subprocess.CompletedProcess) -> None:
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]


def test_two_processes_give_the_numbers_of_one_on_101_samples(tmp_path):
    check(torchrun("numbers", tmp_path / "two"))
    check(single("numbers", tmp_path / "one"))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    for rank in results(tmp_path / "two"):
        assert rank["distributed_type"] == "DistributedType.MULTI_CPU" and rank["num_processes"] == 2
        for key, values in one["history"].items():
            assert rank["history"][key] == pytest.approx(values, rel=1e-6), key
        assert rank["evaluate"] == pytest.approx(one["evaluate"], rel=1e-6)
        assert len(rank["predictions"]) == 101
        torch.testing.assert_close(torch.tensor(rank["predictions"]), torch.tensor(one["predictions"]))  # in order
    assert one["history"]["accuracy"][0] * 101 == pytest.approx(round(one["history"]["accuracy"][0] * 101))


def test_mixed_precision_holds_in_every_call_under_two_processes(tmp_path):
    check(torchrun("precision", tmp_path))
    for rank in results(tmp_path):
        assert rank["autocast"] == {"fit": [True], "fit_again": [True], "evaluate": [True], "predict": [True]}
        assert "_is_accelerate_prepared" not in rank["attributes"] and "forward" not in rank["attributes"]


def test_ranks_with_different_monitored_values_take_one_decision_and_keep_the_same_weights(tmp_path):
    """With per-rank values, rank 0 used to restore epoch 1's weights and rank 1 epoch 2's."""
    check(torchrun("agree", tmp_path))
    rank0, rank1 = results(tmp_path)
    assert rank0 == rank1
    assert rank0["best_epoch"] == 1 and rank0["epochs"] == [0, 1, 2, 3]  # the main process's values decide
    assert rank0["checkpoint_best"] == 0.5 and rank0["lr"] == [0.05, 0.05, 0.05, 0.025]


def test_another_process_count_resumes_at_an_epoch_end_and_refuses_inside_an_epoch(tmp_path):
    """A one-process checkpoint at batch 3 of an epoch, resumed by two processes, used to skip the rest of it."""
    check(single("cross_save", tmp_path))
    check(torchrun("cross_resume", tmp_path))
    for rank in results(tmp_path):
        assert "saved inside an epoch by 1 process(es); resuming it with 2" in rank["refused"]
        assert rank["epochs"] == [0, 1, 2] and rank["global_step"] == 8 + 2 * 4  # then 4 steps of 2x8 an epoch
    assert results(tmp_path)[0] == results(tmp_path)[1]


def test_a_sigterm_storm_on_the_launcher_ends_each_run_in_a_backup_and_the_runs_add_up_exactly(tmp_path):
    """SIGTERM (Slurm, Kubernetes, spot instances) used to kill the fit at once, losing the work since the backup."""
    check(torchrun("preempt", tmp_path / "straight"))
    run, generator = tmp_path / "run", random.Random(1)
    run.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    steps = []
    for _ in range(2):
        (run / "heartbeat").unlink(missing_ok=True)
        launcher = subprocess.Popen(
            [*command, str(SCRIPT), "preempt", str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + TIMEOUT
        while not (run / "heartbeat").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(generator.uniform(0.1, 0.5))
        launcher.send_signal(signal.SIGTERM)
        output = launcher.communicate(timeout=TIMEOUT)[0]
        assert launcher.returncode != 0 and "preempted by SIGTERM" in output, output[-3000:]
        steps.append(json.loads((run / "backup" / "checkpoint.json").read_text())["loop"]["global_step"])
    check(torchrun("preempt", run))
    assert steps[0] > 0 and steps[1] > steps[0]  # each run went further than the last
    straight, resumed = load_file(tmp_path / "straight" / "final.safetensors"), load_file(run / "final.safetensors")
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    assert results(tmp_path / "straight") == results(run)


def test_a_stop_asked_on_one_rank_stops_both_at_the_same_point(tmp_path):
    started = time.monotonic()
    check(torchrun("stop", tmp_path))
    assert time.monotonic() - started < TIMEOUT
    rank0, rank1 = results(tmp_path)
    assert rank0 == rank1
    assert rank0["epochs"] == [0, 1, 2]  # rank 1 asked at the end of epoch 2
    assert rank0["steps"] == 5 and rank0["step_epochs"] == [0, 1]  # 4 steps per epoch: step 5 is in epoch 1


def test_an_error_on_one_rank_ends_the_job_with_the_message(tmp_path):
    started = time.monotonic()
    process = torchrun("fail", tmp_path)
    assert time.monotonic() - started < TIMEOUT
    assert process.returncode != 0
    assert "planned failure on rank 0" in process.stdout + process.stderr


def test_one_process_writes_and_early_stopping_stops_both_ranks_together(tmp_path):
    check(torchrun("run_dir", tmp_path))
    rank0, rank1 = results(tmp_path)
    assert rank0 == rank1
    epochs = len(rank0["epochs"])
    assert 1 < epochs < 30  # early stopping decided, on both ranks, at the same epoch
    run = tmp_path / "run"
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + epochs  # a header and one row per epoch: written once
    log = (run / "train.log").read_text()
    assert [log.count(f" INFO epoch {e + 1}/30 ") for e in range(epochs)] == [1] * epochs  # each line once
    event_files = sorted(p.relative_to(run) for p in (run / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(event_files) == 2, event_files  # one for train, one for validation: from one process
    best = load_file(run / "best" / "model.safetensors")
    model = make_mlp()
    model.load_state_dict(best)  # weights from a 2-process run load into a 1-process model
    assert not [p for p in run.rglob("*") if "tmp" in p.name.lower()]


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path):
    check(torchrun("resume", tmp_path / "straight"))
    killed = torchrun("resume", tmp_path / "resumed", "3")
    assert killed.returncode != 0  # rank 0 was SIGKILLed at the start of epoch 3
    assert (tmp_path / "resumed" / "backup").exists()
    check(torchrun("resume", tmp_path / "resumed"))
    straight = load_file(tmp_path / "straight" / "final.safetensors")
    resumed = load_file(tmp_path / "resumed" / "final.safetensors")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert results(tmp_path / "straight") == results(tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "backup").exists()  # deleted once the fit completed


def test_lr_find_throughput_and_swa_agree_on_both_ranks(tmp_path):
    started = time.monotonic()
    check(torchrun("tools", tmp_path))
    assert time.monotonic() - started < TIMEOUT  # nothing hung
    rank0, rank1 = results(tmp_path)
    assert rank0 == rank1  # the same curve and suggestion, the same totals, the same averaged weights
    assert rank0["suggestion"] in rank0["rates"] and len(rank0["losses"]) > 5
    assert rank0["fit_after_lr_find_equal"]  # a fit after lr_find equals one without it, under two processes too
    assert rank0["samples"] == 101  # summed over ranks, without the sampler's padding repeats


def test_two_processes_share_out_batches_fetched_by_index_and_give_the_exact_weighted_numbers(tmp_path):
    check(torchrun("batched", tmp_path / "two"))
    check(single("batched", tmp_path / "one"))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    rank0, rank1 = results(tmp_path / "two")
    for key, values in one["history"].items():  # weighted loss and metrics, padding dropped: as one process
        assert rank0["history"][key] == pytest.approx(values, rel=1e-6), key
    assert rank0["history"] == rank1["history"]
    # 81 training samples, batches of 8: 11 batches, the last of one sample; 6 per process, the last ones
    # completed with repeated samples, which the epoch values above leave out
    for epoch in range(2):
        mine = [sum(rank["seen"][epoch * 6 : (epoch + 1) * 6], []) for rank in (rank0, rank1)]
        assert set(mine[0]) | set(mine[1]) == set(range(81))
        assert len(mine[0]) + len(mine[1]) == 96
        assert sorted(sum(one["seen"][epoch * 11 : (epoch + 1) * 11], [])) == list(range(81))
