"""Where a drawn face's eyes, nose and mouth corners are, differentiably: MTCNN's output
network (facenet-pytorch's ONet, offline weights) read on a fixed box of the canonical crop.

The engine's crops are aligned, so the face sits where the alignment template puts it and a
detector's box is not needed: the fixed square below is the median box MTCNN's refinement
stage finds on 300 training crops (centre (0.505, 0.565), side 0.66 of the crop; its boxes
vary by about 0.05 of the crop). Training uses it to keep a drawing's pose and expression
(the five points of the original, mouth corners included) while the identity changes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: The fixed box (centre x, centre y, side) as fractions of the canonical crop.
FACE_BOX = (0.505, 0.565, 0.66)
ONET_SIZE = 48


class LandmarkJudge(nn.Module):
    """Five landmarks (B, 5, 2), as fractions of the crop, of canonical crops (B, 3, S, S)
    in [-1, 1]. Frozen; gradients flow to the images."""

    def __init__(self) -> None:
        super().__init__()
        from facenet_pytorch.models.mtcnn import ONet

        self.onet = ONet(pretrained=True).eval()
        for p in self.onet.parameters():
            p.requires_grad_(False)
        cx, cy, side = FACE_BOX
        self.register_buffer("origin", torch.tensor([cx - side / 2, cy - side / 2]), persistent=False)
        self.side = side

    def box_crops(self, images: torch.Tensor) -> torch.Tensor:
        """The fixed box of each image at ONet's 48 px, in ONet's input scale."""
        n = images.shape[0]
        cx, cy, side = FACE_BOX
        # affine grid: output [-1, 1] maps onto the box in the image's [-1, 1] coordinates
        theta = torch.tensor([[side, 0.0, 2 * cx - 1], [0.0, side, 2 * cy - 1]], dtype=images.dtype,
                             device=images.device).expand(n, -1, -1)
        grid = F.affine_grid(theta, [n, 3, ONET_SIZE, ONET_SIZE], align_corners=False)
        size = images.shape[-1]
        if size > 2 * ONET_SIZE:  # average down first so the 48 px samples are not aliased
            images = F.interpolate(images, scale_factor=ONET_SIZE * 1.5 / (side * size), mode="area")
        crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # ONet's inputs are (pixel - 127.5) / 128; images in [-1, 1] are (pixel - 127.5) / 127.5
        return crops * (127.5 / 128.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, marks, _ = self.onet(self.box_crops(images))
        relative = torch.stack([marks[:, :5], marks[:, 5:]], dim=2)
        return self.origin + relative * self.side
