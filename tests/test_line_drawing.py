"""Photos through an editor's line filters (emboss, contour, edges): their faces, which MTCNN
misses, are found by HOG in a pencil sketch of the drawing and replaced."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import assert_judged_another_person
from PIL import Image, ImageFilter

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import MTCNNDetector
from idmrag_plugin.engine.hog_look import SKETCH_TAG, is_line_drawing, pencil_sketch
from idmrag_plugin.engine.oracles import cosine

FILTERS = {"emboss": ImageFilter.EMBOSS, "contour": ImageFilter.CONTOUR, "edges": ImageFilter.FIND_EDGES}


def _filtered(image: np.ndarray, name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(FILTERS[name]))


def test_photos_are_no_line_drawings_and_filtered_photos_are(astronaut, camera, no_face_image):
    for image in (astronaut, camera, no_face_image):
        assert not is_line_drawing(image)
    for name in FILTERS:
        assert is_line_drawing(_filtered(astronaut, name)), name
        assert is_line_drawing(_filtered(camera, name)), name
    # a halftone of her photo is as flat and as fine, but blurred it is a photo again
    grey = cv2.blur(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0, (6, 6))
    yy, xx = np.mgrid[0:grey.shape[0], 0:grey.shape[1]]
    reach = np.hypot(xx % 6 - 2.5, yy % 6 - 2.5) / (6 / np.sqrt(2.0))
    printed = np.repeat(((reach > np.sqrt(1.0 - grey)) * 255).astype(np.uint8)[..., None], 3, axis=2)
    assert not is_line_drawing(printed)


def test_the_pencil_sketch_is_dark_lines_on_white(astronaut):
    edges = _filtered(astronaut, "edges")  # faint light lines on black
    sketch = pencil_sketch(edges)
    assert sketch.shape == edges.shape and np.median(sketch) > 240
    assert (sketch < 64).mean() > 0.005  # the lines, darkened


# dlib matches the astronaut's embossed face to her photo (+0.03); her edges face, which anyone
# sees, no oracle does
@pytest.mark.parametrize(("name", "matched"), [("edges", False), ("emboss", True)])
def test_a_face_in_a_line_drawing_is_found_and_replaced(engine, astronaut, name, matched):
    drawing = _filtered(astronaut, name)
    (upright,) = MTCNNDetector().detect(astronaut)
    without = FaceAnonymizer(AnonymizerConfig(hog_search=False, cache_size=0), oracles=engine.oracles)
    missed = without.anonymize(drawing)
    assert missed.status == "no_faces" and np.array_equal(missed.pixels, drawing)
    # the leak that closes: the drawing returned as it was, matched to the astronaut's photo
    views = [drawing, cv2.GaussianBlur(drawing, (0, 0), 1.5), 255 - drawing]
    assert matched == any(float(cosine(o.embed_faces(astronaut, [upright.landmarks]), o.embed_faces(v, [upright.landmarks]))[0])
               >= without.thresholds[o.name] for o in engine.oracles for v in views)

    searching = FaceAnonymizer(AnonymizerConfig(cache_size=0), oracles=engine.oracles)
    result = searching.anonymize(drawing)
    (face,) = [f for f in result.faces if f.detection.box[0] < upright.landmarks[2][0] < f.detection.box[2]]
    assert face.detection.detector.endswith(SKETCH_TAG) and face.method in ("generated", "obfuscated")
    out = result.pixels
    assert_judged_another_person(astronaut, [out, cv2.GaussianBlur(out, (0, 0), 1.5), 255 - out],
                                 engine.oracles, searching.thresholds)
