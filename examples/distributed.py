"""The same script on one device, on many GPUs, on many machines, or as several CPU processes.

    python examples/distributed.py                              # one process (CPU or one GPU)
    torchrun --nproc_per_node 2 examples/distributed.py         # two processes: GPUs, or CPUs with gloo
    accelerate launch --multi_gpu --num_processes 8 examples/distributed.py
    accelerate launch --config_file multi_node.yaml examples/distributed.py   # several machines
    torchrun --nnodes 2 --node_rank R --master_addr HOST examples/distributed.py   # two machines, R = 0, 1

Nothing in the script changes between these: Accelerate reads the launcher's settings, fitorch
shards the data, gathers exact metrics, and lets only the main process print and write files.
"""

import argparse

from sklearn.datasets import load_digits
from torch import nn

from fitorch import Learner
from fitorch.callbacks import EarlyStopping, ModelCheckpoint


def main(fast: bool = False, run_dir: str = "runs/distributed") -> None:
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    learner = Learner(
        loss="cross_entropy",
        optimizer="adamw",
        lr=3e-3,
        metrics=["accuracy"],
        seed=0,  # the same seed on every process: identical initial shuffles, in-sync decisions
        run_dir=run_dir,  # one path for every process; only the main process writes there
        verbose=2,
        callbacks=[
            EarlyStopping(monitor="val_accuracy", patience=3, restore_best_weights=True),
            ModelCheckpoint(f"{run_dir}/best", monitor="val_accuracy", save_best_only=True),
        ],
    )
    # batch_size is per process: with N processes an optimizer step sees N * 64 samples.
    history = learner.fit(model, (x, y), epochs=2 if fast else 30, validation_split=0.2, batch_size=64)

    if learner.is_main_process:
        processes = learner.accelerator.num_processes
        print(f"processes: {processes} ({learner.accelerator.distributed_type}), run dir: {run_dir}")
        print(f"best val_accuracy: {max(history.history['val_accuracy']):.4f} after {len(history.epoch)} epochs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="two epochs, for the test suite")
    parser.add_argument("--run-dir", default="runs/distributed", help="where to write logs and checkpoints")
    arguments = parser.parse_args()
    main(arguments.fast, arguments.run_dir)
