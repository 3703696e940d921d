"""Faces in photos cast in one colour: found in the photo's grey levels, redrawn there."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import assert_changed_only_near_faces, assert_judged_another_person, search_layer

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import Detection, MTCNNDetector
from idmrag_plugin.engine.grey import (
    GREY_TAG,
    ChannelFlip,
    GreySearch,
    GreyView,
    attacker_would_drop_colour,
    flipped_channels,
    is_grey,
    luma,
)
from idmrag_plugin.engine.negative import NEGATIVE_TAG, Negative
from idmrag_plugin.engine.stretch import Squeeze
from idmrag_plugin.report import GENERATED, OBFUSCATED


def _green(image: np.ndarray, others: float) -> np.ndarray:
    return (image * np.array([others, 1.0, others])).astype(np.uint8)


def _grey_of(image: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def _her_face(detections, astronaut_box) -> list:
    centre = np.array([(astronaut_box[0] + astronaut_box[2]) / 2, (astronaut_box[1] + astronaut_box[3]) / 2])
    return [d for d in detections
            if np.abs(np.array([(d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2]) - centre).max() < 20]


def test_a_face_in_a_green_cast_photo_is_found_and_never_returned_intact(engine, astronaut, oracles):
    green = _green(astronaut, 0.3)
    (upright,) = MTCNNDetector().detect(astronaut)
    without = FaceAnonymizer(AnonymizerConfig(generator="none", grey_search=False, hog_search=False), oracles=oracles)
    assert not _her_face([f.detection for f in without.anonymize(green).faces], upright.box)  # a leak
    result = engine.anonymize(green)
    (face,) = _her_face([f.detection for f in result.faces], upright.box)
    assert GREY_TAG in face.detector
    assert all(f.method == OBFUSCATED for f in result.faces)
    out = result.pixels
    green_channel = np.repeat(out[..., 1:2], 3, axis=2)
    assert_judged_another_person(astronaut, [out, _grey_of(out), green_channel], oracles, engine.thresholds)
    assert_changed_only_near_faces(result, green)


def test_a_grey_photo_printed_in_green_gets_a_verified_drawing_in_its_green(engine, astronaut, oracles):
    printed = (_grey_of(astronaut) * np.array([0.15, 1.0, 0.15])).astype(np.uint8)
    anonymizer = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", cache_size=0), detector=engine.detector,
                                oracles=oracles)
    anonymizer.generator.secret = b"s0"  # one pseudonym secret: the drawings are the same each run
    result = anonymizer.anonymize(printed)
    (upright,) = MTCNNDetector().detect(astronaut)
    (face,) = [f for f in result.faces if _her_face([f.detection], upright.box)]
    assert GREY_TAG in face.detection.detector and face.method == GENERATED and face.verified
    out = result.pixels
    assert_judged_another_person(astronaut, [_grey_of(out), np.repeat(out[..., 1:2], 3, axis=2)], oracles,
                           anonymizer.thresholds)
    drawn = out[(out != printed).any(axis=2)].astype(float)
    assert drawn[:, 0].mean() < 0.25 * drawn[:, 1].mean() and drawn[:, 2].mean() < 0.25 * drawn[:, 1].mean()


def test_restore_colours_the_drawn_grey_levels_with_the_region_s_own_cast():
    rng = np.random.default_rng(1)
    levels = rng.integers(20, 200, (80, 120)).astype(np.float64)
    photo = np.clip(np.stack([0.2 * levels, levels, 0.4 * levels], axis=2), 0, 255).astype(np.uint8)
    view = GreyView.of(photo)
    grey = view.apply(photo)
    assert is_grey(grey) and not is_grey(photo)
    processed = grey.copy()
    processed[20:50, 30:70] = GreyView.project(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    restored = view.restore(photo, grey, processed)
    changed = (processed != grey).any(axis=2)
    assert (restored[~changed] == photo[~changed]).all()  # the photo's own pixels
    # the drawn levels, unlevelled, are the output's luma ...
    expected = view.low + processed[..., 0].astype(float) * (view.high - view.low) / 255.0
    inside = changed & (expected > 5) & (expected < 250)
    assert np.abs(luma(restored)[inside] - expected[inside]).max() <= 1.0
    # ... in the photo's green cast, not grey
    ratio = restored[inside].astype(float)
    assert np.abs(ratio[:, 0] / np.maximum(ratio[:, 1], 1) - 0.2).mean() < 0.05
    assert view.restore(photo, grey, grey.copy()) is photo


def test_grey_photos_and_photos_without_a_cast_add_no_face(engine, astronaut, camera, no_face_image):
    grey_search = search_layer(engine.detector, GreySearch)
    assert grey_search.retoned(camera) is None  # grey already: the exposure search levels it
    for image in (astronaut, camera, no_face_image):
        assert not [d for d in engine.detector.detect(image) if GREY_TAG in d.detector]


@pytest.mark.parametrize("tags, view, obfuscated", [
    (["", GREY_TAG, NEGATIVE_TAG], Negative, [False, True, False]),
    (["", GREY_TAG], GreyView, [False, False]),
    (["@stretched-x2.00", GREY_TAG, ""], Squeeze, [False, True, True]),
])
def test_faces_found_only_in_another_working_copy_are_obfuscated(astronaut, tags, view, obfuscated):
    detections = [Detection((10.0 + 60 * i, 10.0, 60.0 + 60 * i, 60.0), 0.99, np.full((5, 2), 30.0), f"mtcnn{tag}")
                  for i, tag in enumerate(tags)]
    chosen, reasons, in_copy = FaceAnonymizer._working_copy(astronaut, detections, [])
    assert isinstance(chosen, view)
    assert [bool(r) for r in reasons] == obfuscated and len(in_copy) == len(detections)


def _inverted(image: np.ndarray, channel: int) -> np.ndarray:
    out = image.copy()
    out[..., channel] = 255 - out[..., channel]
    return out


def test_a_channel_falling_as_the_others_rise_is_read_inverted(astronaut, camera):
    from skimage import data

    for image in (astronaut, _grey_of(camera), data.coffee(), data.chelsea(), _green(astronaut, 0.3)):
        assert flipped_channels(image.reshape(-1, 3)) == (1.0, 1.0, 1.0)
    for channel in range(3):
        view = GreyView.of(_inverted(astronaut, channel))
        assert view.signs[channel] == -1.0 and sum(view.signs) == 1.0
        # its grey levels are the photo's own, as an attacker who inverts the channel back sees them
        own = GreyView.of(astronaut)
        difference = np.abs(view.apply(_inverted(astronaut, channel)).astype(int) - own.apply(astronaut).astype(int))
        assert np.percentile(difference, 99) <= 2


def test_restore_gives_an_inverted_channel_its_inverted_colours():
    rng = np.random.default_rng(2)
    levels = rng.integers(20, 200, (80, 120)).astype(np.float64)
    natural = np.clip(np.stack([0.9 * levels, levels, 0.7 * levels], axis=2), 0, 255).astype(np.uint8)
    photo = _inverted(natural, 1)
    view = GreyView.of(photo)
    grey = view.apply(photo)
    processed = grey.copy()
    processed[20:50, 30:70] = GreyView.project(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    restored = view.restore(photo, grey, processed)
    changed = (processed != grey).any(axis=2)
    assert (restored[~changed] == photo[~changed]).all()
    back = _inverted(restored, 1)[changed].astype(float)  # what an attacker sees: natural colours
    inside = (back[:, 1] > 10) & (back[:, 1] < 245)
    assert np.abs(back[inside, 0] / back[inside, 1] - 0.9).mean() < 0.05


def test_a_face_hidden_by_an_inverted_channel_is_found_and_never_returned_intact(engine, lfw, oracles):
    """MTCNN found 6 of 12 LFW faces with green inverted; the grey levels read with it inverted
    back show every face."""
    from idmrag_plugin.image_io import load_rgb

    without = FaceAnonymizer(AnonymizerConfig(generator="none", grey_search=False, hog_search=False), oracles=oracles)
    photos = [load_rgb(min(p.glob("*.jpg")), 50_000_000) for p in sorted((lfw / "images").iterdir())[:40]]
    hidden = [image for image in photos
              if len(MTCNNDetector().detect(image)) == 1 and not without.detector.detect(_inverted(image, 1))]
    assert hidden, "no LFW face hidden by an inverted green channel among these photos"
    for image in hidden[:2]:
        result = engine.anonymize(_inverted(image, 1))
        assert any(GREY_TAG in f.detection.detector for f in result.faces)
        back = _inverted(result.pixels, 1)
        assert_judged_another_person(image, [back, _grey_of(back)], oracles, engine.thresholds)


def test_a_cold_cast_or_an_inverted_channel_makes_the_grey_levels_an_attacker_s_view(astronaut, camera):
    from skimage import data

    for image in (astronaut, camera, data.coffee(), data.chelsea(), _green(astronaut, 0.8)):
        assert not attacker_would_drop_colour(image)
    for image in (_green(astronaut, 0.3), (astronaut * np.array([0.1, 1.0, 1.0])).astype(np.uint8),
                  (astronaut * np.array([0.3, 0.3, 1.0])).astype(np.uint8), _inverted(astronaut, 0)):
        assert attacker_would_drop_colour(image)


def test_a_drawing_recognised_in_the_grey_levels_of_a_cast_photo_is_caught(astronaut):
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, generator="renderer-lcm"))
    blue = (astronaut * np.array([0.3, 0.3, 1.0])).astype(np.uint8)  # her face found in colour
    job = engine._detect_and_align(blue, {})
    assert job.levelled_from is None and "grey" in engine._attacker_views(job)
    (face,) = job.faces
    face.method = GENERATED  # the original left in place
    views = engine._attacker_views(job)
    assert engine._recognised_in_views(job, views) == [face]
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    job.output[max(0, y1 - 20): y2 + 20, max(0, x1 - 20): x2 + 20] = 128
    assert engine._recognised_in_views(job, views) == []
    assert engine._attacker_views(engine._detect_and_align(astronaut, {})) == {}


def test_channel_flip_restores_only_the_redrawn_pixels(astronaut):
    photo = _inverted(astronaut, 1)
    flip = ChannelFlip.of(photo)
    assert flip == ChannelFlip((1.0, -1.0, 1.0)) and ChannelFlip.of(astronaut) is None
    flipped = flip.apply(photo)
    assert np.array_equal(flipped, astronaut)
    processed = flipped.copy()
    processed[100:150, 200:260] = 77
    restored = flip.restore(photo, flipped, processed)
    assert np.array_equal(restored[100:150, 200:260], np.broadcast_to(np.array([77, 178, 77], np.uint8), (50, 60, 3)))
    outside = np.ones(photo.shape[:2], bool)
    outside[100:150, 200:260] = False
    assert np.array_equal(restored[outside], photo[outside])


def test_a_photo_with_a_channel_inverted_is_redrawn_as_an_attacker_sees_it(astronaut, oracles):
    photo = _inverted(astronaut, 1)
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0), oracles=oracles)
    engine.generator.secret = b"s0"  # one pseudonym secret: the drawings are the same each run
    job = engine._detect_and_align(photo, {})
    assert isinstance(job.levelled_from[0], ChannelFlip) and np.array_equal(job.pixels, astronaut)
    result = engine.anonymize(photo)
    assert result.faces and all(f.method in (GENERATED, OBFUSCATED) for f in result.faces)
    back = _inverted(result.pixels, 1)
    assert_judged_another_person(astronaut, [back, _grey_of(back)], oracles, engine.thresholds)
    assert_changed_only_near_faces(result, photo)
