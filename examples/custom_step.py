"""Custom training step: a small GAN, two networks with an optimizer each, in one `Learner` subclass.

The generator learns to turn random noise into points on a ring of radius 1; the discriminator
learns to tell its points from real ones. Each batch runs two updates, one per optimizer, in the
overridden `train_step`; the loop, the progress bar, seeding and `predict` are fitorch's as usual.

Run it with `python examples/custom_step.py` (`--fast` for a short smoke run).
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from fitorch import Learner, seed_everything

NOISE_SIZE = 8


class GAN(nn.Module):
    """Both networks in one module, so that `fit` places, prepares and hands back them together."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.generator = nn.Sequential(
            nn.Linear(NOISE_SIZE, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
        )
        self.discriminator = nn.Sequential(
            nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, inputs: torch.Tensor, part: str = "generator") -> torch.Tensor:
        # One entry point for both networks, so that every forward pass goes through the model that
        # Accelerate prepared (mixed precision applies); `predict` calls it with noise: generated points.
        return self.generator(inputs) if part == "generator" else self.discriminator(inputs)


def two_optimizers(gan: GAN) -> list[torch.optim.Optimizer]:
    """One Adam per network; `learner.optimizers` keeps this order, and the logs show `lr` and `lr_1`."""
    return [
        torch.optim.Adam(gan.generator.parameters(), lr=1e-3, betas=(0.5, 0.999)),
        torch.optim.Adam(gan.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999)),
    ]


class GANLearner(Learner):
    """Trains a `GAN`: a discriminator update, then a generator update, on every batch of real points.

    The logged `loss` is the generator's. Each batch steps both optimizers, so this step takes no
    gradient accumulation.
    """

    def train_step(self, batch):
        (real,) = batch  # the data is real points only, with no targets
        gan, (generator_optimizer, discriminator_optimizer) = self.prepared_model, self.optimizers
        ones = torch.ones(len(real), 1, device=real.device)
        zeros = torch.zeros(len(real), 1, device=real.device)
        fake = gan(torch.randn(len(real), NOISE_SIZE, device=real.device))

        # 1. The discriminator: real points towards 1, generated points towards 0.
        real_scores, fake_scores = gan(real, part="discriminator"), gan(fake.detach(), part="discriminator")
        discriminator_loss = F.binary_cross_entropy_with_logits(real_scores, ones) + F.binary_cross_entropy_with_logits(
            fake_scores, zeros
        )
        self.backward(discriminator_loss)
        self.optimizer_step(discriminator_optimizer)

        # 2. The generator: make the discriminator score its points as real. The discriminator is
        # frozen meanwhile, so this backward pass leaves no gradient on it.
        self.model.discriminator.requires_grad_(False)
        generator_loss = F.binary_cross_entropy_with_logits(gan(fake, part="discriminator"), ones)
        self.backward(generator_loss)
        self.optimizer_step(generator_optimizer)
        self.model.discriminator.requires_grad_(True)
        return generator_loss, fake


def ring(count: int) -> torch.Tensor:
    """Points on a ring of radius 1, slightly blurred."""
    angle = torch.rand(count) * 2 * math.pi
    radius = 1 + 0.05 * torch.randn(count)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)


def describe(points: torch.Tensor) -> str:
    radius = points.norm(dim=1)
    sectors = ((torch.atan2(points[:, 1], points[:, 0]) + math.pi) / (2 * math.pi) * 8).long().clamp(max=7)
    return f"radius {radius.mean():.2f} ± {radius.std():.2f}, {sectors.unique().numel()}/8 sectors of the ring"


def main(fast: bool = False) -> None:
    seed_everything(0)  # the initial weights; Learner(seed=0) seeds the training itself
    real = ring(1024 if fast else 4096)
    gan = GAN()
    learner = GANLearner(optimizer=two_optimizers, seed=0)
    learner.fit(gan, real, epochs=2 if fast else 40, batch_size=64)

    generated = learner.predict(gan, torch.randn(2000, NOISE_SIZE))
    print(f"real points:      {describe(real)}")
    print(f"generated points: {describe(generated)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="two epochs on fewer points, for the test suite")
    main(parser.parse_args().fast)
