from __future__ import annotations

import cv2
import numpy as np
import pytest

from idmrag_plugin.calibration import load_calibration, read_pairs, thresholds_for
from idmrag_plugin.engine.detect import central_face
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.image_io import load_rgb


def test_converted_facenet_matches_the_original_graph():
    import torch

    from idmrag_plugin.engine.facenet_convert import facenet_graph_path
    from idmrag_plugin.weights import load_facenet

    model = load_facenet().eval()
    net = cv2.dnn.readNetFromTensorflow(str(facenet_graph_path()))
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 160)).astype(np.float32)
    net.setInput(x)
    reference = net.forward().ravel()
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy().ravel()
    assert float(cosine(reference[None], ours[None])[0]) > 0.9999


def test_folded_batch_norms_leave_facenet_s_embeddings_as_they_were():
    import torch

    from idmrag_plugin.engine.oracles import fold_batch_norms
    from idmrag_plugin.weights import load_facenet

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 3, 160, 160)).astype(np.float32))
    with torch.no_grad():
        plain = load_facenet().eval()(x)
        folded_model = fold_batch_norms(load_facenet())
        folded = folded_model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded_model.modules())
    assert torch.allclose(plain, folded, atol=1e-5)


def test_facenet_is_differentiable(oracles, astronaut, engine):
    import torch

    facenet = next(o for o in oracles if o.name == "facenet")
    facenet.load()
    (det,) = engine.detector.detect(astronaut)
    crops = facenet.crops(astronaut, [det.landmarks])
    x = facenet.preprocess(crops).requires_grad_(True)
    facenet.model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_same_person_above_and_different_people_below_threshold(engine, oracles, astronaut, camera):
    (a,) = engine.detector.detect(astronaut)
    (c,) = engine.detector.detect(camera)
    # The same person re-photographed: rescaled, recompressed, slightly brighter.
    retaken = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    retaken = cv2.imdecode(cv2.imencode(".jpg", np.clip(retaken * 1.1, 0, 255).astype(np.uint8))[1], cv2.IMREAD_UNCHANGED)
    (r,) = engine.detector.detect(retaken)
    for oracle in oracles:
        ea = oracle.embed_faces(astronaut, [a.landmarks])
        same = float(cosine(ea, oracle.embed_faces(retaken, [r.landmarks]))[0])
        different = float(cosine(ea, oracle.embed_faces(camera, [c.landmarks]))[0])
        assert same >= engine.thresholds[oracle.name] > different, (oracle.name, same, different)


def test_shipped_calibration_has_both_levels_in_order():
    calibration = load_calibration()
    loose = thresholds_for("far1e-2", ["dlib", "facenet"], calibration)
    strict = thresholds_for("far1e-3", ["dlib", "facenet"], calibration)
    for name in ("dlib", "facenet"):
        entry = calibration["oracles"][name]
        assert strict[name] > loose[name]  # stricter privacy = lower FAR = higher similarity cut
        assert entry["fit_impostor_pairs"] >= 100_000
        assert entry["held_out_far"]["far1e-2"] < 0.02


@pytest.mark.lfw
def test_lfw_genuine_pairs_verified_and_impostors_rejected(lfw, engine, plain_detector, oracles):
    genuine, impostor = read_pairs(lfw / "pairs.txt")

    found: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # each photo searched once

    def embed(name: str, index: int, oracle):
        if (name, index) not in found:
            image = load_rgb(lfw / "images" / name / f"{name}_{index:04d}.jpg", 10_000_000)
            face = central_face(plain_detector.detect(image), image.shape)
            assert face is not None
            found[name, index] = image, face.landmarks
        image, landmarks = found[name, index]
        return oracle.embed_faces(image, [landmarks])

    for oracle in oracles:
        threshold = engine.thresholds[oracle.name]
        same = [float(cosine(embed(a, i, oracle), embed(b, j, oracle))[0]) for a, i, b, j in genuine[:15]]
        diff = [float(cosine(embed(a, i, oracle), embed(b, j, oracle))[0]) for a, i, b, j in impostor[:15]]
        assert np.mean(np.array(same) >= threshold) >= 0.8, (oracle.name, same)
        assert np.mean(np.array(diff) >= threshold) <= 0.15, (oracle.name, diff)
