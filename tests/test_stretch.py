"""Faces in photos stretched out of proportion: found in a squeezed copy, replaced there."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import (
    FixedFaceGenerator,
    assert_changed_only_near_faces,
    assert_judged_another_person,
)

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import DOUBTFUL_TAG, Detection, MTCNNDetector
from idmrag_plugin.engine.stretch import (
    NATURAL_RATIO,
    OTHER_PROPORTIONS,
    STRETCH_TAG,
    Squeeze,
    working_squeeze,
)
from idmrag_plugin.report import GENERATED, OBFUSCATED


def _stretched(image: np.ndarray, axis: str, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (round(w * factor), h) if axis == "x" else (w, round(h * factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def _resized_back(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_a_face_stretched_three_times_is_found_and_never_returned_intact(engine, astronaut, oracles, axis):
    stretched = _stretched(astronaut, axis, 3.0)
    (upright,) = MTCNNDetector().detect(astronaut)
    scale = np.array([3.0, 1.0]) if axis == "x" else np.array([1.0, 3.0])
    expected = np.array([(upright.box[0] + upright.box[2]) / 2, (upright.box[1] + upright.box[3]) / 2]) * scale
    tolerance = 0.15 * (upright.box[2] - upright.box[0]) * scale.max()

    def at_her_face(box: tuple[float, ...]) -> bool:
        return np.abs(np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) - expected).max() < tolerance

    without = FaceAnonymizer(AnonymizerConfig(generator="none", stretch_search=False), oracles=oracles)
    assert not [f for f in without.anonymize(stretched).faces if at_her_face(f.detection.box)]  # a leak
    result = engine.anonymize(stretched)
    (face,) = [f for f in result.faces if at_her_face(f.detection.box)]  # reported where it is in the photo
    assert STRETCH_TAG in face.detection.detector and face.method == OBFUSCATED
    assert result.pixels.shape == stretched.shape
    # resized back to its proportions, the output shows no oracle the astronaut
    assert_judged_another_person(astronaut, [_resized_back(result.pixels, astronaut.shape)], oracles, engine.thresholds)
    # and the photo away from the faces is its own
    assert_changed_only_near_faces(result, stretched)


def test_a_stretched_face_gets_a_verified_drawing_of_someone_else(engine, astronaut, oracles):
    stretched = _stretched(astronaut, "x", 3.0)
    engine = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", cache_size=0), detector=engine.detector,
                            oracles=oracles)
    engine.generator.secret = b"s0"  # one pseudonym secret: the drawings (and attempts) are the same each run
    result = engine.anonymize(stretched)
    (face,) = [f for f in result.faces if STRETCH_TAG in f.detection.detector]
    assert face.method == GENERATED and face.verified
    assert_judged_another_person(astronaut, [_resized_back(result.pixels, astronaut.shape)], oracles, engine.thresholds)


def test_faces_at_both_proportions_in_one_photo(make_engine, astronaut, camera_face, oracles):
    """The stretched face is redrawn in the squeezed copy; the one at the photo's proportions
    would be judged squeezed there, so it is obfuscated instead, and neither is recognisable."""
    stretched = _stretched(astronaut, "x", 3.0)
    both = np.concatenate([astronaut, stretched], axis=1)
    engine = make_engine(generator=FixedFaceGenerator(camera_face), cache_size=0)
    result = engine.anonymize(both)
    (drawn,) = [f for f in result.faces if STRETCH_TAG in f.detection.detector]
    assert drawn.method == GENERATED and drawn.verified
    (kept,) = [f for f in result.faces if f.detection.box[2] <= astronaut.shape[1] + 5]  # in the photo's coordinates
    assert kept.method == OBFUSCATED and "stretched" in kept.reason
    out = result.pixels
    assert_judged_another_person(astronaut, [out[:, : astronaut.shape[1]]], oracles, engine.thresholds)
    assert_judged_another_person(astronaut, [_resized_back(out[:, astronaut.shape[1]:], astronaut.shape)], oracles,
                           engine.thresholds)


def test_a_small_face_found_only_squeezed_beside_a_natural_subject_is_obfuscated(make_engine, astronaut, camera,
                                                                                  camera_face, oracles):
    """A photo whose subject shows natural proportions is worked on as it is: the subject is
    redrawn, and a small face found only squeezed (a false one in hair, a bystander the frame
    cuts, here the cameraman's head stretched 2.5 times) is obfuscated, not the other way round."""
    head = cv2.resize(camera[40:200, 170:330], (100, 250), interpolation=cv2.INTER_AREA)
    photo = astronaut.copy()
    photo[-head.shape[0]:, -head.shape[1]:] = head
    engine = make_engine(generator=FixedFaceGenerator(camera_face), cache_size=0)
    result = engine.anonymize(photo)
    (small,) = [f for f in result.faces if STRETCH_TAG in f.detection.detector]
    assert small.method == OBFUSCATED and "own proportions" in small.reason
    (subject,) = [f for f in result.faces if f.detection.box[2] < 300]
    assert subject.method == GENERATED and subject.verified
    assert_judged_another_person(astronaut, [result.pixels], oracles, engine.thresholds)
    assert (result.pixels[-head.shape[0]:, -head.shape[1]:] != head).any()
    assert_changed_only_near_faces(result, photo)


def test_which_faces_decide_that_a_photo_is_worked_on_squeezed():
    def face(box: tuple[float, float, float, float], tag: str = "", stretch: float = 1.0) -> Detection:
        x1, y1, x2, y2 = box
        cx, cy, eyes = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 0.4
        drop = eyes / NATURAL_RATIO / stretch  # points as a face widened ``stretch`` times shows them
        points = np.array([[cx - eyes / 2, cy], [cx + eyes / 2, cy], [cx, cy + drop / 2],
                           [cx - eyes / 3, cy + drop], [cx + eyes / 3, cy + drop]])
        return Detection(box, 0.99, points, f"mtcnn{tag}")

    subject = face((100.0, 100.0, 200.0, 220.0))
    small = face((400.0, 10.0, 420.0, 60.0), "@stretched-y2.00")  # 20 x 25 at its own proportions
    assert working_squeeze([subject, small]) is None
    # as large as the subject once squeezed back: the photo is taken to be stretched
    large = face((300.0, 0.0, 400.0, 240.0), "@stretched-y2.00")
    assert working_squeeze([subject, large]) == Squeeze("y", 2.0)
    # the subject's own points say the photo is widened: no natural subject outweighs the squeeze
    assert working_squeeze([face((100.0, 100.0, 200.0, 220.0), stretch=2.0), face((400.0, 10.0, 440.0, 60.0),
                                                                               "@stretched-x2.00")]) is not None
    # a doubtful face (obfuscated, never drawn) is no subject
    assert working_squeeze([face((100.0, 100.0, 200.0, 220.0), DOUBTFUL_TAG), small]) == Squeeze("y", 2.0)
    reasons = FaceAnonymizer._working_copy(np.zeros((300, 500, 3), np.uint8), [subject, small], [])[1]
    assert reasons[0] == "" and "own proportions" in reasons[1]


def test_photos_at_their_proportions_get_no_stretched_face(engine, astronaut, camera, no_face_image):
    for image in (astronaut, camera, no_face_image, _stretched(astronaut, "y", 1.5)):
        assert not [d for d in engine.detector.detect(image) if STRETCH_TAG in d.detector]


def test_squeeze_restore_stretches_back_only_the_redrawn_region():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (90, 240, 3), dtype=np.uint8)
    squeeze = Squeeze("x", 4)
    squeezed = squeeze.apply(original)
    assert squeezed.shape == (90, 60, 3)
    processed = squeezed.copy()
    processed[30:50, 20:40] = 17
    processed[40, 30] = squeezed[40, 30]  # a drawn pixel that happens to equal the photo's
    restored = squeeze.restore(original, squeezed, processed)
    assert restored.shape == original.shape
    # the redrawn region, holes included, is the stretched drawing's, not the photo's ...
    stretched_back = cv2.resize(processed, (240, 90), interpolation=cv2.INTER_CUBIC)
    assert (restored[30:50, 80:160] == stretched_back[30:50, 80:160]).all()
    assert (restored[32:48, 88:152] == 17).sum() > 0.95 * 16 * 64 * 3
    # ... and the photo is its own away from it
    outside = np.ones(original.shape[:2], bool)
    outside[24:56, 68:172] = False
    assert (restored[outside] == original[outside]).all()
    assert squeeze.restore(original, squeezed, squeezed.copy()) is original


def test_detections_map_into_the_squeezed_copy_and_back(astronaut):
    (det,) = MTCNNDetector().detect(astronaut)
    squeeze = Squeeze.of(type(det)(det.box, det.score, det.landmarks, det.detector + "@stretched-y2.00"))
    assert squeeze == Squeeze("y", 2.0)
    view = squeeze.to_view(det, astronaut.shape)
    assert view.box[1] == pytest.approx(det.box[1] / 2) and view.box[0] == pytest.approx(det.box[0])
    back = squeeze.from_view(view, astronaut.shape)
    assert np.allclose(back.box, det.box) and np.allclose(back.landmarks, det.landmarks)


def test_a_drawing_recognised_at_other_proportions_is_caught(engine, astronaut):
    """The points estimate a stretched face's proportions roughly, so each drawing is judged again
    at other plausible ones: the original left in place is caught at every one of them."""
    job = engine._detect_and_align(_stretched(astronaut, "x", 3.0), {})
    squeeze = job.levelled_from[0]
    assert isinstance(squeeze, Squeeze) and 2.0 < squeeze.factor < 4.5
    (face,) = [f for f in job.faces if STRETCH_TAG in f.detection.detector]
    face.method = GENERATED
    for multiple in OTHER_PROPORTIONS:
        assert squeeze.resqueezed(job.pixels, multiple).shape[1] == round(job.pixels.shape[1] / multiple)
    assert engine._recognised_in_views(job, engine._attacker_views(job)) == [face]  # the original itself
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    job.output[max(0, y1 - 20): y2 + 20, max(0, x1 - 20): x2 + 20] = 128
    assert engine._recognised_in_views(job, engine._attacker_views(job)) == []
