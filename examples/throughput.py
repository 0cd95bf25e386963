"""Throughput and compiled models: samples per second and peak memory of an eager and a compiled fit.

On scikit-learn's handwritten digits, the same network is trained twice with `Throughput`, which adds
`samples_per_second` and `peak_memory_mib` to every epoch's logs (and so to the progress line, the
History, train.log, metrics.csv and TensorBoard): once as it is, once with `Learner(compile=True)`.
The compiled fit's first epoch includes the compilation; its later epochs show whether compiling pays
off for this model on this machine (docs/training-tools.md#when-compiling-pays-off). The checkpoint
of the compiled fit has the plain parameter names, and loads into the uncompiled model.

Run it with `python examples/throughput.py` (`--fast` for two epochs each).
"""

import argparse

import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch import nn

from fitorch import Learner, load_weights, save_checkpoint
from fitorch.callbacks import Throughput


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def main(fast: bool = False, run_dir: str = "runs/throughput") -> None:
    x, y = load_digits(return_X_y=True)
    data = ((x / 16).astype("float32"), y)
    epochs = 2 if fast else 10
    for compiled in (False, True):
        learner = Learner(loss="cross_entropy", optimizer="adamw", lr=1e-3, seed=0, verbose=2, compile=compiled)
        model = make_model()
        history = learner.fit(model, data, epochs, batch_size=64, callbacks=[Throughput()])
        rates = [round(rate) for rate in history.history["samples_per_second"]]
        print(f"{'compiled' if compiled else 'eager'}: samples per second by epoch {rates}")
    save_checkpoint(learner, f"{run_dir}/compiled")
    names = list(load_file(f"{run_dir}/compiled/model.safetensors"))
    load_weights(make_model(), f"{run_dir}/compiled")  # plain names: the uncompiled model loads them
    print(f"checkpoint of the compiled model: {sorted(names)[:2]} ... (no _orig_mod. prefix)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="two epochs each, for the test suite")
    parser.add_argument("--run-dir", default="runs/throughput", help="where to save the checkpoint")
    arguments = parser.parse_args()
    main(arguments.fast, arguments.run_dir)
