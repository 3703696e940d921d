"""The forehead screen: dark strands or blotches a drawing puts where the photo's forehead is bare."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.generation.forehead import dark_forehead_share, forehead_smudge
from idmrag_plugin.generation.renderer_generator import SMUDGE_LIMIT


@pytest.fixture(scope="module")
def hair_crop(astronaut, engine) -> np.ndarray:
    """The astronaut's canonical crop: her bangs reach down to her brows."""
    from idmrag_plugin.engine.align import align_face

    face = engine.detector.detect(astronaut)[0]
    return align_face(astronaut, face.landmarks, 128).crop


@pytest.fixture(scope="module")
def crop(hair_crop) -> np.ndarray:
    """Her crop with a bare forehead: the upper face (above the brows) in her cheeks' colour,
    with the grain of skin."""
    side = hair_crop.shape[0]
    cheeks = hair_crop[round(0.52 * side):round(0.68 * side), round(0.31 * side):round(0.41 * side)]
    bare = hair_crop.astype(np.float32)
    top = slice(round(0.10 * side), round(0.38 * side))
    grain = np.random.default_rng(0).normal(0.0, 4.0, bare[top].shape[:2])[..., None]
    bare[top, round(0.2 * side):round(0.8 * side)] = (np.median(cheeks, axis=(0, 1)) + grain)[:, round(0.2 * side):round(0.8 * side)]
    return np.clip(bare, 0, 255).astype(np.uint8)


def _strands(crop: np.ndarray, rows: tuple[float, float], level: int = 40) -> np.ndarray:
    """``crop`` with dark strands of hair drawn across its forehead, between ``rows`` (shares
    of the side), over the middle of the face."""
    side = crop.shape[0]
    out = crop.copy()
    for k, x in enumerate(np.linspace(0.30, 0.70, 11)):
        top, bottom = round(rows[0] * side), round(rows[1] * side)
        cv2.line(out, (round(x * side), top), (round((x + 0.04 * (-1) ** k) * side), bottom),
                 (level, level - 10, level - 15), thickness=max(2, side // 50))
    return out


def test_the_photo_s_own_forehead_is_no_smudge_and_shading_is_not_either(crop, hair_crop):
    assert forehead_smudge(crop, crop) == 0.0
    assert dark_forehead_share(crop) < 0.05
    assert dark_forehead_share(hair_crop) > 0.5  # her bangs
    # hair drawn where the person has hair is not a smudge
    assert forehead_smudge(hair_crop, hair_crop) == 0.0 and forehead_smudge(crop, hair_crop) < 0.0
    shaded = np.clip(crop.astype(np.int16) - 12, 0, 255).astype(np.uint8)  # a darker photo, all of it
    assert abs(forehead_smudge(shaded, crop)) < 0.05
    darker_top = crop.astype(np.float32)
    darker_top[: crop.shape[0] // 2] *= 0.85  # light falling off towards the top of the head
    assert forehead_smudge(darker_top.astype(np.uint8), crop) < SMUDGE_LIMIT / 2


def test_dark_strands_across_a_bare_forehead_are_a_smudge_beyond_the_limit(crop):
    smudged = _strands(crop, (0.16, 0.37))
    assert forehead_smudge(smudged, crop) > SMUDGE_LIMIT
    # strands only above the forehead band (in the hair) do not count
    assert forehead_smudge(_strands(crop, (0.0, 0.12)), crop) < 0.02
    # bangs the person has may be drawn again: the photo's own share is taken off
    assert abs(forehead_smudge(smudged, smudged)) < 1e-9
    assert forehead_smudge(crop, smudged) < 0.0


def test_the_screen_reads_a_canonical_crop_at_any_size(crop):
    big = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_CUBIC)
    small_score = forehead_smudge(_strands(crop, (0.16, 0.37)), crop)
    big_score = forehead_smudge(_strands(big, (0.16, 0.37)), big)
    assert abs(small_score - big_score) < 0.1
