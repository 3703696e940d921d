"""A mask worn over the lower face is found, kept over the first drawings, and its colour is no
complexion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.engine.align import template
from idmrag_plugin.engine.blend import face_mask
from idmrag_plugin.engine.generator import GenerationRequest
from idmrag_plugin.generation.occluder import lower_face, mask_over_face


@pytest.fixture(autouse=True)
def _unfit_attempts_kept(unfit_attempts_kept):
    """Every least unfit drawing kept here: these tests call the generator itself, whose memory
    of earlier tests may leave every code unfit (see conftest.unfit_attempts_kept)."""


def _masked(crop: np.ndarray, colour: tuple[int, int, int] = (170, 205, 225)) -> tuple[np.ndarray, np.ndarray]:
    """``crop`` (canonical) with a flat surgical mask from the bridge of the nose to the chin,
    and the mask's own pixels (bool)."""
    size = crop.shape[0]
    points = template(size)
    eyes_y, nose, mouth_y = points[:2, 1].mean(), points[2], points[3:, 1].mean()
    distance = points[1, 0] - points[0, 0]
    top, bottom = nose[1] - 0.45 * distance, mouth_y + 0.95 * distance
    assert top > eyes_y
    corners = np.array([[nose[0] - 1.1 * distance, top], [nose[0] + 1.1 * distance, top],
                        [nose[0] + 0.75 * distance, bottom], [nose[0] - 0.75 * distance, bottom]])
    worn = np.zeros((size, size), np.uint8)
    cv2.fillPoly(worn, [np.round(corners).astype(np.int32)], 1)
    out = crop.copy()
    out[worn > 0] = colour
    return out, worn > 0


def test_a_mask_over_the_lower_face_is_found(astronaut_crop):
    masked, worn = _masked(astronaut_crop)
    found = mask_over_face(masked)
    assert found is not None
    inside = worn & lower_face(masked.shape[0])
    assert (found[inside] > 0.99).mean() > 0.95  # the mask, whole
    assert (found[: int(0.45 * masked.shape[0])] == 0).all()  # never the eyes or the forehead


@pytest.mark.parametrize("colour", [(170, 205, 225), (20, 20, 24), (240, 240, 238)])
def test_masks_of_any_colour_are_found(astronaut_crop, colour):
    assert mask_over_face(_masked(astronaut_crop, colour)[0]) is not None


def test_bare_faces_and_beards_wear_no_mask(astronaut_crop, camera, engine):
    from idmrag_plugin.engine.align import align_face

    assert mask_over_face(astronaut_crop) is None
    (face,) = engine.detector.detect(camera)
    assert mask_over_face(align_face(camera, face.landmarks, astronaut_crop.shape[0]).crop) is None
    # a dark, textured beard is no mask
    bearded = astronaut_crop.copy()
    lower = lower_face(bearded.shape[0]) & (np.arange(bearded.shape[0])[:, None] > 0.75 * bearded.shape[0])
    texture = np.random.default_rng(0).integers(10, 90, bearded.shape[:2])
    bearded[lower] = np.repeat(texture[lower][:, None], 3, axis=1)
    assert mask_over_face(bearded) is None


def test_the_first_drawings_keep_the_mask_and_the_skin_s_tone(default_generator, astronaut_crop):
    masked, worn = _masked(astronaut_crop)
    drawn = default_generator.generate(GenerationRequest(masked, attempt=0, seed=11))
    assert np.abs(drawn[worn].astype(int) - masked[worn].astype(int)).mean() < 2  # the mask stays
    eyes = (slice(int(0.40 * 128), int(0.52 * 128)), slice(int(0.25 * 128), int(0.75 * 128)))
    assert np.abs(drawn[eyes].astype(int) - masked[eyes].astype(int)).mean() > 5  # the face around it is drawn
    # the drawing's mean colour is moved to the skin's, not to the skin's and the mask's
    skin = (face_mask(128) > 0.5) & ~(mask_over_face(masked) > 0)
    lab_drawn, lab_photo = (cv2.cvtColor(x, cv2.COLOR_RGB2LAB)[skin].astype(float).mean(axis=0) for x in (drawn, masked))
    assert np.abs(lab_drawn - lab_photo).max() < 12, (lab_drawn, lab_photo)  # 25 lighter when the mask counts
    # a late attempt draws the whole face over it (dlib's chip of a masked face is mostly mask)
    late = default_generator.generate(GenerationRequest(masked, attempt=3, seed=12))
    assert np.abs(late[worn].astype(int) - masked[worn].astype(int)).mean() > 10
