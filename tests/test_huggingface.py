"""A real Hugging Face model (a tiny, randomly initialised BERT built locally) and `datasets` rows with `label`.

Skipped when `transformers` or `datasets` is not installed; nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a tiny config built here: never a download
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from fitorch import Learner  # noqa: E402


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def rows(n=48):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 40, (n, 8), generator=generator)
    label = input_ids[:, 0] % 3  # learnable: the class is in the first token
    table = {"input_ids": input_ids.tolist(), "attention_mask": [[1] * 8] * n, "label": label.tolist()}
    return datasets.Dataset.from_dict(table).with_format("torch")


def test_a_datasets_dataset_with_label_trains_a_bert_with_a_named_loss_and_with_its_own():
    data = rows()
    named = Learner(loss="cross_entropy", metrics=["accuracy"], lr=1e-2, verbose=0)
    history = named.fit(tiny_bert(), data, epochs=3, batch_size=16, shuffle=False, validation_data=data)
    assert history.history["loss"][-1] < history.history["loss"][0]  # it learns from the `label` column
    own = Learner(metrics=["accuracy"], lr=1e-2, verbose=0)  # no loss: BERT's own, from `labels`
    own_history = own.fit(tiny_bert(), data, epochs=3, batch_size=16, shuffle=False, validation_data=data)
    assert own_history.history["loss"] == pytest.approx(history.history["loss"], rel=1e-5)
    assert own_history.history["val_accuracy"] == pytest.approx(history.history["val_accuracy"])
    logits = named.predict(named.model, data)
    assert logits.shape == (48, 3)  # predict returns the logits of the ModelOutput
    logs = named.evaluate(named.model, data, batch_size=16)
    assert logs["accuracy"] == pytest.approx(history.history["val_accuracy"][-1])


def test_a_models_tuple_output_works_with_a_named_loss():
    data = rows()
    model = tiny_bert()
    model.config.return_dict = False  # forward returns (logits,) as a tuple
    history = Learner(loss="cross_entropy", lr=1e-2, verbose=0).fit(model, data, epochs=2, batch_size=16)
    assert len(history.history["loss"]) == 2
