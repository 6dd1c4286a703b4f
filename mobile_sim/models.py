"""The model zoo: small models that fit on a phone and train in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MnistCNN", "MLP", "MODELS", "build_model", "count_parameters"]


class MnistCNN(nn.Module):
    """The CNN of McMahan et al. 2017 ("Communication-efficient learning ...", AISTATS).

    Two 5x5 convolutions (32 and 64 channels, same padding) each followed by 2x2 max pooling,
    a 512-unit fully connected layer and a 10-way output: 1,663,370 parameters.
    Input: float32[B, 1, 28, 28].
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(7 * 7 * 64, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(self.flatten(x)))
        out: torch.Tensor = self.fc2(x)
        return out

    def fused_layers(self) -> list[nn.Module]:
        """The chain `forward` runs, in order: declared for `sdk.trainer.TorchTrainer`'s fused
        step (`sdk._fused`), which trusts it to be exactly `forward`."""
        relu, pool = self.relu, self.pool
        return [self.conv1, relu, pool, self.conv2, relu, pool, self.flatten, self.fc1, relu,
                self.fc2]  # fmt: skip


class MLP(nn.Module):
    """A fully connected ReLU network. Input: float32[B, ...], flattened to `in_features`."""

    def __init__(
        self, in_features: int = 784, hidden: tuple[int, ...] = (200, 200), num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def fused_layers(self) -> list[nn.Module]:
        """The chain `forward` runs (`self.net`'s layers), declared for `sdk._fused`."""
        return list(self.net)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mnist_cnn": MnistCNN,
    # McMahan et al.'s "2NN": two hidden layers of 200 units (199,210 parameters).
    "mlp": lambda: MLP(784, (200, 200), 10),
    # For sklearn's 8x8 digits.
    "digits_mlp": lambda: MLP(64, (32,), 10),
}


def build_model(name: str, seed: int | None = 0) -> nn.Module:
    """Build a zoo model by name, with weights drawn from `seed` (None leaves torch's RNG alone)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    if seed is None:
        return factory()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _register_extra_models() -> None:
    """Models for `mobile_sim.datasets`: the character LSTMs (Shakespeare) and FedProx's
    multinomial logistic regression over synthetic(alpha, beta)'s 60 features."""
    from .models_text import TEXT_MODELS

    MODELS.update(TEXT_MODELS)
    MODELS["synthetic_lr"] = lambda: MLP(60, (), 10)


_register_extra_models()
