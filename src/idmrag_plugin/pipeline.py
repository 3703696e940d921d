"""FaceAnonymizer: detect -> align -> generate -> paste -> verify -> fail closed -> strip metadata."""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from idmrag_plugin.cache import ResultCache, scope_key
from idmrag_plugin.calibration import thresholds_for
from idmrag_plugin.config import AnonymizerConfig
from idmrag_plugin.engine.align import AlignedFace, align_face, in_frame_of
from idmrag_plugin.engine.blend import far_side_cut, paste_face, region_of
from idmrag_plugin.engine.border import BORDER_MIN_FACE, BorderDetector
from idmrag_plugin.engine.denoise import DENOISED_TAG, Denoised, DenoisedSearch
from idmrag_plugin.engine.descreen import DESCREENED_TAG, Descreened, DescreenedSearch
from idmrag_plugin.engine.detect import (
    DIAGONAL_MIN_FACE,
    DIAGONAL_SCALE,
    DOUBTFUL_TAG,
    Detection,
    DlibHOGDetector,
    FaceDetector,
    MTCNNDetector,
    RotatingDetector,
    UnionDetector,
    apply_affine,
    box_intersection,
    cut_by_frame,
)
from idmrag_plugin.engine.exposure import (
    FADED_TAG,
    LEVELLED_TAG,
    SHADOW_TAG,
    LevellingDetector,
    ToneMap,
    hidden_faces_tone_map,
    levels_of,
    stretched_linearly,
)
from idmrag_plugin.engine.generator import FaceGenerator, GenerationRequest
from idmrag_plugin.engine.grey import (
    GREY_TAG,
    ChannelFlip,
    GreySearch,
    GreyView,
    attacker_would_drop_colour,
)
from idmrag_plugin.engine.hog_look import HOGLook
from idmrag_plugin.engine.negative import NEGATIVE_TAG, Negative, NegativeSearch
from idmrag_plugin.engine.obfuscate import (
    WIDENINGS,
    drawn_faces_mask,
    obfuscate_region,
    obfuscation_mask,
)
from idmrag_plugin.engine.oracles import FaceOracle, build_oracle, cosine
from idmrag_plugin.engine.plausibility import check_landmarks
from idmrag_plugin.engine.seam import SEAM_TAG, Roll, SeamSearch
from idmrag_plugin.engine.stretch import (
    OTHER_PROPORTIONS,
    STRETCH_MIN_FACE,
    STRETCH_TAG,
    Squeeze,
    StretchSearch,
    working_squeeze,
)
from idmrag_plugin.engine.views import OriginalViews, Verifier, box_view_name
from idmrag_plugin.errors import (
    AnonymizationFailedError,
    ConfigError,
    IdmragError,
    ModelLoadError,
    UnfitDrawingError,
)
from idmrag_plugin.image_io import ImageInput, load_rgb
from idmrag_plugin.report import GENERATED, OBFUSCATED, WITHHELD, AnonymizationResult, FaceReport

logger = logging.getLogger(__name__)

#: Rounds in which faces recognised again on the final image (a neighbour's paste changed
#: what their views see) are redrawn with the attempts they have left; what is still
#: recognised after them fails closed. Four, not two: over the bench's 300 probe photos one
#: subject more kept its drawing (a redraw of the false face by its chin in the last of two
#: rounds had it obfuscated); each redraw spends one of the face's attempts, so the rounds end.
FINAL_CHECK_ROUNDS = 4
#: The attacker's views of a photo (FaceAnonymizer._attacker_views) a drawing and an
#: obfuscation are judged in again, by name, and as a report says them; a squeezed photo's
#: other proportions are named by their multiple.
GREY_VIEW, PHOTO_TONES_VIEW, STRETCHED_VIEW = "grey", "photo tones", "stretched levels"
DESCREENED_VIEWS = ("descreened", "descreened more")
_ATTACKER_VIEW_NAMES = {
    DESCREENED_VIEWS[0]: "the photo blurred as far as its halftone screen or dither needs",
    DESCREENED_VIEWS[1]: "the photo blurred a step beyond what its halftone screen or dither needs",
    GREY_VIEW: "the photo's grey levels (its colour dropped)",
    PHOTO_TONES_VIEW: "the photo's own tones (as returned)",
    STRETCHED_VIEW: "the photo's levels stretched linearly around the face",
}
#: Views of a levelled photo's drawing judged against the original in the engine's levels, not
#: in the same view: an attacker compares what they make of the output with a clear photo of the
#: person, and the original in the engine's levels is the nearest to one the engine has. Both
#: stretched from the same few levels, the original and a drawing share banding and context
#: that FaceNet matched (similarities over its threshold on faces it put 0.3 under it against
#: the clear photo, under a 88% grey overlay).
_AGAINST_LEVELLED = frozenset({PHOTO_TONES_VIEW, STRETCHED_VIEW})


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


def _obfuscate(job: _Job, face: FaceReport, widen: float = 1.0) -> tuple[int, int, int, int] | None:
    """Obfuscate ``face`` in the job's output (its region scaled by ``widen``, around the face
    ellipses of the job's generated faces); the box around the region refilled."""
    face.method = OBFUSCATED
    # a paste over at least the face ellipse leaves nothing of the photo there
    drawn = [job.aligned[g.index] for g in job.faces
             if g is not face and g.method == GENERATED and job.pasted_grow.get(g.index, 0.0) >= 1.0]
    spared = drawn_faces_mask(job.output.shape[:2], [crop for crop in drawn if crop is not None]) if drawn else None
    mask = obfuscation_mask(job.output.shape[:2], face.detection, job.aligned[face.index], widen, spared)
    obfuscate_region(job.output, mask)
    return _mask_box(mask)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The (x1, y1, x2, y2) box around a boolean mask's True pixels, or None when it has none."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    (top, bottom), (left, right) = np.flatnonzero(rows)[[0, -1]], np.flatnonzero(cols)[[0, -1]]
    return int(left), int(top), int(right) + 1, int(bottom) + 1


@contextmanager
def _timed_shared(jobs: Sequence[_Job], key: str) -> Iterator[None]:
    """Time a stage run once for several images; each is charged an equal share."""
    start = time.perf_counter()
    try:
        yield
    finally:
        share = (time.perf_counter() - start) * 1000.0 / max(len(jobs), 1)
        for job in jobs:
            job.timings[key] = job.timings.get(key, 0.0) + share


@dataclass
class _Job:
    """One image on its way through the engine."""

    pixels: np.ndarray
    timings: dict[str, float]
    result: AnonymizationResult
    output: np.ndarray
    faces: list[FaceReport] = field(default_factory=list)
    aligned: list[AlignedFace | None] = field(default_factory=list)
    replaceable: list[FaceReport] = field(default_factory=list)
    failed: list[FaceReport] = field(default_factory=list)
    originals: OriginalViews | None = None
    regions: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    #: per obfuscated face, how many of obfuscate.WIDENINGS its region has been widened by (one
    #: more: still matched at the widest, said in its report)
    widened: dict[int, int] = field(default_factory=dict)
    #: per face whose drawing was verified, the growth of the face ellipse it was pasted over
    pasted_grow: dict[int, float] = field(default_factory=dict)
    #: a dark or washed-out photo, one with a face in deep shadow, a film negative, a photo cast
    #: in one colour or full of impulse noise is worked on levelled, inverted, in grey or
    #: median-filtered, a photo stretched out of proportion squeezed back (``pixels`` and
    #: ``output`` are that copy): its map and the photo, to bring the redrawn pixels back at the end
    levelled_from: tuple[ToneMap | Negative | ChannelFlip | GreyView | Denoised | Squeeze | Roll, np.ndarray] | None = None
    #: FaceAnonymizer._attacker_views of this job, decided once (the photo does not change)
    attacker_views: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None
    #: the photo's descreen.Descreened blurs when it is a halftone or dithered print with faces
    screen_blurs: list[Descreened] = field(default_factory=list)


@dataclass
class _Paste:
    """One face drawn and pasted in an attempt round, waiting for its verdicts: what to restore
    if it fails, and the request the generator hears about if it passes."""

    job: _Job
    face: FaceReport
    region: tuple[int, int, int, int]
    backup: np.ndarray
    request: GenerationRequest
    grow: float


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
        detector: overrides the detector built from ``config`` (``config.rotations``,
            ``config.border_search`` and ``config.exposure_search`` still apply to it; another
            engine's ``detector``, a whole search already, is used as it is).
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
        self.detector = self._search(detector)
        self.oracles = list(oracles) if oracles is not None else [
            build_oracle(name, self.device, self.config.cache_dir, runtime=self.config.oracle_runtime,
                         threads=self.config.threads, screening=self.config.screening)
            for name in self.config.oracles
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
        self.verifier = Verifier(self.oracles, self.thresholds, redetector=self._upright)
        # what each generation request tells the generator: each oracle's aligned-view threshold
        self._aligned_thresholds = {name: self.thresholds[name] for name in names}
        self._cache: ResultCache | None = None
        self._cache_secret = getattr(self.generator, "secret", None)  # the secret the cache is scoped by
        self._cache_scope_lock = threading.Lock()
        if self.config.cache_size > 0 or self.config.result_cache_dir is not None:
            self._cache = ResultCache(
                scope_key(self.config, self.thresholds, self.generator),
                max_entries=self.config.cache_size,
                folder=self.config.result_cache_dir,
            )

    def _build_generator(self) -> FaceGenerator | None:
        from idmrag_plugin.weights import (
            ATTRIBUTE_PROBES_FILE,
            CODE_FITNESS_FILE,
            CODE_LCM_DIR,
            CODES_VAE_DIR,
            GLASSES_PROBE_FILE,
            REFINER_DIR,
            RENDERER_DIR,
            SAMPLER_FILE,
            STUDENT_FILE,
            packaged,
        )

        def refiner() -> Path | None:
            return packaged(REFINER_DIR) if self.config.refine_faces else None

        def glasses_probe() -> Path | None:
            return packaged(GLASSES_PROBE_FILE) if self.config.keep_glasses else None

        runtime = {"runtime": self.config.generator_runtime, "cache_dir": self.config.cache_dir,
                   "threads": self.config.threads}

        if self.config.generator == "vae-decode":
            from idmrag_plugin.generation.vae_generator import VAEDecodeGenerator

            return VAEDecodeGenerator(packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE), device=self.device, **runtime)
        if self.config.generator == "renderer":
            from idmrag_plugin.generation.renderer_generator import RendererGenerator

            if self.config.generator_weights is None:
                weights, probes = packaged(RENDERER_DIR), packaged(ATTRIBUTE_PROBES_FILE)
            else:  # a renderer of one's own keeps gender and age with probes fitted for it, kept beside it
                weights = Path(self.config.generator_weights)
                probes = weights / ATTRIBUTE_PROBES_FILE if (weights / ATTRIBUTE_PROBES_FILE).is_file() else None
            return RendererGenerator(weights, packaged(CODES_VAE_DIR), packaged(SAMPLER_FILE), device=self.device,
                                     attribute_probes_path=probes,
                                     student_path=packaged(STUDENT_FILE) if probes is not None else None,
                                     refiner_dir=refiner(), blend=self.config.face_blend,
                                     keep_outside_face=self.config.keep_outside_face,
                                     keep_expression=self.config.keep_expression,
                                     glasses_probe_path=glasses_probe(),
                                     match_sharpness=self.config.match_sharpness, **runtime)
        if self.config.generator == "renderer-lcm":
            from idmrag_plugin.generation.renderer_lcm_generator import RendererLCMGenerator

            return RendererLCMGenerator(
                self.config.generator_weights or packaged(CODE_LCM_DIR), packaged(RENDERER_DIR), packaged(CODES_VAE_DIR),
                packaged(SAMPLER_FILE), packaged(ATTRIBUTE_PROBES_FILE), packaged(STUDENT_FILE),
                steps=self.config.generator_steps, device=self.device, refiner_dir=refiner(),
                blend=self.config.face_blend, keep_outside_face=self.config.keep_outside_face,
                keep_expression=self.config.keep_expression, glasses_probe_path=glasses_probe(),
                match_sharpness=self.config.match_sharpness, code_fitness_path=packaged(CODE_FITNESS_FILE), **runtime)
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

    def _search(self, detector: FaceDetector | None) -> FaceDetector:
        """The whole face search: ``detector`` (or the configured one) at every rotation, plus
        the border pass, on the photo and, when its tones call for it, on a levelled copy; then
        upright on its negative, a median-filtered copy of a noisy photo, a printed photo
        blurred, a colour photo's grey levels and copies squeezed along each axis; last, dlib's
        HOG detector's look. Another engine's search is taken as it is."""
        self._upright: FaceDetector | None = None  # the plain upright detector: the cut faces' attacker view
        if isinstance(detector, (BorderDetector, LevellingDetector, NegativeSearch, DenoisedSearch, DescreenedSearch, GreySearch,
                                 StretchSearch, SeamSearch, HOGLook)):
            return detector
        if detector is not None:
            upright = border = diagonal = squeezed = detector
            diagonal_scale = 1.0
        else:
            mtcnn = MTCNNDetector(self.config.min_face_size, self.config.detection_thresholds, device=self.device,
                                  runtime=self.config.detector_runtime, cache_dir=self.config.cache_dir,
                                  threads=self.config.threads)
            upright = UnionDetector([mtcnn, DlibHOGDetector()]) if self.config.detector == "mtcnn+hog" else mtcnn
            border = mtcnn.sharing_networks(max(self.config.min_face_size, BORDER_MIN_FACE))
            diagonal_scale = DIAGONAL_SCALE
            diagonal = mtcnn.sharing_networks(round(max(self.config.min_face_size, DIAGONAL_MIN_FACE) * diagonal_scale))
            squeezed = mtcnn.sharing_networks(max(self.config.min_face_size, STRETCH_MIN_FACE))
        self._upright = upright
        search = upright
        if set(self.config.rotations) != {0} and not isinstance(search, RotatingDetector):
            search = RotatingDetector(
                search, self.config.rotations, diagonal_detector=diagonal, diagonal_scale=diagonal_scale
            )
        if self.config.border_search:
            search = BorderDetector(search, border)
        if self.config.exposure_search:
            search = LevellingDetector(search, min_face_size=self.config.min_face_size, shadow_detector=upright)
        if self.config.negative_search:
            search = NegativeSearch(search, negative_detector=upright)
        if self.config.denoise_search:
            search = DenoisedSearch(search, retoned_detector=upright)
        if self.config.descreen_search:
            search = DescreenedSearch(search, retoned_detector=upright)
        if self.config.grey_search:
            search = GreySearch(search, retoned_detector=upright)
        if self.config.stretch_search:
            search = StretchSearch(search, stretch_detector=squeezed)
        if self.config.seam_search:
            search = SeamSearch(search, seam_detector=upright)
        if self.config.hog_search and self.config.detector != "mtcnn+hog":
            search = HOGLook(search)
        return search

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
            hit, pixels, keys = self._lookup(image, timings)
            if hit is not None:
                return hit
            result = self._anonymize_pixels(pixels, timings)
            self._store(keys, result)
        return result

    def anonymize_many(
        self, images: Iterable[ImageInput], *, raise_errors: bool = False, progress: bool = False
    ) -> list[AnonymizationResult]:
        """Anonymize several images with the shared models, in order.

        Images go through the engine ``config.batch_size`` at a time: each oracle embeds the
        faces of the whole batch in one forward pass per attempt round. With
        ``raise_errors=False`` an image that cannot be processed yields a result with
        ``status="error"`` and no pixels, so one bad file does not lose the batch.
        """
        from tqdm import tqdm

        results: list[AnonymizationResult] = []
        remaining = iter(images)
        with tqdm(desc="anonymizing", unit="image", disable=not progress) as bar:
            while chunk := list(itertools.islice(remaining, self.config.batch_size)):
                for outcome in self._anonymize_chunk(chunk):
                    if isinstance(outcome, Exception):
                        if raise_errors:
                            raise outcome
                        logger.warning("image withheld: %s: %s", type(outcome).__name__, outcome)
                        outcome = self.error_result(outcome)
                    results.append(outcome)
                bar.update(len(chunk))
        return results

    def error_result(self, exc: BaseException) -> AnonymizationResult:
        """The result reported for an image that could not be processed: no pixels."""
        message = str(exc) if isinstance(exc, IdmragError) else f"{type(exc).__name__}: {exc}"
        return AnonymizationResult("error", 0, 0, None, privacy_level=self.config.privacy_level, error=message)

    # ------------------------------------------------------------------ the result cache
    def _lookup(
        self, image: ImageInput, timings: dict[str, float]
    ) -> tuple[AnonymizationResult | None, np.ndarray, tuple[str | None, str | None]]:
        """(a cached result or None, the decoded pixels, the cache keys of the pixels and of
        the encoded bytes). Exact bytes seen before are answered without decoding."""
        encoded_key = None
        cache = self.cache
        if (
            cache is not None
            and isinstance(image, (bytes, bytearray, memoryview))
            and len(image) <= self.config.max_bytes  # larger input is refused below, unhashed
        ):
            encoded_key = cache.bytes_key(bytes(image))
            hit = cache.get_encoded(encoded_key)
            if hit is not None:
                hit.timings_ms = timings
                return hit, np.zeros((0, 0, 3), np.uint8), (None, encoded_key)
        with _timed(timings, "decode"):
            pixels = load_rgb(image, self.config.max_pixels, self.config.max_bytes)
        if cache is None:
            return None, pixels, (None, encoded_key)
        key = cache.key(pixels)
        cached = cache.get(key)
        if cached is not None:
            cached.timings_ms = timings
            if encoded_key is not None:  # these bytes decode to known pixels
                cache.alias(encoded_key, key)
        return cached, pixels, (key, encoded_key)

    @property
    def cache(self) -> ResultCache | None:
        """The anonymization cache (None when off), scoped by the generator's pseudonym secret
        as it is now: when the secret changed since, the cache is scoped anew first, so that a
        result drawn under the old secret is never answered under the new one (to the
        integrations' batch prefetch either)."""
        cache = self._cache
        secret = getattr(self.generator, "secret", None)
        if cache is not None and secret != self._cache_secret:
            with self._cache_scope_lock:
                if secret != self._cache_secret:
                    cache.rescope(scope_key(self.config, self.thresholds, self.generator))
                    self._cache_secret = secret
        return cache

    def _store(self, keys: tuple[str | None, str | None], result: AnonymizationResult) -> None:
        """Keep a new ``result`` under the pixels' key and point the encoded bytes' key at it."""
        key, encoded_key = keys
        cache = self.cache
        if cache is None or key is None:
            return
        cache.put(key, result)
        if encoded_key is not None:
            cache.alias(encoded_key, key)

    def _anonymize_chunk(self, chunk: list[ImageInput]) -> list[AnonymizationResult | Exception]:
        """Each image's result, or the exception it raised, in order; the images that are not
        in the cache go through the engine together."""
        outcomes: list[AnonymizationResult | Exception | None] = [None] * len(chunk)
        todo: list[tuple[int, np.ndarray, dict[str, float], tuple[str | None, str | None]]] = []
        for slot, image in enumerate(chunk):
            timings: dict[str, float] = {}
            try:
                with _timed(timings, "total"):
                    hit, pixels, keys = self._lookup(image, timings)
            except Exception as exc:  # noqa: BLE001 - one bad image must not lose the batch
                outcomes[slot] = exc
                continue
            if hit is not None:
                outcomes[slot] = hit
            else:
                todo.append((slot, pixels, timings, keys))
        if todo:
            start = time.perf_counter()
            try:
                done: list[AnonymizationResult | Exception] = list(
                    self._anonymize_batch([pixels for _, pixels, _, _ in todo], [t for _, _, t, _ in todo]))
            except Exception as exc:  # noqa: BLE001 - reported for every image of the batch
                done = [exc] * len(todo)
            share = (time.perf_counter() - start) * 1000.0 / len(todo)
            for (slot, _, timings, keys), outcome in zip(todo, done, strict=True):
                timings["total"] = timings.get("total", 0.0) + share
                if isinstance(outcome, AnonymizationResult):
                    self._store(keys, outcome)
                outcomes[slot] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    # ------------------------------------------------------------------ the loop
    def _anonymize_pixels(self, pixels: np.ndarray, timings: dict[str, float]) -> AnonymizationResult:
        (outcome,) = self._anonymize_batch([pixels], [timings])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _anonymize_batch(
        self, images: list[np.ndarray], timings: list[dict[str, float]]
    ) -> list[AnonymizationResult | Exception]:
        """Detect, replace and verify the faces of several images together; per image its
        result, or the error it raised (its failure policy's, or its detector's)."""
        started: list[_Job | Exception] = []
        for pixels, t in zip(images, timings, strict=True):
            try:
                started.append(self._detect_and_align(pixels, t))
            except Exception as exc:  # noqa: BLE001 - that image fails, the others go on
                started.append(exc)
        jobs = [job for job in started if isinstance(job, _Job)]
        with_faces = [job for job in jobs if job.faces]
        if self.generator is None:
            for job in with_faces:
                job.failed = list(job.faces)
                for face in job.faces:
                    face.reason = "no generator configured: obfuscated by design"
        elif with_faces:
            self._replace_all(with_faces)
            for job in with_faces:
                self._judge_attacker_views(job)
        outcomes: list[AnonymizationResult | Exception] = []
        for job in started:
            if isinstance(job, Exception):
                outcomes.append(job)
                continue
            try:
                outcomes.append(self._finish(job))
            except AnonymizationFailedError as exc:
                outcomes.append(exc)
        return outcomes

    def _detect_and_align(self, pixels: np.ndarray, timings: dict[str, float]) -> _Job:
        height, width = pixels.shape[:2]
        with _timed(timings, "detect"):
            detections = self.detector.detect(pixels)
        # a printed photo's blurs (none for other photos), for its working copy and the attacker
        blurs = Descreened.all_of(pixels) if detections else []
        tones, elsewhere, detections = self._working_copy(pixels, detections, blurs)
        levelled_from = None
        if tones is not None:
            levelled_from, pixels = (tones, pixels), tones.apply(pixels)
        output = pixels.copy()
        result = AnonymizationResult(
            "no_faces" if not detections else "anonymized", width, height, output,
            timings_ms=timings, privacy_level=self.config.privacy_level,
        )
        job = _Job(pixels, timings, result, output, levelled_from=levelled_from, screen_blurs=blurs)
        if detections:
            job.faces = result.faces = [FaceReport(i, d) for i, d in enumerate(detections)]
            with _timed(timings, "align"):
                job.aligned = [self._align(pixels, face) for face in job.faces]
            for face, reason in zip(job.faces, elsewhere, strict=True):
                if reason:
                    job.aligned[face.index] = None
                    face.reason = reason
        return job

    @staticmethod
    def _working_copy(
        pixels: np.ndarray, detections: list[Detection], blurs: list[Descreened]
    ) -> tuple[ToneMap | Negative | ChannelFlip | GreyView | Denoised | Squeeze | Roll | None, list[str],
               list[Detection]]:
        """The copy of the photo its faces are redrawn and judged in, when a face is found only
        in one (squeezed back to its proportions, the negative, the grey levels, median-filtered,
        levelled: where it can be seen), and for any face in a photo with a channel inverted,
        the photo with it inverted back; per face, why it is obfuscated instead (a face found only in another
        such copy, which this one may not show as it is), or ""; the detections in the copy.
        ``blurs``: the photo's Descreened.all_of, a printed photo's faces being drawn in the first."""
        def reason(detection: Detection, tags: tuple[str, ...]) -> str:
            copy = detection.detector.rsplit("@", 1)[-1]
            if any(t in detection.detector for t in tags):
                return f"found only in the photo's {copy} copy, in a photo worked on in another: obfuscated, not redrawn"
            if STRETCH_TAG in detection.detector:
                # past the squeeze below, a face found only squeezed is one a larger face at the
                # photo's own proportions outweighs (stretch.NATURAL_SUBJECT)
                return (f"found only in the photo squeezed ({copy}), beside a larger face at the photo's own "
                        f"proportions: obfuscated, not redrawn")
            return ""

        def only_in(tags: tuple[str, ...]) -> list[str]:
            return [reason(d, tags) for d in detections]

        if any(SEAM_TAG in d.detector for d in detections):
            # a panorama with a face across its seam is worked on rolled, the face whole; a face
            # found only in another copy is obfuscated there
            roll = Roll.around(detections, pixels.shape[1])
            copies = (STRETCH_TAG, NEGATIVE_TAG, GREY_TAG, DENOISED_TAG, DESCREENED_TAG, LEVELLED_TAG, SHADOW_TAG,
                      FADED_TAG)
            return roll, only_in(copies), [roll.to_view(d, pixels.shape) for d in detections]
        squeeze = working_squeeze(detections)
        if squeeze is not None:
            # a face the photo shows at other proportions is not redrawn in the squeezed copy,
            # where the oracles would judge it squeezed out of its shape
            elsewhere = ["in a photo whose other faces are stretched out of proportion, worked on squeezed "
                         "back: obfuscated, not redrawn" if not squeeze.fits(Squeeze.of(d)) else "" for d in detections]
            return squeeze, elsewhere, [squeeze.to_view(d, pixels.shape) for d in detections]
        if any(NEGATIVE_TAG in d.detector for d in detections):
            return Negative(), only_in((GREY_TAG, DENOISED_TAG, DESCREENED_TAG)), detections
        if detections and (flip := ChannelFlip.of(pixels)) is not None:
            return flip, only_in((DENOISED_TAG, DESCREENED_TAG)), detections
        if any(GREY_TAG in d.detector for d in detections):
            return GreyView.of(pixels), only_in((DENOISED_TAG, DESCREENED_TAG)), detections
        denoised = any(DENOISED_TAG in d.detector for d in detections)
        if blurs and (blurs[0].two_level or not denoised):
            # a printed photo's faces are drawn into it seen from a step back, where a drawing
            # meets what is around it, and printed back like the rest of it (a noisy photo's
            # median filter, below, keeps more of a face than a blur)
            return blurs[0], only_in(()), detections
        if denoised:
            return Denoised(), only_in((DESCREENED_TAG,)), detections
        none = only_in(())
        if any(LEVELLED_TAG in d.detector for d in detections):
            levels = levels_of(pixels)
            return (ToneMap((levels,)) if levels is not None else None), none, detections
        return hidden_faces_tone_map(pixels, detections), none, detections

    def _attacker_views(self, job: _Job) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """What an attacker may make of the photo beyond what the oracles judged, per reason a
        drawing recognised there fails: a photo worked on squeezed back to its faces' proportions,
        as their points estimate them, resized to other plausible ones (stretch.OTHER_PROPORTIONS);
        a photo in a cold cast, or with a channel inverted, worked on in colour, its grey levels
        (what dropping the colour shows; grey.attacker_would_drop_colour); a photo whose faces
        were worked on levelled (dark, in shadow, faded), the photo as returned and its levels
        stretched linearly around each hidden face (exposure.stretched_linearly), for the
        similarity to the original moves with the curve; a halftone or dithered photo, the photo
        as returned blurred as far as its screen needs and a step more (descreen.screen_of). Decided once a job."""
        if job.attacker_views is None:
            job.attacker_views = self._decide_attacker_views(job)
        return job.attacker_views

    @staticmethod
    def _decide_attacker_views(job: _Job) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        tones = job.levelled_from[0] if job.levelled_from is not None else None
        if isinstance(tones, Squeeze):
            return {f"{multiple:g}": partial(tones.resqueezed, multiple=multiple) for multiple in OTHER_PROPORTIONS}
        photo = job.levelled_from[1] if job.levelled_from is not None else job.pixels
        views: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        if isinstance(tones, ToneMap):
            # the drawings were judged in the engine's levels; an attacker sees the photo as
            # returned, or levels it their own way
            views[PHOTO_TONES_VIEW] = partial(tones.restore, photo, job.pixels)
            views[STRETCHED_VIEW] = lambda image: stretched_linearly(tones.restore(photo, job.pixels, image), tones.hidden)
        if not isinstance(tones, GreyView) and attacker_would_drop_colour(photo):
            views[GREY_VIEW] = GreyView.of(job.pixels).apply
        if tones is None or isinstance(tones, Denoised):
            # a printed photo's drawings as anyone looking from a step back sees them
            for step, blur in enumerate(job.screen_blurs):
                returned = (lambda image: image) if tones is None else partial(tones.restore, photo, job.pixels)
                views[DESCREENED_VIEWS[step]] = lambda image, blur=blur, returned=returned: blur.apply(returned(image))
        return views

    def _judge_attacker_views(self, job: _Job) -> None:
        """Every oracle judges each drawing again in each of the attacker's views of the photo
        (:meth:`_attacker_views`); a face one of them recognises is redrawn with the attempts it
        has left, and fails closed when none is left."""
        views = self._attacker_views(job)
        drawn = [f for f in job.faces if f.method == GENERATED]
        if not views or not drawn:
            return
        originals = self._originals_in_views(job, views, drawn)  # once for every round
        while recognised := self._recognised_where(job, views, originals):
            for face, view in recognised:
                if face.attempts < self.config.max_attempts:
                    self._replace_together([(job, face)], first_attempt=face.attempts)
                    if face.verified:
                        continue
                face.method = OBFUSCATED
                face.reason = "recognisable in " + _ATTACKER_VIEW_NAMES.get(
                    view, "the photo resized to other plausible proportions")
                job.failed.append(face)

    def _embedded_at(self, image: np.ndarray, shape: tuple[int, ...],
                     faces: list[FaceReport]) -> dict[str, dict[int, np.ndarray]]:
        """Each oracle's embedding of each of ``faces`` (found in an image of ``shape``) in
        ``image``, that image resized: per oracle, per face index."""
        scale = np.array([image.shape[1] / shape[1], image.shape[0] / shape[0]])
        landmarks = [f.detection.landmarks * scale for f in faces]
        return {oracle.name: dict(zip((f.index for f in faces), oracle.embed_faces(image, landmarks), strict=True))
                for oracle in self.oracles}

    def _originals_in_views(
        self, job: _Job, views: dict[str, Callable[[np.ndarray], np.ndarray]], faces: list[FaceReport]
    ) -> dict[str, dict[str, dict[int, np.ndarray]]]:
        """Per view, the oracles' embeddings of ``faces`` in that view of the original (for the
        views of a levelled photo, in the engine's levels: see _AGAINST_LEVELLED)."""
        with _timed(job.timings, "verify"):
            levelled = (self._embedded_at(job.pixels, job.pixels.shape, faces)
                        if _AGAINST_LEVELLED & views.keys() else None)
            originals = {name: levelled if name in _AGAINST_LEVELLED else self._embedded_at(
                view(job.pixels), job.pixels.shape, faces) for name, view in views.items()
                if name != DESCREENED_VIEWS[1]}
            if DESCREENED_VIEWS[1] in views:
                # an attacker compares with a clear photo: the least blurred original is nearest
                originals[DESCREENED_VIEWS[1]] = originals[DESCREENED_VIEWS[0]]
            return originals

    def _recognised_in_views(
        self, job: _Job, views: dict[str, Callable[[np.ndarray], np.ndarray]],
        originals: dict[str, dict[str, dict[int, np.ndarray]]] | None = None,
        faces: list[FaceReport] | None = None,
    ) -> list[FaceReport]:
        """Of ``faces`` (default: the generated ones), those an oracle matches to the original
        (``originals``: its embeddings per view, computed when not given) in one of ``views``."""
        return [face for face, _ in self._recognised_where(job, views, originals, faces)]

    def _recognised_where(
        self, job: _Job, views: dict[str, Callable[[np.ndarray], np.ndarray]],
        originals: dict[str, dict[str, dict[int, np.ndarray]]] | None = None,
        faces: list[FaceReport] | None = None,
    ) -> list[tuple[FaceReport, str]]:
        """:meth:`_recognised_in_views`, each face with the first view it was recognised in."""
        drawn = faces if faces is not None else [f for f in job.faces if f.method == GENERATED and f not in job.failed]
        if originals is None:
            originals = self._originals_in_views(job, views, drawn)
        recognised: list[tuple[FaceReport, str]] = []
        with _timed(job.timings, "verify"):
            for name, view in views.items():
                if not drawn:
                    break
                original = originals[name]
                output = self._embedded_at(view(job.output), job.output.shape, drawn)
                seen: list[FaceReport] = []
                for oracle in self.oracles:
                    limit = self.thresholds[oracle.name] - oracle.alignment_margin
                    seen += [f for f in drawn if f not in seen and float(
                        cosine(original[oracle.name][f.index][None], output[oracle.name][f.index][None])[0]) >= limit]
                recognised += [(f, name) for f in seen]
                drawn = [f for f in drawn if f not in seen]
        return recognised

    def _finish(self, job: _Job) -> AnonymizationResult:
        """Apply the failure policy to the faces that could not be replaced."""
        result, failed = job.result, job.failed
        if failed and self.generator is not None and self.config.on_failure != "obfuscate":
            self._report_in_photo_coordinates(job)
            result.pixels = None
            for face in failed:
                face.method = WITHHELD
            summary = f"{len(failed)} of {len(job.faces)} face(s) could not be verified anonymous"
            if self.config.on_failure == "drop":
                result.status = "dropped"
                result.error = summary
                return result
            result.status = "error"
            result.error = summary
            raise AnonymizationFailedError(f"{summary}; image withheld (on_failure='raise')", result)

        with _timed(job.timings, "obfuscate"):
            regions = [_obfuscate(job, face) for face in failed]
        # Each refill can change its neighbours' views, and a neighbour's redraw an obfuscated
        # face's: until neither moves, check the generated faces beside what changed, then every
        # obfuscated face (bounded: a redraw spends an attempt, a widening a level).
        while regions:
            self._verify_beside_obfuscated(job, regions)
            regions = self._widen_recognised_obfuscations(job)
        if job.levelled_from is not None:
            tones, photo = job.levelled_from
            result.pixels = tones.restore(photo, job.pixels, job.output)
        self._report_in_photo_coordinates(job)
        return result

    @staticmethod
    def _report_in_photo_coordinates(job: _Job) -> None:
        """Faces worked on in a squeezed or rolled copy of the photo reported in the photo's coordinates."""
        if job.levelled_from is not None and isinstance(job.levelled_from[0], (Squeeze, Roll)):
            view, photo = job.levelled_from
            for face in job.faces:
                face.detection = view.from_view(face.detection, photo.shape)

    def _align(self, pixels: np.ndarray, face: FaceReport) -> AlignedFace | None:
        if DOUBTFUL_TAG in face.detection.detector:
            # hair or a collar read as a face, or a face mostly hidden: a face drawn there would
            # sit on the subject's head, so it is obfuscated whatever it is
            face.errors.append("doubtful detection (perched on another face, not found again upright): "
                               "obfuscated, not redrawn")
            return None
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

    def _replace_all(self, jobs: list[_Job]) -> None:
        """Generate and verify every face of ``jobs``; set each job's faces that must fail closed.

        Faces whose crops overlap no other face's in their image are replaced together: each
        attempt round generates and pastes all of them, then verifies them in one batched call
        per oracle, across the images. Faces whose crops overlap are replaced one after another
        (one per image per wave), since restoring one after a failed attempt would also erase
        part of its neighbour.
        """
        for job in jobs:
            job.replaceable = [f for f, crop in zip(job.faces, job.aligned, strict=True) if crop is not None]
        with _timed_shared(jobs, "verify"):
            originals = self.verifier.prepare_many(
                [(job.pixels, [f.detection for f in job.faces], [f.index for f in job.replaceable]) for job in jobs])
        waves: list[list[tuple[_Job, FaceReport]]] = []
        for job, views in zip(jobs, originals, strict=True):
            job.originals = views
            job.regions = {f.index: region_of(job.aligned[f.index], job.output.shape[:2])  # type: ignore[arg-type]
                           for f in job.replaceable}
            alone = [f for f in job.replaceable
                     if not any(g is not f and _overlaps(job.regions[f.index], job.regions[g.index])
                                for g in job.replaceable)]
            # Overlapping faces one at a time, those the frame cuts first, then the smallest first:
            # a later paste covers part of an earlier one, and the face drawn last keeps its
            # drawing whole. The whole, larger face is the photo's subject far more often than a
            # cut or smaller one, which is often a false face found on it or by its chin (a turned
            # or border pass's); drawn after the subject, such a face was pasted into its drawing,
            # and the subject failed closed.
            shape = job.output.shape
            frame = (0.0, 0.0, float(shape[1]), float(shape[0]))
            overlapping = sorted((f for f in job.replaceable if f not in alone),
                                 key=lambda f: (not cut_by_frame(f.detection.box, shape),
                                                box_intersection(f.detection.box, frame), f.index))
            groups = ([alone] if alone else []) + [[f] for f in overlapping]
            for wave, group in enumerate(groups):
                if wave == len(waves):
                    waves.append([])
                waves[wave] += [(job, face) for face in group]
        for items in waves:
            start = time.perf_counter()
            self._replace_together(items)
            share = (time.perf_counter() - start) * 1000.0 / len(items)
            for _, face in items:
                face.timings_ms["replace"] = share
        for job in jobs:
            job.failed = self._unreplaced(job)
        # A paste, or the restoring of a failed one, can change what another face's views see:
        # verify again, on the final image, every face whose views reach into another's crop.
        # One recognised there is redrawn alone with the attempts it has left (a pseudonym its
        # neighbours' pastes leave alone), then everything is checked again.
        for round_ in range(FINAL_CHECK_ROUNDS + 1):
            recognised = self._final_check(jobs)
            if not recognised:
                return
            for job, face in recognised:
                if round_ == FINAL_CHECK_ROUNDS or face.attempts >= self.config.max_attempts:
                    face.method = OBFUSCATED
                    face.reason = "not anonymous on the final image after overlapping faces were pasted"
                    job.failed.append(face)
                    continue
                self._replace_together([(job, face)], first_attempt=face.attempts)
                if not face.verified:
                    face.method = OBFUSCATED
                    job.failed.append(face)

    def _final_check(self, jobs: list[_Job]) -> list[tuple[_Job, FaceReport]]:
        """Verify again, on the final image, each generated face whose views reach into another
        face's crop; the ones now recognised (their verdicts updated)."""
        touched = [
            [f for f in job.faces if f.method == GENERATED and any(
                g is not f and _overlaps(job.regions[g.index], _view_footprint(f, job.regions[f.index]))
                for g in job.replaceable)]
            for job in jobs
        ]
        again = [(job, faces) for job, faces in zip(jobs, touched, strict=True) if faces]
        if not again:
            return []
        with _timed_shared([job for job, _ in again], "verify"):
            final = self.verifier.verdicts_many(
                [(job.originals, job.output, [f.index for f in faces]) for job, faces in again])  # type: ignore[misc]
        recognised = []
        for (job, faces), per_face in zip(again, final, strict=True):
            for face, verdicts in zip(faces, per_face, strict=True):
                face.verdicts = verdicts
                if not face.verified:
                    recognised.append((job, face))
        return recognised

    def _widen_recognised_obfuscations(self, job: _Job) -> list[tuple[int, int, int, int] | None]:
        """Judge each obfuscated face (one the verifier has original views of) on the output as
        the oracles judge a drawn one, and obfuscate a wider region (``obfuscate.WIDENINGS``,
        one level more each time) where one still matches it to the original: the fill leaves
        the head's outline, hair, ears and neck, and on LFW the faces that fail closed are the
        ones whose context is most like them (the bench's FaceNet judge matched one such face at
        0.62, threshold 0.53). The boxes of the regions refilled again.

        The widest obfuscation is judged too, and a face still matched there says so in its
        report (and the log): on faces the frame cuts, dlib's chips are mostly the black fill
        past the frame on both images, and there a face filled with grey can match as well
        (``benchmarks/blank_views.py``), which no wider fill changes."""
        if job.originals is None:
            return []
        replaceable = {f.index for f in job.replaceable}
        # the grey levels and a levelled photo's tones; a squeezed photo's other proportions
        # judge its drawings only
        attacker_views = {k: v for k, v in self._attacker_views(job).items() if k in _ATTACKER_VIEW_NAMES}
        pending = [f for f in job.faces if f.method == OBFUSCATED and f.index in replaceable
                   and job.widened.get(f.index, 0) <= len(WIDENINGS)]
        regions: list[tuple[int, int, int, int] | None] = []
        while pending:
            with _timed(job.timings, "verify"):
                (judged,) = self.verifier.verdicts_many([(job.originals, job.output, [f.index for f in pending])])
            matched = [(face, views) for face, verdicts in zip(pending, judged, strict=True)
                       if (views := [v.oracle for v in verdicts if not v.anonymous])]
            if attacker_views:
                unmatched = [f for f in pending if all(f is not m for m, _ in matched)]
                matched += [(face, [_ATTACKER_VIEW_NAMES[view]])
                            for face, view in self._recognised_where(job, attacker_views, faces=unmatched)]
            with _timed(job.timings, "obfuscate"):
                for face, views in matched:
                    level = job.widened.get(face.index, 0)
                    job.widened[face.index] = level + 1
                    if level == len(WIDENINGS):
                        face.reason += f"; its widest obfuscation still matched the original in {', '.join(views)}"
                        logger.warning("face %d: its widest obfuscation (%gx) still matched the original in %s",
                                       face.index, WIDENINGS[-1], ", ".join(views))
                        continue
                    face.reason += f"; its obfuscation still matched the original: obfuscated {WIDENINGS[level]:g}x wider"
                    regions.append(_obfuscate(job, face, WIDENINGS[level]))
            pending = [f for f, _ in matched if job.widened[f.index] <= len(WIDENINGS)]
        return regions

    def _verify_beside_obfuscated(self, job: _Job, regions: list[tuple[int, int, int, int] | None]) -> None:
        """Verify again, on the final image, each generated face whose views reach into a region
        just obfuscated. Obfuscation refills a neighbour's region from what surrounds it, which
        can take the pseudonym's features out of a generated face's views and leave the context
        it shares with the original: on LFW faces cut by the frame, a false detection beside
        the real face was drawn and verified, the real face then failed closed, and dlib
        matched the drawn one's views to the original at 0.91 (threshold 0.907).

        A face recognised there is redrawn on that image, its neighbours as they will be
        returned, with the attempts it has left, and obfuscated only when still recognised (or
        with none left). Each redraw and each new obfuscation is a change whose neighbours are
        verified in turn; every recognised face spends an attempt or is obfuscated, so it ends."""
        if job.originals is None:
            return
        changed = [box for box in regions if box is not None]
        while changed:
            near = [f for f in job.faces if f.method == GENERATED and any(
                _overlaps(box, _view_footprint(f, job.regions[f.index])) for box in changed)]
            if not near:
                return
            with _timed(job.timings, "verify"):
                (final,) = self.verifier.verdicts_many([(job.originals, job.output, [f.index for f in near])])
            changed = []
            for face, verdicts in zip(near, final, strict=True):
                face.verdicts = verdicts
                if face.verified:
                    continue
                cause = "not anonymous on the final image after a neighbouring face was obfuscated"
                if self.generator is not None and face.attempts < self.config.max_attempts:
                    self._replace_together([(job, face)], first_attempt=face.attempts)
                    if face.verified:
                        changed.append(job.regions[face.index])
                        continue
                    cause += "; redrawn there, " + face.reason
                face.reason = cause
                box = _obfuscate(job, face)
                if box is not None:
                    changed.append(box)

    @staticmethod
    def _unreplaced(job: _Job) -> list[FaceReport]:
        """Mark the job's verified faces generated; return the others (to fail closed)."""
        failed = []
        for face, crop in zip(job.faces, job.aligned, strict=True):
            if crop is None:
                doubtful = DOUBTFUL_TAG in face.detection.detector
                face.reason = face.reason or (
                    ("" if doubtful else "landmarks unusable for alignment: ") + "; ".join(face.errors))
                failed.append(face)
            elif face.verdicts and face.verified:
                face.method = GENERATED
            else:
                if not face.verdicts and face.errors:
                    face.reason = "generator failed on every attempt"
                failed.append(face)
        return failed

    def _replace_together(self, items: list[tuple[_Job, FaceReport]], first_attempt: int = 0) -> None:
        """Attempt rounds for faces whose crops overlap no other's in their image; a face
        verified anonymous keeps its paste, any other is restored and tried again with a new
        identity. Each round's pastes are verified in one call, across the images. Attempts
        are numbered from ``first_attempt`` (a face redrawn after earlier ones) to the last."""
        assert self.generator is not None
        pending = list(items)
        for attempt in range(first_attempt, self.config.max_attempts):
            if not pending:
                return
            pasted: list[_Paste] = []
            retry = []
            for job, face in pending:
                crop = job.aligned[face.index]
                assert crop is not None
                face.attempts = attempt + 1
                drawn = self._generate(face, crop, attempt, job.timings, self._original_embeddings(job, face),
                                       in_frame_of(crop, job.output.shape))
                if drawn is None:
                    retry.append((job, face))
                    continue
                new, request = drawn
                x1, y1, x2, y2 = region = region_of(crop, job.output.shape[:2])
                grow = self.generator.paste_grow_of(request)
                pasted.append(_Paste(job, face, region, job.output[y1:y2, x1:x2].copy(), request, grow))
                with _timed(job.timings, "blend"):
                    paste_face(job.output, new, crop, grow=grow, colour_match=self.generator.colour_match,
                               far_cut=far_side_cut(apply_affine(face.detection.landmarks, crop.matrix), crop.size))
                    if job.levelled_from is not None and isinstance(job.levelled_from[0], GreyView):
                        # judged in exactly the grey levels the output will have
                        job.output[y1:y2, x1:x2] = GreyView.project(job.output[y1:y2, x1:x2])
            if not pasted:
                pending = retry
                continue
            jobs = list({id(p.job): p.job for p in pasted}.values())
            entries = [[p for p in pasted if p.job is job] for job in jobs]
            with _timed_shared(jobs, "verify"):
                verdicts = self.verifier.verdicts_many(
                    [(job.originals, job.output, [p.face.index for p in mine])  # type: ignore[misc]
                     for job, mine in zip(jobs, entries, strict=True)])
            for mine, per_face in zip(entries, verdicts, strict=True):
                for paste, face_verdicts in zip(mine, per_face, strict=True):
                    face = paste.face
                    face.verdicts = face_verdicts
                    if face.verified:
                        face.reason = ""
                        paste.job.pasted_grow[face.index] = paste.grow
                        self._tell_accepted(paste.request)
                        continue
                    x1, y1, x2, y2 = paste.region
                    paste.job.output[y1:y2, x1:x2] = paste.backup
                    face.reason = "still recognisable as the original by " + ", ".join(
                        v.oracle for v in face.verdicts if not v.anonymous
                    )
                    retry.append((paste.job, face))
            pending = retry

    def _tell_accepted(self, request: GenerationRequest) -> None:
        """Tell the generator its drawing was verified; its bookkeeping failing costs the face
        nothing (the drawing is verified), so it is logged, not raised."""
        assert self.generator is not None
        try:
            self.generator.accepted(request)
        except Exception as exc:  # noqa: BLE001 - a generator's own hook must not lose a verified face
            logger.warning("generator %s failed to note an accepted drawing: %s", self.generator.name, exc)

    @staticmethod
    def _original_embeddings(job: _Job, face: FaceReport) -> dict[str, np.ndarray] | None:
        """The oracles' embeddings of ``face`` in the original photo (the verifier's aligned
        view; exact ones only, not int8 screening copies'), None when there are none."""
        if job.originals is None:
            return None
        return {name: per_face[face.index] for name, per_face in job.originals.exact_aligned().items()
                if face.index in per_face} or None

    def _generate(self, face: FaceReport, crop: AlignedFace, attempt: int, timings: dict[str, float],
                  original_embeddings: dict[str, np.ndarray] | None = None,
                  in_frame: np.ndarray | None = None) -> tuple[np.ndarray, GenerationRequest] | None:
        """One generator attempt and its request; None (the error noted on the face) when the
        generator fails."""
        assert self.generator is not None
        request = GenerationRequest(crop.crop.copy(), attempt, self._seed(crop.crop, attempt),
                                    original_embeddings=original_embeddings, thresholds=self._aligned_thresholds,
                                    in_frame=in_frame)
        try:
            with _timed(timings, "generate"):
                new = np.asarray(self.generator.generate(request))
            if new.shape != crop.crop.shape or new.dtype != np.uint8:
                raise ValueError(f"generator returned {new.shape} {new.dtype}, expected {crop.crop.shape} uint8")
        except UnfitDrawingError as exc:  # a refused attempt, not a failure: the next one draws anew
            face.reason = f"no drawing fit to show at attempt {attempt + 1}: {exc}"
            logger.debug("face %d, attempt %d: %s", face.index, attempt + 1, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - any generator failure must fail closed
            face.errors.append(f"attempt {attempt + 1}: {type(exc).__name__}: {exc}")
            logger.warning("generator failed on face %d: %s", face.index, exc)
            return None
        return new, request

    def _seed(self, crop: np.ndarray, attempt: int) -> int:
        digest = hashlib.blake2b(crop.tobytes(), digest_size=8, key=str(self.config.seed).encode())
        return (int.from_bytes(digest.digest(), "little") + attempt * 0x9E3779B1) % (2**63)
