"""A light differentiable identity network distilled from the FaceNet oracle.

It maps an aligned face at training resolution to (an approximation of) FaceNet's
embedding, so that identity losses cost little on a CPU; the real oracles stay the
verifiers at inference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class IdentityStudent(nn.Module):
    def __init__(self, embedding_dim: int = 512, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, out in enumerate((width, width * 2, width * 4, width * 8)):
            layers += [
                nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.SiLU(),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.SiLU(),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] -> L2-normalised embedding."""
        h = self.features(x)
        return F.normalize(self.head(h.mean(dim=(2, 3))), dim=1)

    @classmethod
    def load(cls, path: str | Path) -> IdentityStudent:
        """A student saved as safetensors by ``idmrag train-codes`` (sizes read from the weights)."""
        from safetensors.torch import load_file

        weights = load_file(str(path))
        student = cls(embedding_dim=int(weights["head.weight"].shape[0]), width=int(weights["features.0.weight"].shape[0]))
        student.load_state_dict({k: v.float() for k, v in weights.items()})
        return student
