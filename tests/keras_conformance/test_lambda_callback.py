"""Keras's lambda_callback_test.py, ported to fitorch (see helpers.py for the commit and the outcomes)."""

from __future__ import annotations

import logging

import torch

from fitorch import Learner
from fitorch.callbacks import LambdaCallback
from keras_conformance.helpers import dense, ports

FILE = "lambda_callback_test.py::LambdaCallbackTest::"
log = logging.getLogger("keras_conformance")


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 2, generator=generator), torch.randn(16, 1, generator=generator)


def learner():
    return Learner(loss="mse", optimizer="sgd", lr=0.01, verbose=0)


def messages(caplog):
    return [record.getMessage() for record in caplog.records]


@ports(FILE + "test_lambda_callback")
def test_lambda_callback(caplog):
    hooks = LambdaCallback(
        on_train_begin=lambda logs: log.warning("on_train_begin"),
        on_epoch_begin=lambda epoch, logs: log.warning("on_epoch_begin"),
        on_epoch_end=lambda epoch, logs: log.warning("on_epoch_end"),
        on_train_end=lambda logs: log.warning("on_train_end"),
    )
    with caplog.at_level(logging.WARNING):
        learner().fit(dense(2, 1), data(), epochs=5, batch_size=4, validation_split=0.2, callbacks=[hooks])
    for event in ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end"):
        assert event in messages(caplog)


@ports(FILE + "test_lambda_callback_with_batches")
def test_lambda_callback_with_batches(caplog):
    hooks = LambdaCallback(
        on_train_batch_begin=lambda batch, logs: log.warning("on_train_batch_begin"),
        on_train_batch_end=lambda batch, logs: log.warning("on_train_batch_end"),
    )
    with caplog.at_level(logging.WARNING):
        learner().fit(dense(2, 1), data(), epochs=5, batch_size=4, validation_split=0.2, callbacks=[hooks])
    assert "on_train_batch_begin" in messages(caplog) and "on_train_batch_end" in messages(caplog)


@ports(FILE + "test_lambda_callback_with_kwargs")
def test_lambda_callback_with_kwargs(caplog):
    model, trainer = dense(2, 1), learner()
    trainer.fit(model, data(), epochs=1, batch_size=4)  # trained briefly, as the Keras test does
    hooks = LambdaCallback(on_test_begin=lambda logs: log.warning("custom_on_test_begin_executed"))
    with caplog.at_level(logging.WARNING):
        trainer.evaluate(model, data(), batch_size=4, callbacks=[hooks])
    assert "custom_on_test_begin_executed" in messages(caplog)


@ports(FILE + "test_lambda_callback_no_args")
def test_lambda_callback_no_args():
    assert isinstance(LambdaCallback(), LambdaCallback)


@ports(FILE + "test_lambda_callback_with_additional_kwargs")
def test_lambda_callback_with_additional_kwargs():
    def custom_callback(logs):
        pass

    assert hasattr(LambdaCallback(custom_method=custom_callback), "custom_method")


@ports(FILE + "test_lambda_callback_during_prediction")
def test_lambda_callback_during_prediction(caplog):
    hooks = LambdaCallback(on_predict_begin=lambda logs: log.warning("on_predict_begin_executed"))
    with caplog.at_level(logging.WARNING):
        learner().predict(dense(2, 1), data()[0], batch_size=4, callbacks=[hooks])
    assert "on_predict_begin_executed" in messages(caplog)
