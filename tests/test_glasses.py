"""The glasses screen: a drawing must show glasses as the photo's face does (not add them to a
bare face, not drop them from one wearing them)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.generation.glasses import (
    DRAWING_FEATURES,
    DROPPED_GLASSES_LIMIT,
    GLASSES_LIMIT,
    PHOTO_BARE_LIMIT,
    PHOTO_FEATURES,
    PHOTO_GLASSES_LIMIT,
    GlassesProbe,
    GlassesProbes,
    eye_band_gradients,
    glasses_difference,
)
from idmrag_plugin.weights import GLASSES_PROBE_FILE, packaged


@pytest.fixture(scope="module")
def probes() -> GlassesProbes:
    return GlassesProbes.load(packaged(GLASSES_PROBE_FILE))  # the manifest's sha256 checked


def test_bare_eyes_read_bare_and_a_bare_drawing_is_fit(default_generator, probes, astronaut_crop, camera_face):
    generator = default_generator
    assert probes.drawing.features == DRAWING_FEATURES and probes.drawing.weight.shape == (128,)
    assert probes.photo.features == PHOTO_FEATURES
    crops = np.stack([astronaut_crop, camera_face])
    descriptors = np.stack([generator._dlib_embedding(c) for c in crops])
    assert probes.photo.weight.shape == (eye_band_gradients(crops).shape[1] + 128,)
    assert (probes.photo.read(crops, descriptors) < PHOTO_BARE_LIMIT).all()
    assert (probes.drawing.read(crops, descriptors) < GLASSES_LIMIT).all()
    # either bare face shown in the other's place adds no glasses
    assert generator.glasses_off(crops[1], crops[0]) < 1.0
    assert generator.glasses_off(crops[0], crops[1]) < 1.0


def test_the_eye_band_is_read_at_the_canonical_size(astronaut_crop):
    """A crop of another size is resampled to 128 px first: its gradients are nearly those of
    the 128 px crop, and the photo probe reads any size."""
    import cv2

    at_128 = eye_band_gradients(astronaut_crop[None])
    at_256 = eye_band_gradients(cv2.resize(astronaut_crop, (256, 256), interpolation=cv2.INTER_CUBIC)[None])
    assert at_128.shape == at_256.shape
    assert np.corrcoef(at_128[0], at_256[0])[0, 1] > 0.9


def test_glasses_count_as_added_on_a_bare_face_and_dropped_from_one_wearing_them():
    bare, wearing, unsure = PHOTO_BARE_LIMIT / 2, (1 + PHOTO_GLASSES_LIMIT) / 2, (PHOTO_BARE_LIMIT + PHOTO_GLASSES_LIMIT) / 2
    assert glasses_difference(bare, GLASSES_LIMIT) == pytest.approx(1.0)
    assert glasses_difference(bare, 0.9) > 1.0 > glasses_difference(bare, 0.3)  # added / bare kept bare
    # a face wearing glasses: drawn with them is fit, clearly without them unfit
    assert glasses_difference(PHOTO_GLASSES_LIMIT, 0.99) < 0.1
    assert glasses_difference(wearing, DROPPED_GLASSES_LIMIT) == pytest.approx(1.0)
    assert glasses_difference(wearing, 0.1) > 1.0 > glasses_difference(wearing, 0.5)
    # a face read in between is held to neither
    assert glasses_difference(unsure, 0.99) == glasses_difference(unsure, 0.01) == 0.0
    with pytest.raises(Exception, match="128 features"):
        GlassesProbe(np.zeros(128), 0.0).probability(np.zeros((1, 64)))
    with pytest.raises(Exception, match="unknown features"):
        GlassesProbe(np.zeros(128), 0.0, "colour").read(np.zeros((1, 128, 128, 3), np.uint8), np.zeros((1, 128)))


def test_a_drawing_must_show_glasses_as_the_photo_does(default_generator, probes, monkeypatch, astronaut_crop):
    """The screen reads the photo's face once per crop and every drawing; with planted
    descriptors (both probes reading them alone), a drawing reading glasses is unfit (capped)
    in a bare face's place and fit in the place of a face that wears them, where a bare drawing
    is unfit."""
    from idmrag_plugin.generation.renderer_generator import GLASSES_UNFITNESS_CAP

    direction = probes.drawing.weight / np.linalg.norm(probes.drawing.weight)
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
    generator._glasses_probes()
    monkeypatch.setattr(generator, "_glasses", GlassesProbes(photo=probes.drawing, drawing=probes.drawing))
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
def test_the_probes_read_the_glasses_of_the_labelled_lfw_photos(plain_detector, default_generator, probes, lfw):
    """On hand-labelled LFW photos (which they were fitted on), the photo probe ranks faces
    with glasses above faces without, as the engine crops them, and reads most of each side
    beyond its limit; the drawing probe ranks them too, and the surest glasses shown in a bare
    face's place are unfit."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from idmrag_plugin.engine.detect import central_face
    from idmrag_plugin.training.fit_glasses_probe import LABELS

    labels = json.loads(LABELS.read_text())["photos"]
    chosen = [n for n, v in labels.items() if v][:30] + [n for n, v in labels.items() if not v][:30]
    crops, truth = [], []
    for name in chosen:
        image = np.asarray(Image.open(lfw / "images" / name).convert("RGB"))
        face = central_face(plain_detector.detect(image), image.shape)
        crops.append(align_face(image, face.landmarks, 128).crop)
        truth.append(labels[name])
    crops_array, truth_array = np.stack(crops), np.array(truth, bool)
    descriptors = np.stack([default_generator._dlib_embedding(c) for c in crops])
    worn = probes.photo.read(crops_array, descriptors)
    assert roc_auc_score(truth_array, worn) > 0.95
    assert np.mean(worn[truth_array] >= PHOTO_GLASSES_LIMIT) > 0.7
    assert np.mean(worn[~truth_array] < PHOTO_BARE_LIMIT) > 0.8
    drawn = probes.drawing.read(crops_array, descriptors)
    assert roc_auc_score(truth_array, drawn) > 0.9
    surest = crops[int(np.argmax(worn))]
    bare = crops[30 + int(np.argmin(worn[30:]))]
    default_generator._photo_glasses.clear()
    assert default_generator.glasses_off(surest, bare) > 1.0
    assert default_generator.glasses_off(bare, surest) > 1.0  # glasses dropped


def test_the_fits_separate_glasses_and_survive_their_file(tmp_path):
    """On synthetic features where glasses shift one direction (drawings less than photos),
    the fitted probes read held-out drawings and photos well, and survive their file."""
    from sklearn.metrics import roc_auc_score

    from idmrag_plugin.training.fit_glasses_probe import fit_photo_probe, fit_probe

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
    drawing, held_out = fit_probe(photo_e, photo_y, names, drawn_e, drawn_y, names[:100])
    assert roc_auc_score(drawn_y, held_out) > 0.9
    assert roc_auc_score(drawn_y, drawing.probability(drawn_e)) > 0.9
    # the photo probe: gradients (a weak signal) beside descriptors
    gradients = rng.random((200, 40)) + photo_y[:, None] * 0.2
    photo, photo_held_out = fit_photo_probe(gradients, photo_e, photo_y)
    assert photo.features == PHOTO_FEATURES and photo.weight.shape == (168,)
    assert roc_auc_score(photo_y, photo_held_out) > 0.9
    # the descriptor's fitting scale is folded into the weights: the probe reads raw features
    assert roc_auc_score(photo_y, photo.probability(np.hstack([gradients, photo_e]))) > 0.95
    GlassesProbes(photo=photo, drawing=drawing).save(tmp_path / "p.safetensors", provenance="test")
    again = GlassesProbes.load(tmp_path / "p.safetensors")
    np.testing.assert_allclose(again.drawing.probability(drawn_e), drawing.probability(drawn_e), atol=1e-5)
    assert again.photo.features == PHOTO_FEATURES
    np.testing.assert_allclose(again.photo.weight, photo.weight, rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="cannot read the glasses probes"):
        GlassesProbes.load(tmp_path / "missing.safetensors")
    (tmp_path / "old.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="refit them"):
        GlassesProbes.load(tmp_path / "old.safetensors")
