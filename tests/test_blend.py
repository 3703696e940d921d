"""Seamless (Poisson) blending of a drawn face into its photo: it reads nothing under the mask,
keeps everything outside it, leaves no seam, and keeps the drawing's own detail."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.engine.blend import poisson_blend
from idmrag_plugin.generation.renderer import inpaint_mask


@pytest.fixture(scope="module")
def photo(astronaut) -> np.ndarray:
    """The astronaut's face region at the canonical crop size."""
    return cv2.resize(astronaut[20:260, 120:360], (128, 128), interpolation=cv2.INTER_AREA)


def test_outside_the_mask_is_the_photo_and_under_it_the_photo_is_never_read(photo):
    mask = inpaint_mask(128, 1.1)
    inside = mask > 0.5
    drawn = np.random.default_rng(0).integers(0, 256, photo.shape, dtype=np.uint8)
    out = poisson_blend(drawn, photo, mask)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.array_equal(out[~inside], photo[~inside])
    tampered = photo.copy()
    tampered[inside] = 255 - tampered[inside]
    assert np.array_equal(poisson_blend(drawn, tampered, mask), out)


def test_a_drawing_that_differs_from_the_photo_by_a_tone_blends_back_into_it(photo):
    """The drawing's gradients with the photo's colours at the edge: a face drawn 40 levels too
    light (a different tone, a lighter rim) comes back as the photo, where a hard edge leaves a
    step of 40 all round."""
    mask = inpaint_mask(128, 1.1)
    inside = mask > 0.5
    photo = (photo.astype(np.int16) * 3 // 4).astype(np.uint8)  # room for +40 without clipping
    lighter = (photo.astype(np.int16) + 40).astype(np.uint8)
    out = poisson_blend(lighter, np.where(inside[..., None], 0, photo).astype(np.uint8), mask)
    error = np.abs(out.astype(np.int16) - photo.astype(np.int16))
    assert error[inside].mean() < 2.5  # (1.5 measured; off only where an edge crosses the mask's edge)
    hard = np.where(inside[..., None], lighter, photo)
    edge = inside & ~cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert np.abs(hard.astype(np.int16) - photo.astype(np.int16))[edge].mean() == 40
    assert error[edge].mean() < 8


def test_a_flat_drawing_takes_the_flat_photo_s_colour_and_detail_survives():
    mask = inpaint_mask(128, 1.1)
    photo = np.full((128, 128, 3), (180, 140, 120), np.uint8)
    out = poisson_blend(np.full_like(photo, 40), photo, mask)
    assert np.abs(out.astype(np.int16) - photo.astype(np.int16)).max() <= 1
    drawn = np.full_like(photo, 40)
    drawn[60:68, 40:88] = 90  # a mouth-sized bar 50 levels brighter than its surroundings
    bar = poisson_blend(drawn, photo, mask).astype(np.int16)
    assert bar[60:68, 44:84].mean() - bar[50:56, 44:84].mean() > 40


def test_masks_at_the_border_covering_everything_and_bad_shapes():
    photo = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    drawn = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    corner = np.zeros((64, 64), np.float32)
    corner[:20, :20] = 1.0  # touches two sides of the crop
    out = poisson_blend(drawn, photo, corner)
    assert np.array_equal(out[20:], photo[20:]) and np.array_equal(out[:, 20:], photo[:, 20:])
    whole = np.ones((64, 64), np.float32)  # nothing outside to meet: the drawing as it is
    assert np.array_equal(poisson_blend(drawn, photo, whole), drawn)
    assert np.array_equal(poisson_blend(drawn, photo, np.zeros((64, 64), np.float32)), photo)
    with pytest.raises(ValueError, match="differ"):
        poisson_blend(drawn[:32], photo, corner)
    grey = poisson_blend(drawn[..., :1], photo[..., :1], corner)  # any channel count
    assert grey.shape == (64, 64, 1)


@pytest.mark.parametrize("grow", [1.0, 1.1, 1.25])
def test_a_pasted_face_leaves_no_line_or_edge_where_its_crop_ends(grow):
    """The face ellipse, grown and feathered, reaches the bottom of its crop below the chin:
    pasting a crop of the photo's own colour must change nothing, at any angle (cut off at the
    crop's edge and interpolated with the black past it, it drew a dark line across the neck)."""
    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.engine.blend import paste_face

    image = np.full((300, 300, 3), 150, np.uint8)
    landmarks = np.array([[130.0, 120.0], [170.0, 126.0], [150.0, 145.0], [133.0, 165.0], [165.0, 170.0]])
    face = align_face(image, landmarks, 128)
    out = image.copy()
    paste_face(out, np.full((128, 128, 3), 150, np.uint8), face, grow=grow, colour_match=False)
    assert np.abs(out.astype(int) - 150).max() <= 1
