"""The verifier's shifted view: a face just under the threshold in the engine's alignment is
judged again through slightly moved, turned and scaled alignments, as an attacker's own
landmarks would cut it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.engine import views
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.engine.views import ALIGNMENT_SHIFTS, Verifier, shifted_landmarks

EYES_AND_MOUTH = np.array([[40.0, 50.0], [60.0, 50.0], [50.0, 60.0], [42.0, 70.0], [58.0, 70.0]])


def test_shifted_landmarks_move_scale_and_turn_about_their_centre():
    center = EYES_AND_MOUTH.mean(axis=0)
    moved = shifted_landmarks(EYES_AND_MOUTH, 0.05, -0.1, 1.0, 0.0)
    assert np.allclose(moved - EYES_AND_MOUTH, [1.0, -2.0])  # inter-ocular distance 20 px
    scaled = shifted_landmarks(EYES_AND_MOUTH, 0.0, 0.0, 1.05, 0.0)
    assert np.allclose(scaled - center, (EYES_AND_MOUTH - center) * 1.05)
    turned = shifted_landmarks(EYES_AND_MOUTH, 0.0, 0.0, 1.0, 10.0)
    # counter-clockwise on the image: the eye right of the centre moves up (y decreases)
    assert turned[1, 1] < EYES_AND_MOUTH[1, 1] and turned[0, 1] > EYES_AND_MOUTH[0, 1]
    assert np.allclose(np.linalg.norm(turned - center, axis=1), np.linalg.norm(EYES_AND_MOUTH - center, axis=1))


def _face_moved_by(image: np.ndarray, right: float, down: float) -> np.ndarray:
    matrix = np.float32([[1, 0, right], [0, 1, down]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REFLECT_101)


@pytest.fixture(scope="module")
def astronaut_face(engine, astronaut):
    (face,) = engine.detector.detect(astronaut)
    return face


def _facenet(oracles):
    return next(o for o in oracles if o.name == "facenet")


def test_a_face_under_the_threshold_only_in_the_engine_s_alignment_is_recognised(
    oracles, astronaut, astronaut_face, monkeypatch
):
    facenet = _facenet(oracles)
    iod = float(np.hypot(*(astronaut_face.landmarks[1] - astronaut_face.landmarks[0])))
    # the same person, 5% of the eye distance to the right of where the landmarks say
    output = _face_moved_by(astronaut, 0.05 * iod, 0.0)
    aligned = float(cosine(facenet.embed_faces(astronaut, [astronaut_face.landmarks]),
                           facenet.embed_faces(output, [astronaut_face.landmarks]))[0])
    threshold = aligned + 0.01  # the verdicts' threshold: just over what the engine's alignment sees
    assert threshold - facenet.shift_margin <= aligned < threshold < 1.0

    def verdicts():
        verifier = Verifier([facenet], {"facenet": threshold + facenet.alignment_margin, "facenet@box": 1.01})
        originals = verifier.prepare(astronaut, [astronaut_face], [0])
        (face,) = verifier.verdicts(originals, output, [0])
        return {v.oracle: v for v in face}

    judged = verdicts()
    assert judged["facenet"].anonymous  # the engine's own alignment would let it through
    shifted = judged["facenet@shifted"]
    assert not shifted.anonymous and shifted.similarity > aligned + 0.01
    assert shifted.threshold == pytest.approx(threshold)

    # without a shift that puts the crop back on the face, nothing catches it
    monkeypatch.setattr(views, "ALIGNMENT_SHIFTS", ((0.0, 0.0, 1.0, 0.0),))
    assert all(v.anonymous for v in verdicts().values())


def test_faces_far_under_the_threshold_get_no_shifted_view(oracles, astronaut, astronaut_face, camera_face):
    facenet = _facenet(oracles)
    verifier = Verifier([facenet], {"facenet": 0.9, "facenet@box": 0.9})
    originals = verifier.prepare(astronaut, [astronaut_face], [0])
    output = _face_moved_by(astronaut, 200.0, 0.0)  # something else where the face was
    (face,) = verifier.verdicts(originals, output, [0])
    aligned = next(v for v in face if v.oracle == "facenet")
    assert aligned.similarity < 0.9 - facenet.alignment_margin - facenet.shift_margin
    assert not any(v.oracle.endswith("@shifted") for v in face)


def test_the_shifts_cover_both_directions_of_every_kind():
    kinds = np.array(ALIGNMENT_SHIFTS) - np.array([0.0, 0.0, 1.0, 0.0])
    for column in range(4):
        assert (kinds[:, column] > 0).any() and (kinds[:, column] < 0).any()


@pytest.mark.parametrize("name", ["dlib", "facenet"])
def test_a_face_within_the_alignment_margin_of_the_threshold_is_not_verified(
    oracles, astronaut, astronaut_face, name
):
    oracle = next(o for o in oracles if o.name == name)
    assert 0.0 < oracle.alignment_margin < 0.1
    output = _face_moved_by(astronaut, 1.0, 1.0)  # the same person, a pixel away
    aligned = float(cosine(oracle.embed_faces(astronaut, [astronaut_face.landmarks]),
                           oracle.embed_faces(output, [astronaut_face.landmarks]))[0])
    thresholds = {name: aligned + oracle.alignment_margin / 2, "facenet@box": 1.01}
    verifier = Verifier([oracle], thresholds)
    (face,) = verifier.verdicts(verifier.prepare(astronaut, [astronaut_face], [0]), output, [0])
    verdict = next(v for v in face if v.oracle == name)
    # under the calibrated threshold, but not by the margin an attacker's alignment needs
    assert verdict.similarity == pytest.approx(aligned, abs=1e-5)
    assert verdict.similarity < thresholds[name]
    assert not verdict.anonymous
    assert verdict.threshold == pytest.approx(thresholds[name] - oracle.alignment_margin)


def test_a_face_cut_by_the_frame_is_also_judged_through_the_plain_detector_s_own_alignment(
    astronaut, astronaut_face, oracles
):
    from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
    from idmrag_plugin.engine.detect import MTCNNDetector
    from idmrag_plugin.engine.views import crosses_border, redetect_near

    _, y1, _, y2 = astronaut_face.box
    cuts = [astronaut[round(y1 + 0.3 * (y2 - y1)):], astronaut[: round(y2 - 0.3 * (y2 - y1))]]  # 30% off
    engine = FaceAnonymizer(AnonymizerConfig(rotations=(0,), exposure_search=False, negative_search=False, grey_search=False,
                                             cache_size=0, threads=1), oracles=oracles)
    engine.generator.secret = b"a cut face"
    attacker = MTCNNDetector()
    judged = 0
    for cut in map(np.ascontiguousarray, cuts):
        result = engine.anonymize(cut)
        faces = [f for f in result.faces if crosses_border(f.detection.box, cut.shape)]
        assert faces, "the border search finds the cut face"
        for face in faces:
            before = redetect_near(attacker, cut, face.detection.box)
            after = redetect_near(attacker, result.pixels, face.detection.box)
            if face.method != "generated" or before is None or after is None:
                continue
            judged += 1
            assert {f"{o.name}@redetected" for o in engine.oracles} <= {v.oracle for v in face.verdicts}
            for oracle in engine.oracles:  # the attacker's own alignment on both images
                sim = float(cosine(oracle.embed_faces(cut, [before.landmarks]),
                                   oracle.embed_faces(result.pixels, [after.landmarks]))[0])
                assert sim < engine.thresholds[oracle.name]
    assert judged, "the plain detector found a generated cut face on both images"


def test_a_cut_face_s_box_is_also_judged_through_the_plain_detector_s_own_box(oracles, astronaut, astronaut_face):
    """An attacker runs FaceNet over the box their own MTCNN finds on the original and on the
    output; on a face the frame cuts that box is the part in the frame, not the engine's."""
    from idmrag_plugin.engine.detect import Detection, MTCNNDetector
    from idmrag_plugin.engine.views import box_crop, crosses_border, redetect_near

    facenet = _facenet(oracles)
    x1, y1, x2, y2 = astronaut_face.box
    top = round(y1 + 0.3 * (y2 - y1))  # 30% of the face's box above the frame
    cut = np.ascontiguousarray(astronaut[top:])
    whole = Detection((x1, y1 - top, x2, y2 - top), astronaut_face.score,
                      astronaut_face.landmarks - [0.0, top], astronaut_face.detector)
    assert crosses_border(whole.box, cut.shape)
    output = _face_moved_by(cut, 1.0, 0.0)  # the same person, a pixel away
    attacker = MTCNNDetector()
    verifier = Verifier([facenet], {"facenet": 0.9, "facenet@box": 0.9}, redetector=attacker)
    (face,) = verifier.verdicts(verifier.prepare(cut, [whole], [0]), output, [0])
    judged = {v.oracle: v for v in face}
    assert "facenet@box@redetected" in judged
    before, after = redetect_near(attacker, cut, whole.box), redetect_near(attacker, output, whole.box)
    theirs = float(cosine(facenet.embed(box_crop(cut, before, facenet.input_size)[None]),
                          facenet.embed(box_crop(output, after, facenet.input_size)[None]))[0])
    verdict = judged["facenet@box@redetected"]
    assert verdict.similarity == pytest.approx(theirs, abs=1e-5)
    assert verdict.threshold == pytest.approx(0.9)
    assert not verdict.anonymous


def test_redetect_near_finds_the_face_in_a_window_and_maps_it_back(engine, astronaut, astronaut_face):
    from idmrag_plugin.engine.detect import MTCNNDetector
    from idmrag_plugin.engine.views import crosses_border, redetect_near

    found = redetect_near(MTCNNDetector(), astronaut, astronaut_face.box)
    assert found is not None
    assert np.allclose(found.landmarks, astronaut_face.landmarks, atol=3.0)
    assert not crosses_border(astronaut_face.box, astronaut.shape)
    assert crosses_border((-5.0, 10.0, 40.0, 60.0), astronaut.shape)
    assert redetect_near(MTCNNDetector(), astronaut, (400.0, 400.0, 440.0, 440.0)) is None  # no face there
