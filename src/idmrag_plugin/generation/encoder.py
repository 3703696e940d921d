"""Disentangled face autoencoder: identity code z_id (vector) + spatial attribute code z_attr.

The encoder maps an aligned face to two Gaussian posteriors: ``z_id`` (``id_dim`` values)
and ``z_attr`` (``attr_channels`` x ``attr_size`` x ``attr_size``). The decoder renders a
face from ``z_attr`` with ``z_id`` injected at every stage by feature-wise modulation, so
that swapping ``z_id`` changes who the face is while ``z_attr`` keeps pose, expression,
lighting and background.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)



@dataclass
class CodesConfig:
    image_size: int = 64
    id_dim: int = 128
    attr_channels: int = 4
    attr_size: int = 8
    base_channels: int = 32
    embedding_dim: int = 512  # FaceNet embedding predicted from z_id

    @property
    def stages(self) -> int:
        stages = 0
        size = self.image_size
        while size > self.attr_size:
            size //= 2
            stages += 1
        return stages


def _channels(config: CodesConfig, stage: int) -> int:
    return min(config.base_channels * 2**stage, 256)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class ModulatedBlock(nn.Module):
    """Residual block whose normalisation is scaled and shifted by the identity code."""

    def __init__(self, channels: int, id_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels, affine=False)
        self.film1 = nn.Linear(id_dim, 2 * channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, channels, affine=False)
        self.film2 = nn.Linear(id_dim, 2 * channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    @staticmethod
    def _modulate(x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        scale, shift = film[..., None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift

    def forward(self, x: torch.Tensor, z_id: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self._modulate(self.norm1(x), self.film1(z_id))))
        return x + self.conv2(F.silu(self._modulate(self.norm2(h), self.film2(z_id))))


class Encoder(nn.Module):
    def __init__(self, config: CodesConfig) -> None:
        super().__init__()
        c0 = config.base_channels
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        blocks = []
        channels = c0
        for stage in range(config.stages):
            out = _channels(config, stage + 1)
            blocks += [ResBlock(channels), nn.Conv2d(channels, out, 4, stride=2, padding=1)]
            channels = out
        self.down = nn.Sequential(*blocks, ResBlock(channels), nn.GroupNorm(8, channels), nn.SiLU())
        self.attr_head = nn.Conv2d(channels, 2 * config.attr_channels, 1)
        self.id_head = nn.Sequential(nn.Linear(channels * 2, 256), nn.SiLU(), nn.Linear(256, 2 * config.id_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.down(self.stem(x))
        attr_mu, attr_logvar = self.attr_head(h).chunk(2, dim=1)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        id_mu, id_logvar = self.id_head(pooled).chunk(2, dim=1)
        return id_mu, id_logvar.clamp(-10, 6), attr_mu, attr_logvar.clamp(-10, 6)


class Decoder(nn.Module):
    def __init__(self, config: CodesConfig) -> None:
        super().__init__()
        top = _channels(config, config.stages)
        self.stem = nn.Conv2d(config.attr_channels, top, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.ups = nn.ModuleList()
        channels = top
        for stage in reversed(range(config.stages)):
            out = _channels(config, stage)
            self.blocks.append(ModulatedBlock(channels, config.id_dim))
            self.ups.append(nn.Conv2d(channels, out, 3, padding=1))
            channels = out
        self.final = ModulatedBlock(channels, config.id_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, z_id: torch.Tensor, z_attr: torch.Tensor) -> torch.Tensor:
        h = self.stem(z_attr)
        for block, up in zip(self.blocks, self.ups, strict=True):
            h = up(F.interpolate(block(h, z_id), scale_factor=2, mode="nearest"))
        return torch.tanh(self.out(self.final(h, z_id)))


class DisentangledFaceVAE(nn.Module):
    """Encoder + decoder + a head predicting the FaceNet embedding from z_id."""

    def __init__(self, config: CodesConfig | None = None) -> None:
        super().__init__()
        self.config = config or CodesConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.id_to_embedding = nn.Linear(self.config.id_dim, self.config.embedding_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x in [-1, 1], (N, 3, S, S) -> id_mu, id_logvar, attr_mu, attr_logvar."""
        return self.encoder(x)

    def decode(self, z_id: torch.Tensor, z_attr: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_id, z_attr)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        id_mu, id_logvar, attr_mu, attr_logvar = self.encode(x)
        z_id = self.sample(id_mu, id_logvar) if self.training else id_mu
        z_attr = self.sample(attr_mu, attr_logvar) if self.training else attr_mu
        return {
            "recon": self.decode(z_id, z_attr),
            "z_id": z_id,
            "z_attr": z_attr,
            "id_mu": id_mu,
            "id_logvar": id_logvar,
            "attr_mu": attr_mu,
            "attr_logvar": attr_logvar,
        }

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write ``model.safetensors`` (in ``dtype``; float16 halves the file) and ``config.json``
        with the weights' sha256."""
        from idmrag_plugin.weights import save_model_folder

        return save_model_folder(self, asdict(self.config), directory, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> DisentangledFaceVAE:
        from idmrag_plugin.weights import load_model_folder

        meta, state = load_model_folder(directory, map_location, hint="")
        model = cls(CodesConfig(**meta))
        model.load_state_dict(state)
        return model.eval()
