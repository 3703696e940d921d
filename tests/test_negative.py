"""Faces in photographic negatives: found in the photo's negative, replaced there."""

from __future__ import annotations

import numpy as np

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import Detection, FaceDetector, MTCNNDetector
from idmrag_plugin.engine.negative import NEGATIVE_TAG, Negative, NegativeSearch
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.report import GENERATED, OBFUSCATED


class CountingDetector(FaceDetector):
    """Finds a planted face in every image it is shown, and counts the images."""

    name = "counting"

    def __init__(self, faces: int) -> None:
        super().__init__()
        self.faces = faces
        self.seen: list[np.ndarray] = []

    def _load(self) -> None:
        pass

    def _detect(self, image: np.ndarray) -> list[Detection]:
        self.seen.append(image)
        points = np.array([[30, 40], [60, 40], [45, 55], [33, 70], [57, 70]], dtype=np.float64)
        return [Detection((10.0, 10.0, 80.0, 90.0), 0.99, points, self.name)] * self.faces


def test_a_face_in_a_film_negative_is_found_and_replaced(engine, astronaut, oracles):
    negative = 255 - astronaut
    without = FaceAnonymizer(AnonymizerConfig(generator="none", negative_search=False), oracles=oracles)
    assert without.anonymize(negative).faces == []  # a detector does not see the face: a leak
    result = engine.anonymize(negative)
    (face,) = result.faces
    assert face.detection.detector.endswith(NEGATIVE_TAG) and face.method in (GENERATED, OBFUSCATED)
    (upright,) = MTCNNDetector().detect(astronaut)
    assert np.hypot(*(face.detection.landmarks[2] - upright.landmarks[2])) < 6
    # The output turned positive again shows another person to every oracle ...
    positive = 255 - result.pixels
    for oracle in oracles:
        similarity = float(cosine(oracle.embed_faces(astronaut, [upright.landmarks]),
                                  oracle.embed_faces(positive, [upright.landmarks]))[0])
        assert similarity < engine.thresholds[oracle.name], oracle.name
    # ... and every pixel away from the face is the negative's own.
    changed = (result.pixels != negative).any(axis=2)
    x1, y1, x2, y2 = (int(v) for v in upright.box)
    side = x2 - x1
    outside = np.ones_like(changed)
    outside[max(0, y1 - side) : y2 + side, max(0, x1 - side) : x2 + side] = False
    assert changed.any() and not changed[outside].any()


def test_negative_restore_reverses_only_redrawn_pixels():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    tones = Negative()
    negative = tones.apply(photo)
    processed = negative.copy()
    processed[5:10, 5:10] = 7
    back = tones.restore(photo, negative, processed)
    assert np.array_equal(back[5:10, 5:10], np.full((5, 5, 3), 248, np.uint8))
    untouched = np.ones((20, 30), bool)
    untouched[5:10, 5:10] = False
    assert np.array_equal(back[untouched], photo[untouched])


def test_the_negative_is_searched_only_when_the_photo_shows_no_face(no_face_image):
    with_face, negative_side = CountingDetector(faces=1), CountingDetector(faces=1)
    found = NegativeSearch(with_face, negative_detector=negative_side).detect(no_face_image)
    assert [d.detector for d in found] == ["counting"] and negative_side.seen == []
    faceless, negative_side = CountingDetector(faces=0), CountingDetector(faces=1)
    found = NegativeSearch(faceless, negative_detector=negative_side).detect(no_face_image)
    (shown,) = negative_side.seen
    h, w = no_face_image.shape[:2]
    assert shown.shape[:2] == (round(h / 2), round(w / 2))
    assert np.abs(shown.astype(int) + no_face_image[::2, ::2].astype(int) - 255).mean() < 20
    (face,) = found
    assert face.detector == f"counting{NEGATIVE_TAG}"
    assert np.allclose(face.box, (20.0, 20.0, 160.0, 180.0), atol=1.0)
