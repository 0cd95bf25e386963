"""`LoopState` (the loop's position) and `GradientWindow` (accumulation in one place)."""

from __future__ import annotations

import torch

from fitorch.state import GradientWindow, LoopState


def test_loop_state_points_at_the_next_batch_inside_an_epoch_and_the_next_epoch_after_one():
    state = LoopState()
    state.start_fit(epochs=3, initial_epoch=0, shuffle_seed=11)
    state.start_epoch(1)
    state.global_step, state.batches_done = 9, 4
    inside = state.state_dict(running_sums={"loss": [2.0, 8]})
    assert inside == {"epoch": 1, "batch": 4, "global_step": 9, "shuffle_seed": 11, "running": {"loss": [2.0, 8]}}
    state.epoch_complete = True
    assert state.state_dict() == {"epoch": 2, "batch": 0, "global_step": 9, "shuffle_seed": 11}

    resumed = LoopState()
    resumed.load_state_dict(inside)
    assert (resumed.epoch, resumed.skip_batches, resumed.global_step, resumed.resumed_sums) == (
        1,
        4,
        9,
        {"loss": [2.0, 8]},
    )


def test_gradient_window_weighs_micro_batches_by_samples_and_closes_short_windows():
    window = GradientWindow(steps=3)
    closes = [window.add(i, samples, end_of_data=(i == 4)) for i, samples in enumerate([4, 4, 4, 4, 2])]
    assert closes == [False, False, True, False, True]
    assert window.samples == 6  # the short last window holds 4 + 2 samples
    assert float(window.weigh(torch.tensor(0.5))) == 1.0  # the last micro-batch's mean times its 2 samples
    parameter = torch.nn.Parameter(torch.zeros(1))
    parameter.grad = torch.tensor([12.0])
    window.average([parameter])
    assert float(parameter.grad) == 2.0


def test_without_accumulation_every_batch_steps_and_nothing_is_scaled():
    window = GradientWindow()
    assert all(window.add(i, 8, end_of_data=False) for i in range(3))
    assert float(window.weigh(torch.tensor(0.5))) == 0.5
