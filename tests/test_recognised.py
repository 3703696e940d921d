"""The recognition screen: a new pseudonym's drawing that dlib, reading the crop, already finds
near the person is set aside for another code before the engine pastes and verifies it."""

from __future__ import annotations

import numpy as np
import pytest

from idmrag_plugin import FaceGenerator, GenerationRequest
from idmrag_plugin.generation.renderer_generator import (
    GROSSLY_UNFIT,
    RECOGNISED_SPREAD,
    RECOGNISED_UNFITNESS,
    RECOGNISED_WITHIN,
)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _at(similarity: float, original: np.ndarray, seed: int = 1) -> np.ndarray:
    """An embedding whose cosine with ``original`` is ``similarity``."""
    other = np.random.default_rng(seed).normal(size=original.shape)
    other -= (other @ original) / (original @ original) * original
    unit = original / np.linalg.norm(original)
    return similarity * unit + np.sqrt(1.0 - similarity**2) * other / np.linalg.norm(other)


def test_a_drawing_near_the_threshold_counts_as_recognised_the_further_over_the_further_off(
        default_generator, astronaut_crop, monkeypatch):
    generator = default_generator
    original = np.random.default_rng(0).normal(size=128)
    request = GenerationRequest(astronaut_crop, attempt=0, seed=1, original_embeddings={"dlib": original},
                                thresholds={"dlib": 0.9})
    margin = RECOGNISED_WITHIN["dlib"]

    def score(similarity: float) -> float:
        return generator.recognised(astronaut_crop, request, lambda: _at(similarity, original))

    assert score(0.9 - margin - 0.002) == 0.0
    assert score(0.2) == 0.0
    assert score(0.9 - margin + 0.002) == pytest.approx(RECOGNISED_UNFITNESS + 0.002, abs=1e-6)
    assert score(0.9 - margin + 0.002) < score(0.91) < score(0.99)
    assert score(1.0) == pytest.approx(RECOGNISED_UNFITNESS + RECOGNISED_SPREAD)
    assert 1.0 < RECOGNISED_UNFITNESS + RECOGNISED_SPREAD < GROSSLY_UNFIT  # unfit, never a refusal by itself
    # without the verifier's thresholds nothing is judged
    bare = GenerationRequest(astronaut_crop, attempt=0, seed=1, original_embeddings={"dlib": original})
    assert generator.recognised(astronaut_crop, bare, lambda: original) == 0.0


def test_a_face_cut_by_the_frame_is_read_black_beyond_it_as_the_verifier_sees_it(default_generator, astronaut_crop,
                                                                                 monkeypatch):
    generator = default_generator
    read: list[np.ndarray] = []
    monkeypatch.setattr(generator, "_dlib_embedding", lambda face: read.append(face) or np.ones(128))
    in_frame = np.ones(astronaut_crop.shape[:2], bool)
    in_frame[:, :40] = False  # the photo's left edge runs through the face
    request = GenerationRequest(astronaut_crop, attempt=0, seed=1, original_embeddings={"dlib": np.ones(128)},
                                thresholds={"dlib": 0.9}, in_frame=in_frame)
    assert generator.recognised(astronaut_crop, request, lambda: -np.ones(128)) > 1.0  # not the uncut reading
    (seen,) = read
    assert (seen[:, :40] == 0).all()
    assert np.array_equal(seen[:, 40:], astronaut_crop[:, 40:])


def _only_recognition_judges(generator, monkeypatch) -> None:
    """Every look screen planted fit, so that only the recognition screen can set a code aside."""
    for screen in ("smudged", "misexpressed", "smudged_chin", "dropped_beard", "darkened_eyes"):
        monkeypatch.setattr(generator, screen, lambda shown, face: 0.0)
    monkeypatch.setattr(generator, "glasses_off", lambda shown, face, descriptor=None: 0.0)
    monkeypatch.setattr(generator, "misdrawn", lambda shown, wanted, age=True, descriptor=None: 0.0)
    monkeypatch.setattr(generator, "unfitness", lambda drawn, face, grow=None: np.zeros(len(drawn)))


@pytest.mark.refuses_unfit
def test_a_pseudonym_the_verifier_would_recognise_is_swapped_for_another_code(default_generator, astronaut_crop,
                                                                              monkeypatch):
    generator = default_generator
    _only_recognition_judges(generator, monkeypatch)
    original = generator._dlib_embedding(astronaut_crop)
    embeddings = {"dlib": original}

    generator.secret = b"test-recognised"
    first = generator.generate(GenerationRequest(astronaut_crop, attempt=0, seed=11, original_embeddings=embeddings))
    first_similarity = _cosine(generator._dlib_embedding(first), original)

    # the same scope again, with a threshold the first drawing lies within RECOGNISED_WITHIN of
    threshold = first_similarity + RECOGNISED_WITHIN["dlib"] - 0.001
    generator.secret = b"test-recognised"
    swapped = generator.generate(GenerationRequest(astronaut_crop, attempt=0, seed=11, original_embeddings=embeddings,
                                                   thresholds={"dlib": threshold}))
    assert not np.array_equal(swapped, first)
    assert _cosine(generator._dlib_embedding(swapped), original) < threshold - RECOGNISED_WITHIN["dlib"]

    # a threshold every drawing is near: the least unfit is still drawn, the attempt not refused
    generator.secret = b"test-recognised"
    kept = generator.generate(GenerationRequest(astronaut_crop, attempt=0, seed=11, original_embeddings=embeddings,
                                                thresholds={"dlib": -1.0}))
    assert kept.shape == astronaut_crop.shape


def test_the_engine_hands_the_generator_the_verifier_s_thresholds(engine, astronaut):
    """Each request carries the threshold of every oracle's aligned view."""
    from idmrag_plugin import AnonymizerConfig, FaceAnonymizer

    seen: list[GenerationRequest] = []

    class Recording(FaceGenerator):
        name = "recording"

        def generate(self, request: GenerationRequest) -> np.ndarray:
            seen.append(request)
            return np.roll(request.face, request.face.shape[0] // 2, axis=(0, 1))

    anonymizer = FaceAnonymizer(AnonymizerConfig(cache_size=0), detector=engine.detector, oracles=engine.oracles,
                                generator=Recording())
    anonymizer.anonymize(astronaut)
    assert seen
    for request in seen:
        assert request.thresholds == {oracle.name: anonymizer.thresholds[oracle.name] for oracle in engine.oracles}
        assert set(request.thresholds) == {"dlib", "facenet"}
        assert request.in_frame is None  # her face lies inside the photo
    seen.clear()
    anonymizer.anonymize(np.ascontiguousarray(astronaut[:, 205:]))  # the left edge now runs through her face
    cut = [r for r in seen if r.in_frame is not None]
    assert cut
    for request in cut:
        assert request.in_frame.shape == request.face.shape[:2]
        assert 0.2 < request.in_frame.mean() < 0.95


@pytest.mark.refuses_unfit
def test_facenet_is_asked_when_dlib_does_not_recognise_a_drawing(default_generator, astronaut_crop, monkeypatch):
    """With FaceNet's screen on and only its threshold given, the screen reads the drawing and
    the original crop with FaceNet: a threshold the first drawing lies within the margin of
    swaps its code."""
    from idmrag_plugin.generation import renderer_generator

    monkeypatch.setitem(renderer_generator.RECOGNISED_WITHIN, "facenet", 0.04)  # off by default: its cost
    generator = default_generator
    _only_recognition_judges(generator, monkeypatch)
    facenet = generator._oracle("facenet")

    def similarity(drawing: np.ndarray) -> float:
        a, b = facenet.embed_aligned(np.stack([drawing, astronaut_crop]))
        return _cosine(a, b)

    generator.secret = b"test-recognised-facenet"
    first = generator.generate(GenerationRequest(astronaut_crop, attempt=0, seed=12))
    threshold = similarity(first) + 0.04 - 0.001
    generator.secret = b"test-recognised-facenet"
    swapped = generator.generate(GenerationRequest(astronaut_crop, attempt=0, seed=12,
                                                   thresholds={"facenet": threshold}))
    assert not np.array_equal(swapped, first)
    assert similarity(swapped) < threshold - 0.04
