"""How speckled a drawn face is: its fine detail inside the inpainting mask, in luma and chroma.

The renderer draws some pseudonym codes, in some photos' contexts, as a mottled mask of red,
yellow and black blotches instead of a face (about one drawing in five over LFW contexts; the
person's own code draws clean in the same context). Real faces and the renderer's clean
drawings have little fine colour detail inside the face: skin is smooth in chroma even where
the luma has texture. The statistic here is the mean absolute difference between a drawing
and its Gaussian-blurred self (sigma 1 px at the renderer's 64 px), in 8-bit levels, over the
mask eroded by one pixel (its edge meets the photo), separately for luma (Y) and chroma (Cb,
Cr averaged). Torch, so that training can penalise it and the generator can screen drawings
with the very same numbers.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.transforms.functional import gaussian_blur

#: ITU-R BT.601 (what JPEG's YCbCr uses), rows Y, Cb, Cr, for RGB in [-1, 1].
_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                       [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]])
#: Blur of the reference the detail is measured against (pixels at the renderer's 64 px).
SIGMA = 1.0
KERNEL = 7
#: The resolution the statistic is calibrated at (the 64 px renderer's): a drawing made larger
#: is brought down to it first, since one pixel of blur at 128 px judges finer detail.
SCORED_SIDE = 64
#: Luma's share in :func:`speckle_score` (chroma + share x luma): luma adds the dark-blotched
#: drawings, but real skin has luma texture where it has hardly any chroma detail.
LUMA_SHARE = 0.1


def speckle_levels(images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(luma, chroma) fine detail of ``images`` (N, 3, S, S) in [-1, 1] inside ``mask``
    (N or 1, 1, S, S; 1 = drawn), each (N,) in 8-bit levels. Differentiable in ``images``."""
    ycc = torch.einsum("ck,nkhw->nchw", _YCBCR.to(images), images) * 127.5
    detail = (ycc - gaussian_blur(ycc, [KERNEL, KERNEL], [SIGMA, SIGMA])).abs()
    inner = -F.max_pool2d(-mask.to(images), 3, stride=1, padding=1)  # eroded by one pixel
    inner = inner.expand(images.shape[0], -1, -1, -1)
    area = inner.sum(dim=(1, 2, 3)).clamp(min=1.0)
    luma = (detail[:, :1] * inner).sum(dim=(1, 2, 3)) / area
    chroma = (detail[:, 1:] * inner).sum(dim=(1, 2, 3)) / (2.0 * area)
    return luma, chroma


def speckle_score(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One number per image (N,): chroma + ``LUMA_SHARE`` x luma of :func:`speckle_levels`,
    at ``SCORED_SIDE`` px (larger images and their mask are brought down to it)."""
    if images.shape[-1] > SCORED_SIDE:
        images = F.interpolate(images, size=(SCORED_SIDE, SCORED_SIDE), mode="area")
        mask = F.interpolate(mask.to(images), size=(SCORED_SIDE, SCORED_SIDE), mode="area")
    luma, chroma = speckle_levels(images, mask)
    return chroma + LUMA_SHARE * luma
