"""FaceAnonymizer: detect -> align -> generate -> paste -> verify -> fail closed -> strip metadata."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from idmrag_plugin.cache import ResultCache, scope_key
from idmrag_plugin.calibration import thresholds_for
from idmrag_plugin.config import AnonymizerConfig
from idmrag_plugin.engine.align import AlignedFace, align_face
from idmrag_plugin.engine.blend import paste_face, region_of
from idmrag_plugin.engine.detect import (
    DlibHOGDetector,
    FaceDetector,
    MTCNNDetector,
    RotatingDetector,
    UnionDetector,
)
from idmrag_plugin.engine.generator import FaceGenerator, GenerationRequest
from idmrag_plugin.engine.obfuscate import obfuscate_region, obfuscation_mask
from idmrag_plugin.engine.oracles import FaceOracle, build_oracle
from idmrag_plugin.engine.plausibility import check_landmarks
from idmrag_plugin.engine.views import OriginalViews, Verifier, box_view_name
from idmrag_plugin.errors import AnonymizationFailedError, ConfigError, IdmragError, ModelLoadError
from idmrag_plugin.image_io import ImageInput, load_rgb
from idmrag_plugin.report import GENERATED, OBFUSCATED, WITHHELD, AnonymizationResult, FaceReport

logger = logging.getLogger(__name__)


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + (time.perf_counter() - start) * 1000.0


def _view_footprint(face: FaceReport, pasted: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """Where any verification view of ``face`` looks: its pasted crop and its box grown 2x
    (the whole-box view takes 1.15x, the refit view 1.6x, dlib's chips less)."""
    x1, y1, x2, y2 = face.detection.box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
    return (min(pasted[0], cx - half), min(pasted[1], cy - half), max(pasted[2], cx + half), max(pasted[3], cy + half))


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FaceAnonymizer:
    """Replace every face in an image with a verified synthetic identity, or fail closed.

    Models load lazily on first use, once; one instance may be shared between threads.

    Args:
        config: engine settings; defaults to :class:`AnonymizerConfig()`.
        generator: makes replacement faces. Without one, every detected face is
            irreversibly obfuscated (and the report says so).
        detector: overrides the detector built from ``config`` (``config.rotations`` still
            applies to it).
        oracles: override the oracles built from ``config.oracles``.
        thresholds: override the shipped calibrated thresholds, by oracle name.
    """

    def __init__(
        self,
        config: AnonymizerConfig | None = None,
        *,
        generator: FaceGenerator | None = None,
        detector: FaceDetector | None = None,
        oracles: Sequence[FaceOracle] | None = None,
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        self.config = config or AnonymizerConfig()
        self.device = resolve_device(self.config.device)
        self.generator = generator if generator is not None else self._build_generator()
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)
        self.detector = detector or self._build_detector()
        if set(self.config.rotations) != {0} and not isinstance(self.detector, RotatingDetector):
            self.detector = RotatingDetector(self.detector, self.config.rotations)
        self.oracles = list(oracles) if oracles is not None else [
            build_oracle(name, self.device, self.config.cache_dir) for name in self.config.oracles
        ]
        if not self.oracles:
            raise ConfigError("at least one oracle is required; privacy fails closed")
        names = [o.name for o in self.oracles]
        self.thresholds = thresholds_for(
            self.config.privacy_level, names + [box_view_name(o.name) for o in self.oracles if o.box_view]
        )
        if thresholds is not None:
            self.thresholds.update({name: float(value) for name, value in thresholds.items()})
            missing = [name for name in names if name not in thresholds]
            if missing:
                raise ConfigError(f"thresholds given for some oracles but not for {', '.join(missing)}")
        self.verifier = Verifier(self.oracles, self.thresholds)
        self.cache: ResultCache | None = None
        if self.config.cache_size > 0 or self.config.result_cache_dir is not None:
            self.cache = ResultCache(
                scope_key(self.config, self.thresholds, self.generator),
                max_entries=self.config.cache_size,
                folder=self.config.result_cache_dir,
            )

    def _build_generator(self) -> FaceGenerator | None:
        from idmrag_plugin.weights import (
            CODES_VAE_DIR,
            GENDER_PROBE_FILE,
            RENDERER_DIR,
            SAMPLER_FILE,
            packaged,
        )

        if self.config.generator == "vae-decode":
            from idmrag_plugin.generation.vae_generator import VAEDecodeGenerator

            return VAEDecodeGenerator(packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE), device=self.device)
        if self.config.generator == "renderer":
            from idmrag_plugin.generation.renderer_generator import RendererGenerator

            weights = self.config.generator_weights or packaged(RENDERER_DIR)
            return RendererGenerator(weights, packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE), device=self.device,
                                     gender_probe_path=packaged(GENDER_PROBE_FILE))
        if self.config.generator in ("lcm", "ldm-teacher"):
            from idmrag_plugin.generation.lcm_generator import LatentDiffusionGenerator

            kind = "lcm" if self.config.generator == "lcm" else "teacher"
            weights = self.config.generator_weights
            if weights is None:
                try:
                    weights = packaged(kind)
                except ModelLoadError as exc:
                    raise ModelLoadError(
                        f"no {kind} weights ship with this version: train them with `idmrag train-lcm` "
                        f"and pass generator_weights=OUTPUT/{kind}"
                    ) from exc
            steps = self.config.generator_steps or (4 if kind == "lcm" else 50)
            return LatentDiffusionGenerator(
                weights, packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE), steps=steps, device=self.device
            )
        return None

    def _build_detector(self) -> FaceDetector:
        mtcnn = MTCNNDetector(
            self.config.min_face_size, self.config.detection_thresholds, device=self.device
        )
        if self.config.detector == "mtcnn+hog":
            return UnionDetector([mtcnn, DlibHOGDetector()])
        return mtcnn

    def warmup(self) -> None:
        """Load every model now instead of on the first image."""
        self.detector.load()
        if self.generator is not None:
            for oracle in self.oracles:
                oracle.load()

    # ------------------------------------------------------------------ public API
    def anonymize(self, image: ImageInput) -> AnonymizationResult:
        """Anonymize one image (PIL image, bytes, path or numpy array).

        The input is never modified. Raises :class:`~idmrag_plugin.errors.InvalidImageError`
        for unreadable input, and :class:`AnonymizationFailedError` when a face cannot be
        verified and ``on_failure="raise"``.
        """
        timings: dict[str, float] = {}
        with _timed(timings, "total"):
            encoded_key = None
            if (
                self.cache is not None
                and isinstance(image, (bytes, bytearray, memoryview))
                and len(image) <= self.config.max_bytes  # larger input is refused below, unhashed
            ):
                encoded_key = self.cache.bytes_key(bytes(image))
                hit = self.cache.get_encoded(encoded_key)
                if hit is not None:  # these exact bytes were anonymized before: no decoding
                    hit.timings_ms = timings
                    return hit
            with _timed(timings, "decode"):
                pixels = load_rgb(image, self.config.max_pixels, self.config.max_bytes)
            key = self.cache.key(pixels) if self.cache is not None else None
            cached = self.cache.get(key) if self.cache is not None and key is not None else None
            if cached is not None:
                cached.timings_ms = timings
                result = cached
            else:
                result = self._anonymize_pixels(pixels, timings)
                if self.cache is not None and key is not None:
                    self.cache.put(key, result)
            if self.cache is not None and key is not None and encoded_key is not None:
                self.cache.alias(encoded_key, key)
        return result

    def anonymize_many(
        self, images: Iterable[ImageInput], *, raise_errors: bool = False, progress: bool = False
    ) -> list[AnonymizationResult]:
        """Anonymize several images with the shared models.

        With ``raise_errors=False`` an image that cannot be processed yields a result with
        ``status="error"`` and no pixels, so one bad file does not lose the batch.
        """
        from tqdm import tqdm

        results = []
        for image in tqdm(images, desc="anonymizing", unit="image", disable=not progress):
            try:
                results.append(self.anonymize(image))
            except Exception as exc:  # noqa: BLE001 - one bad image must not lose the batch
                if raise_errors:
                    raise
                logger.warning("image withheld: %s: %s", type(exc).__name__, exc)
                results.append(self.error_result(exc))
        return results

    def error_result(self, exc: BaseException) -> AnonymizationResult:
        """The result reported for an image that could not be processed: no pixels."""
        message = str(exc) if isinstance(exc, IdmragError) else f"{type(exc).__name__}: {exc}"
        return AnonymizationResult("error", 0, 0, None, privacy_level=self.config.privacy_level, error=message)

    # ------------------------------------------------------------------ the loop
    def _anonymize_pixels(self, pixels: np.ndarray, timings: dict[str, float]) -> AnonymizationResult:
        height, width = pixels.shape[:2]
        with _timed(timings, "detect"):
            detections = self.detector.detect(pixels)
        output = pixels.copy()
        result = AnonymizationResult(
            "no_faces" if not detections else "anonymized", width, height, output,
            timings_ms=timings, privacy_level=self.config.privacy_level,
        )
        if not detections:
            return result
        faces = [FaceReport(i, d) for i, d in enumerate(detections)]
        result.faces = faces
        with _timed(timings, "align"):
            aligned = [self._align(pixels, face) for face in faces]

        if self.generator is None:
            failed = faces
            for face in faces:
                face.reason = "no generator configured: obfuscated by design"
        else:
            failed = self._replace_all(pixels, output, faces, aligned, timings)

        if failed and self.generator is not None and self.config.on_failure != "obfuscate":
            result.pixels = None
            for face in failed:
                face.method = WITHHELD
            summary = f"{len(failed)} of {len(faces)} face(s) could not be verified anonymous"
            if self.config.on_failure == "drop":
                result.status = "dropped"
                result.error = summary
                return result
            result.status = "error"
            result.error = summary
            raise AnonymizationFailedError(f"{summary}; image withheld (on_failure='raise')", result)

        with _timed(timings, "obfuscate"):
            for face in failed:
                face.method = OBFUSCATED
                obfuscate_region(output, obfuscation_mask(output.shape[:2], face.detection, aligned[face.index]))
        return result

    def _align(self, pixels: np.ndarray, face: FaceReport) -> AlignedFace | None:
        check = check_landmarks(face.detection.landmarks, face.detection.box)
        if not check.plausible:
            # Aligning on such points would crop a fraction of the face for the generator
            # and the oracles alike: the whole box is obfuscated instead.
            face.errors.append(f"implausible landmarks: {check.reason}")
            return None
        try:
            return align_face(pixels, face.detection.landmarks, self.config.crop_size)
        except ValueError as exc:
            face.errors.append(f"alignment: {exc}")
            return None

    def _replace_all(
        self,
        pixels: np.ndarray,
        output: np.ndarray,
        faces: list[FaceReport],
        aligned: list[AlignedFace | None],
        timings: dict[str, float],
    ) -> list[FaceReport]:
        """Generate and verify each face; return the faces that must fail closed.

        Faces whose crops overlap no other face's are replaced together: each attempt round
        generates and pastes all of them, then verifies them in one batched call per oracle.
        Faces whose crops overlap are replaced one after another, since restoring one after a
        failed attempt would also erase part of its neighbour.
        """
        replaceable = [f for f, crop in zip(faces, aligned, strict=True) if crop is not None]
        with _timed(timings, "verify"):
            originals = self.verifier.prepare(pixels, [f.detection for f in faces], [f.index for f in replaceable])
        regions = {f.index: region_of(aligned[f.index], output.shape[:2]) for f in replaceable}  # type: ignore[arg-type]
        alone = [f for f in replaceable
                 if not any(g is not f and _overlaps(regions[f.index], regions[g.index]) for g in replaceable)]
        groups = [alone] if alone else []
        groups += [[f] for f in replaceable if f not in alone]
        for group in groups:
            start = time.perf_counter()
            self._replace_together(output, group, aligned, originals, timings)
            share = (time.perf_counter() - start) * 1000.0 / len(group)
            for face in group:
                face.timings_ms["replace"] = share
        failed = []
        for face, crop in zip(faces, aligned, strict=True):
            if crop is None:
                face.reason = "landmarks unusable for alignment: " + "; ".join(face.errors)
                failed.append(face)
            elif face.verdicts and face.verified:
                face.method = GENERATED
            else:
                if not face.verdicts and face.errors:
                    face.reason = "generator failed on every attempt"
                failed.append(face)
        generated = [f for f in faces if f.method == GENERATED]
        # A paste, or the restoring of a failed one, can change what another face's views see:
        # verify again, on the final image, every face whose views reach into another's crop.
        touched = [
            f for f in generated
            if any(g is not f and _overlaps(regions[g.index], _view_footprint(f, regions[f.index])) for g in replaceable)
        ]
        if touched:
            with _timed(timings, "verify"):
                final = self.verifier.verdicts(originals, output, [f.index for f in touched])
            for face, verdicts in zip(touched, final, strict=True):
                face.verdicts = verdicts
                if not face.verified:
                    face.method = OBFUSCATED
                    face.reason = "not anonymous on the final image after overlapping faces were pasted"
                    failed.append(face)
        return failed

    def _replace_together(
        self,
        output: np.ndarray,
        group: list[FaceReport],
        aligned: list[AlignedFace | None],
        originals: OriginalViews,
        timings: dict[str, float],
    ) -> None:
        """Attempt rounds for faces whose crops do not overlap; a face verified anonymous
        keeps its paste, any other is restored and tried again with a new identity."""
        assert self.generator is not None
        pending = list(group)
        for attempt in range(self.config.max_attempts):
            if not pending:
                return
            pasted: list[tuple[FaceReport, tuple[int, int, int, int], np.ndarray]] = []
            retry = []
            for face in pending:
                crop = aligned[face.index]
                assert crop is not None
                face.attempts = attempt + 1
                new = self._generate(face, crop, attempt, timings)
                if new is None:
                    retry.append(face)
                    continue
                x1, y1, x2, y2 = region = region_of(crop, output.shape[:2])
                pasted.append((face, region, output[y1:y2, x1:x2].copy()))
                with _timed(timings, "blend"):
                    paste_face(output, new, crop, grow=self.generator.paste_grow,
                               colour_match=self.generator.colour_match)
            if pasted:
                with _timed(timings, "verify"):
                    verdicts = self.verifier.verdicts(originals, output, [face.index for face, _, _ in pasted])
                for (face, (x1, y1, x2, y2), backup), face_verdicts in zip(pasted, verdicts, strict=True):
                    face.verdicts = face_verdicts
                    if face.verified:
                        face.reason = ""
                        continue
                    output[y1:y2, x1:x2] = backup
                    face.reason = "still recognisable as the original by " + ", ".join(
                        v.oracle for v in face.verdicts if not v.anonymous
                    )
                    retry.append(face)
            pending = retry

    def _generate(self, face: FaceReport, crop: AlignedFace, attempt: int, timings: dict[str, float]) -> np.ndarray | None:
        """One generator attempt; None (the error noted on the face) when the generator fails."""
        assert self.generator is not None
        request = GenerationRequest(crop.crop.copy(), attempt, self._seed(crop.crop, attempt))
        try:
            with _timed(timings, "generate"):
                new = np.asarray(self.generator.generate(request))
            if new.shape != crop.crop.shape or new.dtype != np.uint8:
                raise ValueError(f"generator returned {new.shape} {new.dtype}, expected {crop.crop.shape} uint8")
        except Exception as exc:  # noqa: BLE001 - any generator failure must fail closed
            face.errors.append(f"attempt {attempt + 1}: {type(exc).__name__}: {exc}")
            logger.warning("generator failed on face %d: %s", face.index, exc)
            return None
        return new

    def _seed(self, crop: np.ndarray, attempt: int) -> int:
        digest = hashlib.blake2b(crop.tobytes(), digest_size=8, key=str(self.config.seed).encode())
        return (int.from_bytes(digest.digest(), "little") + attempt * 0x9E3779B1) % (2**63)
