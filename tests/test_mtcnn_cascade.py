"""The batched MTCNN cascade finds what facenet-pytorch's own ``detect_face`` finds."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from idmrag_plugin.engine.fast_pool import replace_max_pools
from idmrag_plugin.engine.mtcnn_cascade import BoxSampler, CascadeNets, detect_faces

facenet_pytorch = pytest.importorskip("facenet_pytorch")
from facenet_pytorch.models.utils.detect_face import detect_face

THRESHOLDS = (0.6, 0.7, 0.7)


@pytest.fixture(scope="module")
def mtcnn():
    model = facenet_pytorch.MTCNN(keep_all=True, min_face_size=20, thresholds=list(THRESHOLDS), post_process=False)
    replace_max_pools(model)
    return model


def _reference(mtcnn, batch: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with torch.inference_mode():
        boxes, points = detect_face(batch, 20, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, list(THRESHOLDS), 0.709, "cpu")
    # facenet-pytorch 2.5.3 returns object arrays under numpy 2
    return ([np.asarray(b.tolist(), dtype=np.float64).reshape(-1, 5) for b in boxes],
            [np.asarray(p.tolist(), dtype=np.float64).reshape(-1, 5, 2) for p in points])


def _scenes() -> list[np.ndarray]:
    astronaut = skimage.data.astronaut()
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    two = np.concatenate([astronaut[:, 96:416], astronaut[:, 96:416]], axis=1)  # two faces side by side
    small = astronaut[::4, ::4].copy()  # a 128 px photo, a face of ~30 px
    noise = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    return [astronaut, camera, two, small, noise]


@pytest.mark.parametrize("index", range(5))
def test_boxes_scores_and_landmarks_equal_facenet_pytorch_s_at_every_quarter_turn(mtcnn, index):
    image = _scenes()[index]
    nets = CascadeNets(mtcnn.pnet, mtcnn.rnet, mtcnn.onet)
    found = []
    for batch in (np.stack([image, np.rot90(image, 2)]), np.stack([np.rot90(image, 1), np.rot90(image, 3)])):
        expected_boxes, expected_points = _reference(mtcnn, np.ascontiguousarray(batch))
        with torch.inference_mode():
            boxes, points = detect_faces(batch, nets, 20, THRESHOLDS)
        for got, want in zip(boxes, expected_boxes, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-3)
        for got, want in zip(points, expected_points, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-3)
        found.append([len(b) for b in boxes])
    if index < 2:
        assert found[0][0] >= 1  # the upright photo's face is found (the comparison is not vacuous)


def test_box_resampling_from_the_integral_image_equals_pooling_each_box():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 97, 131)).astype(np.float32))
    y0 = rng.integers(0, 60, 40)
    x0 = rng.integers(0, 90, 40)
    y1 = np.minimum(y0 + rng.integers(1, 80, 40), 97)
    x1 = np.minimum(x0 + rng.integers(1, 80, 40), 131)
    index = torch.from_numpy(rng.integers(0, 2, 40))
    by_box = BoxSampler(images)
    by_box.PIXELS_PER_BOX = 0  # always box by box
    integral = BoxSampler(images)
    integral.PIXELS_PER_BOX = 10**9  # always from the integral image
    for size in (24, 48):
        np.testing.assert_allclose(integral.crops(index, y0, y1, x0, x1, size).numpy(),
                                   by_box.crops(index, y0, y1, x0, x1, size).numpy(), atol=1e-4)


@pytest.mark.parametrize("height", [12, 13, 75, 150, 151, 431])
def test_the_proposal_network_in_strips_equals_one_pass(mtcnn, height, monkeypatch):
    from idmrag_plugin.engine import mtcnn_cascade

    monkeypatch.setattr(mtcnn_cascade, "STRIP_ROWS", 5)  # strips even on small inputs, a ragged last one
    data = torch.randn(2, 3, height, 37)
    with torch.inference_mode():
        whole = mtcnn.pnet(data)
        strips = mtcnn_cascade._proposals(mtcnn.pnet, data)
    for got, want in zip(strips, whole, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)



def test_the_cascade_on_onnx_runtime_finds_what_torch_finds(tmp_path):
    """The networks exported for ONNX Runtime (P-Net at any pyramid level's size) give the
    torch cascade's boxes, scores and landmarks, on every test scene and a batch of turns."""
    pytest.importorskip("onnxruntime")
    from idmrag_plugin.engine.mtcnn_cascade import onnx_cascade

    model = facenet_pytorch.MTCNN(keep_all=True, min_face_size=20, thresholds=list(THRESHOLDS), post_process=False)
    exported = onnx_cascade(model, "onnxruntime", "cpu", tmp_path, 1)
    assert exported is not None and sorted(p.name for p in tmp_path.glob("*.onnx")) == [
        "mtcnn_onet.onnx", "mtcnn_pnet.onnx", "mtcnn_rnet.onnx"]
    assert onnx_cascade(model, "torch", "cpu", tmp_path, 1) is None
    replace_max_pools(model)
    torch_nets = CascadeNets(model.pnet, model.rnet, model.onet)
    found = 0
    for image in _scenes():
        for batch in (image[None], np.stack([image, np.rot90(image, 2)])):
            with torch.inference_mode():
                want_boxes, want_points = detect_faces(batch, torch_nets, 20, THRESHOLDS)
                got_boxes, got_points = detect_faces(batch, exported, 20, THRESHOLDS)
            for got, want in zip(got_boxes + got_points, want_boxes + want_points, strict=True):
                assert got.shape == want.shape
                np.testing.assert_allclose(got, want, atol=1e-3)
            found += sum(len(b) for b in want_boxes)
    assert found >= 4  # faces were found (the comparison is not vacuous)


def test_the_detector_runtime_is_a_checked_setting_that_reaches_the_detector(tmp_path):
    from idmrag_plugin import AnonymizerConfig, ConfigError
    from idmrag_plugin.engine.detect import MTCNNDetector

    with pytest.raises(ConfigError, match="detector_runtime"):
        AnonymizerConfig(detector_runtime="tensorrt")
    detector = MTCNNDetector(runtime="torch", cache_dir=tmp_path)
    detector.load()
    assert detector._nets.pnet is detector._mtcnn.pnet  # torch's own module
    shared = detector.sharing_networks(40)
    shared.load()
    assert shared._nets is detector._nets and shared.runtime == "torch"
