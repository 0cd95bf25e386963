"""Writing callbacks: a gradient-norm logger, a confusion matrix in TensorBoard, and a Keras callback.

On a small network for scikit-learn's handwritten digits: `GradientNorm` reads the gradients where
they are final (`on_before_optimizer_step`) and adds their mean norm to the epoch logs, which the
history, metrics.csv and TensorBoard then record; `ConfusionMatrix` draws the confusion matrix with
plain torch and writes it to TensorBoard as an image, on the main process only; `BestEpoch` was
written for Keras, and only its base class changed.

Run it with `python examples/custom_callback.py` (`--fast` for two epochs), then
`tensorboard --logdir runs/custom_callback/tensorboard` and open the Images tab.
"""

import argparse
import os

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from fitorch import Callback, Learner, seed_everything


class GradientNorm(Callback):
    """Adds `grad_norm` to the epoch logs: the mean global gradient norm over the epoch's optimizer steps."""

    def on_epoch_begin(self, epoch, logs):
        self.norms = []

    def on_before_optimizer_step(self, optimizer):
        # Here the gradients are the ones the step applies: averaged over an accumulation window,
        # unscaled under mixed precision, clipped. The norms stay on the device until the epoch ends.
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def on_epoch_end(self, epoch, logs):
        logs["grad_norm"] = torch.stack(self.norms).mean().item()  # the one host-device sync of the epoch


class ConfusionMatrix(Callback):
    """Writes the confusion matrix on `(inputs, targets)` to TensorBoard as an image at every epoch's end.

    Validation batches do not reach callbacks with their outputs, so this callback runs the model on
    the data it was given. It writes into `run_dir/tensorboard/validation` unless given a `log_dir`.
    """

    def __init__(self, inputs, targets, num_classes, log_dir=None):
        self.inputs, self.targets, self.num_classes, self.log_dir = inputs, targets, num_classes, log_dir
        self.writer, self.matrix = None, None

    def on_train_begin(self, logs):
        if self.learner.is_main_process:  # one process writes; the others would only repeat it
            log_dir = self.log_dir or os.path.join(self.learner.run_dir, "tensorboard", "validation")
            self.writer = SummaryWriter(log_dir)

    def on_epoch_end(self, epoch, logs):
        if self.writer is None:
            return
        self.model.eval()  # the next training batch switches it back to training mode
        with torch.no_grad():
            predictions = self.model(self.inputs.to(self.learner.accelerator.device)).argmax(dim=1).cpu()
        cells = self.targets * self.num_classes + predictions  # row: the true class, column: the predicted one
        self.matrix = torch.bincount(cells, minlength=self.num_classes**2).view(self.num_classes, -1)
        self.writer.add_image("confusion_matrix", draw(self.matrix), epoch)  # a (3, H, W) image in [0, 1]

    def on_train_end(self, logs):
        if self.writer is not None:
            self.writer.close()


BLUE, RED = torch.tensor([0.1, 0.3, 0.7]).view(3, 1, 1), torch.tensor([0.8, 0.1, 0.1]).view(3, 1, 1)


def draw(matrix: torch.Tensor, cell: int = 16) -> torch.Tensor:
    """The matrix as an RGB image, a square per cell: blue where right, red where wrong, darker for more."""
    shares = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp(min=1)  # each row sums to 1
    right = torch.eye(len(matrix), dtype=torch.bool)
    strength = torch.where(right, shares, shares.sqrt())  # mistakes are rare: the root makes a few visible
    image = 1 + (torch.where(right, BLUE, RED) - 1) * strength  # from white towards the colour, (3, n, n)
    image = image.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    image[:, ::cell, :] = image[:, :, ::cell] = 0.85  # light grid lines between the cells
    return image


# Written for Keras as `class BestEpoch(keras.callbacks.Callback)`; nothing but the base class changed.
class BestEpoch(Callback):
    def __init__(self, monitor="val_accuracy"):
        super().__init__()
        self.monitor = monitor

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch = None, None

    def on_epoch_end(self, epoch, logs=None):
        current = logs.get(self.monitor)
        if current is not None and (self.best is None or current > self.best):
            self.best, self.best_epoch = current, epoch

    def on_train_end(self, logs=None):
        print(f"Best {self.monitor}: {self.best:.4f} at epoch {self.best_epoch + 1}.")


def main(fast: bool = False, run_dir: str = "runs/custom_callback") -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16, y, test_size=0.2, random_state=0)
    x_val, y_val = torch.tensor(x_val, dtype=torch.float32), torch.tensor(y_val)

    seed_everything(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    confusion = ConfusionMatrix(x_val, y_val, num_classes=10)
    learner = Learner(loss="cross_entropy", lr=3e-3, metrics=["accuracy"], seed=0, run_dir=run_dir, verbose=2)
    # run_dir adds the default loggers after these callbacks, so they record grad_norm too.
    callbacks = [GradientNorm(), confusion, BestEpoch()]
    epochs = 2 if fast else 15
    history = learner.fit(model, (x_train, y_train), epochs, validation_data=(x_val, y_val), callbacks=callbacks)

    print(f"grad_norm per epoch: {[round(norm, 3) for norm in history.history['grad_norm']]}")
    print("confusion matrix of the last epoch (rows: true digit, columns: predicted):")
    for digit, row in enumerate(confusion.matrix.tolist()):
        print(f"  {digit}: " + " ".join(f"{count:3d}" for count in row))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="two epochs, for the test suite")
    parser.add_argument("--run-dir", default="runs/custom_callback", help="where to write logs and TensorBoard")
    arguments = parser.parse_args()
    main(arguments.fast, arguments.run_dir)
