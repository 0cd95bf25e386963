"""Weight averaging: a plain fit, an exponential moving average (EMA) and stochastic weight averaging (SWA).

On scikit-learn's handwritten digits, a network with batch norm is trained three times with the same
seed and a deliberately high learning rate, so that the weights keep jumping around a good region:

1. plain: the last weights;
2. EMA: `WeightAveraging("ema")` averages the weights after every step; validation runs on the
   average, and `ModelCheckpoint` keeps the best averaged weights (reloaded here to check);
3. SWA: `WeightAveraging("swa", start_epoch=...)` averages the weights at the end of each epoch from
   the start epoch on, and recomputes the batch-norm statistics of the average at the end.

Run it with `python examples/weight_averaging.py` (`--fast` for fewer epochs).
"""

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from fitorch import Learner, load_weights
from fitorch.callbacks import ModelCheckpoint, WeightAveraging


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))


def main(fast: bool = False, run_dir: str = "runs/weight_averaging") -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split((x / 16).astype("float32"), y, test_size=0.3, random_state=0)
    train, validation = (x_train, y_train), (x_val, y_val)
    epochs = 4 if fast else 20

    def learner() -> Learner:
        return Learner(loss="cross_entropy", optimizer="sgd", lr=0.5, momentum=0.9, metrics=["accuracy"], verbose=0)

    def fit(callbacks: list) -> tuple[nn.Module, float]:
        trainer, model = learner(), make_model()
        trainer.fit(model, train, epochs, batch_size=32, validation_data=validation, callbacks=callbacks)
        return model, trainer.evaluate(model, validation)["accuracy"]  # after fit, the model holds the average

    _, plain = fit([])
    best = ModelCheckpoint(f"{run_dir}/best", monitor="val_accuracy", save_best_only=True)
    _, ema = fit([WeightAveraging("ema", decay=0.99), best])
    _, swa = fit([WeightAveraging("swa", start_epoch=epochs // 2)])
    print(f"validation accuracy: plain {plain:.4f}, EMA {ema:.4f}, SWA {swa:.4f}")

    reloaded = make_model()
    load_weights(reloaded, f"{run_dir}/best")  # the best averaged weights, as ModelCheckpoint saved them
    reloaded_accuracy = learner().evaluate(reloaded, validation)["accuracy"]
    print(f"best EMA checkpoint: val_accuracy {best.best:.4f}, reloaded: {reloaded_accuracy:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="four epochs, for the test suite")
    parser.add_argument("--run-dir", default="runs/weight_averaging", help="where to save the best checkpoint")
    arguments = parser.parse_args()
    main(arguments.fast, arguments.run_dir)
