"""The callback protocol: definition-time checks, error notes, on_exception and on_train_end, dispatch."""

from __future__ import annotations

import pytest

from conftest import Recorder, make_classification, make_mlp
from fitorch import EVENTS, Callback, Learner
from fitorch.callbacks import LambdaCallback


def test_misspelled_hook_fails_at_class_definition_with_a_suggestion():
    with pytest.raises(TypeError, match=r"Typo.on_epoch_ends is not a fitorch event.*Did you mean 'on_epoch_end'\?"):

        class Typo(Callback):
            def on_epoch_ends(self, epoch, logs):
                pass


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("on_train_start", "on_train_begin"),  # Lightning; difflib said on_train_end
        ("on_train_epoch_end", "on_epoch_end"),  # Lightning; difflib said on_train_batch_end
        ("on_batch_end", "on_train_batch_end"),  # Keras 2; difflib said on_test_batch_end
        ("on_validation_epoch_end", "on_test_end"),
        ("after_batch", "on_train_batch_end"),  # fastai: no on_ prefix, so it was never even flagged
        ("before_step", "on_before_optimizer_step"),
    ],
)
def test_hooks_of_other_libraries_point_to_the_fitorch_event_they_mean(name, meant):
    with pytest.raises(TypeError, match=rf"Ported.{name} is not a fitorch event.*Did you mean '{meant}'\?"):
        type("Ported", (Callback,), {name: lambda self, *args: None})


def test_hook_error_carries_callback_event_epoch_and_step_and_propagates_unchanged():
    x, y = make_classification(n=16)

    class Boom(Callback):
        def on_train_batch_end(self, batch, logs):
            if self.learner.global_step == 3:
                raise RuntimeError("boom")

    recorder = Recorder()
    with pytest.raises(RuntimeError) as error:
        Learner(loss="cross_entropy", verbose=0).fit(
            make_mlp(), (x, y), epochs=3, batch_size=8, callbacks=[Boom(), recorder]
        )
    assert str(error.value) == "boom"
    assert "raised in callback Boom.on_train_batch_end (epoch 1, global step 3)" in error.value.__notes__
    assert recorder.events[-2:] == ["on_exception", "on_train_end"]


def test_on_train_end_runs_when_the_model_fails_and_on_exception_sees_the_error():
    x, y = make_classification(n=8)
    seen = []
    failing = make_mlp(features=5)  # the data has 8 features: the forward pass fails
    callback = LambdaCallback(
        on_exception=lambda error: seen.append(type(error)), on_train_end=lambda logs: seen.append("end")
    )
    with pytest.raises(RuntimeError):
        Learner(loss="cross_entropy", verbose=0).fit(failing, (x, y), callbacks=[callback])
    assert seen == [RuntimeError, "end"]


def test_a_failing_on_exception_handler_does_not_mask_the_original_error():
    x, y = make_classification(n=8)

    class BadHandler(Callback):
        def on_exception(self, exception):
            raise KeyError("handler bug")

    with pytest.raises(RuntimeError) as error:
        Learner(loss="cross_entropy", verbose=0).fit(make_mlp(features=5), (x, y), callbacks=[BadHandler()])
    assert any(
        "BadHandler.on_exception (epoch 0, global step 0) failed while handling it: KeyError" in note
        for note in error.value.__notes__
    )


def test_callbacks_see_learner_and_model_before_train_begin():
    x, y = make_classification(n=8)
    model = make_mlp()
    seen = {}

    class Look(Callback):
        def on_train_begin(self, logs):
            seen["learner"], seen["model"] = self.learner, self.model

    learner = Learner(loss="cross_entropy", verbose=0)
    learner.fit(model, (x, y), callbacks=[Look()])
    assert seen == {"learner": learner, "model": model}


def test_callbacks_run_in_the_order_given_with_learner_callbacks_first():
    x, y = make_classification(n=8)
    order = []
    first = LambdaCallback(on_epoch_end=lambda epoch, logs: order.append("learner"))
    second = LambdaCallback(on_epoch_end=lambda epoch, logs: order.append("fit"))
    Learner(loss="cross_entropy", callbacks=[first], verbose=0).fit(make_mlp(), (x, y), callbacks=[second])
    assert order == ["learner", "fit"]


def test_non_callback_objects_are_rejected():
    x, y = make_classification(n=8)
    with pytest.raises(TypeError, match="callbacks must be fitorch.Callback instances, got builtin_function_or_method"):
        Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), callbacks=[print])


def test_state_dict_defaults_to_empty():
    callback = Callback()
    assert callback.state_dict() == {}
    callback.load_state_dict({})


def test_every_event_is_a_documented_method_of_callback():
    for event in EVENTS:
        assert getattr(Callback, event).__doc__, event


def test_batch_logs_are_not_computed_when_nobody_reads_them(monkeypatch):
    """Running values stay on the device: without a reader there is no per-step host sync."""
    from fitorch.metrics import Tracker

    calls = []
    original = Tracker.results
    monkeypatch.setattr(Tracker, "results", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    x, y = make_classification(n=64)
    Learner(loss="cross_entropy", metrics=["accuracy"], verbose=0).fit(make_mlp(), (x, y), epochs=2, batch_size=4)
    assert len(calls) == 2  # once per epoch end, never per batch


def test_keras_stop_idiom_on_the_model_stops_the_fit_and_leaves_no_flag_behind():
    """Keras callbacks stop training with `self.model.stop_training = True`; it was silently ignored."""
    x, y = make_classification(n=32)

    class KerasStyleStop(Callback):
        def on_train_batch_end(self, batch, logs):
            if batch == 1:
                self.model.stop_training = True

    model = make_mlp()
    learner = Learner(loss="cross_entropy", verbose=0)
    history = learner.fit(model, (x, y), epochs=5, batch_size=8, callbacks=[KerasStyleStop()])
    assert history.epoch == [0] and learner.global_step == 2
    assert "stop_training" not in vars(model)


def test_batch_logs_a_callback_keeps_hold_their_own_batch_values():
    """Each batch's lazy logs used to read the last batch's values once the fit was over."""
    x, y = make_classification(n=64)

    class Keep(Callback):
        def __init__(self):
            self.kept, self.read_now = [], []

        def on_train_batch_end(self, batch, logs):
            self.kept.append(logs)
            if batch % 2:
                self.read_now.append(logs["loss"])

    keep = Keep()
    Learner(loss="cross_entropy", verbose=0).fit(make_mlp(), (x, y), epochs=2, batch_size=16, callbacks=[keep])
    later = [logs["loss"] for logs in keep.kept]
    assert len(set(later)) == len(later)  # eight batches, eight different running means
    assert later[1::2] == keep.read_now  # what was read during the fit is what is read after it


def test_keys_a_callback_adds_to_epoch_or_batch_logs_reach_the_callbacks_after_it(tmp_path):
    from fitorch.callbacks import CSVLogger, EarlyStopping

    x, y = make_classification(n=32)

    class AddKeys(Callback):
        def on_train_batch_end(self, batch, logs):
            logs["batch_note"] = float(batch)  # Keras batch logs are a dict

        def on_epoch_end(self, epoch, logs):
            logs["custom"] = 1.0 - epoch

    csv = CSVLogger(tmp_path / "m.csv")
    stopper = EarlyStopping(monitor="custom", mode="max", patience=0)
    history = Learner(loss="cross_entropy", verbose=0).fit(
        make_mlp(), (x, y), epochs=4, batch_size=16, callbacks=[AddKeys(), csv, stopper]
    )
    assert history.history["custom"] == [1.0, 0.0] and history.epoch == [0, 1]
    assert "custom" in (tmp_path / "m.csv").read_text().splitlines()[0]
