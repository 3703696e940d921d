"""The eyes screen: dark, sunken sockets a drawing puts where the photo's eyes are clear."""

from __future__ import annotations

import cv2
import numpy as np

from idmrag_plugin.generation.eyes import (
    EYE_CENTRES,
    EYE_ROWS,
    dark_eye_share,
    eye_boxes,
    eye_darkening,
)
from idmrag_plugin.generation.renderer_generator import EYE_DARKENING_LIMIT


def _sockets(crop: np.ndarray, level: int = 35) -> np.ndarray:
    """``crop`` with a dark, bruised-looking socket around each of the template's eyes."""
    side = crop.shape[0]
    out = crop.copy()
    centre_row = round((EYE_ROWS[0] + EYE_ROWS[1]) / 2 * side)
    for centre in EYE_CENTRES:
        cv2.ellipse(out, (round(centre * side), centre_row), (round(0.09 * side), round(0.06 * side)), 0, 0, 360,
                    (level, level - 10, level - 5), -1)
    return out


def _sunglasses(crop: np.ndarray) -> np.ndarray:
    """``crop`` with black lenses over both eye boxes."""
    out = crop.copy()
    out[eye_boxes(crop.shape[0])] = (12, 12, 14)
    return out


def test_clear_eyes_are_no_darkening_and_shading_is_not_either(astronaut_crop):
    # pupils, lashes and the shade under her brows, well below her brightly lit cheeks
    assert 0.1 < dark_eye_share(astronaut_crop) < 0.6
    assert eye_darkening(astronaut_crop, astronaut_crop) == 0.0
    shaded = np.clip(astronaut_crop.astype(np.int16) - 15, 0, 255).astype(np.uint8)  # a darker photo, all of it
    assert abs(eye_darkening(shaded, astronaut_crop)) < 0.05


def test_sunken_sockets_are_a_darkening_and_sunglasses_in_the_photo_leave_no_room(astronaut_crop):
    sunken = _sockets(astronaut_crop)
    assert eye_darkening(sunken, astronaut_crop) > EYE_DARKENING_LIMIT
    assert eye_darkening(astronaut_crop, sunken) < 0.0  # sockets left out are no darkening
    shades = _sunglasses(astronaut_crop)
    assert dark_eye_share(shades) == 1.0
    assert eye_darkening(sunken, shades) <= 0.0
    big = cv2.resize(astronaut_crop, (256, 256), interpolation=cv2.INTER_CUBIC)
    assert abs(eye_darkening(_sockets(big), big) - eye_darkening(sunken, astronaut_crop)) < 0.1


def test_the_generator_reads_darkened_eyes_on_the_scale_of_unfitness(default_generator, astronaut_crop):
    generator = default_generator
    assert generator.darkened_eyes(astronaut_crop, astronaut_crop) == 0.0
    assert generator.darkened_eyes(_sockets(astronaut_crop), astronaut_crop) > 1.0
    assert generator.darkened_eyes(astronaut_crop, _sockets(astronaut_crop)) == 0.0
    # the other screens do not read the eyes
    assert generator.smudged(_sockets(astronaut_crop), astronaut_crop) < 1.0
    assert generator.smudged_chin(_sockets(astronaut_crop), astronaut_crop) < 1.0


def test_black_pits_for_eyes_count_in_full_and_milder_shading_stays_barely_unfit(default_generator, astronaut_crop):
    """Where every code is drawn unfit the least unfit is kept: a drawing with black pits for
    eyes must not be kept over a clean one that another screen puts a little further off."""
    from idmrag_plugin.generation.renderer_generator import (
        DRAWN_GROUP_FLOOR,
        LOOK_UNFITNESS_CAP,
        SUNKEN_EYES,
    )

    generator = default_generator
    pits = _sockets(astronaut_crop, level=12)
    assert eye_darkening(pits, astronaut_crop) >= SUNKEN_EYES * EYE_DARKENING_LIMIT
    assert generator.darkened_eyes(pits, astronaut_crop) > 1.0 + DRAWN_GROUP_FLOOR  # the group screen's worst
    # sockets a little darker than the limit, not that dark: barely unfit, as the other looks
    boxes = eye_boxes(astronaut_crop.shape[0])
    shaded = astronaut_crop.copy()
    rows = np.flatnonzero(boxes.any(axis=1))
    for row in rows[: len(rows) // 2 + 1]:  # the upper half of the boxes darkened
        shaded[row, boxes[row]] = (20, 15, 18)
    off = eye_darkening(shaded, astronaut_crop) / EYE_DARKENING_LIMIT
    assert 1.0 < off < SUNKEN_EYES
    assert 1.0 < generator.darkened_eyes(shaded, astronaut_crop) <= LOOK_UNFITNESS_CAP
