"""The VAEs: an encoder to (mean, logvar), the reparameterisation, a decoder to logits.

Two architectures share one interface (`encode`, `decode`, `forward`) and one exported contract:
rows of D = H*W*C values in, channel-last (H, W, C) flattened, as the data loaders lay them out.

- `VAE` (`--arch mlp`, the default): an MLP. The serving side answers batch-1 requests, and its
  graphs run in tens of microseconds on a CPU core, where a conv decoder of similar quality on
  Fashion-MNIST costs several times more (see the model card and docs/training.md).
- `ConvVAE` (`--arch conv`): strided convolutions down, transposed convolutions up; the better
  choice for colour and larger pictures, where an MLP's first layer grows with H*W*C.

Either has a prior over its latents (training/prior.py): N(0, I), or a learned mixture of
Gaussians with `prior_components` > 0. The prior is trained with the model and recorded on the
card, never exported as a graph.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from .prior import Prior, build_prior

__all__ = [
    "ARCHITECTURES",
    "VAE",
    "ConvVAE",
    "ConvVAEConfig",
    "Decoder",
    "Encoder",
    "ModelConfig",
    "VAEConfig",
    "build_vae",
    "config_from_dict",
    "reparameterize",
]


@dataclass(frozen=True)
class VAEConfig:
    """The MLP: input_dim -> encoder_hidden... -> 2 * latent_dim, and latent_dim -> reversed(hidden)
    -> input_dim. `encoder_hidden` empty: the encoder mirrors the decoder (`hidden`), as it always
    did; given, only the encoder changes, so the decoder graph (what Sample and Decode run) keeps its
    size and cost."""

    arch: ClassVar[str] = "mlp"
    input_dim: int = 784
    hidden: tuple[int, ...] = (1024, 512)
    latent_dim: int = 32
    encoder_hidden: tuple[int, ...] = ()
    prior_components: int = 0  # 0: N(0, I); K: a learned mixture of K Gaussians

    def __post_init__(self) -> None:
        if self.encoder_hidden == self.hidden:  # one spelling of the mirrored encoder, so configs compare
            object.__setattr__(self, "encoder_hidden", ())

    @property
    def encoder_widths(self) -> tuple[int, ...]:
        return self.encoder_hidden or self.hidden

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            **asdict(self),
            "hidden": list(self.hidden),
            "encoder_hidden": list(self.encoder_widths),
        }

    @classmethod
    def from_dict(cls, data: dict) -> VAEConfig:
        return cls(
            int(data["input_dim"]),
            tuple(int(h) for h in data["hidden"]),
            int(data["latent_dim"]),
            tuple(int(h) for h in data.get("encoder_hidden", ())),
            int(data.get("prior_components", 0)),
        )


# Every strided convolution halves the picture (kernel 4, stride 2, padding 1: floor(n / 2)), and
# its transposed twin doubles it back, plus one row or column where the encoder floored an odd size.
_KERNEL, _STRIDE, _PADDING = 4, 2, 1


@dataclass(frozen=True)
class ConvVAEConfig:
    """Strided convolutions of `widths` channels over (H, W, C) pictures, a linear layer to
    2 * latent_dim; the decoder mirrors it with transposed convolutions."""

    arch: ClassVar[str] = "conv"
    image_shape: tuple[int, int, int] = (28, 28, 1)  # H, W, C: channel-last, as the rows are laid out
    widths: tuple[int, ...] = (32, 64, 128)
    latent_dim: int = 32
    prior_components: int = 0  # 0: N(0, I); K: a learned mixture of K Gaussians

    def __post_init__(self) -> None:
        height, width, _ = self.image_shape
        smallest = 2 ** len(self.widths)
        if min(height, width) < smallest:
            raise ValueError(
                f"{height}x{width} pictures are too small for {len(self.widths)} strided convolutions "
                f"(each halves them; at least {smallest}x{smallest}); pass fewer conv widths"
            )

    @property
    def input_dim(self) -> int:
        return math.prod(self.image_shape)

    def feature_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of the picture and after each convolution, largest first."""
        sizes = [self.image_shape[:2]]
        for _ in self.widths:
            h, w = sizes[-1]
            sizes.append((h // 2, w // 2))
        return sizes

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "image_shape": list(self.image_shape),
            "widths": list(self.widths),
            "latent_dim": self.latent_dim,
            "input_dim": self.input_dim,
            "prior_components": self.prior_components,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ConvVAEConfig:
        height, width, channels = (int(v) for v in data["image_shape"])
        widths = tuple(int(w) for w in data["widths"])
        return cls(
            (height, width, channels), widths, int(data["latent_dim"]), int(data.get("prior_components", 0))
        )


ModelConfig = VAEConfig | ConvVAEConfig
ARCHITECTURES: dict[str, type[VAEConfig] | type[ConvVAEConfig]] = {"mlp": VAEConfig, "conv": ConvVAEConfig}


def config_from_dict(data: dict) -> ModelConfig:
    """A config from its `to_dict`; one without "arch" is an MLP (checkpoints from before conv)."""
    return ARCHITECTURES[data.get("arch", "mlp")].from_dict(data)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.GELU()]
    return nn.Sequential(*layers)


def reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One draw of q(z | x) = N(mean, diag(exp(logvar))), differentiable in mean and logvar."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


class _LatentVariableModel(nn.Module):
    """What both architectures share: the prior, the reparameterisation and the training forward."""

    prior: Prior

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    reparameterize = staticmethod(reparameterize)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder logits of one posterior draw, and KL(q(z|x) || p(z)) per row: the two terms of
        the -ELBO. The prior's parameters are used here, so DistributedDataParallel syncs them."""
        mean, logvar = self.encode(x)
        z = self.reparameterize(mean, logvar)
        return self.decode(z), self.prior.kl(mean, logvar, z)


class VAE(_LatentVariableModel):
    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        self.config = config
        first_hidden = config.hidden[0]
        self.encoder_body = _mlp([config.input_dim, *config.encoder_widths])
        self.encoder_head = nn.Linear(config.encoder_widths[-1], 2 * config.latent_dim)
        self.decoder_body = _mlp([config.latent_dim, *reversed(config.hidden)])  # mirrored
        self.decoder_head = nn.Linear(first_hidden, config.input_dim)
        self.prior = build_prior(
            config.prior_components, config.latent_dim
        )  # last: the layers' init is as before

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder_head(self.encoder_body(x)).chunk(2, dim=-1)
        return mean, self.prior.bound_logvar(logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the Bernoulli means; the exported decoder applies the sigmoid."""
        return self.decoder_head(self.decoder_body(z))


class ConvVAE(_LatentVariableModel):
    """Rows [..., H*W*C] (channel-last) in; the convolutions see [N, C, H, W]."""

    def __init__(self, config: ConvVAEConfig = ConvVAEConfig()) -> None:
        super().__init__()
        self.config = config
        channels = config.image_shape[2]
        sizes = config.feature_sizes()
        widths = [channels, *config.widths]
        self._bottom = (config.widths[-1], *sizes[-1])  # [C, H, W] of the smallest feature map
        flat = math.prod(self._bottom)
        down: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            down += [nn.Conv2d(fan_in, fan_out, _KERNEL, _STRIDE, _PADDING), nn.GELU()]
        self.encoder_body = nn.Sequential(*down, nn.Flatten())
        self.encoder_head = nn.Linear(flat, 2 * config.latent_dim)
        self.decoder_head = nn.Sequential(nn.Linear(config.latent_dim, flat), nn.GELU())
        up: list[nn.Module] = []
        for step, (fan_in, fan_out) in enumerate(itertools.pairwise(reversed(widths))):
            (h, w), (target_h, target_w) = sizes[-1 - step], sizes[-2 - step]
            padding = (target_h - 2 * h, target_w - 2 * w)
            up.append(nn.ConvTranspose2d(fan_in, fan_out, _KERNEL, _STRIDE, _PADDING, output_padding=padding))
            if step < len(config.widths) - 1:  # the last layer gives logits, unbounded
                up.append(nn.GELU())
        self.decoder_body = nn.Sequential(*up)
        self.prior = build_prior(config.prior_components, config.latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead = x.shape[:-1]
        pictures = x.reshape(-1, *self.config.image_shape).permute(0, 3, 1, 2)
        mean, logvar = self.encoder_head(self.encoder_body(pictures)).chunk(2, dim=-1)
        return mean.reshape(*lead, -1), self.prior.bound_logvar(logvar).reshape(*lead, -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the Bernoulli means, rows [..., H*W*C]; the exported decoder applies the sigmoid."""
        lead = z.shape[:-1]
        features = self.decoder_head(z.reshape(-1, z.shape[-1])).reshape(-1, *self._bottom)
        pictures = self.decoder_body(features).permute(0, 2, 3, 1)  # back to channel-last
        return pictures.reshape(*lead, self.config.input_dim)


def build_vae(config: ModelConfig) -> VAE | ConvVAE:
    return ConvVAE(config) if isinstance(config, ConvVAEConfig) else VAE(config)


class Encoder(nn.Module):
    """The exported encoder graph: x -> (mean, logvar)."""

    def __init__(self, vae: VAE | ConvVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


class Decoder(nn.Module):
    """The exported decoder graph: z -> Bernoulli means in [0, 1]."""

    def __init__(self, vae: VAE | ConvVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.vae.decode(z))
