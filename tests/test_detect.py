from __future__ import annotations

import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import torch

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


def test_union_keeps_every_mtcnn_face_and_adds_only_new_hog_faces(astronaut):
    mtcnn, hog = MTCNNDetector(), DlibHOGDetector()
    union = UnionDetector([mtcnn, hog]).detect(astronaut)
    first, hog_faces = mtcnn.detect(astronaut), hog.detect(astronaut)
    assert hog_faces and all(f.landmarks.shape == (5, 2) for f in hog_faces)
    assert [d.box for d in union[: len(first)]] == [d.box for d in first]
    new = [h for h in hog_faces if all(box_iou(h.box, m.box) < 0.3 for m in first)]
    assert len(union) == len(first) + len(new)
    # HOG also found the astronaut; that duplicate is not added twice.
    assert any(box_iou(h.box, first[0].box) >= 0.3 for h in hog_faces)


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


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2)])
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_sliced_max_pool_equals_torch_s(kernel, stride, ceil_mode):
    from torch import nn

    from idmrag_plugin.engine.fast_pool import SlicedMaxPool2d

    torch.manual_seed(0)
    for h, w in [(3, 3), (4, 5), (22, 22), (23, 24), (147, 149), (3, 7)]:
        x = torch.randn(2, 3, h, w)
        expected = nn.MaxPool2d(kernel, stride, ceil_mode=ceil_mode)(x)
        assert torch.equal(SlicedMaxPool2d(kernel, stride, ceil_mode)(x), expected), (h, w)


def test_mtcnn_with_sliced_pools_finds_what_stock_mtcnn_finds(astronaut, camera):
    from facenet_pytorch import MTCNN
    from torch import nn

    detector = MTCNNDetector()
    detector.load()
    assert not [m for m in detector._mtcnn.modules() if isinstance(m, nn.MaxPool2d)]
    stock = MTCNN(keep_all=True, min_face_size=20, thresholds=[0.6, 0.7, 0.7], select_largest=False,
                  post_process=False)
    for image in (astronaut, camera):
        with torch.inference_mode():
            boxes, probs, _points = stock.detect(image, landmarks=True)
        found = detector.detect(image)
        assert len(found) == len(boxes) >= 1
        for det, box, prob in zip(found, boxes, probs, strict=True):
            assert np.allclose(det.box, np.asarray(box, dtype=np.float64), atol=1e-4)
            assert abs(det.score - float(prob)) < 1e-6
