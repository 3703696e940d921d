"""The face refiner: redraws the renderer's low-resolution face at the crop's resolution.

The renderer draws the inner face at 64 px (what a CPU trains); the engine's crop is 128 px,
so its drawing used to be resized up, a soft face in a sharp photo. The refiner takes that
drawing resized to the crop, the crop's context around it and the mask, and adds the detail
a 128 px face has (eyelids, nostrils, skin texture), trained adversarially on real faces.

Like the renderer it never sees the original's pixels under the mask: they are replaced by
the drawing before the first layer, and the output is ``mask * refined + (1 - mask) *
context``, so the context is kept exactly. It predicts a residual on the resized drawing
(its last layer starts at zero: an untrained refiner is a plain bilinear resize), and its
training holds the result, averaged back down to the drawing's resolution, to the drawing:
it adds detail to the pseudonym the renderer drew, it does not draw another face.
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
class RefinerConfig:
    image_size: int = 128  # the resolution it draws at
    input_size: int = 64  # the resolution of the drawings it refines
    base_channels: int = 16
    mid_channels: int = 32
    deep_channels: int = 64
    blocks: int = 2
    mask_grow: float = 1.1  # the renderer's inpainting ellipse
    renderer_sha256: str = ""  # the renderer whose drawings it was trained on (informational)


def upsample(drawing: torch.Tensor, size: int) -> torch.Tensor:
    """The drawing at ``size`` px: the resize the refiner learns its residual on."""
    if drawing.shape[-1] == size:
        return drawing
    return F.interpolate(drawing, size=(size, size), mode="bilinear", align_corners=False)


def downsample(image: torch.Tensor, size: int) -> torch.Tensor:
    """Area average to ``size`` px: how a refined face is compared with its drawing."""
    if image.shape[-1] == size:
        return image
    return F.adaptive_avg_pool2d(image, size)


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class _Noisy(nn.Module):
    """conv -> per-pixel noise of learned strength (texture, as in StyleGAN) -> activation."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.noise_strength = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x) + self.noise_strength * noise, 0.2)


class FaceRefiner(nn.Module):
    """A small U-Net (full, half and quarter resolution) that adds detail to a drawn face."""

    def __init__(self, config: RefinerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or RefinerConfig()
        self.stem = nn.Conv2d(4, c.base_channels, 3, padding=1)
        self.down1 = nn.Conv2d(c.base_channels, c.mid_channels, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(c.mid_channels, c.deep_channels, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*(_Block(c.deep_channels) for _ in range(c.blocks)))
        # upsampling is resize then convolution: no transposed convolutions (their grid)
        self.up1 = _Noisy(c.deep_channels + c.mid_channels, c.mid_channels)
        self.up1b = _Noisy(c.mid_channels, c.mid_channels)
        self.up2 = _Noisy(c.mid_channels + c.base_channels, c.base_channels)
        self.up2b = _Noisy(c.base_channels, c.base_channels)
        self.out = nn.Conv2d(c.base_channels, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def noise_shapes(self, batch: int, size: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the per-pixel noise maps for a ``size`` px input: half, half, full, full."""
        return [(batch, 1, size // 2, size // 2)] * 2 + [(batch, 1, size, size)] * 2

    def forward(
        self,
        context: torch.Tensor,
        mask: torch.Tensor,
        drawing: torch.Tensor,
        noise: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """context (N,3,S,S) in [-1,1], mask (N,1,S,S) in {0,1} (1 = drawn), drawing (N,3,s,s)
        in [-1,1] at any resolution s (resized to S) -> (N,3,S,S).

        ``S`` must be a multiple of 4. ``noise``: maps of :meth:`noise_shapes`; drawn from
        ``generator`` when omitted.
        """
        size = context.shape[-1]
        if size % 4:
            raise ValueError(f"the refiner works on sides that are multiples of 4, got {size}")
        hint = upsample(drawing, size)
        visible = context * (1.0 - mask)  # the original under the mask never enters
        x = mask * hint + visible
        if noise is None:
            noise = [torch.randn(s, generator=generator, device="cpu").to(context.device)
                     for s in self.noise_shapes(context.shape[0], size)]
        full = F.leaky_relu(self.stem(torch.cat([x, mask * 2.0 - 1.0], dim=1)), 0.2)
        half = F.leaky_relu(self.down1(full), 0.2)
        h = self.blocks(F.leaky_relu(self.down2(half), 0.2))
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = self.up1b(self.up1(torch.cat([h, half], dim=1), noise[0]), noise[1])
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = self.up2b(self.up2(torch.cat([h, full], dim=1), noise[2]), noise[3])
        refined = hint + self.out(h)
        return mask * refined + (1.0 - mask) * visible

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> Path:
        from idmrag_plugin.weights import save_model_folder

        return save_model_folder(self, asdict(self.config), directory, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> FaceRefiner:
        from idmrag_plugin.weights import load_model_folder

        meta, state = load_model_folder(directory, map_location, hint="; train one with `idmrag train-refiner`")
        model = cls(RefinerConfig(**meta))
        model.load_state_dict(state)
        return model.eval()
