"""On a CUDA GPU: mixed precision on every call, fp16's grad scaler, host syncs, the data path, exact resume.

Every test here needs CUDA and skips without it; `bash benchmarks/gpu.sh OUT` runs them on a GPU
machine (issue 17). The figures (speed, memory, checkpoint times) are `benchmarks/gpu.py`'s; these
tests check behaviour: what the forward pass runs under, what a skipped fp16 step leaves behind,
that a steady-state step never waits for the device, and that a resumed run is bit-identical.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

# Deterministic cuBLAS needs this before its first use in the process, so before any test runs.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from conftest import make_classification, make_mlp  # noqa: E402
from fitorch import Callback, Learner, save_checkpoint  # noqa: E402
from fitorch.callbacks import LRScheduler, ProgressBar  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; on a GPU machine: bash benchmarks/gpu.sh OUT"
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def quiet(**options: Any) -> Learner:
    return Learner(loss="cross_entropy", verbose=0, **options)


# ---------------------------------------------------------------------------- 1. precision


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_call_runs_the_forward_under_the_learners_autocast(precision):
    """A first fit, a second fit, evaluate and predict: each forward runs under the learner's autocast."""
    x, y = make_classification(n=64)
    model = make_mlp()
    seen: list[tuple[bool, Any, torch.dtype]] = []

    def probe(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        # An inner layer: Accelerate's autocast wraps the model's own forward, so it is on in here.
        enabled = torch.is_autocast_enabled("cuda")
        seen.append((enabled, torch.get_autocast_dtype("cuda") if enabled else None, output.dtype))

    model[-1].register_forward_hook(probe)
    learner = quiet(mixed_precision=precision)
    calls = {
        "fit": lambda: learner.fit(model, (x, y), epochs=1, batch_size=16),
        "second fit": lambda: learner.fit(model, (x, y), epochs=1, batch_size=16),
        "evaluate": lambda: learner.evaluate(model, (x, y), batch_size=16),
        "predict": lambda: learner.predict(model, x, batch_size=16),
    }
    observed = {}
    for name, call in calls.items():
        seen.clear()
        call()
        observed[name] = set(seen)
    dtype = DTYPES[precision]
    assert observed == {name: {(True, dtype, dtype)} for name in calls}

    seen.clear()
    with torch.no_grad():
        model(x[:4].cuda())  # the model leaves the calls as it came in: no autocast of its own
    assert seen == [(False, None, torch.float32)]


class InjectInf(Callback):
    """Writes inf into one gradient after the backward of batch `batch`, as an fp16 overflow does."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_after_backward(self) -> None:
        if self.learner.batch == self.batch:
            next(p for p in self.learner.model.parameters() if p.grad is not None).grad.fill_(float("inf"))


class StepTrace(Callback):
    """Per batch: whether Accelerate says the optimizer step was skipped, global_step, and the rate after it."""

    def __init__(self) -> None:
        self.rows: list[tuple[bool, int, float]] = []
        self.optimizer_steps = 0

    def on_optimizer_step(self) -> None:
        self.optimizer_steps += 1

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        learner = self.learner
        lr = learner.optimizer.param_groups[0]["lr"]
        self.rows.append((learner.accelerator.optimizer_step_was_skipped, learner.global_step, lr))


def fit_with_an_overflow(schedule: LRScheduler, inject_at: int = 3) -> tuple[Learner, StepTrace]:
    x, y = make_classification(n=128)  # 8 batches of 16
    trace = StepTrace()
    learner = quiet(optimizer="sgd", lr=0.1, mixed_precision="fp16")
    learner.fit(
        make_mlp(), (x, y), epochs=1, batch_size=16, shuffle=False, callbacks=[InjectInf(inject_at), schedule, trace]
    )
    return learner, trace


def test_fp16_step_skipped_by_the_grad_scaler_advances_neither_global_step_nor_a_torch_step_scheduler():
    """Lightning #5558: a skipped step must not count as a step, nor move a per-step schedule."""
    factory = LRScheduler(
        lambda optimizer: torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5), interval="step"
    )
    learner, trace = fit_with_an_overflow(factory, inject_at=3)
    skipped = [index for index, (was_skipped, _, _) in enumerate(trace.rows) if was_skipped]
    assert 3 in skipped  # the scaler saw the inf and skipped that step
    taken = 0
    for index, (was_skipped, global_step, lr) in enumerate(trace.rows):
        taken += not was_skipped
        assert global_step == taken, f"batch {index}: global_step {global_step}, real steps {taken}"
        assert lr == 0.1 * 0.5**taken, f"batch {index}: lr {lr} after {taken} real steps"
    assert learner.global_step == len(trace.rows) - len(skipped)
    assert trace.optimizer_steps == learner.global_step  # on_optimizer_step: after a real step only


def test_fp16_skipped_step_leaves_a_named_step_schedule_where_it_was():
    learner, trace = fit_with_an_overflow(LRScheduler("linear", interval="step"), inject_at=3)
    for index, (was_skipped, global_step, lr) in enumerate(trace.rows[1:], start=1):
        previous_step, previous_lr = trace.rows[index - 1][1:]
        if was_skipped:
            assert (global_step, lr) == (previous_step, previous_lr), f"batch {index} was skipped but moved"
        else:
            assert global_step == previous_step + 1 and lr < previous_lr
    assert trace.rows[3][0]


class GradientNorms(Callback):
    """The global gradient norm after backward (with the scaler's scale) and before the optimizer step."""

    def __init__(self) -> None:
        self.after_backward: list[tuple[float, float]] = []
        self.before_step: list[float] = []

    def _norm(self) -> float:
        grads = [p.grad.float() for p in self.learner.model.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def on_after_backward(self) -> None:
        self.after_backward.append((self._norm(), float(self.learner.accelerator.scaler.get_scale())))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.before_step.append(self._norm())


def test_fp16_callbacks_and_gradient_clipping_see_unscaled_gradients():
    x, y = make_classification(n=128)
    norms = GradientNorms()
    quiet(mixed_precision="fp16").fit(make_mlp(), (x, y), batch_size=16, shuffle=False, callbacks=[norms])
    finite = [
        (seen, scaled, scale)
        for seen, (scaled, scale) in zip(norms.before_step, norms.after_backward)
        if torch.isfinite(torch.tensor(scaled))
    ]
    assert len(finite) >= 6 and all(scale > 1 for _, _, scale in finite)  # the scaler really scaled
    for seen, scaled, scale in finite:
        assert seen == pytest.approx(scaled / scale, rel=1e-3)

    clip = 1e-3
    assert min(seen for seen, _, _ in finite) > 10 * clip  # so clipping must act on every step
    clipped = GradientNorms()
    quiet(mixed_precision="fp16", grad_clip=clip).fit(
        make_mlp(), (x, y), batch_size=16, shuffle=False, callbacks=[clipped]
    )
    seen_clipped = [seen for seen in clipped.before_step if torch.isfinite(torch.tensor(seen))]
    assert len(seen_clipped) >= 6
    # Clipping scaled gradients to `clip` and unscaling afterwards would leave clip / scale (~1e-8).
    assert seen_clipped == pytest.approx([clip] * len(seen_clipped), rel=1e-3)


# ---------------------------------------------------------------------------- 3. host syncs (and 4. data path)


class SyncWindow(Callback):
    """CUDA's sync debug mode set to "warn" from the end of batch `first` to the end of batch `last`.

    The window holds the loading (a copy to the device) and the step of every batch in between,
    not the first batch's checks nor the epoch's end, which read values once on purpose.
    """

    def __init__(self, first: int = 4, last: int = 20) -> None:
        self.first, self.last, self.open = first, last, False

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        if batch in (self.first, self.last):
            self.open = batch == self.first
            torch.cuda.set_sync_debug_mode("warn" if self.open else "default")


def syncs_during(fit: Any) -> list[str]:
    """Where (file:line) each host-device sync inside the window of the fit came from."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")  # every sync, not only the first of each line
        try:
            fit()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{r.filename}:{r.lineno}" for r in records if "synchroniz" in str(r.message)]


class NonBlocking(Callback):
    value: bool | None = None

    def on_train_begin(self, logs: Any) -> None:
        self.value = self.learner.accelerator.non_blocking


@pytest.mark.parametrize("precision, grad_clip", [("no", None), ("bf16", None), ("bf16", 1.0)])
def test_steady_state_training_steps_make_no_host_sync(precision, grad_clip):
    """verbose=0 and no callback reading values: loading a batch and training on it never waits for the GPU."""
    x, y = make_classification(n=16 * 24)  # CPU tensors: fitorch builds a pinned loader, copies without blocking
    window, copies = SyncWindow(), NonBlocking()
    learner = quiet(mixed_precision=precision, grad_clip=grad_clip)
    syncs = syncs_during(lambda: learner.fit(make_mlp(), (x, y), batch_size=16, callbacks=[window, copies]))
    assert copies.value is True
    assert syncs == [], f"{len(syncs)} host syncs in {window.last - window.first} steady-state steps: {syncs}"


class Terminal(io.TextIOBase):
    """Discards what it gets and says it is a terminal: the progress bar draws a bar, not one line per epoch."""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


def test_the_progress_bar_syncs_at_most_once_per_redraw(monkeypatch):
    from fitorch.callbacks import progress

    window, redraws = SyncWindow(), []
    original = progress.format_logs

    def counted(logs: Any) -> str:
        redraws.append(window.open)
        return original(logs)

    monkeypatch.setattr(progress, "format_logs", counted)
    x, y = make_classification(n=16 * 24)
    bar = ProgressBar(file=Terminal(), refresh_seconds=0.0)  # a bar (not lines), redrawn at every batch
    learner = Learner(loss="cross_entropy", metrics=["accuracy"], verbose=1)
    syncs = syncs_during(lambda: learner.fit(make_mlp(), (x, y), batch_size=16, callbacks=[window, bar]))
    in_window = sum(redraws)
    assert in_window >= 10
    assert len(syncs) <= in_window, f"{len(syncs)} syncs for {in_window} redraws: {syncs}"


def test_tensors_already_on_the_gpu_train_evaluate_and_predict():
    """Data passed as CUDA tensors: fitorch builds a loader that does not try to pin them."""
    x, y = (tensor.cuda() for tensor in make_classification(n=64))
    learner = quiet(metrics=["accuracy"])
    history = learner.fit(make_mlp(), (x, y), epochs=2, batch_size=16, validation_split=0.25)
    assert len(history.history["val_accuracy"]) == 2
    assert set(learner.evaluate(learner.model, (x, y))) == {"loss", "accuracy"}
    outputs = learner.predict(learner.model, x)
    assert outputs.shape == (64, 3) and outputs.device.type == "cpu"


# ---------------------------------------------------------------------------- 6. exact resume on the GPU


class SaveAt(Callback):
    """Saves a full checkpoint right after optimizer step `step` (mid-epoch) and lets the fit go on."""

    saves_checkpoints = True

    def __init__(self, step: int, path: Any) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, batch: int, logs: Any) -> None:
        if self.learner.global_step == self.step and self.learner.step_taken:
            save_checkpoint(self.learner, self.path)


def conv_net(seed: int) -> nn.Module:
    """Batch norm and dropout (the CUDA RNG) and no pooling (adaptive pooling has no deterministic backward)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 16, 10),
    )


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_resume_on_the_gpu_is_bit_identical_in_deterministic_mode(tmp_path, deterministic, precision):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 3, 16, 16, generator=generator), torch.randn(256, 10, generator=generator)

    def learner() -> Learner:  # mse: CUDA's nll_loss has no deterministic implementation
        return Learner(loss="mse", optimizer="adamw", lr=1e-2, seed=0, mixed_precision=precision, verbose=0)

    straight_model, straight = conv_net(0), learner()
    straight.fit(straight_model, (x, y), epochs=2, batch_size=16, callbacks=[SaveAt(24, tmp_path / "mid")])
    resumed_model, resumed = conv_net(1), learner()  # a new process would start from other weights
    resumed.fit(resumed_model, (x, y), epochs=2, batch_size=16, resume=tmp_path / "mid")

    assert next(straight_model.parameters()).device.type == "cuda"
    assert straight.global_step == resumed.global_step > 24  # fp16 may skip a step or two: fewer than 32
    expected, actual = straight_model.state_dict(), resumed_model.state_dict()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == [], f"not bit-identical after the resume: {different}"
    assert resumed.history.history == straight.history.history
