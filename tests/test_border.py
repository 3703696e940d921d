"""Faces cut by the image border are found and replaced."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import search_layer

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.border import CLOSE_UP_GREY, BorderDetector


@pytest.fixture(scope="module")
def obfuscating() -> FaceAnonymizer:
    return FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0))


@pytest.fixture(scope="module")
def without_border_search() -> FaceAnonymizer:
    return FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0, border_search=False, hog_search=False))


def _cut(astronaut: np.ndarray, side: str) -> np.ndarray:
    # half the face outside the frame: cut through its middle, or just below the eyes
    return np.ascontiguousarray(astronaut[:, 225:] if side == "left" else astronaut[120:, :])


@pytest.mark.parametrize("side", ["left", "top"])
def test_a_face_cut_in_half_by_the_border_is_found_and_replaced(obfuscating, without_border_search, astronaut, side):
    image = _cut(astronaut, side)
    assert without_border_search.detector.detect(image) == []  # the upright search alone misses it
    result = obfuscating.anonymize(image)
    (face,) = result.faces
    assert face.detection.detector.endswith("@border")
    x1, y1 = face.detection.box[:2]
    assert x1 < 0 if side == "left" else y1 < 0  # the box reaches past the border it crosses
    visible = (slice(60, 175), slice(0, 45)) if side == "left" else (slice(0, 55), slice(180, 270))
    changed = np.abs(np.asarray(result.image).astype(int)[visible] - image[visible].astype(int)).mean()
    assert changed > 20


def test_whole_faces_are_not_doubled_by_their_mirror_image(obfuscating, astronaut):
    assert len(obfuscating.detector.detect(astronaut)) == 1
    touching = np.ascontiguousarray(astronaut[:, 180:])  # the face starts at the border
    assert len(obfuscating.detector.detect(touching)) == 1


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 9, 3), (30, 30, 3), (40, 700, 3)])
def test_tiny_and_thin_images_are_searched_without_error(obfuscating, shape):
    image = np.full(shape, 128, np.uint8)
    detector = search_layer(obfuscating.detector, BorderDetector)
    assert detector.cut_faces(image) == []
    assert obfuscating.anonymize(image).status == "no_faces"


def test_crops_of_a_cut_face_are_completed_by_its_mirror_image():
    from idmrag_plugin.engine.align import align_face
    from idmrag_plugin.engine.upright import upright_patch

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    patch = upright_patch(image, (2.0, 20.0, 22.0, 40.0), 0, margin=0.5)  # reaches 8 px past the left edge
    assert patch.origin[0] == -8 and patch.pixels.shape[1] == 8 + 32
    np.testing.assert_array_equal(patch.pixels[:, :8], image[10:50, 8:0:-1])  # mirrored, edge not repeated
    point = np.array([[0.0, 30.0]])
    np.testing.assert_allclose(patch.to_image(patch.to_patch(point)), point)
    # a face centred on the left edge, landmarks symmetric about it: its aligned crop is the
    # visible half and that half's mirror image, left-right symmetric (a smear would not be)
    import cv2

    smooth = cv2.GaussianBlur(image, (0, 0), 3)  # no aliasing from the crop's slight offset
    landmarks = np.array([[-6.0, 25.0], [6.0, 25.0], [0.0, 32.0], [-5.0, 38.0], [5.0, 38.0]])
    crop = align_face(smooth, landmarks, 64).crop.astype(int)
    asymmetry = np.abs(crop - crop[:, ::-1]).mean()
    assert asymmetry < 0.25 * np.abs(crop - crop[::-1]).mean()


def test_a_face_cropped_tighter_than_the_face_is_found(obfuscating, without_border_search, astronaut):
    """Thumbnails cut around a face (a face dataset's crops) lose its outline on every side."""
    import cv2

    tight = cv2.resize(np.ascontiguousarray(astronaut[70:165, 190:262]), None, fx=3, fy=3)
    assert without_border_search.detector.detect(tight) == []
    result = obfuscating.anonymize(tight)
    assert len(result.faces) == 1 and np.abs(np.asarray(result.image).astype(int) - tight.astype(int)).mean() > 20


@pytest.mark.parametrize(("scale", "turns"), [(1, 0), (4, 0), (4, 1), (1, 2), (4, 3)])
def test_a_close_up_filling_the_frame_is_found_and_never_returned_intact(obfuscating, astronaut, scale, turns):
    """Eyes, nose and mouth filling the frame, the jaw and forehead past it on every side (also
    photographed sideways or upside down): the whole search and the reflection pass find no face
    there, yet dlib still recognises one (0.36 from her whole face's descriptor); framed in grey,
    the close-up look finds it."""
    import cv2

    close_up = cv2.resize(np.ascontiguousarray(astronaut[90:150, 190:260]), None, fx=scale, fy=scale,
                          interpolation=cv2.INTER_CUBIC)
    close_up = np.ascontiguousarray(np.rot90(close_up, turns))
    height, width = close_up.shape[:2]
    border = search_layer(obfuscating.detector, BorderDetector)
    assert border.detector.detect(close_up) == []  # every rotation, upright and turned
    assert border.reflected_cut_faces(close_up) == []
    result = obfuscating.anonymize(close_up)
    (face,) = result.faces
    assert "@close-up" in face.detection.detector
    x1, y1, x2, y2 = face.detection.box
    assert sum([x1 < 0, y1 < 0, x2 > width, y2 > height]) >= 2  # larger than the frame
    changed = np.abs(np.asarray(result.image).astype(int) - close_up.astype(int)).mean(axis=2)
    assert (changed > 10).mean() > 0.6  # most of the frame, the face, no longer as it was


def test_the_close_up_look_adds_no_face_where_there_is_none(obfuscating, no_face_image, astronaut):
    """A photo without a face, a flat one, and the astronaut cut below her eyes: framed in grey,
    her torso made a "face" of the whole frame, which the second look refuses (the face the
    reflection completes is still found)."""
    border = search_layer(obfuscating.detector, BorderDetector)
    assert border.close_ups(no_face_image) == []
    assert border.close_ups(np.full((120, 90, 3), 200, np.uint8)) == []
    below_the_eyes = np.ascontiguousarray(astronaut[120:, :])
    assert border.close_ups(below_the_eyes) == []
    (face,) = obfuscating.anonymize(below_the_eyes).faces
    assert face.detection.detector.endswith("@border")


def test_faces_cut_by_the_frame_that_only_the_close_up_look_finds(obfuscating, lfw):
    """LFW photos whose bystanders the frame cuts so that their reflection is no face (a boxer at
    the left edge, a man behind at the top right): the close-up look finds them."""
    for name, centre in (("Tocker_Pudwill", (30.0, 130.0)), ("Larry_Brown", (216.0, 33.0))):
        from PIL import Image

        photo = np.asarray(Image.open(lfw / "images" / name / f"{name}_0001.jpg").convert("RGB"))
        found = obfuscating.detector.detect(photo)
        near = [d for d in found if abs((d.box[0] + d.box[2]) / 2 - centre[0]) < 40
                and abs((d.box[1] + d.box[3]) / 2 - centre[1]) < 50]
        assert near and any("@close-up" in d.detector for d in near), (name, [(d.box, d.detector) for d in found])


def test_a_cut_face_lying_on_a_whole_face_must_pass_an_upright_second_look():
    """The reflection of a subject's chin and collar past the bottom edge makes a "face" that
    hangs from the subject's; a cut face with CUT_ON_FACE_SHARE of its box on a whole face
    stays only when a second, upright look finds it again. A cut face apart from the others
    stays without one."""
    from idmrag_plugin.engine.detect import Detection, FaceDetector

    image = np.zeros((200, 200, 3), np.uint8)
    subject = Detection((60.0, 20.0, 140.0, 120.0), 0.999,
                        np.array([[85.0, 60.0], [115.0, 60.0], [100.0, 80.0], [88.0, 100.0], [112.0, 100.0]]), "mtcnn")
    points = np.array([[-18.0, -18.0], [18.0, -18.0], [0.0, 0.0], [-14.4, 18.0], [14.4, 18.0]])

    class Whole(FaceDetector):
        name = "mtcnn"

        def _load(self) -> None:
            pass

        def _detect(self, picture: np.ndarray) -> list[Detection]:
            return [subject]

    class Padded(FaceDetector):
        """Finds, on the padded image, a face hanging under the subject across the bottom edge
        and one cut by the left edge; on a second look's crop, the face again if it confirms."""

        name = "mtcnn"

        def __init__(self, confirms: bool) -> None:
            super().__init__()
            self.confirms, self.second_looks = confirms, 0

        def _load(self) -> None:
            pass

        def _detect(self, picture: np.ndarray) -> list[Detection]:
            if (picture[0, 0] == CLOSE_UP_GREY).all():  # the close-up look's grey frame: nothing there
                return []
            if picture.shape[:2] != (300, 300):  # a second look's crop
                self.second_looks += 1
                centre = picture.shape[1] / 2.0
                return [Detection((centre - 30, centre - 30, centre + 30, centre + 30), 0.99, points + centre,
                                  "mtcnn")] if self.confirms else []
            pad = 50.0
            hanging = np.array([[90.0, 150.0], [120.0, 150.0], [105.0, 170.0], [93.0, 190.0], [117.0, 190.0]])
            at_left = np.array([[-10.0, 60.0], [15.0, 60.0], [2.0, 75.0], [-8.0, 90.0], [12.0, 90.0]])
            return [Detection((70 + pad, 105 + pad, 150 + pad, 230 + pad), 0.76, hanging + pad, "mtcnn"),
                    Detection((-30 + pad, 30 + pad, 35 + pad, 110 + pad), 0.76, at_left + pad, "mtcnn")]

    for confirms in (False, True):
        padded = Padded(confirms)
        found = BorderDetector(Whole(), padded).detect(image)
        hanging_kept = any(d.box[1] == 105.0 for d in found)
        assert hanging_kept == confirms
        assert any(d.box[0] == -30.0 for d in found)  # the face apart from the others: no second look
        assert padded.second_looks == 1
