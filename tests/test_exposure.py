"""Faces in dark or washed-out photos are found, replaced where they can be seen, and the
photo keeps its own tones."""

from __future__ import annotations

import numpy as np
import pytest

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.exposure import levelled, levels_of


def _dark(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) * 0.07).astype(np.uint8)  # every pixel below 18


def _washed_out(image: np.ndarray) -> np.ndarray:
    return (255 - (255 - image.astype(np.float32)) * 0.2).astype(np.uint8)  # every pixel above 203


def _with_lamp(image: np.ndarray) -> np.ndarray:
    dark = _dark(image)
    dark[400:480, 400:500] = 255  # a bright light in the dark photo spans the whole range
    return dark


TONES = {"dark": _dark, "washed out": _washed_out, "dark beside a lamp": _with_lamp}


@pytest.fixture(scope="module")
def without_exposure_search() -> FaceAnonymizer:
    return FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0, exposure_search=False))


@pytest.fixture(scope="module")
def obfuscating() -> FaceAnonymizer:
    return FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0))


def test_ordinary_photos_are_not_levelled(astronaut, camera, no_face_image):
    for image in (astronaut, camera, no_face_image):
        assert levels_of(image) is None


@pytest.mark.parametrize("tone", list(TONES))
def test_a_face_in_a_dark_or_washed_out_photo_is_found_and_replaced(obfuscating, without_exposure_search,
                                                                    astronaut, tone):
    image = TONES[tone](astronaut)
    assert without_exposure_search.detector.detect(image) == []  # flat to the detector
    seen = levelled(image)
    assert seen is not None and without_exposure_search.detector.detect(seen)  # but there to anyone who levels it

    result = obfuscating.anonymize(image)
    assert result.status == "anonymized"
    (face,) = [f for f in result.faces if f.detection.detector.startswith("mtcnn@levelled")]
    out = np.asarray(result.image)
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    inner = (slice(y1 + (y2 - y1) // 4, y2 - (y2 - y1) // 4), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
    # levelled, the output's face is no longer the original's face
    again = levelled(out)
    assert again is not None
    assert np.abs(again[inner].astype(int) - seen[inner].astype(int)).mean() > 10
    # the photo keeps its tones: pixels away from the face are the input's exactly
    far = np.ones(image.shape[:2], bool)
    far[max(0, y1 - 60) : y2 + 60, max(0, x1 - 60) : x2 + 60] = False
    for other in result.faces:
        ox1, oy1, ox2, oy2 = (int(v) for v in other.detection.box)
        far[max(0, oy1 - 60) : oy2 + 60, max(0, ox1 - 60) : ox2 + 60] = False
    assert np.array_equal(out[far], image[far])
    assert abs(float(out.mean()) - float(image.mean())) < 3.0


def test_a_dark_photo_s_face_is_drawn_in_its_tones(astronaut):
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0))
    image = _dark(astronaut)
    result = engine.anonymize(image)
    (face,) = [f for f in result.faces if f.detection.detector.startswith("mtcnn@levelled")]
    assert face.method == "generated", face.to_dict()
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    drawn = np.asarray(result.image)[y1:y2, x1:x2]
    # drawn where the face could be seen and brought back: as dark as the photo around it
    assert int(drawn.max()) <= int(image.max()) + 2, (drawn.max(), image.max())
    assert abs(float(drawn.mean()) - float(image[y1:y2, x1:x2].mean())) < 3.0, (drawn.mean(), image[y1:y2, x1:x2].mean())


def test_levelled_pixels_come_back_inside_the_photo_s_range(astronaut):
    for tone in TONES.values():
        image = tone(astronaut)
        levels = levels_of(image)
        assert levels is not None
        flat = levels.apply(image)
        redrawn = np.full_like(flat, 255)
        redrawn[::2] = 0  # every level a drawing can reach, both clipped ends included
        back = levels.restore(image, flat, redrawn)
        changed = (redrawn != flat).any(axis=2)
        assert back[changed].min() >= int(np.percentile(image, 0.1)) - 1
        assert back[changed].max() <= int(image.max())
        assert np.array_equal(back[~changed], image[~changed])
        # and levelled again, a drawing comes back as drawn, up to the levels the photo has
        again = levels.apply(back)
        assert np.abs(again[changed].astype(int) - redrawn[changed].astype(int)).mean() < 40


def test_a_face_the_photo_itself_shows_keeps_its_own_detection(obfuscating, astronaut):
    image = (astronaut.astype(np.float32) * 0.15).astype(np.uint8)  # dark, but MTCNN still sees the face
    assert levels_of(image) is not None
    (face,) = obfuscating.detector.detect(image)
    assert face.detector == "mtcnn"  # not replaced by the levelled copy's view of the same face
