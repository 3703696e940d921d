"""Shared fixtures: real photos from scikit-image, engines loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer, FaceGenerator, GenerationRequest
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.detect import Detection, FaceDetector

#: pyproject's addopts run the suite in one pytest-xdist worker per core; each worker keeps to one
#: thread, or torch's and OpenCV's pools (a thread per core in each worker) fight over the cores
ONE_THREAD = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if ONE_THREAD:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    """A test that builds an engine with ``threads`` set changes torch's thread count for the
    whole worker: set it back."""
    yield
    if ONE_THREAD:
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)


SHARED_DATA = Path(os.environ.get("IDMRAG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def camera() -> np.ndarray:
    return np.repeat(skimage.data.camera()[..., None], 3, axis=2)


@pytest.fixture(scope="session")
def no_face_image() -> np.ndarray:
    """A photo without people: scikit-image's coffee cup."""
    return skimage.data.coffee()


@pytest.fixture(scope="session")
def photo(tmp_path_factory, astronaut) -> Path:
    """The astronaut as a JPEG file on disk."""
    from PIL import Image

    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    Image.fromarray(astronaut).save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def engine() -> FaceAnonymizer:
    """The obfuscation engine (no generator): every face is obfuscated, fast and deterministic.

    The default engine (the packaged VAE-decode generator) is tested through the CLI and in
    test_codes.py."""
    return FaceAnonymizer(AnonymizerConfig(generator="none"))


@pytest.fixture(scope="session")
def plain_detector(engine: FaceAnonymizer) -> FaceDetector:
    """The engine's plain MTCNN search, without the layers for hidden faces: what tests that
    only need the central face of many ordinary photos use (the whole search is 3-5x slower)."""
    from idmrag_plugin.engine.detect import MTCNNDetector

    return search_layer(engine.detector, MTCNNDetector)


@pytest.fixture(scope="session")
def oracles(engine: FaceAnonymizer):
    return engine.oracles


@pytest.fixture(scope="session")
def camera_face(engine: FaceAnonymizer, camera: np.ndarray) -> np.ndarray:
    """The cameraman's face in the canonical crop: a real, different person."""
    (det,) = engine.detector.detect(camera)
    return align_face(camera, det.landmarks, engine.config.crop_size).crop


@pytest.fixture(scope="session")
def astronaut_crop(engine: FaceAnonymizer, astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's face in the canonical crop (smiling, teeth showing, no glasses)."""
    (det,) = engine.detector.detect(astronaut)
    return align_face(astronaut, det.landmarks, engine.config.crop_size).crop


@pytest.fixture(scope="module")
def default_generator(engine: FaceAnonymizer):
    """The default generator (packaged renderer, code LCM and probes), sharing the session's
    detector and oracles; one per test module, since it remembers people and crops."""
    return FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", cache_size=0),
                          detector=engine.detector, oracles=engine.oracles).generator


class IdentityGenerator(FaceGenerator):
    """Planted leak: returns the original face."""

    name = "identity"

    def generate(self, request: GenerationRequest) -> np.ndarray:
        return request.face.copy()


class RaisingGenerator(FaceGenerator):
    name = "raising"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, request: GenerationRequest) -> np.ndarray:
        self.calls += 1
        raise RuntimeError("planted generator failure")


class FixedFaceGenerator(FaceGenerator):
    """Returns one fixed face of another person."""

    name = "fixed"

    def __init__(self, face: np.ndarray) -> None:
        self.face = face

    def generate(self, request: GenerationRequest) -> np.ndarray:
        return self.face.copy()


@pytest.fixture(scope="session")
def make_engine(engine: FaceAnonymizer):
    """Build engines that share the session's loaded detector and oracles."""

    def build(generator: FaceGenerator | None = None, **config) -> FaceAnonymizer:
        from dataclasses import replace

        return FaceAnonymizer(
            replace(engine.config, **config),
            generator=generator,
            detector=engine.detector,
            oracles=engine.oracles,
        )

    return build


@pytest.fixture(scope="session")
def lfw() -> Path:
    root = SHARED_DATA / "lfw"
    if not (root / "images").is_dir():
        pytest.skip(f"LFW not found at {root}: set IDMRAG_SHARED_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def scenes() -> Path:
    root = SHARED_DATA / "scenes"
    if not (root / "training.xml").is_file():
        pytest.skip(f"scenes not found at {root}: set IDMRAG_SHARED_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def http_image(astronaut):
    """URL of the astronaut JPEG served by a local HTTP server."""
    import io
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "JPEG", quality=95)
    payload = buffer.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/astronaut.jpg"
    server.shutdown()


def anonymize_with_packaged_generator(make_engine, image: np.ndarray, oracles, **config):
    """One image through the engine with a packaged generator (sharing the session's detector
    and oracles): a generated face must pass every oracle, or the face fails closed; either way
    no oracle matches the output to the original. Returns the result."""
    from idmrag_plugin.engine.oracles import cosine

    base = make_engine()
    engine = FaceAnonymizer(AnonymizerConfig(**config), detector=base.detector, oracles=base.oracles)
    result = engine.anonymize(image)
    (face,) = result.faces
    assert face.method in ("generated", "obfuscated")
    if face.method == "generated":
        assert face.verified
    for oracle in oracles:
        sim = float(cosine(oracle.embed_faces(image, [face.detection.landmarks]),
                           oracle.embed_faces(result.pixels, [face.detection.landmarks]))[0])
        assert sim < engine.thresholds[oracle.name]
    return result


def assert_judged_another_person(original: np.ndarray, views: list[np.ndarray], oracles, thresholds) -> None:
    """Every oracle, aligned by the landmarks of the original's one face, judges each of ``views``
    (what an attacker makes of an output) another person."""
    from idmrag_plugin.engine.detect import MTCNNDetector
    from idmrag_plugin.engine.oracles import cosine

    (upright,) = MTCNNDetector().detect(original)
    for view in views:
        for oracle in oracles:
            similarity = float(cosine(oracle.embed_faces(original, [upright.landmarks]),
                                      oracle.embed_faces(np.ascontiguousarray(view), [upright.landmarks]))[0])
            assert similarity < thresholds[oracle.name], oracle.name


def assert_changed_only_near_faces(result, image: np.ndarray) -> None:
    """``result`` differs from ``image``, and only within a face's size of a face it reports."""
    changed = (result.pixels != image).any(axis=2)
    outside = np.ones_like(changed)
    for face in result.faces:
        x1, y1, x2, y2 = (int(v) for v in face.detection.box)
        margin = max(x2 - x1, y2 - y1)
        outside[max(0, y1 - margin): y2 + margin, max(0, x1 - margin): x2 + margin] = False
    assert changed.any() and not changed[outside].any()



def search_layer(detector, kind):
    """The layer of type ``kind`` inside an engine's search (each search wraps the last)."""
    layer = detector
    while not isinstance(layer, kind):
        layer = layer.detector
    return layer


class PlantedDetector(FaceDetector):
    """Returns fixed detections whatever the image."""

    name = "planted"

    def __init__(self, detections: list[Detection]) -> None:
        super().__init__()
        self.detections = detections

    def _load(self) -> None:
        pass

    def _detect(self, image: np.ndarray) -> list[Detection]:
        return list(self.detections)


@pytest.fixture
def unfit_attempts_kept(request, monkeypatch):
    """An attempt's least unfit drawing is kept however unfit (``GROSSLY_UNFIT`` off): for the
    modules whose tiny random renderers draw noise, or whose planted screens score every code
    far off, to test something else; a test marked ``refuses_unfit`` keeps the refusal on."""
    if request.node.get_closest_marker("refuses_unfit") is None:
        from idmrag_plugin.generation import renderer_generator

        monkeypatch.setattr(renderer_generator, "GROSSLY_UNFIT", float("inf"))
