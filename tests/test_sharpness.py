"""A drawn face no sharper than the photo's: the drawing blurred down to a soft photo's detail."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.engine.blend import face_mask
from idmrag_plugin.generation.sharpness import (
    ALLOWANCE,
    WIDER_ALLOWANCE,
    as_sharp_as,
    luma_detail,
    sharper_by,
)


def _region(side: int = 128) -> np.ndarray:
    return face_mask(side) > 0.5


def _ellipse(side: int = 128) -> np.ndarray:
    """A drawn region (float, 1 inside) a little wider than the face's ellipse."""
    inside = np.zeros((side, side), np.float32)
    cv2.ellipse(inside, (side // 2, round(0.55 * side)), (round(0.36 * side), round(0.44 * side)), 0, 0, 360, 1.0, -1)
    return inside


def test_a_blurred_face_has_less_detail_and_the_reading_does_not_depend_on_the_crop_s_size(astronaut_crop):
    region = _region()
    soft = cv2.GaussianBlur(astronaut_crop, (0, 0), 2.0)
    assert luma_detail(soft, region) < 0.5 * luma_detail(astronaut_crop, region)
    assert sharper_by(astronaut_crop, soft) > 2.0 and sharper_by(soft, astronaut_crop) < 0.5
    big = cv2.resize(astronaut_crop, (256, 256), interpolation=cv2.INTER_CUBIC)
    big_soft = cv2.resize(soft, (256, 256), interpolation=cv2.INTER_CUBIC)
    assert sharper_by(big, big_soft) == pytest.approx(sharper_by(astronaut_crop, soft), rel=0.35)


def test_a_drawing_sharper_than_its_photo_is_blurred_to_its_detail_inside_the_drawn_region(astronaut_crop):
    photo = cv2.GaussianBlur(astronaut_crop, (0, 0), 1.5)  # a face out of focus
    inside = _ellipse()
    softened = as_sharp_as(astronaut_crop, photo, inside)
    region = _region()
    assert luma_detail(softened, region) <= ALLOWANCE * luma_detail(photo, region)
    # the smallest blur that does it
    assert luma_detail(softened, region) > 0.6 * ALLOWANCE * luma_detail(photo, region)
    outside = inside < 0.5
    assert np.array_equal(softened[outside], astronaut_crop[outside])


def test_a_looser_allowance_blurs_less_but_still_to_within_it(astronaut_crop):
    photo = cv2.GaussianBlur(astronaut_crop, (0, 0), 2.5)  # a bystander out of focus
    inside, region = _ellipse(), _region()
    strict = as_sharp_as(astronaut_crop, photo, inside)
    loose = as_sharp_as(astronaut_crop, photo, inside, WIDER_ALLOWANCE)
    assert luma_detail(loose, region) <= WIDER_ALLOWANCE * luma_detail(photo, region)
    assert luma_detail(strict, region) < luma_detail(loose, region) < luma_detail(astronaut_crop, region)


def test_late_attempts_blur_a_drawing_in_a_blurred_photo_too(default_generator, astronaut):
    """Over the wider ellipse of late attempts a drawing still gets the photo's focus, within
    the looser allowance: not a crisp face pasted into a defocused head."""
    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.engine.detect import MTCNNDetector
    from idmrag_plugin.generation.renderer_generator import WIDER_MASK_FROM_ATTEMPT

    (face,) = MTCNNDetector().detect(astronaut)
    soft = cv2.GaussianBlur(align_face(astronaut, face.landmarks, 128).crop, (0, 0), 3.0)
    generator = default_generator
    wider = generator.mask_grow_for(WIDER_MASK_FROM_ATTEMPT)
    id_mu, attr_mu = generator._encoded(soft)
    codes = generator.pseudonym_codes(id_mu[0], WIDER_MASK_FROM_ATTEMPT, 1)
    as_drawn = generator._render(codes, soft, attr_mu, wider)[0]
    drawn = generator._composite(as_drawn, soft, wider)
    assert sharper_by(as_drawn, soft) > WIDER_ALLOWANCE  # the renderer draws it in focus
    assert sharper_by(drawn, soft) <= WIDER_ALLOWANCE * 1.02  # shown within the allowance


def test_a_drawing_softer_than_its_photo_or_a_little_sharper_is_left_as_drawn(astronaut_crop):
    drawn = cv2.GaussianBlur(astronaut_crop, (0, 0), 1.5)
    assert as_sharp_as(drawn, astronaut_crop, _ellipse()) is drawn
    photo = cv2.GaussianBlur(astronaut_crop, (0, 0), 0.42)  # the drawing sharper, but within the allowance
    assert 1.0 < sharper_by(astronaut_crop, photo) < ALLOWANCE
    assert as_sharp_as(astronaut_crop, photo, _ellipse()) is astronaut_crop


def test_the_config_reaches_both_renderer_generators(engine):
    from idmrag_plugin import AnonymizerConfig, FaceAnonymizer

    for generator in ("renderer-lcm", "renderer"):
        for match in (True, False):
            anonymizer = FaceAnonymizer(AnonymizerConfig(generator=generator, match_sharpness=match, cache_size=0),
                                        detector=engine.detector, oracles=engine.oracles)
            assert anonymizer.generator.match_sharpness is match


def test_a_photo_face_with_no_detail_at_all_gets_the_largest_blur_and_no_error(astronaut_crop):
    """An overexposed photo's face (flat) has no detail to match: the drawing gets the largest
    blur tried, and the pixels outside the drawn region stay."""
    from idmrag_plugin.generation.sharpness import SIGMAS

    flat = np.full_like(astronaut_crop, 250)
    inside = _ellipse()
    softened = as_sharp_as(astronaut_crop, flat, inside)
    largest = cv2.GaussianBlur(astronaut_crop, (0, 0), SIGMAS[-1])
    region = inside > 0.5
    assert np.abs(softened[region].astype(int) - largest[region].astype(int)).max() <= 1
    assert np.array_equal(softened[~region], astronaut_crop[~region])
