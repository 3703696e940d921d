"""Faces printed as a halftone or dithered to one bit: found in a blurred copy, redrawn there,
printed back, and judged as anyone looking at the print from a step back sees it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import assert_judged_another_person
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.descreen import (
    DESCREENED_TAG,
    Descreened,
    DescreenedSearch,
    dithered,
    screen_of,
)
from idmrag_plugin.engine.detect import MTCNNDetector
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.pipeline import DESCREENED_VIEWS


def _halftone(image: np.ndarray, cell: int) -> np.ndarray:
    """``image``'s grey levels printed as round black dots ``cell`` px apart."""
    h, w = image.shape[:2]
    grey = cv2.blur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0, (cell, cell))
    yy, xx = np.mgrid[0:h, 0:w]
    reach = np.hypot(xx % cell - cell / 2 + 0.5, yy % cell - cell / 2 + 0.5) / (cell / np.sqrt(2.0))
    return np.repeat(((reach > np.sqrt(1.0 - grey)) * 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def printed(astronaut) -> np.ndarray:
    """The astronaut as a 6 px halftone: MTCNN finds no face in it."""
    return _halftone(astronaut, 6)


def test_photos_are_no_screen_and_prints_are(astronaut, camera, printed):
    assert screen_of(astronaut) is None and screen_of(camera) is None
    assert screen_of(np.zeros((64, 64, 3), np.uint8)) is None  # a blank page: nothing to hide
    screen = screen_of(printed)
    assert screen is not None and screen.two_level
    assert len(screen.sigmas) == 2 and screen.sigmas[0] < screen.sigmas[1]
    one_bit = np.asarray(Image.fromarray(astronaut).convert("1").convert("RGB"))
    assert screen_of(one_bit) is not None and screen_of(one_bit).two_level
    # a screen of many grey levels is blurred as well, but not dithered back
    grey_screen = np.clip(printed.astype(np.float32) * 0.4 + 80, 0, 255).astype(np.uint8)
    assert screen_of(grey_screen) is not None and not screen_of(grey_screen).two_level


def test_dithered_pixels_are_black_and_white_with_the_tones_kept(astronaut):
    grey = np.repeat(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    for image in (astronaut, grey):
        dots = dithered(image)
        assert dots.shape == image.shape and np.isin(dots, (0, 255)).all()
        assert abs(float(cv2.blur(dots, (9, 9)).mean()) - float(image.mean())) < 3
    dots = dithered(grey)
    assert np.array_equal(dots[..., 0], dots[..., 1]) and np.array_equal(dots[..., 1], dots[..., 2])


def test_only_redrawn_pixels_go_back_into_the_print_and_they_are_dithered(printed):
    blur = Descreened.all_of(printed)[0]
    filtered = blur.apply(printed)
    processed = filtered.copy()
    processed[100:160, 200:260] = 128
    back = blur.restore(printed, filtered, processed)
    outside = np.ones(printed.shape[:2], bool)
    outside[100:160, 200:260] = False
    assert np.array_equal(back[outside], printed[outside])
    assert np.isin(back[100:160, 200:260], (0, 255)).all()
    assert abs(float(back[100:160, 200:260].mean()) - 128) < 16


def test_the_search_finds_a_printed_face_only_in_the_blurred_copy(printed):
    upright = MTCNNDetector()
    assert upright.detect(printed) == []
    (face,) = DescreenedSearch(upright).detect(printed)
    assert face.detector.endswith(DESCREENED_TAG)
    assert 180 < (face.box[0] + face.box[2]) / 2 < 260 and 80 < (face.box[1] + face.box[3]) / 2 < 160


def test_a_printed_face_is_redrawn_and_printed_back_and_no_blur_shows_the_person(engine, astronaut, printed):
    # (HOG's look at a sketch of it also finds the face: a print passes for a line drawing)
    without = FaceAnonymizer(AnonymizerConfig(descreen_search=False, hog_search=False, cache_size=0),
                             oracles=engine.oracles)
    missed = without.anonymize(printed)
    assert missed.status == "no_faces" and np.array_equal(missed.pixels, printed)
    # the leak that closes: the print returned as it was shows the astronaut to anyone who blurs it
    (upright,) = MTCNNDetector().detect(astronaut)
    blurred = cv2.GaussianBlur(printed, (0, 0), 4.0)
    assert any(float(cosine(o.embed_faces(astronaut, [upright.landmarks]), o.embed_faces(blurred, [upright.landmarks]))[0])
               >= without.thresholds[o.name] for o in engine.oracles)

    searching = FaceAnonymizer(AnonymizerConfig(cache_size=0), oracles=engine.oracles)
    result = searching.anonymize(printed)
    (face,) = [f for f in result.faces if DESCREENED_TAG in f.detection.detector]
    assert DESCREENED_TAG in face.detection.detector and face.method in ("generated", "obfuscated")
    assert np.isin(result.pixels, (0, 255)).all()  # still a one-bit print
    changed = (result.pixels != printed).any(axis=2)
    assert changed[95:145, 205:245].mean() > 0.3 and not changed[:, :100].any()
    views = [result.pixels] + [cv2.GaussianBlur(result.pixels, (0, 0), sigma) for sigma in (1.0, 2.0, 3.0, 4.0)]
    assert_judged_another_person(astronaut, views, engine.oracles, searching.thresholds)

    # its drawings were judged from a step back too, against the least blurred original
    job = searching._detect_and_align(printed, {})
    views_of_job = searching._attacker_views(job)
    assert set(DESCREENED_VIEWS) <= set(views_of_job)
    originals = searching._originals_in_views(job, views_of_job, job.faces)
    assert originals[DESCREENED_VIEWS[1]] is originals[DESCREENED_VIEWS[0]]
    assert not set(DESCREENED_VIEWS) & set(searching._attacker_views(searching._detect_and_align(astronaut, {})))
