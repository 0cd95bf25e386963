"""The learning-rate finder: sweep the rate, look at the curve, train with the suggestion.

On scikit-learn's handwritten digits: `learner.lr_find` raises SGD's learning rate from 1e-5 to 10
over a short run and suggests a rate (the "valley" rule; the "steepest" rule's choice is printed
too); the plot goes to `run_dir/lr_find.png` when matplotlib is installed. The sweep changes nothing:
the fit that follows is exactly the fit you would get without it, which the script checks.

Run it with `python examples/lr_find.py` (`--fast` for two epochs with the suggested rate).
"""

import argparse
import importlib.util

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from fitorch import Learner


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def main(fast: bool = False, run_dir: str = "runs/lr_find") -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split((x / 16).astype("float32"), y, test_size=0.2, random_state=0)
    train, validation = (x_train, y_train), (x_val, y_val)

    options = {"loss": "cross_entropy", "optimizer": "sgd", "momentum": 0.9, "metrics": ["accuracy"], "verbose": 0}
    learner = Learner(seed=0, **options)
    model = make_model()
    result = learner.lr_find(model, train, start_lr=1e-5, end_lr=10, num_steps=100, batch_size=64)
    print(
        f"suggested learning rate {result.suggestion:.2e} ({result.rule}); steepest descent at "
        f"{result.suggest('steepest'):.2e}; {len(result.rates)} steps, diverged: {result.diverged}"
    )
    if importlib.util.find_spec("matplotlib") is not None:
        result.save_plot(f"{run_dir}/lr_find.png")
        print(f"plot: {run_dir}/lr_find.png")

    # The sweep left the model as it was: training starts from its initial weights, with the suggestion.
    tuned = Learner(lr=result.suggestion, seed=0, **options)
    history = tuned.fit(model, train, 2 if fast else 10, batch_size=64, validation_data=validation)
    print(f"validation accuracy with the suggested rate: {history.history['val_accuracy'][-1]:.4f}")

    # And the random generators and the learner too: a fit after a sweep is the fit without it, bit for bit.
    untouched = make_model()
    learner.fit(untouched, train, 1, batch_size=64)
    swept = make_model()
    learner.lr_find(swept, train, num_steps=20, batch_size=64)
    learner.fit(swept, train, 1, batch_size=64)
    same = all(torch.equal(a, b) for a, b in zip(untouched.parameters(), swept.parameters()))
    print(f"a fit after lr_find equals the same fit without it: {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="two epochs with the suggestion, for the test suite")
    parser.add_argument("--run-dir", default="runs/lr_find", help="where to save the plot")
    arguments = parser.parse_args()
    main(arguments.fast, arguments.run_dir)
