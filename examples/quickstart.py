"""Quickstart: train a small MLP on scikit-learn's handwritten digits in three lines of fitorch.

Run it with `make demo` or `python examples/quickstart.py` (`--fast` for a one-epoch smoke run).
"""

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from fitorch import Learner


def main(fast: bool = False) -> float:
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")  # pixel values 0..16 scaled to 0..1
    x_train, x_val, y_train, y_val = train_test_split(x, digits.target, test_size=0.2, random_state=0)

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))

    # The three lines:
    learner = Learner(loss="cross_entropy", optimizer="adamw", lr=3e-3, metrics=["accuracy"], seed=0)
    history = learner.fit(
        model, (x_train, y_train), epochs=1 if fast else 20, validation_data=(x_val, y_val), batch_size=64
    )

    print(f"validation accuracy: {history.history['val_accuracy'][-1]:.4f}")
    predictions = learner.predict(model, x_val).argmax(dim=1)
    print(f"first predictions: {predictions[:10].tolist()} (true: {y_val[:10].tolist()})")
    assert isinstance(predictions, torch.Tensor)
    return history.history["val_accuracy"][-1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="one epoch, for the test suite")
    main(parser.parse_args().fast)
