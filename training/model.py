"""The VAE: an MLP encoder to (mean, logvar), the reparameterisation, an MLP decoder to logits.

An MLP, not a conv net, because the serving side answers batch-1 requests: its graphs run in
tens of microseconds on a CPU core, where a conv decoder of similar quality costs several times
more (see the model card and the README for the measured trade-off).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["VAE", "Decoder", "Encoder", "VAEConfig"]


@dataclass(frozen=True)
class VAEConfig:
    input_dim: int = 784
    hidden: tuple[int, ...] = (1024, 512)
    latent_dim: int = 32

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict) -> VAEConfig:
        return cls(int(data["input_dim"]), tuple(int(h) for h in data["hidden"]), int(data["latent_dim"]))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.GELU()]
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        self.config = config
        first_hidden, last_hidden = config.hidden[0], config.hidden[-1]
        self.encoder_body = _mlp([config.input_dim, *config.hidden])
        self.encoder_head = nn.Linear(last_hidden, 2 * config.latent_dim)
        self.decoder_body = _mlp([config.latent_dim, *reversed(config.hidden)])  # mirrored
        self.decoder_head = nn.Linear(first_hidden, config.input_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder_head(self.encoder_body(x)).chunk(2, dim=-1)
        return mean, logvar

    @staticmethod
    def reparameterize(
        mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the Bernoulli means; the exported decoder applies the sigmoid."""
        return self.decoder_head(self.decoder_body(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(x)
        return self.decode(self.reparameterize(mean, logvar)), mean, logvar


class Encoder(nn.Module):
    """The exported encoder graph: x -> (mean, logvar)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


class Decoder(nn.Module):
    """The exported decoder graph: z -> Bernoulli means in [0, 1]."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.vae.decode(z))
