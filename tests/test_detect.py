from __future__ import annotations

import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from idmrag_plugin.engine.detect import DlibHOGDetector, MTCNNDetector, UnionDetector, box_iou


def test_mtcnn_finds_the_astronaut_and_the_cameraman(engine, astronaut, camera):
    (face,) = engine.detector.detect(astronaut)
    assert box_iou(face.box, (181, 62, 268, 172)) > 0.7 and face.score > 0.99
    assert face.landmarks.shape == (5, 2)
    left_eye, right_eye = face.landmarks[0], face.landmarks[1]
    assert left_eye[0] < right_eye[0]
    (face,) = engine.detector.detect(camera)
    assert box_iou(face.box, (199, 119, 254, 192)) > 0.6


def test_small_background_faces_are_found(astronaut):
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)  # face about 24 px
    canvas = np.full((400, 400, 3), 128, np.uint8)
    canvas[50:178, 200:328] = small
    assert MTCNNDetector(min_face_size=20).detect(canvas)
    assert not MTCNNDetector(min_face_size=60).detect(canvas)


def test_hog_union_adds_faces_mtcnn_missed(astronaut):
    union = UnionDetector([MTCNNDetector(), DlibHOGDetector()])
    faces = union.detect(astronaut)
    assert len(faces) == 1  # the same face found twice is kept once
    hog_only = DlibHOGDetector().detect(astronaut)
    assert hog_only and hog_only[0].landmarks.shape == (5, 2)
    assert box_iou(hog_only[0].box, faces[0].box) > 0.3


def test_no_face_in_a_photo_without_people(engine, no_face_image):
    assert engine.detector.detect(no_face_image) == []


@pytest.mark.lfw
def test_recall_on_hand_marked_scene_faces(scenes):
    """Every hand-marked face of dlib's PASCAL VOC scenes (ignore boxes aside)."""
    from idmrag_plugin.image_io import load_rgb

    detector = UnionDetector([MTCNNDetector(min_face_size=12), DlibHOGDetector()])
    found = total = 0
    for node in ET.parse(scenes / "training.xml").getroot().iter("image"):
        image = load_rgb(scenes / node.get("file"), 50_000_000)
        detections = detector.detect(image)
        for box in node.iter("box"):
            if box.get("ignore") == "1":
                continue
            x, y, w, h = (float(box.get(k)) for k in ("left", "top", "width", "height"))
            total += 1
            found += any(box_iou(d.box, (x, y, x + w, y + h)) > 0.3 for d in detections)
    assert total > 0
    assert found / total >= 0.9, f"recall {found}/{total}"
