"""The anonymization cache: hits run no model, misses on any change of settings or secret,
no original is stored, safe under concurrent calls."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
from conftest import FixedFaceGenerator

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer, FaceGenerator, GenerationRequest
from idmrag_plugin.engine.detect import FaceDetector


class CountingDetector(FaceDetector):
    name = "counting"

    def __init__(self, inner: FaceDetector) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def _load(self) -> None:
        self.inner.load()

    def _detect(self, image):
        self.calls += 1
        key = image.tobytes()
        if key not in _SEARCHED:  # the same search of the same pixels: asked once for the whole module
            _SEARCHED[key] = self.inner.detect(image)
        return list(_SEARCHED[key])


_SEARCHED: dict[bytes, list] = {}


class CountingGenerator(FixedFaceGenerator):
    def __init__(self, face: np.ndarray, secret: bytes = b"s" * 32) -> None:
        super().__init__(face)
        self.secret = secret
        self.calls = 0

    def generate(self, request: GenerationRequest) -> np.ndarray:
        self.calls += 1
        return super().generate(request)


def _engine(engine, camera_face, tmp_path=None, secret=b"s" * 32, **config):
    detector = CountingDetector(engine.detector)
    generator = CountingGenerator(camera_face, secret)
    # the wrapped detector is the engine's whole search: no search of the engine's own around it
    searches = dict.fromkeys(("border_search", "exposure_search", "negative_search", "denoise_search",
                              "grey_search", "stretch_search", "hog_search"), False)
    settings = replace(engine.config, generator="vae-decode", rotations=(0,), result_cache_dir=tmp_path,
                       **searches, **config)
    return FaceAnonymizer(settings, generator=generator, detector=detector, oracles=engine.oracles), detector, generator


def test_a_hit_returns_identical_bytes_and_runs_no_model(engine, camera_face, astronaut):
    anonymizer, detector, generator = _engine(engine, camera_face)
    first = anonymizer.anonymize(astronaut)
    assert not first.cached and first.faces[0].method == "generated"
    calls = (detector.calls, generator.calls)
    second = anonymizer.anonymize(astronaut.copy())
    assert second.cached and second.report()["cached"] is True
    assert (detector.calls, generator.calls) == calls  # no model ran
    assert second.to_bytes("PNG") == first.to_bytes("PNG")
    assert second.report()["faces"] == first.report()["faces"]
    second.pixels[:] = 0  # a caller scribbling on a hit does not reach the cache
    assert anonymizer.anonymize(astronaut).to_bytes("PNG") == first.to_bytes("PNG")


def test_changed_settings_miss_even_through_a_shared_store(engine, camera_face, astronaut, tmp_path):
    base, _, _ = _engine(engine, camera_face, tmp_path=tmp_path)
    base.anonymize(astronaut)
    same, _, generator = _engine(engine, camera_face, tmp_path=tmp_path)
    assert same.anonymize(astronaut).cached and generator.calls == 0
    for change in ({"privacy_level": "far1e-3"}, {"max_attempts": 2}, {"crop_size": 96}):
        other, _, generator = _engine(engine, camera_face, tmp_path=tmp_path, **change)
        assert not other.anonymize(astronaut).cached and generator.calls > 0, change
    edited = astronaut.copy()
    edited[0, 0] ^= 1  # one bit of one pixel
    assert not same.anonymize(edited).cached


def test_disk_store_is_shared_holds_no_original_and_is_scoped_by_secret(engine, camera_face, astronaut, tmp_path):
    writer, _, _ = _engine(engine, camera_face, tmp_path=tmp_path)
    first = writer.anonymize(astronaut)
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".png"]
    from PIL import Image

    stored = np.asarray(Image.open(next(tmp_path.glob("*.png"))).convert("RGB"))
    np.testing.assert_array_equal(stored, first.pixels)
    x1, y1, x2, y2 = (int(v) for v in first.faces[0].detection.box)
    face = (slice(y1 + 10, y2 - 10), slice(x1 + 10, x2 - 10))
    assert np.abs(stored[face].astype(int) - astronaut[face]).mean() > 20  # not the original face
    text = next(tmp_path.glob("*.json")).read_text()
    assert "astronaut" not in text

    reader, detector, generator = _engine(engine, camera_face, tmp_path=tmp_path)
    hit = reader.anonymize(astronaut)
    assert hit.cached and detector.calls == 0 and generator.calls == 0
    np.testing.assert_array_equal(hit.pixels, first.pixels)
    assert hit.report()["faces"][0]["method"] == "generated"

    other_secret, _, generator = _engine(engine, camera_face, tmp_path=tmp_path, secret=b"x" * 32)
    assert not other_secret.anonymize(astronaut).cached and generator.calls > 0


def test_a_secret_changed_on_a_live_generator_is_never_answered_from_the_old_secret_s_entries(
    engine, camera_face, astronaut, tmp_path
):
    """Rotating the pseudonym secret by assignment (as a service that keeps its models loaded
    would) scopes the cache anew, in memory and on disk: under the old scope's entries the
    same photo came back as drawn under the old secret, linkable across the rotation."""
    anonymizer, _, generator = _engine(engine, camera_face, tmp_path=tmp_path)
    assert not anonymizer.anonymize(astronaut).cached
    assert anonymizer.anonymize(astronaut).cached
    generator.secret = b"t" * 32
    calls = generator.calls
    after = anonymizer.anonymize(astronaut)
    assert not after.cached and generator.calls > calls
    assert anonymizer.anonymize(astronaut).cached  # the new scope caches as before
    generator.secret = b"s" * 32  # back to the first secret: its entries on disk answer again
    assert anonymizer.anonymize(astronaut).cached


def test_concurrent_calls_are_safe(engine, camera_face, astronaut, camera):
    anonymizer, _, _ = _engine(engine, camera_face, cache_size=2)
    images = [astronaut, camera, np.ascontiguousarray(astronaut[:, ::-1]), astronaut]
    expected = [anonymizer.anonymize(image).to_bytes("PNG") for image in images]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(2):  # each image is asked for by two threads at once, hits and misses mixed
                index = (i + offset) % len(images)
                assert anonymizer.anonymize(images[index]).to_bytes("PNG") == expected[index]
        except BaseException as exc:  # noqa: BLE001 - collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(anonymizer.cache._entries) <= 2


class _Unused(FaceGenerator):
    def generate(self, request):  # pragma: no cover - never called
        raise AssertionError


def test_cache_can_be_disabled(engine, astronaut):
    anonymizer = FaceAnonymizer(replace(engine.config, cache_size=0), detector=engine.detector, oracles=engine.oracles)
    assert anonymizer.cache is None
    assert not anonymizer.anonymize(astronaut).cached and not anonymizer.anonymize(astronaut).cached
    assert AnonymizerConfig().cache_size > 0


def test_a_file_swapped_into_the_store_is_never_handed_out(engine, camera_face, astronaut, tmp_path):
    writer, searched, _ = _engine(engine, camera_face, tmp_path=tmp_path)
    writer.anonymize(astronaut)
    from PIL import Image

    (png,) = tmp_path.glob("*.png")
    Image.fromarray(astronaut).save(png)  # the original photo, planted in place of the output
    reader, detector, _ = _engine(engine, camera_face, tmp_path=tmp_path)
    result = reader.anonymize(astronaut)
    # recomputed (the search ran as for the first, shadow passes included), not served from the store
    assert not result.cached and detector.calls == searched.calls > 0
    x1, y1, x2, y2 = (int(v) for v in result.faces[0].detection.box)
    face = (slice(y1 + 10, y2 - 10), slice(x1 + 10, x2 - 10))
    assert np.abs(result.pixels[face].astype(int) - astronaut[face]).mean() > 20


def test_repeated_encoded_bytes_skip_decoding(engine, camera_face, photo, monkeypatch):
    from idmrag_plugin import pipeline

    anonymizer, _, _generator = _engine(engine, camera_face)
    data = photo.read_bytes()
    first = anonymizer.anonymize(data)
    decoded: list[int] = []
    real = pipeline.load_rgb
    monkeypatch.setattr(pipeline, "load_rgb", lambda *a, **k: decoded.append(1) or real(*a, **k))
    second = anonymizer.anonymize(data)
    assert second.cached and not decoded and second.to_bytes("PNG") == first.to_bytes("PNG")
    assert anonymizer.anonymize(data + b"\x00").cached  # other bytes: decoded again, then a pixel-key hit
    assert decoded


def test_a_repeated_hit_is_not_re_encoded_unless_its_pixels_changed(engine, camera_face, astronaut, monkeypatch):
    from idmrag_plugin import report

    anonymizer, _, _ = _engine(engine, camera_face)
    anonymizer.anonymize(astronaut)
    first = anonymizer.anonymize(astronaut)
    jpeg = first.to_bytes("JPEG", 90)
    encoded: list[str] = []
    real = report.encode
    monkeypatch.setattr(report, "encode", lambda pixels, fmt, quality: encoded.append(fmt) or real(pixels, fmt, quality))
    again = anonymizer.anonymize(astronaut)
    assert again.to_bytes("JPEG", 90) == jpeg and not encoded  # the entry's encoding, shared
    assert again.to_bytes("JPEG", 80) != jpeg and encoded == ["JPEG"]  # another quality: encoded
    again.pixels[:8, :8] = 0  # a caller who edits a hit gets their own pixels encoded
    edited = again.to_bytes("JPEG", 90)
    assert edited != jpeg and encoded == ["JPEG", "JPEG"]
    assert anonymizer.anonymize(astronaut).to_bytes("JPEG", 90) == jpeg  # the entry is untouched


def test_other_weights_under_the_same_paths_miss(tmp_path):
    """Packaged weights keep their paths across upgrades: a generator whose model folder or
    weights file changed, all else equal, gets another cache scope (the old faces are not
    handed out), and the same weights the same scope."""
    import json
    from pathlib import Path

    from idmrag_plugin.cache import scope_key

    class Weighted:
        def __init__(self, folder: Path, file: Path) -> None:
            self.model_dir, self.sampler_path, self.secret = folder, file, b"s" * 32

    folder, file = tmp_path / "model", tmp_path / "sampler.safetensors"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"sha256": "a" * 64}))
    file.write_bytes(b"weights v1")
    config = AnonymizerConfig()
    first = scope_key(config, {"dlib": 0.9}, Weighted(folder, file))
    assert scope_key(config, {"dlib": 0.9}, Weighted(folder, file)) == first
    file.write_bytes(b"weights v2")
    second = scope_key(config, {"dlib": 0.9}, Weighted(folder, file))
    assert second != first
    (folder / "config.json").write_text(json.dumps({"sha256": "b" * 64}))
    assert scope_key(config, {"dlib": 0.9}, Weighted(folder, file)) not in (first, second)
