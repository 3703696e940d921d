"""Faces in photographic negatives: found in the photo's negative, replaced there."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import Detection, FaceDetector, MTCNNDetector
from idmrag_plugin.engine.negative import NEGATIVE_TAG, Negative, NegativeSearch
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.report import GENERATED, OBFUSCATED


def test_a_face_in_a_film_negative_is_found_and_replaced(engine, astronaut, oracles):
    negative = 255 - astronaut
    without = FaceAnonymizer(AnonymizerConfig(generator="none", negative_search=False), oracles=oracles)
    assert without.anonymize(negative).faces == []  # a detector does not see the face: a leak
    result = engine.anonymize(negative)
    (face,) = result.faces
    assert face.detection.detector.endswith(NEGATIVE_TAG) and face.method in (GENERATED, OBFUSCATED)
    (upright,) = MTCNNDetector().detect(astronaut)
    assert np.abs(face.detection.landmarks - upright.landmarks).max() < 3.0  # found again at full size
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


class PlantedDetector(FaceDetector):
    """Finds faces at fixed places given as fractions of whatever image it is shown."""

    name = "planted"

    def __init__(self, *fractions: tuple[float, float, float, float]) -> None:
        super().__init__()
        self.fractions = fractions
        self.shown: list[tuple[int, ...]] = []

    def _load(self) -> None:
        pass

    def _detect(self, image: np.ndarray) -> list[Detection]:
        self.shown.append(image.shape)
        h, w = image.shape[:2]
        found = []
        for fx1, fy1, fx2, fy2 in self.fractions:
            x1, y1, x2, y2 = fx1 * w, fy1 * h, fx2 * w, fy2 * h
            points = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
            points = points * (x2 - x1, y2 - y1) + (x1, y1)
            found.append(Detection((x1, y1, x2, y2), 0.99, points, self.name))
        return found


def test_a_face_the_photo_shows_is_the_photo_s(no_face_image):
    h, w = no_face_image.shape[:2]
    photo, negative_side = PlantedDetector((0.2, 0.2, 0.6, 0.6)), PlantedDetector((0.21, 0.2, 0.61, 0.6))
    found = NegativeSearch(photo, negative_detector=negative_side).detect(no_face_image)
    assert [d.detector for d in found] == ["planted"]
    # the negative is searched at half size
    assert negative_side.shown[0][:2] == (round(h / 2), round(w / 2))


def test_a_face_only_the_negative_shows_is_added_beside_false_faces(no_face_image):
    h, w = no_face_image.shape[:2]
    # the photo's detector finds a small false face (an eye socket of the negative, say)
    photo = PlantedDetector((0.05, 0.05, 0.1, 0.1))
    negative_side = PlantedDetector((0.4, 0.3, 0.8, 0.9))
    found = NegativeSearch(photo, negative_detector=negative_side).detect(no_face_image)
    assert [d.detector for d in found] == ["planted", f"planted{NEGATIVE_TAG}"]
    assert np.allclose(found[1].box, (0.4 * w, 0.3 * h, 0.8 * w, 0.9 * h), atol=2.0)


@pytest.mark.parametrize("name", ["Al_Pacino_0002", "Alan_Greenspan_0002"])
def test_negatives_where_the_detector_finds_false_faces_are_still_searched(engine, lfw, name):
    """In these negatives MTCNN finds a false face (a nostril, an eye) and not the face."""
    photo = np.asarray(Image.open(lfw / "images" / name.rsplit("_", 1)[0] / f"{name}.jpg").convert("RGB"))
    (upright,) = [d for d in MTCNNDetector().detect(photo) if d.score > 0.99][:1]
    negative = 255 - photo
    faces = engine.detector.detect(negative)
    assert any(not d.detector.endswith(NEGATIVE_TAG) for d in faces)  # the false face
    (face,) = [d for d in faces if d.detector.endswith(NEGATIVE_TAG)]
    # found again at full resolution: the landmarks are as precise as the positive's
    assert np.abs(face.landmarks - upright.landmarks).max() < 3.0


def test_a_false_face_only_a_turned_pass_saw_in_a_negative_is_dropped(engine, lfw):
    """Andy_Hebb_0002's negative: only a turned pass saw a (false) face; the upright second look drops it."""
    photo = np.asarray(Image.open(lfw / "images" / "Andy_Hebb" / "Andy_Hebb_0002.jpg").convert("RGB"))
    negative = 255 - photo
    assert MTCNNDetector().detect(negative) == []  # upright MTCNN sees nothing in the negative
    faces = engine.detector.detect(negative)
    assert [d.detector.endswith(NEGATIVE_TAG) for d in faces] == [True]
