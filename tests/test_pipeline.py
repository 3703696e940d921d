from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from conftest import FixedFaceGenerator, IdentityGenerator, RaisingGenerator
from PIL import Image

from idmrag_plugin import AnonymizationFailedError, AnonymizerConfig, ConfigError, InvalidImageError
from idmrag_plugin.engine.align import align_face
from idmrag_plugin.engine.generator import FaceGenerator, GenerationRequest
from idmrag_plugin.engine.oracles import cosine
from idmrag_plugin.report import GENERATED, OBFUSCATED, WITHHELD


def _face_similarity(oracles, original, output, landmarks):
    """Each oracle's similarity between the face in the original and in the output."""
    return {
        o.name: float(cosine(o.embed_faces(original, [landmarks]), o.embed_faces(output, [landmarks]))[0])
        for o in oracles
    }


def test_obfuscation_engine_obfuscates_every_face_and_says_so(engine, astronaut, oracles):
    result = engine.anonymize(astronaut)
    assert result.status == "anonymized"
    (face,) = result.faces
    assert face.method == OBFUSCATED and "no generator" in face.reason
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    inner = (slice(y1 + 10, y2 - 10), slice(x1 + 10, x2 - 10))
    assert np.abs(result.pixels[inner].astype(int) - astronaut[inner]).mean() > 20
    sims = _face_similarity(oracles, astronaut, result.pixels, face.detection.landmarks)
    for name, sim in sims.items():
        assert sim < engine.thresholds[name], (name, sim)


def test_obfuscation_carries_no_information_from_inside_the_face(engine, astronaut):
    """Changing pixels deep inside the face must not change the output at all."""
    first = engine.anonymize(astronaut)
    (face,) = first.faces
    x1, y1, x2, y2 = (int(v) for v in face.detection.box)
    tampered = astronaut.copy()
    inner = (slice(y1 + 25, y2 - 25), slice(x1 + 20, x2 - 20))
    tampered[inner] = np.random.default_rng(0).integers(0, 256, tampered[inner].shape, dtype=np.uint8)
    second = engine._anonymize_pixels(tampered, {})
    if len(second.faces) == 1 and np.allclose(second.faces[0].detection.landmarks, face.detection.landmarks, atol=0.5):
        np.testing.assert_array_equal(first.pixels, second.pixels)
    else:  # the detector saw the tampered face differently; check the fill itself
        from idmrag_plugin.engine.obfuscate import obfuscate_region, obfuscation_mask

        a, b = astronaut.copy(), tampered.copy()
        mask = obfuscation_mask(a.shape[:2], face.detection, None)
        obfuscate_region(a, mask)
        obfuscate_region(b, mask)
        np.testing.assert_array_equal(a, b)


def test_no_face_image_is_returned_unchanged(engine, no_face_image):
    result = engine.anonymize(no_face_image)
    assert result.status == "no_faces" and result.faces == []
    np.testing.assert_array_equal(result.pixels, no_face_image)


def test_planted_identity_generator_is_caught_and_face_obfuscated(make_engine, astronaut, oracles):
    engine = make_engine(IdentityGenerator(), max_attempts=2)
    result = engine.anonymize(astronaut)
    (face,) = result.faces
    assert face.method == OBFUSCATED and face.attempts == 2
    assert not face.verified and face.verdicts
    assert all(not v.anonymous for v in face.verdicts)  # the oracles recognised the original
    assert "recognisable" in face.reason
    sims = _face_similarity(oracles, astronaut, result.pixels, face.detection.landmarks)
    assert all(sims[n] < engine.thresholds[n] for n in sims), sims


def test_raising_generator_fails_closed(make_engine, astronaut):
    generator = RaisingGenerator()
    result = make_engine(generator, max_attempts=3).anonymize(astronaut)
    (face,) = result.faces
    assert generator.calls == 3
    assert face.method == OBFUSCATED and len(face.errors) == 3
    assert "planted generator failure" in face.errors[0]
    assert face.reason == "generator failed on every attempt"


class _UnfitFirst(FaceGenerator):
    """Finds no drawing fit to show at its first ``unfit`` attempts, then draws ``face``."""

    name = "unfit-first"

    def __init__(self, face: np.ndarray, unfit: int) -> None:
        self.face, self.unfit, self.calls = face, unfit, 0

    def generate(self, request: GenerationRequest) -> np.ndarray:
        from idmrag_plugin.errors import UnfitDrawingError

        self.calls += 1
        if request.attempt < self.unfit:
            raise UnfitDrawingError("every planted drawing unfit")
        return self.face


def test_an_attempt_with_no_drawing_fit_to_show_is_refused_not_failed(make_engine, astronaut, camera_face):
    generator = _UnfitFirst(camera_face, unfit=1)
    (face,) = make_engine(generator, max_attempts=3, cache_size=0).anonymize(astronaut).faces
    assert face.method == GENERATED and face.verified and face.attempts == 2
    assert face.errors == [] and face.reason == ""
    # none fit at any attempt: the face fails closed, and says why
    generator = _UnfitFirst(camera_face, unfit=3)
    (face,) = make_engine(generator, max_attempts=3, cache_size=0).anonymize(astronaut).faces
    assert generator.calls == 3 and face.method == OBFUSCATED and face.errors == []
    assert "no drawing fit to show at attempt 3" in face.reason


class _WrongShape(IdentityGenerator):
    def generate(self, request):
        return np.zeros((7, 7, 3), np.uint8)


def test_malformed_generator_output_fails_closed(make_engine, astronaut):
    result = make_engine(_WrongShape(), max_attempts=1).anonymize(astronaut)
    assert result.faces[0].method == OBFUSCATED
    assert "expected" in result.faces[0].errors[0]


def test_drop_policy_withholds_the_image(make_engine, astronaut):
    result = make_engine(IdentityGenerator(), max_attempts=1, on_failure="drop").anonymize(astronaut)
    assert result.status == "dropped" and result.pixels is None and result.image is None
    assert result.faces[0].method == WITHHELD
    with pytest.raises(ValueError):
        result.to_bytes()


def test_raise_policy_raises_without_pixels(make_engine, astronaut):
    with pytest.raises(AnonymizationFailedError) as info:
        make_engine(IdentityGenerator(), max_attempts=1, on_failure="raise").anonymize(astronaut)
    assert info.value.result.pixels is None
    assert info.value.result.faces[0].verdicts


def test_a_different_real_face_is_accepted_as_generated(make_engine, astronaut, camera_face, oracles):
    engine = make_engine(FixedFaceGenerator(camera_face))
    result = engine.anonymize(astronaut)
    (face,) = result.faces
    assert face.method == GENERATED and face.verified and face.attempts == 1
    names = {v.oracle for v in face.verdicts}
    # every oracle on the aligned crop, FaceNet over the whole box, and (when dlib's own
    # landmarks disagree with the detector's) every oracle through dlib's landmarks, and (for
    # a similarity near the threshold) through shifted alignments
    assert {o.name for o in oracles} | {"facenet@box"} <= names
    assert names <= {o.name for o in oracles} | {"facenet@box", "dlib@refit", "facenet@refit",
                                                 "dlib@shifted", "facenet@shifted"}
    margins = {o.name: o.alignment_margin for o in oracles}
    for verdict in face.verdicts:
        if verdict.oracle == "facenet@box" or verdict.oracle.endswith("@refit"):
            # unaligned, or another alignment: the calibrated threshold
            assert verdict.similarity < verdict.threshold == engine.thresholds[verdict.oracle.removesuffix("@refit")]
            continue
        base = verdict.oracle.removesuffix("@shifted")
        # views cut by the detector's landmarks: the calibrated threshold less the alignment margin
        assert verdict.similarity < verdict.threshold == pytest.approx(engine.thresholds[base] - margins[base])
    report = result.report()["faces"][0]
    assert report["method"] == "generated" and len(report["oracles"]) == len(face.verdicts)


def test_caller_inputs_are_not_modified(engine, astronaut):
    array = astronaut.copy()
    pil = Image.fromarray(astronaut)
    before = pil.tobytes()
    engine.anonymize(array)
    engine.anonymize(pil)
    np.testing.assert_array_equal(array, astronaut)
    assert pil.tobytes() == before


def test_metadata_never_reaches_the_output(engine, astronaut):
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {2: (48.0, 51.0, 24.0), 1: "N"}  # GPS IFD
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "JPEG", exif=exif.tobytes(), xmp=xmp)
    data = buffer.getvalue()
    assert b"CameraMaker" in data and b"xmpmeta" in data
    result = engine.anonymize(data)
    assert result.image is not None and not result.image.getexif() and not result.image.info
    for fmt in ("JPEG", "PNG", "WEBP"):
        out = result.to_bytes(fmt)
        assert b"CameraMaker" not in out and b"xmpmeta" not in out
        reread = Image.open(io.BytesIO(out))
        assert not reread.getexif() and "exif" not in reread.info and "xmp" not in reread.info


def test_faces_cut_by_the_border_and_rolled_faces(engine, astronaut):
    import cv2

    cut = np.ascontiguousarray(astronaut[60:, 190:])  # the face is cut by the top and left edges
    turn = cv2.getRotationMatrix2D((224.0, 117.0), 45.0, 1.0)
    rolled = cv2.warpAffine(astronaut, turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
    for image in (cut, rolled):
        result = engine.anonymize(image)
        assert result.faces, "face not found"
        assert all(f.method == OBFUSCATED for f in result.faces)
        assert result.pixels.shape == image.shape


def test_faces_on_their_side_are_found_by_default(engine, make_engine, astronaut, oracles):
    from idmrag_plugin import FaceAnonymizer

    sideways = np.ascontiguousarray(np.rot90(astronaut, k=1))
    upright_only = FaceAnonymizer(AnonymizerConfig(generator="none", rotations=(0,), border_search=False), oracles=oracles)
    assert upright_only.anonymize(sideways).faces == []  # MTCNN alone misses them
    result = make_engine().anonymize(sideways)
    (face,) = result.faces
    x1, y1, x2, y2 = face.detection.box
    # The astronaut's face (x 181-268, y 62-172) turned 90 degrees counter-clockwise.
    assert abs(x1 - 62) < 15 and abs(x2 - 172) < 15 and abs(y1 - (511 - 268)) < 15 and abs(y2 - (511 - 181)) < 15
    assert face.method == "obfuscated" and face.detection.detector.endswith("@270")
    assert np.abs(result.pixels[int(y1) + 20 : int(y2) - 20, int(x1) + 20 : int(x2) - 20].astype(int)
                  - sideways[int(y1) + 20 : int(y2) - 20, int(x1) + 20 : int(x2) - 20]).mean() > 20


def test_two_overlapping_faces(make_engine, astronaut, camera_face):
    face = astronaut[40:200, 160:290]
    scene = np.full((200, 250, 3), 200, np.uint8)
    scene[20:180, 0:130] = face
    scene[30:190, 95:225] = face  # second copy overlaps the first
    engine = make_engine(FixedFaceGenerator(camera_face))
    result = engine.anonymize(scene)
    assert len(result.faces) >= 2
    for face_report in result.faces:
        assert face_report.method in (GENERATED, OBFUSCATED)
        if face_report.method == GENERATED:
            assert face_report.verified


class SwappingGenerator(FaceGenerator):
    """Draws the astronaut into the cameraman's face and the cameraman into hers; records
    whose face each first attempt was asked for."""

    name = "swapping"

    def __init__(self, astronaut_face: np.ndarray, camera_face: np.ndarray) -> None:
        self.astronaut_face, self.camera_face = astronaut_face, camera_face
        self.first_asked: list[str] = []

    def generate(self, request: GenerationRequest) -> np.ndarray:
        grey = int(np.ptp(request.face.astype(int), axis=2).max()) < 8
        if request.attempt == 0:
            self.first_asked.append("cameraman" if grey else "astronaut")
        return (self.astronaut_face if grey else self.camera_face).copy()


def test_overlapping_faces_are_drawn_smallest_first(make_engine, engine, astronaut, camera, camera_face):
    """Faces whose crops overlap are drawn one after another, the smallest in the frame first,
    so that the largest (most often the photo's subject) keeps its drawing whole: drawn after
    it, a false face found on its side or by its chin was pasted into it, and the subject
    failed closed. Here the large face is detected first."""
    import cv2

    (own,) = engine.detector.detect(astronaut)
    astronaut_face = align_face(astronaut, own.landmarks, engine.config.crop_size).crop
    scene = np.full((300, 320, 3), 190, np.uint8)
    scene[10:200, 0:160] = astronaut[20:210, 140:300]
    scene[150:252, 130:220] = cv2.resize(camera[30:200, 150:300], (90, 102), interpolation=cv2.INTER_AREA)
    detections = engine.detector.detect(scene)
    assert len(detections) == 2 and _area(detections[0].box) > _area(detections[1].box)
    generator = SwappingGenerator(astronaut_face, camera_face)
    result = make_engine(generator).anonymize(scene)
    assert generator.first_asked == ["cameraman", "astronaut"]
    assert [f.method for f in result.faces] == [GENERATED, GENERATED] and all(f.verified for f in result.faces)


def _area(box: tuple[float, ...]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def test_anonymize_many_keeps_going_past_bad_inputs(engine, astronaut, no_face_image):
    results = engine.anonymize_many([astronaut, b"garbage", no_face_image])
    assert [r.status for r in results] == ["anonymized", "error", "no_faces"]
    assert results[1].pixels is None and "decode" in results[1].error
    with pytest.raises(InvalidImageError):
        engine.anonymize_many([b"garbage"], raise_errors=True)


def test_engine_is_safe_to_share_between_threads(engine, astronaut, camera):
    expected = {id(img): engine.anonymize(img).pixels for img in (astronaut, camera)}
    outputs: list[tuple[int, np.ndarray]] = []
    errors: list[BaseException] = []

    def work(image):
        try:
            for _ in range(2):
                outputs.append((id(image), engine.anonymize(image).pixels))
        except BaseException as exc:  # noqa: BLE001 - collect failures from the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(img,)) for img in (astronaut, camera, astronaut)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(outputs) == 6
    for key, pixels in outputs:
        np.testing.assert_array_equal(pixels, expected[key])


def test_invalid_config_is_refused():
    for bad in ({"on_failure": "ignore"}, {"oracles": ()}, {"max_attempts": 0}, {"privacy_level": "far0.5"}):
        with pytest.raises(ConfigError):
            AnonymizerConfig(**bad)


def test_report_is_json_serialisable(make_engine, astronaut):
    import json

    report = make_engine(cache_size=0).anonymize(astronaut).report()
    decoded = json.loads(json.dumps(report))
    assert decoded["faces"][0]["box"] and decoded["timings_ms"]["detect"] > 0


def test_separate_faces_are_verified_in_one_batched_call_and_agree_with_one_by_one(make_engine, astronaut, camera_face):
    scene = np.concatenate([astronaut[:256, 100:356], astronaut[:256, 100:356]], axis=1)  # two faces, apart
    engine = make_engine(FixedFaceGenerator(camera_face), rotations=(0,), cache_size=0)
    calls: list[list[list[int]]] = []
    verdicts_many = engine.verifier.verdicts_many

    def counting(requests):
        calls.append([list(indices) for _, _, indices in requests])
        return verdicts_many(requests)

    engine.verifier.verdicts_many = counting  # type: ignore[method-assign]
    try:
        result = engine.anonymize(scene)
    finally:
        del engine.verifier.verdicts_many
    assert len(result.faces) == 2
    assert all(f.method == GENERATED and f.attempts == 1 for f in result.faces)
    assert calls[0] == [[0, 1]]  # both faces judged in one call per oracle
    # the batched judgement is the one-by-one judgement
    verifier = engine.verifier
    originals = verifier.prepare(scene, [f.detection for f in result.faces], [0, 1])
    output = np.asarray(result.pixels)
    together = verifier.verdicts(originals, output, [0, 1])
    for index in (0, 1):
        (alone,) = verifier.verdicts(originals, output, [index])
        assert [v.oracle for v in alone] == [v.oracle for v in together[index]]
        for a, b in zip(alone, together[index], strict=True):
            assert a.similarity == pytest.approx(b.similarity, abs=1e-4) and a.anonymous == b.anonymous


def test_anonymize_many_judges_a_batch_of_images_in_one_forward_pass_per_oracle(
        make_engine, astronaut, camera_face, monkeypatch):
    images = [astronaut, np.ascontiguousarray(astronaut[:, ::-1]), astronaut[20:, 10:]]
    one_by_one = make_engine(FixedFaceGenerator(camera_face), rotations=(0,), cache_size=0)
    expected = [one_by_one.anonymize(image) for image in images]
    engine = make_engine(FixedFaceGenerator(camera_face), rotations=(0,), cache_size=0, batch_size=3)
    calls: dict[str, list[tuple[str, int]]] = {}
    for oracle in engine.oracles:
        for kind, original in (("embed", oracle.embed), ("embed_screen", oracle.embed_screen)):
            def counting(crops, _embed=original, _name=oracle.name, _kind=kind):
                calls.setdefault(_name, []).append((_kind, len(crops)))
                return _embed(crops)
            monkeypatch.setattr(oracle, kind, counting)
    results = engine.anonymize_many(images)
    for oracle in engine.oracles:
        views = 2 if oracle.box_view else 1  # the aligned crop, and the whole box for FaceNet
        batched = "embed_screen" if oracle.screens else "embed"
        # the three originals in one pass, the three pastes in another; then any exact recheck of
        # screened similarities near the threshold (one pass) and refit views (face by face)
        assert calls[oracle.name][:2] == [(batched, 3 * views), (batched, 3 * views)]
        assert all(kind == "embed" for kind, _ in calls[oracle.name][2:])
    for got, want in zip(results, expected, strict=True):
        assert [f.method for f in got.faces] == [f.method for f in want.faces] == [GENERATED]
        assert np.array_equal(np.asarray(got.pixels), np.asarray(want.pixels))
        for a, b in zip(got.faces[0].verdicts, want.faces[0].verdicts, strict=True):
            assert a.oracle == b.oracle and a.similarity == pytest.approx(b.similarity, abs=1e-4)


def test_anonymize_many_keeps_results_in_order_past_bad_inputs_within_a_batch(make_engine, astronaut, no_face_image):
    engine = make_engine(rotations=(0,), cache_size=0, batch_size=4)
    results = engine.anonymize_many([b"garbage", astronaut, no_face_image, b"", astronaut])
    assert [r.status for r in results] == ["error", "anonymized", "no_faces", "error", "anonymized"]
    assert results[0].pixels is None and results[3].pixels is None
    assert all(f.method == OBFUSCATED for r in (results[1], results[4]) for f in r.faces)


def test_anonymize_many_isolates_a_detector_failure_to_its_image(make_engine, astronaut, monkeypatch):
    engine = make_engine(rotations=(0,), cache_size=0, batch_size=4)
    detect = engine.detector.detect

    def flaky(pixels):
        if pixels.shape[0] == 300:
            raise RuntimeError("detector crashed")
        return detect(pixels)

    monkeypatch.setattr(engine.detector, "detect", flaky)
    results = engine.anonymize_many(iter([astronaut, astronaut[:300], astronaut]))  # any iterable
    assert [r.status for r in results] == ["anonymized", "error", "anonymized"]
    assert results[1].pixels is None and "detector crashed" in (results[1].error or "")
    with pytest.raises(RuntimeError, match="detector crashed"):
        engine.anonymize_many([astronaut, astronaut[:300]], raise_errors=True)


class RecordingGenerator(FaceGenerator):
    """Returns a fixed other face and keeps every request it gets."""

    name = "recording"

    def __init__(self, face: np.ndarray) -> None:
        self.face = face
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> np.ndarray:
        self.requests.append(request)
        return self.face


def test_generator_gets_the_oracles_embeddings_of_the_original_face(make_engine, astronaut, camera_face, oracles):
    """A generator may read perceived attributes from the original: it gets the verifier's own
    embeddings of the face in the photo (no second forward), one per oracle that embeds exactly
    (not the int8 screening copy's)."""
    recording = RecordingGenerator(camera_face)
    engine = make_engine(recording, cache_size=0)
    result = engine.anonymize(astronaut)
    assert result.counts() == {"generated": 1}
    (request,) = recording.requests
    assert request.original_embeddings is not None
    exact = {o.name for o in engine.oracles if not o.screens}
    assert "dlib" in exact and set(request.original_embeddings) == exact
    (det,) = engine.detector.detect(astronaut)
    for oracle in (o for o in oracles if o.name in exact):
        expected = oracle.embed_faces(astronaut, [det.landmarks])[0]
        assert np.allclose(request.original_embeddings[oracle.name], expected, atol=1e-5)


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_face_recognised_again_on_the_final_image_is_redrawn_with_its_attempts_left(
        make_engine, astronaut, camera_face, monkeypatch, max_attempts):
    """A neighbour's paste can make a verified face recognisable on the final image: it is
    redrawn (next attempt, a new pseudonym) while it has attempts left, and fails closed only
    when none are left. The final check is planted to report the face once."""
    from idmrag_plugin.engine.oracles import OracleVerdict

    recording = RecordingGenerator(camera_face)
    engine = make_engine(recording, cache_size=0, max_attempts=max_attempts)
    real_check = engine._final_check
    planted = []

    def final_check(jobs):
        if not planted:
            job = jobs[0]
            face = job.faces[0]
            face.verdicts = [OracleVerdict("dlib", 0.99, 0.9)]
            planted.append(face)
            return [(job, face)]
        return real_check(jobs)

    monkeypatch.setattr(engine, "_final_check", final_check)
    result = engine.anonymize(astronaut)
    (face,) = result.faces
    if max_attempts == 1:
        assert face.method == OBFUSCATED and "final image" in face.reason
        assert [r.attempt for r in recording.requests] == [0]
        assert not np.array_equal(result.pixels, astronaut)
    else:
        assert face.method == GENERATED and face.verified
        assert [r.attempt for r in recording.requests] == [0, 1] and face.attempts == 2


class LeakThenOtherGenerator(RecordingGenerator):
    """Returns the original face at the first attempt (caught by the oracles), a fixed other
    face after that; keeps the requests the engine says were verified."""

    def __init__(self, face: np.ndarray) -> None:
        super().__init__(face)
        self.verified: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> np.ndarray:
        self.requests.append(request)
        return request.face if request.attempt == 0 else self.face

    def accepted(self, request: GenerationRequest) -> None:
        self.verified.append(request)


def test_the_generator_is_told_which_drawing_was_verified(make_engine, astronaut, camera_face):
    """A generator keeping pseudonyms learns which attempt's drawing the oracles accepted (and
    never one they rejected), so that the person's next photo can start with it."""
    generator = LeakThenOtherGenerator(camera_face)
    result = make_engine(generator, cache_size=0).anonymize(astronaut)
    assert result.counts() == {"generated": 1} and result.faces[0].attempts == 2
    assert [r.attempt for r in generator.requests] == [0, 1]
    assert generator.verified == [generator.requests[1]]
    failed = LeakThenOtherGenerator(camera_face)
    assert make_engine(failed, cache_size=0, max_attempts=1).anonymize(astronaut).counts() == {"obfuscated": 1}
    assert failed.verified == []


class RaisingOnAcceptedGenerator(RecordingGenerator):
    def accepted(self, request: GenerationRequest) -> None:
        raise RuntimeError("bookkeeping broke")


def test_a_generator_failing_to_note_an_accepted_drawing_keeps_the_verified_face(make_engine, astronaut, camera_face):
    result = make_engine(RaisingOnAcceptedGenerator(camera_face), cache_size=0).anonymize(astronaut)
    assert result.counts() == {"generated": 1} and result.faces[0].verified
