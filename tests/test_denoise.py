"""Faces under salt-and-pepper noise: found in a median-filtered copy, replaced there."""

from __future__ import annotations

import cv2
import numpy as np
from conftest import assert_changed_only_near_faces, assert_judged_another_person

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.denoise import DENOISED_TAG, IMPULSE_SHARE, Denoised, impulse_share
from idmrag_plugin.engine.detect import MTCNNDetector
from idmrag_plugin.report import GENERATED, OBFUSCATED


def _salt_and_pepper(image: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hit = rng.random(image.shape[:2] + (1,)) < share
    return np.where(hit, rng.choice([0, 255], image.shape[:2] + (1,)), image).astype(np.uint8)


def _her_faces(result, astronaut_box) -> list:
    centre = np.array([(astronaut_box[0] + astronaut_box[2]) / 2, (astronaut_box[1] + astronaut_box[3]) / 2])
    return [f for f in result.faces if np.abs(np.array([(f.detection.box[0] + f.detection.box[2]) / 2,
                                                        (f.detection.box[1] + f.detection.box[3]) / 2]) - centre).max() < 20]


def _median_filtered_shows_another_person(astronaut, output, oracles, thresholds) -> None:
    once = cv2.medianBlur(output, 5)
    assert_judged_another_person(astronaut, [once, cv2.medianBlur(once, 5)], oracles, thresholds)


def test_a_face_under_heavy_impulse_noise_is_found_and_never_returned_intact(engine, astronaut, oracles):
    noisy = _salt_and_pepper(astronaut, 0.4)
    (upright,) = MTCNNDetector().detect(astronaut)
    without = FaceAnonymizer(AnonymizerConfig(generator="none", denoise_search=False, descreen_search=False),
                             oracles=oracles)
    assert not _her_faces(without.anonymize(noisy), upright.box)  # the detector misses it: a leak
    result = engine.anonymize(noisy)
    (face,) = _her_faces(result, upright.box)
    assert DENOISED_TAG in face.detection.detector and face.method == OBFUSCATED
    _median_filtered_shows_another_person(astronaut, result.pixels, oracles, engine.thresholds)
    assert_changed_only_near_faces(result, noisy)


def test_a_noisy_face_gets_a_verified_drawing(engine, astronaut, oracles):
    noisy = _salt_and_pepper(astronaut, 0.4)
    anonymizer = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", cache_size=0), detector=engine.detector,
                                oracles=oracles)
    anonymizer.generator.secret = b"s0"  # one pseudonym secret: the drawings are the same each run
    result = anonymizer.anonymize(noisy)
    (upright,) = MTCNNDetector().detect(astronaut)
    (face,) = _her_faces(result, upright.box)
    assert DENOISED_TAG in face.detection.detector and face.method == GENERATED and face.verified
    _median_filtered_shows_another_person(astronaut, result.pixels, oracles, anonymizer.thresholds)


def test_only_noisy_photos_are_searched_again(astronaut, camera, no_face_image):
    for image in (astronaut, camera, no_face_image):
        assert impulse_share(image) < IMPULSE_SHARE / 4
    assert impulse_share(_salt_and_pepper(astronaut, 0.05)) > IMPULSE_SHARE
    assert impulse_share(np.zeros((2, 900, 3), np.uint8)) == 0.0


def test_restore_keeps_every_pixel_not_redrawn(astronaut):
    noisy = _salt_and_pepper(astronaut, 0.3)
    view = Denoised()
    filtered = view.apply(noisy)
    assert (view.restore(noisy, filtered, filtered.copy()) == noisy).all()
    processed = filtered.copy()
    processed[100:200, 150:250] = 7
    restored = view.restore(noisy, filtered, processed)
    assert (restored[100:200, 150:250] == 7).all()
    outside = np.ones(noisy.shape[:2], bool)
    outside[100:200, 150:250] = False
    assert (restored[outside] == noisy[outside]).all()
