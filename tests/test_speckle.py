"""The speckle statistic: fine detail inside the mask, luma and chroma apart."""

from __future__ import annotations

import numpy as np
import torch

from idmrag_plugin.generation.renderer import inpaint_mask
from idmrag_plugin.generation.speckle import speckle_levels


def _smooth(n: int = 2, size: int = 64) -> torch.Tensor:
    """Faces' worth of smooth shading in [-1, 1]: gradients, no detail."""
    ramp = torch.linspace(-0.6, 0.6, size)
    image = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size) * 0.5,
                         torch.full((size, size), 0.1)])
    return image[None].repeat(n, 1, 1, 1)


def test_smooth_shading_has_next_to_no_detail():
    mask = torch.from_numpy(inpaint_mask(64))[None, None]
    luma, chroma = speckle_levels(_smooth(), mask)
    assert luma.shape == chroma.shape == (2,)
    assert float(luma.max()) < 0.2 and float(chroma.max()) < 0.2


def test_colour_blotches_raise_chroma_and_grey_grain_raises_luma_only():
    mask = torch.from_numpy(inpaint_mask(64))[None, None]
    g = torch.Generator().manual_seed(0)
    blotches = _smooth(1) + (torch.rand(1, 3, 64, 64, generator=g) - 0.5) * 0.3 * mask
    grain = _smooth(1) + (torch.rand(1, 1, 64, 64, generator=g) - 0.5) * 0.3 * mask
    luma, chroma = speckle_levels(torch.cat([blotches, grain]), mask)
    assert float(chroma[0]) > 2.0  # levels: per-channel noise of +-19 levels
    assert float(chroma[1]) < 0.2 and float(luma[1]) > 2.0  # the same on all channels is luma alone


def test_detail_outside_the_mask_does_not_count_and_the_statistic_is_differentiable():
    mask = torch.from_numpy(inpaint_mask(64))[None, None]
    g = torch.Generator().manual_seed(1)
    noisy_context = _smooth(1) + (torch.rand(1, 3, 64, 64, generator=g) - 0.5) * 0.5 * (1 - mask)
    eroded = -torch.nn.functional.max_pool2d(-mask, 3, stride=1, padding=1)
    assert float(eroded.sum()) < float(mask.sum())
    luma, chroma = speckle_levels(noisy_context, mask)
    # the blur reaches 3 px across the mask's edge; the eroded ring keeps the rest out
    assert float(chroma) < 0.5 and float(luma) < 1.0
    drawn = (_smooth(1) + (torch.rand(1, 3, 64, 64, generator=g) - 0.5) * 0.2).requires_grad_()
    luma, chroma = speckle_levels(drawn, mask)
    (luma + chroma).sum().backward()
    assert drawn.grad is not None and float(drawn.grad.abs().sum()) > 0
    outside = torch.from_numpy(np.asarray(inpaint_mask(64, 1.6) < 0.5))
    assert float(drawn.grad[0][:, outside].abs().max()) == 0.0


def test_the_speckle_reference_is_the_face_the_detector_finds(engine):
    """The reference context is built from scikit-image's astronaut at recorded landmarks: the
    engine's detector must still find them there (a changed photo or detector would silently
    change which pseudonyms are preferred)."""
    import skimage.data

    from idmrag_plugin.generation.speckle_reference import (
        CROP_SIZE,
        GAMMA,
        LANDMARKS,
        reference_crop,
    )

    dark = (255.0 * (skimage.data.astronaut().astype(np.float32) / 255.0) ** GAMMA).astype(np.uint8)
    found = max(engine.detector.detect(dark), key=lambda d: d.score)
    assert np.abs(found.landmarks - LANDMARKS).max() < 1.0
    crop = reference_crop(CROP_SIZE)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8 and not crop.flags.writeable
    assert 20 < crop.mean() < 120  # darkened, not black


def test_a_washed_out_drawing_has_a_small_luma_spread_beside_the_photo_s_face(astronaut, engine):
    """The ghost ratio: the photo's own face drawn back reads about 1, the same face faded
    towards its mean skin tone reads as washed out, and the photo's face is read over the
    inner face only (a change to the crop's rim does not move it)."""
    import cv2

    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.generation.ghost import ghost_ratio, luma_spread
    from idmrag_plugin.generation.renderer_generator import GHOST_LIMIT

    face = engine.detector.detect(astronaut)[0]
    crop = align_face(astronaut, face.landmarks, 128).crop
    small = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    faded = small.mean(axis=(0, 1)) + 0.3 * (small - small.mean(axis=(0, 1)))
    drawn = torch.as_tensor(np.stack([small, faded])).permute(0, 3, 1, 2) / 127.5 - 1.0
    ratio = ghost_ratio(drawn, crop)
    assert abs(ratio[0] - 1.0) < 0.02
    assert ratio[1] < GHOST_LIMIT < 0.8
    framed = crop.copy()
    framed[:12], framed[-12:] = 0, 255
    assert luma_spread(framed, 64) == luma_spread(crop, 64)


def test_a_128_px_drawing_is_scored_as_at_64_px():
    """The limit is calibrated at 64 px: the same blotches drawn at twice the size score alike,
    although one pixel of blur at 128 px finds far less detail in them."""
    from idmrag_plugin.generation.speckle import LUMA_SHARE, speckle_score

    g = torch.Generator().manual_seed(1)
    mask = torch.from_numpy(inpaint_mask(64))[None, None]
    blotchy = _smooth(1) + (torch.rand(1, 3, 64, 64, generator=g) - 0.5) * 0.4 * mask
    twice = torch.nn.functional.interpolate(blotchy, scale_factor=2, mode="nearest")
    twice_mask = torch.from_numpy(inpaint_mask(128))[None, None]
    at_64 = float(speckle_score(blotchy, mask)[0])
    luma, chroma = speckle_levels(twice, twice_mask)
    assert float(chroma[0] + LUMA_SHARE * luma[0]) < 0.8 * at_64  # what 128 px alone would read
    assert abs(float(speckle_score(twice, twice_mask)[0]) - at_64) < 0.25 * at_64
