"""The chin screen: stubble or a dark smear a drawing puts where the photo's chin is bare."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.generation.chin import chin_band, chin_smudge, dark_chin_share
from idmrag_plugin.generation.renderer_generator import CHIN_SMUDGE_LIMIT


@pytest.fixture(autouse=True)
def _unfit_attempts_kept(unfit_attempts_kept):
    """Every least unfit drawing kept here (see conftest.unfit_attempts_kept)."""


def _stubble(crop: np.ndarray, level: int = 45) -> np.ndarray:
    """``crop`` with dark stubble over its chin-and-jaw band (a fine dark grain, as a beard's
    shadow draws)."""
    band = chin_band(crop.shape[0])
    grain = np.random.default_rng(1).random(band.shape) < 0.8
    out = crop.copy()
    out[band & grain] = (level, level - 8, level - 12)
    return out


def _open_mouth(crop: np.ndarray) -> np.ndarray:
    """``crop`` with its mouth wide open: a dark ellipse between the template's mouth corners."""
    side = crop.shape[0]
    out = crop.copy()
    cv2.ellipse(out, (side // 2, round(0.75 * side)), (round(0.09 * side), round(0.05 * side)), 0, 0, 360,
                (25, 10, 10), -1)
    return out


@pytest.fixture(scope="module")
def bare_chin(astronaut_crop) -> np.ndarray:
    """The astronaut's crop with the chin-and-jaw band in her cheeks' colour, with the grain of
    skin (her own jaw is shaded well below her brightly lit cheeks)."""
    side = astronaut_crop.shape[0]
    cheeks = astronaut_crop[round(0.52 * side):round(0.68 * side), round(0.31 * side):round(0.41 * side)]
    out = astronaut_crop.astype(np.float32)
    band = chin_band(side)
    grain = np.random.default_rng(0).normal(0.0, 4.0, (int(band.sum()), 1))
    out[band] = np.median(cheeks, axis=(0, 1)) + grain
    return np.clip(out, 0, 255).astype(np.uint8)


def test_a_bare_chin_is_no_smudge_and_an_open_mouth_or_shading_is_not_either(bare_chin, astronaut_crop):
    assert dark_chin_share(bare_chin) < 0.02
    assert chin_smudge(bare_chin, bare_chin) == 0.0
    assert chin_smudge(astronaut_crop, astronaut_crop) == 0.0  # the photo's own shading
    assert chin_smudge(_open_mouth(bare_chin), bare_chin) < 0.05
    shaded = np.clip(bare_chin.astype(np.int16) - 12, 0, 255).astype(np.uint8)  # a darker photo, all of it
    assert abs(chin_smudge(shaded, bare_chin)) < 0.05


def test_stubble_on_a_bare_chin_is_a_smudge_and_a_beard_the_person_has_is_not(bare_chin):
    stubbled = _stubble(bare_chin)
    assert chin_smudge(stubbled, bare_chin) > CHIN_SMUDGE_LIMIT
    assert abs(chin_smudge(stubbled, stubbled)) < 1e-9  # drawn again where the person has one
    assert chin_smudge(bare_chin, stubbled) < 0.0  # a beard left out is not a smudge
    big = cv2.resize(bare_chin, (256, 256), interpolation=cv2.INTER_CUBIC)
    assert abs(chin_smudge(_stubble(big), big) - chin_smudge(stubbled, bare_chin)) < 0.1


def test_the_chin_screens_read_stubble_added_or_dropped_on_the_scale_of_unfitness(default_generator, bare_chin):
    """A drawing with stubble on a bare chin is unfit, on the limit's scale, and so is a bare
    chin drawn for a stubbled one; the forehead's and the eyes' screens do not read the chin."""
    generator = default_generator
    assert generator.smudged_chin(bare_chin, bare_chin) == 0.0
    assert generator.smudged_chin(_stubble(bare_chin), bare_chin) > 1.0
    assert generator.smudged(_stubble(bare_chin), bare_chin) < 1.0
    assert generator.darkened_eyes(_stubble(bare_chin), bare_chin) < 1.0
    assert generator.smudged_chin(bare_chin, _stubble(bare_chin)) == 0.0  # a beard left out: not a smudge,
    assert generator.dropped_beard(bare_chin, _stubble(bare_chin)) > 1.0  # but a beard dropped
    assert generator.dropped_beard(_stubble(bare_chin), _stubble(bare_chin)) == 0.0
    assert generator.dropped_beard(_stubble(bare_chin), bare_chin) == 0.0


@pytest.mark.parametrize("judging", ["smudged_chin", "dropped_beard", "darkened_eyes"])
def test_the_chin_and_eyes_screens_judge_new_pseudonyms_not_a_person_s_kept_one(default_generator, astronaut_crop,
                                                                                judging, monkeypatch):
    """A person's kept pseudonym is not judged by its chin (stubble added or a beard dropped) or
    its eyes in their later photos (as by its mouth), so that one person keeps one face: with
    every drawing planted as unfit there, the first photo judges every code it draws, the next
    photo none."""
    from idmrag_plugin.engine.generator import GenerationRequest

    generator = default_generator
    judged: list[int] = []
    monkeypatch.setattr(generator, judging, lambda shown, face: judged.append(1) or 5.0)
    for screen in {"smudged", "misexpressed", "smudged_chin", "dropped_beard", "darkened_eyes"} - {judging}:
        monkeypatch.setattr(generator, screen, lambda shown, face: 0.0)
    monkeypatch.setattr(generator, "glasses_off", lambda shown, face, descriptor=None: 0.0)
    monkeypatch.setattr(generator, "misdrawn", lambda shown, wanted, age=True, descriptor=None: 0.0)
    monkeypatch.setattr(generator, "unfitness", lambda drawn, face, grow=None: np.zeros(len(drawn)))
    generator.secret = f"test-{judging}".encode()  # a new scope: nobody met yet
    generator.generate(GenerationRequest(astronaut_crop, attempt=0, seed=7))
    first_photo = len(judged)
    assert first_photo > 1  # the first code and its alternates, all judged
    again = np.clip(astronaut_crop.astype(np.int16) + 3, 0, 255).astype(np.uint8)  # her next photo
    generator.generate(GenerationRequest(again, attempt=0, seed=8))
    assert len(judged) == first_photo
