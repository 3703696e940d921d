"""FaceNet's int8 screening copy: close to the float32 network, verdicts identical to the
exact ones, near-threshold similarities recomputed exactly, and off when it cannot be trusted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.onnx_runtime import onnx_network, onnxruntime_available
from idmrag_plugin.engine.oracles import build_oracle, check_faces, cosine
from idmrag_plugin.engine.screening import (
    MIN_AGREEMENT,
    SCREEN_MARGIN,
    activation_names,
    screening_network,
)
from idmrag_plugin.engine.views import Verifier

pytestmark = pytest.mark.skipif(not onnxruntime_available(), reason="screening runs on ONNX Runtime")


@pytest.fixture(scope="module")
def facenet():
    oracle = build_oracle("facenet", threads=1)
    assert oracle.screens, "the packaged int8 ranges should give a screening copy"
    return oracle


def test_the_int8_copy_stays_close_to_the_float_network(facenet, astronaut, camera, engine):
    faces = check_faces(facenet.input_size)
    exact, screened = facenet.embed(faces), facenet.embed_screen(faces)
    assert np.min(np.sum(exact * screened, axis=1)) >= MIN_AGREEMENT
    crops = np.concatenate([facenet.crops(photo, [d.landmarks for d in engine.detector.detect(photo)])
                            for photo in (astronaut, camera)])
    exact, screened = facenet.embed(crops), facenet.embed_screen(crops)
    error = abs(float(cosine(exact[:1], exact[1:2])[0]) - float(cosine(screened[:1], screened[1:2])[0]))
    assert error < SCREEN_MARGIN / 2


def test_screened_engine_gives_the_exact_engine_s_image_and_verdicts(astronaut, camera):
    results, detector = {}, None
    for screening in (True, False):
        engine = FaceAnonymizer(AnonymizerConfig(rotations=(0,), cache_size=0, threads=1, screening=screening),
                                detector=detector)
        detector = engine.detector
        engine.generator.secret = b"same pseudonym with and without screening"
        results[screening] = [engine.anonymize(photo) for photo in (astronaut, camera)]
    for screened, exact in zip(results[True], results[False], strict=True):
        assert np.array_equal(np.asarray(screened.pixels), np.asarray(exact.pixels))
        for a, b in zip(screened.faces, exact.faces, strict=True):
            assert (a.method, a.attempts) == (b.method, b.attempts)
            assert [(v.oracle, v.anonymous) for v in a.verdicts] == [(v.oracle, v.anonymous) for v in b.verdicts]
            for va, vb in zip(a.verdicts, b.verdicts, strict=True):
                tolerance = SCREEN_MARGIN if va.oracle.startswith("facenet") else 1e-5
                assert abs(va.similarity - vb.similarity) <= tolerance


def test_similarities_near_the_threshold_are_recomputed_exactly(facenet, engine, astronaut, camera):
    (astro,) = engine.detector.detect(astronaut)
    (cam,) = engine.detector.detect(camera)
    # "output": the cameraman's face pasted over the astronaut's is another person in her place
    exact_sim = float(cosine(facenet.embed_faces(astronaut, [astro.landmarks]),
                             facenet.embed_faces(camera, [cam.landmarks]))[0])
    screened_sim = float(cosine(facenet.embed_screen(facenet.crops(astronaut, [astro.landmarks])),
                                facenet.embed_screen(facenet.crops(camera, [cam.landmarks])))[0])
    assert abs(exact_sim - screened_sim) > 1e-6  # the copies differ, so the test can tell them apart

    def verdict(threshold: float):
        thresholds = {"facenet": threshold, "facenet@box": 0.99}
        verifier = Verifier([facenet], thresholds)
        # the verifier compares crops at the same landmarks: put the cameraman's crop there
        moved = astronaut.copy()
        x1, y1, x2, y2 = (round(v) for v in astro.box)
        cx1, cy1, cx2, cy2 = (round(v) for v in cam.box)
        import cv2

        moved[y1:y2, x1:x2] = cv2.resize(camera[cy1:cy2, cx1:cx2], (x2 - x1, y2 - y1))
        originals = verifier.prepare(astronaut, [astro], [0])
        (face,) = verifier.verdicts(originals, moved, [0])
        return next(v for v in face if v.oracle == "facenet"), moved

    near, moved = verdict(exact_sim + SCREEN_MARGIN / 2)
    exact_now = float(cosine(facenet.embed_faces(astronaut, [astro.landmarks]), facenet.embed_faces(moved, [astro.landmarks]))[0])
    assert near.similarity == pytest.approx(exact_now, abs=1e-5) and near.exact and near.to_dict()["exact"]
    far, _ = verdict(min(exact_now + 3 * SCREEN_MARGIN, 0.999))
    screened_now = float(cosine(facenet.embed_screen(facenet.crops(astronaut, [astro.landmarks])),
                                facenet.embed_screen(facenet.crops(moved, [astro.landmarks])))[0])
    assert far.similarity == pytest.approx(screened_now, abs=1e-5) and not far.exact  # the report says so


def _tiny(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    network = onnx_network(net, (1, 3, 16, 16), "tiny", tmp_path)
    assert network is not None
    check = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    return tmp_path / "tiny.onnx", network, check


def _write_ranges(path, ranges):
    path.write_text(json.dumps({"network": "tiny", "ranges": ranges}))
    return path


def test_screening_is_off_without_a_range_for_every_activation(tmp_path):
    model, network, check = _tiny(tmp_path)
    names = sorted(activation_names(model) - {"x"})
    partial = _write_ranges(tmp_path / "partial.json", {n: [-10.0, 10.0] for n in names[:-1]})
    assert screening_network(model, partial, network, check) is None


def test_screening_is_off_when_the_int8_copy_disagrees(tmp_path):
    model, network, check = _tiny(tmp_path)
    names = activation_names(model) - {"x"}
    # ranges far too narrow: every activation saturates, the copy's outputs are garbage
    narrow = _write_ranges(tmp_path / "narrow.json", {n: [0.0, 1e-3] for n in names})
    assert screening_network(model, narrow, network, check) is None
    from idmrag_plugin.training.fit_int8_ranges import collect_ranges

    calibrated = _write_ranges(tmp_path / "calibrated.json", collect_ranges(model, [check]))
    assert screening_network(model, calibrated, network, check) is not None
