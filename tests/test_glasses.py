"""The glasses screen: a drawing must not put glasses on a face that wears none in the photo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.generation.glasses import (
    DROPPED_GLASSES_LIMIT,
    GLASSES_LIMIT,
    PHOTO_GLASSES_LIMIT,
    GlassesProbe,
    glasses_difference,
)
from idmrag_plugin.weights import GLASSES_PROBE_FILE, packaged


def test_bare_eyes_read_bare_and_a_bare_drawing_is_fit(default_generator, astronaut_crop, camera_face):
    generator = default_generator
    probe = GlassesProbe.load(packaged(GLASSES_PROBE_FILE))  # the manifest's sha256 checked
    assert probe.reader == "dlib" and probe.weight.shape == (128,)
    crops = [astronaut_crop, camera_face]
    readings = probe.probability(np.stack([generator._dlib_embedding(c) for c in crops]))
    assert (readings < min(GLASSES_LIMIT, PHOTO_GLASSES_LIMIT)).all(), readings
    # either bare face shown in the other's place adds no glasses
    assert generator.glasses_off(crops[1], crops[0]) < 1.0
    assert generator.glasses_off(crops[0], crops[1]) < 1.0


def test_glasses_count_as_added_on_a_bare_face_and_dropped_from_one_wearing_them():
    assert glasses_difference(0.1, GLASSES_LIMIT) == pytest.approx(1.0)
    assert glasses_difference(0.1, 0.9) > 1.0 > glasses_difference(0.1, 0.3)  # added / bare kept bare
    # a face wearing glasses: drawn with them is fit, clearly without them unfit
    assert glasses_difference(PHOTO_GLASSES_LIMIT, 0.99) < 0.1
    assert glasses_difference(0.9, DROPPED_GLASSES_LIMIT) == pytest.approx(1.0)
    assert glasses_difference(0.9, 0.1) > 1.0 > glasses_difference(0.9, 0.5)
    with pytest.raises(Exception, match="128-d"):
        GlassesProbe(np.zeros(128), 0.0).probability(np.zeros((1, 64)))


def test_a_drawing_must_show_glasses_as_the_photo_does(default_generator, monkeypatch, astronaut_crop):
    """The screen reads the photo's face once per crop and every drawing; with planted
    descriptors, a drawing reading glasses is unfit (capped) in a bare face's place and fit in
    the place of a face that wears them, where a bare drawing is unfit."""
    from idmrag_plugin.generation.renderer_generator import GLASSES_UNFITNESS_CAP

    probe = GlassesProbe.load(packaged(GLASSES_PROBE_FILE))
    direction = probe.weight / np.linalg.norm(probe.weight)
    reads = {"bare": -direction, "glasses": direction}  # far on either side of the probe's plane
    generator, photo = default_generator, astronaut_crop
    with_glasses, bare_drawing = photo.copy(), photo.copy()
    with_glasses[0, 0] += 1  # two crops told apart by their bytes
    bare_drawing[0, 1] += 1
    calls: list[str] = []

    def planted(crop: np.ndarray) -> np.ndarray:
        kind = "glasses" if crop is with_glasses or np.array_equal(crop, with_glasses) else "bare"
        calls.append(kind)
        return reads[kind]

    monkeypatch.setattr(generator, "_dlib_embedding", planted)
    generator._photo_glasses.clear()
    assert 1.0 < generator.glasses_off(with_glasses, photo) <= GLASSES_UNFITNESS_CAP
    assert generator.glasses_off(bare_drawing, photo) < 1.0
    assert calls.count("bare") == 2  # the photo read once, the bare drawing once
    assert generator.glasses_off(with_glasses, with_glasses) < 0.1  # a person with glasses keeps them
    assert 1.0 < generator.glasses_off(bare_drawing, with_glasses) <= GLASSES_UNFITNESS_CAP  # or loses them
    assert generator.glasses_off(with_glasses, photo, descriptor=lambda: reads["bare"]) < 1.0  # the caller's descriptor


@pytest.mark.parametrize("keep", [True, False])
def test_the_config_switches_the_screen(engine, keep):
    generator = FaceAnonymizer(AnonymizerConfig(generator="renderer-lcm", keep_glasses=keep, cache_size=0),
                               detector=engine.detector, oracles=engine.oracles).generator
    assert (generator.glasses_probe_path is not None) is keep
    if not keep:
        assert generator.glasses_off(np.zeros((128, 128, 3), np.uint8), np.zeros((128, 128, 3), np.uint8)) == 0.0


@pytest.mark.lfw
def test_the_probe_reads_the_glasses_of_the_labelled_lfw_photos(engine, default_generator, lfw):
    """On the hand-labelled LFW photos it was fitted on (with drawings), the probe ranks faces
    with glasses above faces without, and the surest glasses shown in a bare face's place
    are unfit."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from idmrag_plugin.engine.detect import central_face
    from idmrag_plugin.training.fit_glasses_probe import LABELS

    labels = json.loads(LABELS.read_text())["photos"]
    chosen = [n for n, v in labels.items() if v][:30] + [n for n, v in labels.items() if not v][:30]
    crops, truth = [], []
    for name in chosen:
        image = np.asarray(Image.open(lfw / "images" / name).convert("RGB"))
        face = central_face(engine.detector.detect(image), image.shape)
        crops.append(align_face(image, face.landmarks, 128).crop)
        truth.append(labels[name])
    probe = GlassesProbe.load(packaged(GLASSES_PROBE_FILE))
    readings = probe.probability(np.stack([default_generator._dlib_embedding(c) for c in crops]))
    assert roc_auc_score(truth, readings) > 0.9
    surest = crops[int(np.argmax(readings))]
    bare = crops[30 + int(np.argmin(readings[30:]))]
    assert default_generator.glasses_off(surest, bare) > 1.0


def test_the_fit_separates_glasses_and_holds_drawings_out_with_their_person(tmp_path):
    """On synthetic descriptors where glasses shift one direction (drawings less than photos),
    the fitted probe reads held-out drawings well, and survives its file."""
    from sklearn.metrics import roc_auc_score

    from idmrag_plugin.training.fit_glasses_probe import fit_probe

    rng = np.random.default_rng(0)
    direction = rng.standard_normal(128)
    direction /= np.linalg.norm(direction)

    def faces(count: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        wearing = rng.random(count) < 0.3
        e = rng.standard_normal((count, 128)) * 0.05 + np.outer(wearing * shift, direction)
        return e / np.linalg.norm(e, axis=1, keepdims=True), wearing

    photo_e, photo_y = faces(200, 0.3)
    drawn_e, drawn_y = faces(100, 0.15)
    names = [f"p{i}" for i in range(200)]
    probe, held_out = fit_probe(photo_e, photo_y, names, drawn_e, drawn_y, names[:100])
    assert roc_auc_score(drawn_y, held_out) > 0.9
    assert roc_auc_score(drawn_y, probe.probability(drawn_e)) > 0.9
    probe.save(tmp_path / "p.safetensors", provenance="test")
    again = GlassesProbe.load(tmp_path / "p.safetensors")
    np.testing.assert_allclose(again.probability(drawn_e), probe.probability(drawn_e), atol=1e-5)
    with pytest.raises(Exception, match="cannot read the glasses probe"):
        GlassesProbe.load(tmp_path / "missing.safetensors")
