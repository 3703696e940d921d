"""A face across a 360-degree panorama's seam (its left and right edges, which a viewer joins)
is found whole, redrawn in the panorama rolled to show it, and rolled back."""

from __future__ import annotations

import numpy as np
import pytest

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import Detection
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.engine.seam import ROLL_CLEARANCE, SEAM_TAG, Roll, is_panorama

#: the astronaut's face in her photo: its box's columns, and its middle
FACE_X = (195, 255)
FACE = (slice(95, 145), slice(205, 245))


def _panorama(astronaut: np.ndarray, camera: np.ndarray, share: float) -> tuple[np.ndarray, int]:
    """The two photos side by side (twice as wide as high), rolled so that the astronaut's face
    stands across the edges, ``share`` of its width at the right edge; and the roll."""
    canvas = np.concatenate([astronaut, camera], axis=1)
    cut = int(FACE_X[0] + share * (FACE_X[1] - FACE_X[0]))
    return np.ascontiguousarray(np.roll(canvas, -cut, axis=1)), cut


@pytest.fixture(scope="module")
def default_engine() -> FaceAnonymizer:
    return FaceAnonymizer(AnonymizerConfig(cache_size=0))


def _similarities(engine: FaceAnonymizer, astronaut: np.ndarray, image: np.ndarray) -> dict[str, float]:
    (face,) = [d for d in engine.detector.detect(astronaut)]
    landmarks = [face.landmarks]
    return {o.name: float(cosine(o.embed_faces(astronaut, landmarks), o.embed_faces(image, landmarks))[0])
            for o in engine.oracles}


def test_a_face_across_a_panorama_s_seam_is_found_whole_and_redrawn(default_engine, astronaut, camera):
    panorama, cut = _panorama(astronaut, camera, 0.3)
    result = default_engine.anonymize(panorama)
    assert result.status == "anonymized"
    (seam,) = [f for f in result.faces if SEAM_TAG in f.detection.detector]
    assert seam.method == "generated", seam.to_dict()
    width = panorama.shape[1]
    assert seam.detection.box[0] < width < seam.detection.box[2]  # reported across the right edge
    back = np.roll(np.asarray(result.image), cut, axis=1)  # as a viewer joins the edges
    assert np.abs(back[FACE].astype(int) - astronaut[FACE]).mean() > 20
    for name, similarity in _similarities(default_engine, astronaut, np.ascontiguousarray(back[:, :512])).items():
        assert similarity < default_engine.thresholds[name], name
    # the panorama is its own away from the faces
    assert np.array_equal(back[:, 20:120], np.concatenate([astronaut, camera], axis=1)[:, 20:120])


def _seam_step(image: np.ndarray, cut: int) -> float:
    """The mean step between the two columns either side of the seam, over the face's rows."""
    rows = slice(95, 170)
    return float(np.abs(image[rows, cut].astype(int) - image[rows, cut - 1].astype(int)).mean())


def test_the_face_across_the_seam_is_drawn_as_one_face_not_two_pieces(default_engine, astronaut, camera):
    """Without the seam search, each piece is drawn (or obfuscated) as a face cut by the frame,
    and a viewer joining the edges shows two halves of different faces (on the astronaut, a
    step of 13-39 levels between the columns either side of the seam, 6-9 in her photo)."""
    panorama, cut = _panorama(astronaut, camera, 0.3)
    canvas = np.concatenate([astronaut, camera], axis=1)
    without = FaceAnonymizer(AnonymizerConfig(cache_size=0, seam_search=False), oracles=default_engine.oracles)
    pieces = without.anonymize(panorama)
    assert sum(f.detection.box[0] <= 0 or f.detection.box[2] >= panorama.shape[1] for f in pieces.faces) >= 2
    whole = default_engine.anonymize(panorama)
    steps = {name: _seam_step(np.roll(np.asarray(result.image), cut, axis=1), cut)
             for name, result in (("without", pieces), ("with", whole))}
    assert steps["with"] <= _seam_step(canvas, cut) + 2.0 < steps["without"], steps


def test_only_a_panorama_s_edges_are_joined(obfuscating, astronaut, camera):
    panorama, _ = _panorama(astronaut, camera, 0.3)
    assert is_panorama(panorama.shape) and not is_panorama(panorama[:, :900].shape)
    assert not any(SEAM_TAG in d.detector for d in obfuscating.detector.detect(np.ascontiguousarray(panorama[:, :900])))
    # a panorama with no face across its seam has none there
    whole = np.concatenate([astronaut, camera], axis=1)
    assert not any(SEAM_TAG in d.detector for d in obfuscating.detector.detect(whole))


@pytest.fixture(scope="module")
def obfuscating() -> FaceAnonymizer:
    return FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0))


def _face(x1: float, x2: float) -> Detection:
    landmarks = np.array([[x1 + 0.3 * (x2 - x1), 50.0], [x1 + 0.7 * (x2 - x1), 50.0], [(x1 + x2) / 2, 60.0],
                          [x1 + 0.35 * (x2 - x1), 70.0], [x1 + 0.65 * (x2 - x1), 70.0]])
    return Detection((x1, 30.0, x2, 90.0), 0.99, landmarks, "mtcnn")


def test_a_roll_keeps_its_edges_clear_of_faces_and_comes_back_exactly():
    width = 400
    faces = [_face(370.0, 430.0), _face(100.0, 160.0)]  # one across the seam
    roll = Roll.around(faces, width)
    for face in faces:
        x1, _, x2, _ = face.box
        grow = (x2 - x1) * ROLL_CLEARANCE
        covered = np.arange(int(np.floor(x1 - grow)), int(np.ceil(x2 + grow))) % width
        assert roll.cut not in covered
        inside = roll.to_view(face, (200, width))
        assert 0 <= inside.box[0] < inside.box[2] <= width  # whole in the rolled copy
        assert np.allclose(inside.landmarks[:, 0] - inside.box[0], face.landmarks[:, 0] - face.box[0])
        back = roll.from_view(inside, (200, width))
        assert np.allclose(back.box, face.box) and np.allclose(back.landmarks, face.landmarks)
    image = np.random.default_rng(0).integers(0, 256, (200, width, 3), dtype=np.uint8)
    rolled = roll.apply(image)
    processed = rolled.copy()
    processed[40:80, 10:50] = 7
    restored = roll.restore(image, rolled, processed)
    changed = (restored != image).any(axis=2)
    assert changed.sum() == (processed != rolled).any(axis=2).sum()
    assert np.array_equal(roll.restore(image, rolled, rolled), image)
