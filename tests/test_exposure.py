"""Faces in dark or washed-out photos, or in deep shadow, are found, replaced where they can be
seen, and the photo keeps its own tones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import Detection
from idmrag_plugin.engine.exposure import (
    FADED_TAG,
    SHADOW_MAX_PIXELS,
    SHADOW_TAG,
    STRETCH_CONTEXT,
    STRETCH_REACH,
    ToneMap,
    faded_levels,
    faded_regions,
    hidden_faces_tone_map,
    levelled,
    levels_of,
    luma,
    regional_tone_map,
    shadow_levels,
    shadow_tone_map,
    shadows,
    stretched_linearly,
)
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.pipeline import GENERATED, PHOTO_TONES_VIEW, STRETCHED_VIEW


def _dark(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) * 0.07).astype(np.uint8)  # every pixel below 18


def _washed_out(image: np.ndarray) -> np.ndarray:
    return (255 - (255 - image.astype(np.float32)) * 0.2).astype(np.uint8)  # every pixel above 203


def _with_lamp(image: np.ndarray) -> np.ndarray:
    dark = _dark(image)
    dark[400:480, 400:500] = 255  # a bright light in the dark photo spans the whole range
    return dark


TONES = {"dark": _dark, "washed out": _washed_out, "dark beside a lamp": _with_lamp}


def _middle(box: tuple[float, float, float, float]) -> tuple[slice, slice]:
    """The middle half of a face's box, each way."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return slice(y1 + (y2 - y1) // 4, y2 - (y2 - y1) // 4), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4)


def _outside(region: tuple[int, int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Bool: the pixels of an image of ``shape`` outside ``region``."""
    x1, y1, x2, y2 = region
    outside = np.ones(shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    return outside


@pytest.fixture(scope="module")
def without_exposure_search() -> FaceAnonymizer:
    # the grey search levels a colour photo's grey levels too; HOG finds some of these faces
    return FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0, exposure_search=False, grey_search=False,
                                           hog_search=False))


@pytest.fixture(scope="module")
def obfuscating() -> FaceAnonymizer:
    return FaceAnonymizer(AnonymizerConfig(generator="none", cache_size=0))


def test_ordinary_photos_are_not_levelled(astronaut, camera, no_face_image):
    for image in (astronaut, camera, no_face_image):
        assert levels_of(image) is None


@pytest.mark.parametrize("tone", list(TONES))
def test_a_face_in_a_dark_or_washed_out_photo_is_found_and_replaced(
    obfuscating, without_exposure_search, astronaut, tone
):
    image = TONES[tone](astronaut)
    assert without_exposure_search.detector.detect(image) == []  # flat to the detector
    seen = levelled(image)
    assert seen is not None and without_exposure_search.detector.detect(
        seen
    )  # but there to anyone who levels it

    result = obfuscating.anonymize(image)
    assert result.status == "anonymized"
    (face,) = [f for f in result.faces if f.detection.detector.startswith("mtcnn@levelled")]
    out = np.asarray(result.image)
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    inner = (
        slice(y1 + (y2 - y1) // 4, y2 - (y2 - y1) // 4),
        slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4),
    )
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
    assert abs(float(drawn.mean()) - float(image[y1:y2, x1:x2].mean())) < 3.0, (
        drawn.mean(),
        image[y1:y2, x1:x2].mean(),
    )


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
    image = (astronaut.astype(np.float32) * 0.15).astype(
        np.uint8
    )  # dark, but MTCNN still sees the face
    assert levels_of(image) is not None
    (face,) = obfuscating.detector.detect(image)
    assert face.detector == "mtcnn"  # not replaced by the levelled copy's view of the same face


def _shaded(
    image: np.ndarray, factor: float = 0.06, box: tuple[int, int, int, int] = (120, 0, 320, 240)
) -> np.ndarray:
    """``image`` with a soft-edged deep shadow over ``box`` (the astronaut's head)."""
    mask = np.zeros(image.shape[:2], np.float32)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 1.0
    mask = cv2.GaussianBlur(mask, (31, 31), 10)[..., None]
    return (image.astype(np.float32) * (1.0 - mask * (1.0 - factor))).astype(np.uint8)


def test_a_face_in_deep_shadow_in_a_bright_photo_is_found_and_replaced(
    obfuscating, without_exposure_search, astronaut
):
    image = _shaded(astronaut)
    assert levels_of(image) is None  # the photo as a whole is well exposed
    assert (
        without_exposure_search.detector.detect(image) == []
    )  # the shadowed face is flat to MTCNN
    result = obfuscating.anonymize(image)
    assert result.status == "anonymized"
    (face,) = result.faces
    assert face.detection.detector == "mtcnn" + SHADOW_TAG
    out = np.asarray(result.image)
    # lifted out of the shadow, the output's face is not the original's
    levels = shadow_levels(image, face.detection.box)
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    inner = _middle(face.detection.box)
    assert (
        np.abs(levels.apply(out)[inner].astype(int) - levels.apply(image)[inner].astype(int)).mean()
        > 10
    )
    # and the photo is its own outside the face's region, and as dark inside the shadow
    outside = _outside(levels.region, image.shape)
    assert np.array_equal(out[outside], image[outside])
    assert int(out[y1:y2, x1:x2].max()) <= int(image[y1:y2, x1:x2].max()) + 2


def test_ordinary_photos_show_no_shadowed_faces(obfuscating, astronaut, camera):
    for image in (astronaut, camera):
        assert [d.detector for d in obfuscating.detector.detect(image)] == ["mtcnn"]


def test_a_flat_black_region_is_no_shadow():
    image = np.full((200, 300, 3), 200, np.uint8)
    image[20:180, 20:150] = 3  # a plain dark surface: nothing to level
    image[20:180, 160:290] = np.random.default_rng(0).integers(
        0, 30, (160, 130, 3)
    )  # a textured one
    found = shadows(image, 20)
    assert len(found) == 1
    (x1, _, x2, _), _ = found[0]
    assert x1 > 100 and 160 <= (x1 + x2) / 2 <= 290  # the textured one (padded)


def test_regional_levels_come_back_exactly_where_nothing_was_redrawn(astronaut):
    image = _shaded(astronaut, box=(120, 0, 320, 240))
    tones = shadow_tone_map(
        image,
        [(180.0, 60.0, 265.0, 170.0), (200.0, 80.0, 280.0, 190.0), (10.0, 400.0, 40.0, 440.0)],
    )
    assert len(tones.steps) == 2  # the two overlapping faces share one region
    flat = tones.apply(image)
    redrawn = flat.copy()
    redrawn[100:140, 200:240] = 128  # inside the first region
    redrawn[300:310, 300:310] = 7  # outside every region: drawn in the photo's own tones
    back = tones.restore(image, flat, redrawn)
    changed = (redrawn != flat).any(axis=2)
    assert np.array_equal(back[~changed], image[~changed])
    assert np.array_equal(back[300:310, 300:310], redrawn[300:310, 300:310])
    assert int(back[100:140, 200:240].max()) <= int(image[60:170, 180:265].max()) + 1


def test_a_shadowed_face_is_generated_in_the_shadow_s_tones(astronaut):
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0))
    image = _shaded(astronaut)
    result = engine.anonymize(image)
    (face,) = result.faces
    assert face.method == "generated", face.to_dict()
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    drawn, before = np.asarray(result.image)[y1:y2, x1:x2], image[y1:y2, x1:x2]
    assert int(drawn.max()) <= int(before.max()) + 2
    assert abs(float(drawn.mean()) - float(before.mean())) < 3.0


def test_a_large_shadow_is_searched_on_a_smaller_copy_and_its_face_found(obfuscating, astronaut):
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    image = _shaded(big, box=(360, 0, 960, 720))
    (region, _), *_ = shadows(image, 20)
    x1, y1, x2, y2 = region
    assert (x2 - x1) * (y2 - y1) > SHADOW_MAX_PIXELS  # over the budget: searched scaled down
    (face,) = obfuscating.detector.detect(image)
    assert face.detector == "mtcnn" + SHADOW_TAG
    fx1, fy1, fx2, fy2 = face.box
    assert 500 < (fx1 + fx2) / 2 < 800 and 150 < (fy1 + fy2) / 2 < 550  # where the head is, in full-size pixels


def test_a_bright_face_beside_a_shadowed_one_keeps_its_own_tones(obfuscating, astronaut, camera):
    image = astronaut.copy()
    image[150:260, 300:410] = cv2.resize(camera[40:260, 140:360], (110, 110))  # inside her face's region
    image = _shaded(image, box=(120, 0, 300, 200))
    result = obfuscating.anonymize(image)
    bright = [f for f in result.faces if SHADOW_TAG not in f.detection.detector]
    assert len(result.faces) == 2 and len(bright) == 1
    x1, y1, x2, y2 = (int(v) for v in bright[0].detection.box)
    before, after = image[y1:y2, x1:x2].astype(float), np.asarray(result.image)[y1:y2, x1:x2].astype(float)
    # redrawn in its own tones, not brought "back" through the shadow's curve: that turned the
    # part of it inside her region near black (14% of its box then; 0.8% now)
    assert (after < before.mean() - 80).mean() < 0.05


def _overlaid(image: np.ndarray, colour: tuple[int, int, int], opacity: float,
              box: tuple[int, int, int, int] = (120, 0, 320, 240)) -> np.ndarray:
    """``image`` under a soft-edged translucent overlay of ``colour`` over ``box`` (the
    astronaut's head): a caption box, or glare."""
    mask = np.zeros(image.shape[:2], np.float32)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 1.0
    mask = cv2.GaussianBlur(mask, (31, 31), 10)[..., None] * opacity
    return (image * (1.0 - mask) + np.array(colour, np.float32) * mask + 0.5).astype(np.uint8)


OVERLAYS = {"white": ((255, 255, 255), 0.92), "grey": ((128, 128, 128), 0.92), "pale blue": ((200, 220, 255), 0.9)}


@pytest.mark.parametrize("colour", list(OVERLAYS))
def test_a_face_under_a_translucent_overlay_is_found_and_replaced(
    obfuscating, without_exposure_search, astronaut, colour
):
    image = _overlaid(astronaut, *OVERLAYS[colour])
    assert levels_of(image) is None  # the photo as a whole is well exposed
    assert without_exposure_search.detector.detect(image) == []  # the faded face is flat to MTCNN
    result = obfuscating.anonymize(image)
    assert result.status == "anonymized"
    (face,) = result.faces
    assert face.detection.detector == "mtcnn" + FADED_TAG
    out = np.asarray(result.image)
    # levelled the way an attacker would, the output's face is not the original's
    levels = faded_levels(image, face.detection.box)
    inner = _middle(face.detection.box)
    assert np.abs(levels.apply(out)[inner].astype(int) - levels.apply(image)[inner].astype(int)).mean() > 10
    # and the photo is its own outside the face's region, the face as faded as the overlay
    outside = _outside(levels.region, image.shape)
    assert np.array_equal(out[outside], image[outside])
    before, after = luma(image[inner]), luma(out[inner])
    assert np.percentile(after, 99.5) - np.percentile(after, 0.5) <= np.percentile(before, 99.5) - np.percentile(before, 0.5) + 4


def test_a_face_under_an_overlay_is_generated_in_the_overlay_s_tones(astronaut):
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0))
    image = _overlaid(astronaut, *OVERLAYS["white"])
    result = engine.anonymize(image)
    (face,) = result.faces
    assert face.method == "generated", face.to_dict()
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    drawn, before = np.asarray(result.image)[y1:y2, x1:x2], image[y1:y2, x1:x2]
    assert int(drawn.min()) >= int(before.min()) - 2  # no dark, full-contrast face pasted into the fade
    assert abs(float(drawn.mean()) - float(before.mean())) < 3.0
    # an attacker stretching the returned photo's levels their own way does not get her back
    landmarks = [face.detection.landmarks]
    attacked = stretched_linearly(np.asarray(result.image), ((x1, y1, x2, y2),))
    for oracle in engine.oracles:
        similarity = float(cosine(oracle.embed_faces(astronaut, landmarks), oracle.embed_faces(attacked, landmarks))[0])
        assert similarity < engine.thresholds[oracle.name], oracle.name


def test_a_linear_stretch_levels_only_around_each_face():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 140, (200, 300, 3), dtype=np.uint8)  # a faded photo
    box = (100, 50, 160, 120)
    out = stretched_linearly(image, (box,))
    cx1, cy1 = int(100 - 60 * STRETCH_CONTEXT), int(50 - 70 * STRETCH_CONTEXT)
    context = out[cy1: int(np.ceil(120 + 70 * STRETCH_CONTEXT)), cx1: int(np.ceil(160 + 60 * STRETCH_CONTEXT))]
    assert np.percentile(context, 0.5) <= 1 and np.percentile(context, 99.5) >= 254
    reach = (int(100 - 60 * STRETCH_REACH), 0, int(np.ceil(160 + 60 * STRETCH_REACH)),
             int(np.ceil(120 + 70 * STRETCH_REACH)))
    assert np.array_equal(out[_outside(reach, image.shape)], image[_outside(reach, image.shape)])
    inside = image[60:110, 110:150].astype(int).ravel()
    order = np.argsort(inside, kind="stable")
    assert np.all(np.diff(out[60:110, 110:150].astype(int).ravel()[order]) >= 0)  # tones keep their order
    whole = stretched_linearly(image)  # no faces: the whole photo by its own percentiles
    assert np.percentile(whole, 0.5) <= 1 and np.percentile(whole, 99.5) >= 254


def test_a_drawing_of_a_hidden_face_is_judged_again_as_returned_and_stretched(astronaut):
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0, generator="renderer-lcm"))
    job = engine._detect_and_align(_overlaid(astronaut, *OVERLAYS["grey"]), {})
    assert isinstance(job.levelled_from[0], ToneMap)
    views = engine._attacker_views(job)
    assert {PHOTO_TONES_VIEW, STRETCHED_VIEW} <= set(views)
    (face,) = job.faces
    # judged against the original in the engine's levels (the nearest it has to a clear photo),
    # not against the original seen the same way, whose banding a drawing shares
    originals = engine._originals_in_views(job, views, [face])
    levelled = engine._embedded_at(job.pixels, job.pixels.shape, [face])
    for oracle in engine.oracles:
        assert np.allclose(originals[STRETCHED_VIEW][oracle.name][face.index], levelled[oracle.name][face.index])
    face.method = GENERATED  # the original left in place
    assert engine._recognised_where(job, views) == [(face, PHOTO_TONES_VIEW)]
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    job.output[max(0, y1 - 20): y2 + 20, max(0, x1 - 20): x2 + 20] = 128
    assert engine._recognised_in_views(job, views) == []
    assert not {PHOTO_TONES_VIEW, STRETCHED_VIEW} & set(engine._attacker_views(engine._detect_and_align(astronaut, {})))


def test_ordinary_photos_have_no_faded_faces(obfuscating, astronaut, camera, no_face_image):
    for image in (astronaut, camera, no_face_image):
        assert not any(FADED_TAG in d.detector for d in obfuscating.detector.detect(image))
        assert hidden_faces_tone_map(image, obfuscating.detector.detect(image)) is None


def test_faded_regions_are_textured_and_of_any_brightness():
    rng = np.random.default_rng(0)
    image = np.zeros((200, 400, 3), np.uint8)
    image[:, :100] = 200  # flat: nothing to level
    image[:, 100:200] = rng.integers(220, 245, (200, 100, 3))  # faded bright
    image[:, 200:300] = rng.integers(0, 256, (200, 100, 3))  # full contrast
    image[:, 300:] = rng.integers(110, 135, (200, 100, 3))  # faded grey
    centres = sorted((x1 + x2) / 2 for (x1, _, x2, _), _ in faded_regions(image, 20))
    assert len(centres) == 2 and 100 < centres[0] < 200 and 300 < centres[1] < 400, centres
    # a region inside a face the photo shows is part of that face
    assert len(faded_regions(image, 20, known=[(280.0, 0.0, 400.0, 200.0)])) == 1


def test_per_channel_levels_come_back_exactly_where_nothing_was_redrawn(astronaut):
    image = _overlaid(astronaut, *OVERLAYS["pale blue"])
    levels = faded_levels(image, (175.0, 60.0, 265.0, 180.0))
    assert levels.table.shape == (256, 3)
    flat = levels.apply(image)
    redrawn = flat.copy()
    redrawn[100:140, 200:240] = (10, 128, 250)
    back = levels.restore(image, flat, redrawn)
    changed = (redrawn != flat).any(axis=2)
    assert np.array_equal(back[~changed], image[~changed])
    # brought back through each channel's own curve: into the overlay's range, channel by channel
    for channel in range(3):
        lo, hi = np.percentile(image[60:180, 175:265, channel], [0.5, 99.5])
        assert lo - 2 <= back[100:140, 200:240, channel].min() <= back[100:140, 200:240, channel].max() <= hi + 2


def test_a_face_another_detector_finds_in_a_fade_is_worked_on_levelled(astronaut, camera):
    image = _overlaid(astronaut, *OVERLAYS["grey"])
    hog_face = Detection((175.0, 60.0, 265.0, 180.0), 0.6, np.zeros((5, 2)), "hog")
    tones = hidden_faces_tone_map(image, [hog_face])
    assert tones is not None
    x1, y1, x2, y2 = 195, 85, 245, 150
    span = np.ptp(luma(tones.apply(image)[y1:y2, x1:x2]))
    assert span > 3 * np.ptp(luma(image[y1:y2, x1:x2]))
    # a face of ordinary contrast is left in its own tones
    assert hidden_faces_tone_map(astronaut, [hog_face]) is None


def test_a_hidden_face_is_levelled_whole_beside_another_face(astronaut):
    image = _overlaid(astronaut, *OVERLAYS["white"])
    hidden = (175.0, 60.0, 265.0, 180.0)
    neighbour = (270.0, 40.0, 360.0, 160.0)  # its grown box reaches over the hidden face
    tones = regional_tone_map([faded_levels(image, hidden)], others=[neighbour], hidden=[hidden])
    flat = tones.apply(image)
    # every pixel of the hidden face within its curve's band is levelled, none left as a block
    # in the photo's tones where the neighbour's region reaches over it
    assert np.ptp(luma(flat[70:170, 240:260])) > 3 * np.ptp(luma(image[70:170, 240:260]))
    assert np.array_equal(flat[40:160, 340:360], image[40:160, 340:360])  # the neighbour's own pixels stay
