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


def test_a_turned_face_s_far_side_is_pulled_in_by_the_nose_s_offset():
    from idmrag_plugin.engine.align import template
    from idmrag_plugin.engine.blend import FAR_SIDE_MAX, FAR_SIDE_PULL, face_mask, far_side_cut

    frontal = template(128)
    assert far_side_cut(frontal, 128) == pytest.approx(FAR_SIDE_PULL * (frontal[2, 0] - frontal[:2, 0].mean()) / 128)
    assert abs(far_side_cut(frontal, 128)) < 0.01
    turned = frontal.copy()
    turned[2, 0] -= 0.03 * 128  # nose tip towards the crop's left: the left cheek is the far one
    assert far_side_cut(turned, 128) == pytest.approx(far_side_cut(frontal, 128) - FAR_SIDE_PULL * 0.03)
    turned[2, 0] += 0.06 * 128
    assert far_side_cut(turned, 128) > 0
    turned[2, 0] += 0.5 * 128
    assert far_side_cut(turned, 128) == FAR_SIDE_MAX
    turned[2] = np.nan
    assert far_side_cut(turned, 128) == 0.0
    whole, cut = face_mask(128, 1.1), face_mask(128, 1.1, far_cut=-0.1)
    assert np.all(cut <= whole)  # pulled in, never grown
    columns = np.flatnonzero(whole.max(axis=0)), np.flatnonzero(cut.max(axis=0))
    assert columns[1][0] - columns[0][0] == pytest.approx(0.1 * 128, abs=1.5)  # the left side moved in
    assert abs(columns[1][-1] - columns[0][-1]) <= 1  # the near side stayed
    assert np.array_equal(whole.max(axis=1) > 0, cut.max(axis=1) > 0)  # brow to chin as before


def test_a_turned_face_is_pasted_without_the_background_beside_its_far_cheek(make_engine, camera_face, monkeypatch):
    """A turned face's drawing covers the frontal ellipse, background beside the far cheek
    included; the engine pastes it with that side pulled in, so the photo's background stays."""
    from conftest import FixedFaceGenerator

    from idmrag_plugin import pipeline
    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.engine.blend import far_side_cut, paste_face
    from idmrag_plugin.engine.detect import Detection, FaceDetector

    # eyes level, the nose tip well left of their midpoint: a face turned to the photo's left
    landmarks = np.array([[130.0, 120.0], [170.0, 120.0], [140.0, 142.0], [135.0, 162.0], [165.0, 162.0]])

    class Planted(FaceDetector):
        name = "planted"

        def _load(self) -> None:
            pass

        def _detect(self, image: np.ndarray) -> list[Detection]:
            return [Detection((105.0, 85.0, 195.0, 190.0), 0.99, landmarks, "planted")]

    pasted = []

    def recording(image, new_crop, face, *args, **kwargs):
        pasted.append(kwargs.get("far_cut", 0.0))
        return paste_face(image, new_crop, face, *args, **kwargs)

    monkeypatch.setattr(pipeline, "paste_face", recording)
    photo = np.full((300, 300, 3), 90, np.uint8)
    engine = make_engine(FixedFaceGenerator(camera_face), rotations=(0,))
    engine.detector = Planted()
    engine.anonymize(photo)
    crop = align_face(photo, landmarks, engine.config.crop_size)
    expected = far_side_cut(np.c_[landmarks, np.ones(5)] @ crop.matrix.T, crop.size)
    assert expected < -0.05 and pasted and all(cut == pytest.approx(expected) for cut in pasted)
    # pasted so, a white face leaves the photo's own pixels beside the far cheek
    out_cut, out_whole = photo.copy(), photo.copy()
    paste_face(out_cut, np.full_like(crop.crop, 255), crop, grow=1.1, colour_match=False, far_cut=expected)
    paste_face(out_whole, np.full_like(crop.crop, 255), crop, grow=1.1, colour_match=False)
    kept = (out_cut == 90).all(axis=2) & (out_whole == 255).all(axis=2)
    assert kept.sum() > 200
    assert np.median(np.argwhere(kept)[:, 1]) < landmarks[:2, 0].mean()  # on the photo's left, the far side


def test_what_a_generator_returns_unchanged_stays_the_photo_s_own_pixels(astronaut):
    """A drawing that changes only part of the ellipse (the renderer keeps hair and background):
    the rest is pasted from the photo itself, not from the crop-sized copy (which, scaled back
    up over a large face, blurred the hair); every changed pixel, and an island of pixels the
    drawing happens to share with the crop, is pasted whole."""
    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.engine.blend import face_mask, kept_as_is, paste_face

    landmarks = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    face = align_face(astronaut, landmarks, 128)
    new = face.crop.copy()
    cv2.circle(new, (64, 72), 30, (128, 128, 128), thickness=-1)
    new[70:73, 62:65] = face.crop[70:73, 62:65]  # equal by chance, inside the drawn face
    weights = face_mask(128, grow=1.1, feather=0.06)
    kept = kept_as_is(new, face.crop, weights)
    yy, xx = np.mgrid[:128, :128]
    from_centre = np.hypot(xx - 64, yy - 72)
    assert np.all(kept[from_centre <= 29] == 0)  # the drawn disk and its island
    ring = (from_centre >= 38) & (weights >= 1)
    assert ring.sum() > 2000 and np.all(kept[ring] > 0.999)

    out = astronaut.copy()
    paste_face(out, new, face, grow=1.1, colour_match=False)
    # image pixels that map into the ring are the photo's own, exactly
    h, w = astronaut.shape[:2]
    iy, ix = np.mgrid[:h, :w]
    cx, cy = (face.matrix @ np.stack([ix.ravel(), iy.ravel(), np.ones(h * w)])).reshape(2, h, w)
    in_ring = (np.hypot(cx - 64, cy - 72) >= 35) & (face_mask(128, grow=1.1)[np.clip(cy, 0, 127).astype(int),
                                                                          np.clip(cx, 0, 127).astype(int)] > 0)
    in_ring &= (cx >= 2) & (cx < 126) & (cy >= 2) & (cy < 126)
    assert in_ring.sum() > 3000
    assert np.array_equal(out[in_ring], astronaut[in_ring])
    in_disk = np.hypot(cx - 64, cy - 72) <= 28
    assert (np.abs(out[in_disk].astype(int) - 128) <= 1).mean() > 0.95
