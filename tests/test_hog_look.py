"""dlib's HOG detector's look after the MTCNN searches: the faces they miss are replaced too."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
from conftest import PlantedDetector, assert_judged_another_person

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.detect import (
    Detection,
    DlibHOGDetector,
    MTCNNDetector,
    box_iou,
)
from idmrag_plugin.engine.hog_look import HOG_PIXELS, MIN_MARGIN, HOGLook, covers, hog_scales
from idmrag_plugin.report import GENERATED, OBFUSCATED


@pytest.mark.parametrize("shape", [(250, 250), (375, 500), (512, 512), (1428, 2000), (6000, 4000), (9, 9)])
def test_hog_looks_within_its_pixel_budget(shape):
    scales = hog_scales(shape)
    assert max(scales) <= 2.0
    assert max(scales) ** 2 * shape[0] * shape[1] <= HOG_PIXELS * 1.0001
    # small photos are looked at enlarged (faces from 40 px) and at their own size
    assert (scales == [2.0, 1.0]) == (4 * shape[0] * shape[1] <= HOG_PIXELS)


def test_a_face_the_mtcnn_searches_miss_is_found_by_hog(astronaut):
    (upright,) = MTCNNDetector().detect(astronaut)
    (face,) = HOGLook(PlantedDetector([])).detect(astronaut)
    assert face.detector == "hog" and box_iou(face.box, upright.box) > 0.3
    # its points are where MTCNN puts the eyes
    assert np.abs(face.landmarks[:2] - upright.landmarks[:2]).max() < 0.15 * (upright.box[2] - upright.box[0])


def test_faces_the_searches_found_are_not_added_again(astronaut, camera):
    for image in (astronaut, camera):
        found = [d.box for d in MTCNNDetector().detect(image)]
        assert found and [d.box for d in HOGLook(MTCNNDetector()).detect(image)] == found


def test_hog_looks_at_a_large_photo_shrunk_and_maps_faces_back(astronaut):
    large = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    (upright,) = MTCNNDetector().detect(astronaut)
    (face,) = HOGLook(PlantedDetector([])).detect(large)
    assert box_iou(tuple(v / 4 for v in face.box), upright.box) > 0.3


def test_the_engine_replaces_a_face_only_hog_finds(astronaut, oracles):
    blind = FaceAnonymizer(AnonymizerConfig(generator="none", hog_search=False), detector=PlantedDetector([]), oracles=oracles)
    assert blind.anonymize(astronaut).faces == []  # the leak the look closes
    engine = FaceAnonymizer(AnonymizerConfig(cache_size=0), detector=PlantedDetector([]), oracles=oracles)
    engine.generator.secret = b"s0"  # one pseudonym secret: the drawings are the same each run
    result = engine.anonymize(astronaut)
    (face,) = result.faces
    assert face.detection.detector == "hog"
    assert face.method == GENERATED and face.verified or face.method == OBFUSCATED
    assert_judged_another_person(astronaut, [result.pixels], oracles, engine.thresholds)


def test_no_hog_look_when_hog_is_in_every_pass():
    engine = FaceAnonymizer(AnonymizerConfig(generator="none", detector="mtcnn+hog"))
    assert not isinstance(engine.detector, HOGLook)
    assert isinstance(FaceAnonymizer(AnonymizerConfig(generator="none")).detector, HOGLook)


def _censor_bar(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A black bar over the eyes of dlib's 68 points."""
    eyes = points[36:48]
    width = eyes[:, 0].max() - eyes[:, 0].min()
    y = eyes[:, 1].mean()
    barred = image.copy()
    cv2.rectangle(barred, (int(eyes[:, 0].min() - 0.2 * width), int(y - 0.18 * width)),
                  (int(eyes[:, 0].max() + 0.2 * width), int(y + 0.18 * width)), (0, 0, 0), -1)
    return barred


@pytest.mark.lfw
def test_every_barred_face_an_attackers_hog_finds_is_searched(lfw, engine):
    """A censor bar over the eyes hid several of these faces from MTCNN; dlib's HOG detector
    still finds them (those it scores MIN_MARGIN or more are searched) and dlib's descriptor
    still matches them to the person."""
    import dlib

    from idmrag_plugin.engine.oracles import face_model_file
    from idmrag_plugin.image_io import load_rgb

    attacker = dlib.get_frontal_face_detector()
    points68 = dlib.shape_predictor(str(face_model_file("shape_predictor_68_face_landmarks.dat")))
    without = FaceAnonymizer(AnonymizerConfig(generator="none", hog_search=False), oracles=engine.oracles)
    people = sorted(p for p in (lfw / "images").iterdir() if p.is_dir())
    missed_without = barred_faces = 0
    for person in random.Random(4).sample(people, 20):
        image = load_rgb(min(person.glob("*.jpg")), 50_000_000)
        rects = attacker(image, 1)
        if not rects:
            continue
        shape = points68(image, rects[0])
        barred = _censor_bar(image, np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64))
        found = engine.detector.detect(barred)
        for upsample in (0, 1):
            rects, _, _ = attacker.run(barred, upsample, MIN_MARGIN)
            for rect in rects:
                box = (rect.left(), rect.top(), rect.right(), rect.bottom())
                barred_faces += 1
                assert any(box_iou(box, f.box) > 0.3 for f in found), (person.name, box)
                missed_without += not any(box_iou(box, f.box) > 0.3 for f in without.detector.detect(barred))
    assert barred_faces >= 20 and missed_without >= 1


@pytest.mark.lfw
def test_the_default_search_finds_every_hand_marked_scene_face(scenes, engine):
    from idmrag_plugin.image_io import load_rgb

    total = 0
    for node in ET.parse(scenes / "training.xml").getroot().iter("image"):
        found = engine.detector.detect(load_rgb(scenes / node.get("file"), 50_000_000))
        for box in node.iter("box"):
            if box.get("ignore") == "1":
                continue
            x, y, w, h = (float(box.get(k)) for k in ("left", "top", "width", "height"))
            total += 1
            assert any(box_iou(d.box, (x, y, x + w, y + h)) > 0.3 for d in found), (node.get("file"), x, y)
    assert total >= 18


def test_hog_finds_faces_at_a_given_enlargement(astronaut):
    (upright,) = MTCNNDetector().detect(astronaut)
    small = np.ascontiguousarray(astronaut[::3, ::3])  # her face about 30 px: found only enlarged
    hog = DlibHOGDetector()
    assert not [d for d in hog.detect_upsampled(small, 0) if box_iou(d.box, tuple(v / 3 for v in upright.box)) > 0.3]
    assert [d for d in hog.detect_upsampled(small, 1) if box_iou(d.box, tuple(v / 3 for v in upright.box)) > 0.3]


def test_a_found_face_covers_hog_s_only_when_it_holds_its_centre_at_a_like_size():
    points = np.zeros((5, 2))
    hog = Detection((100.0, 100.0, 200.0, 200.0), 0.7, points, "hog")
    head = Detection((80.0, 70.0, 240.0, 250.0), 0.9, points, "mtcnn@border")  # a cut face's whole head
    lower_half = Detection((100.0, 151.0, 190.0, 206.0), 0.98, points, "mtcnn@90")  # below its centre
    huge = Detection((0.0, 0.0, 400.0, 400.0), 0.9, points, "mtcnn@135")
    nose = Detection((140.0, 140.0, 160.0, 160.0), 0.9, points, "mtcnn")
    assert covers(head, hog)
    assert box_iou(lower_half.box, hog.box) > 0.3 and not covers(lower_half, hog)
    assert not covers(huge, hog) and not covers(nose, hog)


def test_a_turned_reading_of_part_of_a_face_hog_finds_upright_gives_way_to_it(astronaut):
    (upright,) = MTCNNDetector().detect(astronaut)
    x1, y1, x2, y2 = upright.box
    points = np.zeros((5, 2))
    lower_half = Detection((x1, (y1 + y2) / 2 + 15, x2, y2 + 10), 0.98, points, "mtcnn@90")  # below its centre
    elsewhere = Detection((20.0, 300.0, 80.0, 360.0), 0.98, points, "mtcnn@270")
    found = HOGLook(PlantedDetector([lower_half, elsewhere])).detect(astronaut)
    assert [d.detector for d in found] == ["mtcnn@270", "hog"]
