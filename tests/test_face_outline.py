"""Inside the drawn ellipse, the photo is kept where neither face is (hair, background, neck);
every pixel of either face is the drawing's."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer, GenerationRequest
from idmrag_plugin.engine.align import template
from idmrag_plugin.engine.face_outline import MIN_MARGIN, FaceOutliner, drawn_region, outline_of
from idmrag_plugin.generation.renderer_generator import OUTLINE_FEATHER

SIDE = 128


@pytest.fixture(autouse=True)
def _unfit_attempts_kept(unfit_attempts_kept):
    """Every least unfit drawing kept here: these tests call the generator itself, whose memory
    of earlier tests may leave every code unfit (see conftest.unfit_attempts_kept)."""


@pytest.fixture(scope="module")
def drawing_generator(engine):
    """The default generator (packaged renderer and code LCM) with a fixed pseudonym secret."""
    generator = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", cache_size=0),
                               detector=engine.detector, oracles=engine.oracles).generator
    generator.secret = b"test-face-outline"
    return generator


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    return np.array([cv2.pointPolygonTest(polygon, (float(x), float(y)), True) for x, y in points])


def test_a_face_s_outline_holds_its_inner_face_and_not_its_hair(astronaut_crop):
    outline = FaceOutliner().outline(astronaut_crop)
    assert outline is not None
    assert _inside(template(SIDE), outline).min() >= MIN_MARGIN * SIDE
    region = drawn_region(SIDE, [outline]) > 0.5
    assert not region[: round(0.12 * SIDE)].any()  # the astronaut's hair above the forehead
    chin = np.nonzero(region.any(axis=1))[0].max() / SIDE
    assert 0.8 < chin < 1.0
    ellipse = np.zeros((SIDE, SIDE), np.uint8)
    cv2.ellipse(ellipse, (64, 70), (round(0.33 * SIDE), round(0.44 * SIDE)), 0, 0, 360, 1, thickness=-1)
    assert region.sum() < 0.9 * ellipse.sum()


@pytest.mark.parametrize("damage", ["collapsed", "shrunk", "nan", "too few"])
def test_an_outline_that_misses_the_inner_face_is_not_believed(astronaut_crop, damage):
    points = FaceOutliner().points(astronaut_crop)
    assert outline_of(points, SIDE) is not None
    centre = points.mean(axis=0)
    damaged = {
        "collapsed": np.repeat(centre[None], 68, axis=0),
        "shrunk": centre + 0.3 * (points - centre),
        "nan": np.where(np.arange(68)[:, None] == 8, np.nan, points),
        "too few": points[:17],
    }[damage]
    assert outline_of(damaged, SIDE) is None


def test_the_inner_face_is_drawn_whatever_the_outlines():
    core = drawn_region(SIDE, [])
    ring = cv2.findContours((core > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0][0]
    assert _inside(template(SIDE), ring.reshape(-1, 2).astype(np.float32)).min() >= MIN_MARGIN * SIDE


def test_the_photo_comes_back_outside_both_faces_and_never_inside_either(drawing_generator, astronaut_crop):
    generator = drawing_generator
    generator.keep_outside_face = False
    try:
        drawn = generator.generate(GenerationRequest(astronaut_crop.copy(), attempt=0, seed=3))
    finally:
        generator.keep_outside_face = True
    inside = generator.mask(SIDE, generator.mask_grow_for(0))
    kept = generator._photo_outside_faces(drawn, astronaut_crop, inside)
    outliner = FaceOutliner()
    outlines = [outliner.outline(astronaut_crop), outliner.outline(drawn)]
    assert all(o is not None for o in outlines)
    faces = drawn_region(SIDE, outlines) > 0.5
    # every pixel of either face, and everything outside the ellipse, is the drawing's composite
    assert np.array_equal(kept[faces], drawn[faces])
    assert np.array_equal(kept[inside < 0.5], drawn[inside < 0.5])
    # beyond the seam, the photo's own pixels: a real share of the ellipse (the hair)
    beyond = cv2.distanceTransform((~faces).astype(np.uint8), cv2.DIST_L2, 5)
    photo = (inside > 0.5) & (beyond > OUTLINE_FEATHER * SIDE + 1)
    assert photo.sum() > 0.02 * (inside > 0.5).sum()  # 4% here: the drawn face is wider than hers
    assert np.array_equal(kept[photo], astronaut_crop[photo])
    assert (drawn[photo] != astronaut_crop[photo]).any(axis=-1).mean() > 0.5  # the drawing had redrawn them


def test_an_outline_not_believed_leaves_the_whole_ellipse_drawn(drawing_generator, astronaut_crop, monkeypatch):
    generator = drawing_generator
    drawn = np.full_like(astronaut_crop, 127)
    inside = generator.mask(SIDE, generator.mask_grow_for(0))
    assert not np.array_equal(generator._photo_outside_faces(drawn, astronaut_crop, inside), drawn)
    real_points = generator._outliner.points

    def lost_on_the_drawing(crop: np.ndarray) -> np.ndarray:
        points = real_points(crop)
        return points.mean(axis=0) + 0.3 * (points - points.mean(axis=0)) if crop is drawn else points

    monkeypatch.setattr(generator._outliner, "points", lost_on_the_drawing)
    assert np.array_equal(generator._photo_outside_faces(drawn, astronaut_crop, inside), drawn)


def test_the_default_engine_keeps_the_hair_and_the_setting_turns_it_off(engine, astronaut_crop):
    """... and a face refused twice (drawn over the wider ellipse) is drawn whole."""
    from idmrag_plugin.generation.renderer_generator import WIDER_MASK_FROM_ATTEMPT

    late = {}
    for keep in (True, False):
        generator = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", keep_outside_face=keep, cache_size=0),
                                   detector=engine.detector, oracles=engine.oracles).generator
        generator.secret = b"test-face-outline"
        assert generator.keep_outside_face is keep
        out = generator.generate(GenerationRequest(astronaut_crop.copy(), attempt=0, seed=3))
        hair = np.zeros((SIDE, SIDE), bool)
        hair[17:20, 58:71] = True  # above the forehead, inside the ellipse
        assert (generator.mask(SIDE, generator.mask_grow_for(0)) > 0.5)[hair].all()
        assert np.array_equal(out[hair], astronaut_crop[hair]) is keep
        late[keep] = generator.generate(GenerationRequest(astronaut_crop.copy(), attempt=WIDER_MASK_FROM_ATTEMPT, seed=3))
    assert np.array_equal(late[True], late[False])


def test_the_engine_returns_the_photo_s_own_pixels_around_a_drawn_face(engine, astronaut):
    """End to end (detect, draw, verify, paste): with the photo kept around the faces, many
    more pixels of the face's surroundings come back exactly as they were; the face itself is
    replaced either way."""
    exact = {}
    for keep in (True, False):
        anonymizer = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", keep_outside_face=keep, cache_size=0),
                                    detector=engine.detector, oracles=engine.oracles)
        anonymizer.generator.secret = b"test-face-outline"
        result = anonymizer.anonymize(astronaut)
        (face,) = result.faces
        assert face.method == "generated" and face.verified
        out = np.asarray(result.pixels)
        x1, y1, x2, y2 = (int(v) for v in face.detection.box)
        grown = out[max(0, y1 - 40) : y2 + 40, max(0, x1 - 40) : x2 + 40]
        original = astronaut[max(0, y1 - 40) : y2 + 40, max(0, x1 - 40) : x2 + 40]
        exact[keep] = int(np.all(grown == original, axis=-1).sum())
        eyes = face.detection.landmarks[:2].round().astype(int)
        assert all((out[y - 2 : y + 3, x - 2 : x + 3] != astronaut[y - 2 : y + 3, x - 2 : x + 3]).any() for x, y in eyes)
    assert exact[True] > exact[False] + 500, exact  # 1,064 more here: her ring of hair is thin
