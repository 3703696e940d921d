from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.engine.align import align_face, similarity_matrix, template
from idmrag_plugin.engine.blend import face_mask, paste_face


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize("angle", [0.0, 35.0, 90.0, 180.0])
def test_alignment_maps_landmarks_onto_the_template_at_any_rotation(angle):
    target = template(128)
    rot = cv2.getRotationMatrix2D((300.0, 200.0), angle, 2.5)
    landmarks = _apply(rot, target)
    matrix = similarity_matrix(landmarks, 128)
    np.testing.assert_allclose(_apply(matrix, landmarks), target, atol=1e-6)


def test_inverse_is_exact(astronaut):
    landmarks = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    face = align_face(astronaut, landmarks, 128)
    points = np.random.default_rng(0).uniform(0, 128, (20, 2))
    np.testing.assert_allclose(_apply(face.matrix, _apply(face.inverse, points)), points, atol=1e-9)


def test_paste_of_the_unchanged_crop_is_nearly_lossless(astronaut):
    landmarks = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    face = align_face(astronaut, landmarks, 256)
    image = astronaut.copy()
    paste_face(image, face.crop, face)
    assert np.abs(image.astype(int) - astronaut).mean() < 1.0


def test_paste_at_the_image_border_only_touches_the_image(astronaut):
    landmarks = np.array([[5.0, 20.0], [45.0, 22.0], [25.0, 45.0], [8.0, 58.0], [42.0, 60.0]])
    image = astronaut[:200, :200].copy()
    face = align_face(image, landmarks, 128)
    assert face.crop.shape == (128, 128, 3)
    paste_face(image, np.zeros_like(face.crop), face)
    assert image.shape == (200, 200, 3)
    # A flat new face (colour-matched, so flat in the reference colour) replaced the corner;
    # far from the face nothing changed.
    assert image[:40, :40].std() < 0.5 * astronaut[:40, :40].std()
    np.testing.assert_array_equal(image[150:, 150:], astronaut[150:200, 150:200])


def test_face_mask_is_one_inside_and_feathered_outside():
    hard = face_mask(128)
    soft = face_mask(128, feather=0.06)
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert np.all(soft[hard == 1] == 1.0)
    assert ((soft > 0) & (soft < 1)).sum() > 0


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError):
        similarity_matrix(np.full((5, 2), 3.0), 128)
    with pytest.raises(ValueError):
        similarity_matrix(np.array([[np.nan, 1.0], [2.0, 3.0]]), 128)


def test_in_frame_of_marks_the_crop_pixels_inside_the_photo(astronaut):
    from idmrag_plugin.engine.align import in_frame_of

    points = np.array([[190, 110], [240, 110], [215, 140], [195, 165], [235, 165]], float)
    assert in_frame_of(align_face(astronaut, points, 128), astronaut.shape) is None
    cut = align_face(astronaut, points - [180, 0], 128)  # the face's left half beyond the left edge
    inside = in_frame_of(cut, astronaut.shape)
    assert inside is not None and inside.shape == (128, 128)
    assert not inside[:, :5].any() and inside[:, -5:].all()
    assert 0.5 < inside.mean() < 0.9
