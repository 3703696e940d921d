"""Engine settings: plain values and string options, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from idmrag_plugin.errors import ConfigError

FAILURE_POLICIES = ("obfuscate", "drop", "raise")
DETECTORS = ("mtcnn", "mtcnn+hog")
ORACLES = ("dlib", "facenet")
PRIVACY_LEVELS = ("far1e-2", "far1e-3")
OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")
GENERATORS = ("none", "vae-decode", "renderer", "renderer-lcm", "lcm", "ldm-teacher")
#: Generators with a number of sampling steps.
FACE_BLENDS = ("poisson-tone", "poisson", "tone")
DEFAULT_FACE_BLEND = "poisson-tone"
ORACLE_RUNTIMES = ("auto", "torch", "onnxruntime")
STEPPED_GENERATORS = ("renderer-lcm", "lcm", "ldm-teacher")


@dataclass(frozen=True)
class AnonymizerConfig:
    """Settings of :class:`~idmrag_plugin.FaceAnonymizer`.

    Attributes:
        detector: ``"mtcnn"``, or ``"mtcnn+hog"`` to union MTCNN with dlib's HOG detector
            (more recall, slower).
        min_face_size: smallest face side in pixels that MTCNN looks for.
        detection_thresholds: MTCNN's three stage thresholds; lower finds more faces.
        rotations: search the image turned by each of these angles (multiples of 45): faces
            lying on their side (phone photos without EXIF orientation, scans) are invisible
            to an upright detector, and faces rolled by about 45 degrees (a tilted camera, a
            head on a pillow) are missed now and then by every quarter turn. Default: all
            eight. The diagonal ones (45 + 90k) look for faces from 60 px on a half-size copy
            turned onto a canvas at most 768 px across, and keep only faces the quarter turns
            missed that a second, upright look confirms; they cost about a fifth more
            detection time. ``(0, 90, 180, 270)`` saves that, ``(0,)`` saves three more
            passes, each at the cost of missing those faces.
        border_search: also search for faces the image border cuts through (one more upright
            pass over the image padded by mirroring, see :mod:`idmrag_plugin.engine.border`);
            an upright detector misses a face once about half of it is outside the frame.
        exposure_search: also search a levelled copy of a photo whose tones are narrow, dark or
            washed out (see :mod:`idmrag_plugin.engine.exposure`); a detector reads a face in
            the dark as flat, while anyone who brightens the photo sees it. Other photos cost
            nothing more.
        negative_search: also search the photo's negative (upright, half size, faces from 40
            px; see :mod:`idmrag_plugin.engine.negative`): a scanned film negative hides its
            faces from a detector, and one subtraction shows them again. 4-31 ms a photo.
        denoise_search: also search a photo full of salt-and-pepper noise (over 2% of isolated
            extreme values; other photos cost well under a millisecond) median-filtered (see
            :mod:`idmrag_plugin.engine.denoise`): noise over about 30% of the pixels hides faces
            from the detector, and a median filter shows them again.
        descreen_search: also search a halftone or dithered photo (over 12 levels of fine luma
            detail; other photos cost one blur of a 512 px crop) blurred just enough to hide its
            screen (see :mod:`idmrag_plugin.engine.descreen`): a printed face's dots hide it from
            the detector, and a blur shows it again. Its drawings are also judged in the photo
            as returned, blurred the same way.
        grey_search: also search a colour photo's grey levels (luma stretched to the full range;
            upright, half size, faces from 40 px; see :mod:`idmrag_plugin.engine.grey`): a photo
            cast in green or cyan hides its faces from the detector, and dropping the colour shows
            them again. A face found only so is redrawn in grey and coloured back.
        stretch_search: also search copies of the photo squeezed along its width and along its
            height by 2 and by 4 (upright, at most 640 px long, faces from 32 px; see
            :mod:`idmrag_plugin.engine.stretch`): a photo resized out of proportion stretches its
            faces past what a detector finds (about twice their width or height), while resizing
            it back shows them again. A face found only so is redrawn in the squeezed copy and
            stretched back. About 20 ms on a 250x250 photo, 90 ms on a 2000x1428 one.
        seam_search: on a photo with an equirectangular panorama's proportions (twice as wide
            as high), also search the strip of its right and left edges joined (a quarter of its
            width from each, upright, at most 1,000,000 pixels; see
            :mod:`idmrag_plugin.engine.seam`): a 360-degree viewer joins the edges, and a face
            across them is two pieces in the file. A face found across the join is redrawn in
            the panorama rolled to show it whole, and rolled back.
        hog_search: also look once with dlib's HOG detector (upright; faces from 40 px on photos
            up to 200,000 pixels, from 80 px on larger ones, searched at most 800,000 pixels
            large; see :mod:`idmrag_plugin.engine.hog_look`) and replace the faces it finds that
            the MTCNN searches missed: a black bar over the eyes hides a face from MTCNN, not
            from HOG or from dlib's descriptor. 4 ms on a 250x250 photo, about 50 ms on the
            largest. Off when ``detector="mtcnn+hog"`` (HOG is then in every pass). In a line
            drawing (an editor's emboss, contour or edge filter) it also looks at a pencil
            sketch of it, where MTCNN finds almost none of its faces.
        crop_size: side of the canonical aligned face crop handed to the generator.
        oracles: face-recognition models that must all judge each replaced face a
            different person.
        privacy_level: ``"far1e-2"`` (default) or ``"far1e-3"``: a replaced face must be less
            similar to the original than all but this fraction of different-person pairs.
            ``far1e-3`` is stricter.
        generator: ``"renderer-lcm"`` (default: the adversarially trained inpainter draws the
            inner face into the photo's own context, for a pseudonym code written for the
            person's perceived gender and age by the packaged consistency-distilled code
            diffusion model, ``generator_steps`` 1-4, default 1), ``"renderer"`` (the same
            renderer, pseudonym codes from the identity sampler's Gaussian mixture),
            ``"vae-decode"`` (the packaged identity-code autoencoder draws the whole crop),
            ``"none"`` (every face is irreversibly obfuscated), ``"lcm"``
            (the consistency-distilled latent diffusion model, ``generator_steps`` 1-4) or
            ``"ldm-teacher"`` (its diffusion teacher, e.g. 50 steps). A generator object
            passed to the engine takes precedence.
        generator_steps: sampling steps of ``"renderer-lcm"``, ``"lcm"`` and ``"ldm-teacher"``.
        generator_weights: folder written by ``idmrag train-lcm`` (``OUTPUT/lcm`` or
            ``OUTPUT/teacher``), ``idmrag train-renderer`` (``OUTPUT/renderer``) or, for
            ``"renderer-lcm"``, ``idmrag train-code-lcm`` (``OUTPUT/lcm`` or ``OUTPUT/teacher``); required
            for ``"lcm"``/``"ldm-teacher"`` unless weights ship with the package; the packaged
            renderer is the default for ``"renderer"``.
        refine_faces: for ``"renderer-lcm"`` and ``"renderer"`` with a renderer that draws at
            64 px: the packaged refiner redraws its face at the crop's 128 px with the detail a
            face has there (about 20 ms per face on a CPU); ``False`` resizes the 64 px drawing
            up instead. The packaged renderer draws at 128 px, and the refiner stands aside.
        face_blend: for ``"renderer-lcm"`` and ``"renderer"``: how the drawn face meets the
            photo. ``"poisson-tone"`` (default): seamless (Poisson) blending, the drawing's own
            gradients meeting the photo's colours at the edge of the drawn region, so no seam
            or lighter rim shows, then the face's mean tone moved to the original face's (skin
            tone and lighting are not identity; the person's neck and ears stay in the
            picture); ``"poisson"``: the blend alone (the face's tone then follows its edge);
            ``"tone"``: hard edge with the mean tone moved (the composite of earlier
            releases). Only pixels outside the drawn region are read from the photo.
        keep_outside_face: for ``"renderer-lcm"`` and ``"renderer"``: inside the drawn ellipse,
            keep the photo's own pixels where neither the original face nor the drawn one is
            (hair above the forehead, background beside the cheeks, the neck under the chin),
            by both faces' outlines (dlib's 68 landmarks); the inner face is always drawn, and
            a face refused twice is drawn whole over the wider ellipse of later attempts.
            ``False`` keeps the drawing over the whole ellipse (earlier releases).
        keep_expression: for ``"renderer-lcm"`` and ``"renderer"``: at the first try at a face,
            a new pseudonym drawn with the mouth open where the photo's is closed, or closed
            where it is open (dlib's 68 landmarks), gives way to the person's next code that
            draws it as the photo has it. ``False``: about a sixth faster on photos of new
            people, the mouth as the pseudonym draws it.
        keep_glasses: for ``"renderer-lcm"`` and ``"renderer"``: a pseudonym drawn with
            glasses on a face that wears none in the photo, or clearly without them on a face
            that wears them (the photo read by its eye band's edges and dlib's descriptor, the
            drawing by the descriptor; see :mod:`idmrag_plugin.generation.glasses`), gives way to the person's next code that
            draws them as the photo has them. ``False``: glasses as the pseudonym draws them
            (67 of 234 LFW people without glasses were given some).
        match_sharpness: for ``"renderer-lcm"`` and ``"renderer"``: a drawing with clearly more
            fine detail than the photo's face (a face out of focus, blurred by motion or in a soft
            photo) is blurred inside the drawn region down to about the photo's detail, so that a
            crisp face is not pasted into a blurred head (see
            :mod:`idmrag_plugin.generation.sharpness`); a face refused twice is drawn with up to
            twice the photo's detail from then on. ``False``: faces as sharp as drawn.
        max_attempts: generator attempts per face before the failure policy applies. 8: on 80
            LFW photos, whole and cut by one border (45% of the face's box outside), attempts 6-8
            verified 1 of 80 whole and 4 of 70 cut faces that 5 attempts left to the policy;
            9 and 10 none more. Only faces that fail their first attempts pay for them.
        on_failure: ``"obfuscate"`` (irreversibly fill the face), ``"drop"`` (withhold the
            image) or ``"raise"`` (:class:`~idmrag_plugin.errors.AnonymizationFailedError`).
        max_pixels: larger images are refused with
            :class:`~idmrag_plugin.errors.ImageTooLargeError`.
        max_bytes: encoded images (files, bytes) larger than this are refused with
            :class:`~idmrag_plugin.errors.ImageTooLargeError` before they are read whole.
        output_format: encoding used by :meth:`AnonymizationResult.to_bytes` by default.
        device: ``"auto"``, ``"cpu"`` or a torch device string such as ``"cuda:0"``.
        cache_dir: where converted weights are kept; default ``$IDMRAG_CACHE`` or
            ``~/.cache/idmrag``.
        seed: base seed of the generator's replacement identities.
        cache_size: anonymization results kept in memory (LRU, also bounded to 256 MB); the
            same image under the same settings and pseudonym secret is then returned without
            running a model. 0 disables the cache.
        result_cache_dir: also keep results in this folder (outputs and reports only, never
            an original), shared between processes and runs.
        oracle_runtime: what runs the oracles' networks on a CPU: ``"auto"`` (default: ONNX
            Runtime, exported once into ``cache_dir`` and checked against torch at each load,
            falling back to torch if that fails), ``"onnxruntime"`` (required) or ``"torch"``.
            The embeddings, and so the verdicts, are the same to ~1e-7.
        generator_runtime: the same choice for the generator's networks (the codes encoder,
            renderer and refiner of ``renderer`` / ``renderer-lcm``; the encoder of
            ``vae-decode``): 1.3-1.7x faster at one face, outputs equal to ~3e-6 (a pixel may
            round the other way).
        detector_runtime: the same choice for MTCNN's three networks (the boxes and landmarks
            are the same to ~1e-3 px); ``"torch"`` by default: on this project's 2-core CPU
            ONNX Runtime was no faster inside the engine's detection (250x250 photo 127 against
            108 ms, a 2000x1428 scene 1,637 against 1,618 ms, two threads).
        screening: on ONNX Runtime, FaceNet first judges through an int8 copy of itself (about
            four times faster); every similarity within 0.2 of its threshold is recomputed by
            the float32 network, so the verdicts are the float32 network's (its int8 error on
            LFW stays under 0.09). Reported similarities far from the threshold are then the
            int8 copy's (``exact`` False in the report); ``False`` computes every one exactly.
        threads: torch's intra-op thread count, set when the engine is built (process-wide);
            ``None`` leaves torch's default. Under CPU contention one or two threads per
            engine avoid torch's oversubscription collapse.
        batch_size: images that :meth:`FaceAnonymizer.anonymize_many` takes through the
            engine together: each oracle judges all their faces in one forward pass per
            attempt round (the results are the same as one by one).
    """

    detector: str = "mtcnn"
    min_face_size: int = 20
    detection_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    rotations: tuple[int, ...] = (0, 45, 90, 135, 180, 225, 270, 315)
    border_search: bool = True
    exposure_search: bool = True
    negative_search: bool = True
    denoise_search: bool = True
    descreen_search: bool = True
    grey_search: bool = True
    stretch_search: bool = True
    seam_search: bool = True
    hog_search: bool = True
    crop_size: int = 128
    oracles: tuple[str, ...] = ORACLES
    privacy_level: str = "far1e-2"
    generator: str = "renderer-lcm"
    generator_steps: int | None = None
    generator_weights: Path | None = None
    refine_faces: bool = True
    face_blend: str = DEFAULT_FACE_BLEND
    keep_outside_face: bool = True
    keep_expression: bool = True
    keep_glasses: bool = True
    match_sharpness: bool = True
    max_attempts: int = 8
    on_failure: str = "obfuscate"
    max_pixels: int = 40_000_000
    max_bytes: int = 200_000_000
    output_format: str = "PNG"
    device: str = "auto"
    cache_dir: Path | None = None
    seed: int = 0
    cache_size: int = 128
    result_cache_dir: Path | None = None
    oracle_runtime: str = "auto"
    generator_runtime: str = "auto"
    detector_runtime: str = "torch"
    screening: bool = True
    threads: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        _choice("detector", self.detector, DETECTORS)
        _choice("privacy_level", self.privacy_level, PRIVACY_LEVELS)
        _choice("on_failure", self.on_failure, FAILURE_POLICIES)
        _choice("generator", self.generator, GENERATORS)
        _choice("face_blend", self.face_blend, FACE_BLENDS)
        _choice("oracle_runtime", self.oracle_runtime, ORACLE_RUNTIMES)
        _choice("generator_runtime", self.generator_runtime, ORACLE_RUNTIMES)
        _choice("detector_runtime", self.detector_runtime, ORACLE_RUNTIMES)
        _choice("output_format", self.output_format.upper(), OUTPUT_FORMATS)
        if not self.oracles:
            raise ConfigError("oracles: at least one oracle is required; privacy fails closed")
        for name in self.oracles:
            _choice("oracles", name, ORACLES)
        if self.min_face_size < 8:
            raise ConfigError(f"min_face_size must be >= 8 pixels, got {self.min_face_size}")
        if not 32 <= self.crop_size <= 1024:
            raise ConfigError(f"crop_size must be within 32..1024, got {self.crop_size}")
        if not self.rotations or any(a % 45 for a in self.rotations):
            raise ConfigError(f"rotations must be multiples of 45 degrees, got {self.rotations}")
        if self.generator_steps is not None and self.generator_steps < 1:
            raise ConfigError(f"generator_steps must be >= 1, got {self.generator_steps}")
        if self.generator_steps is not None and self.generator not in STEPPED_GENERATORS:
            raise ConfigError(f"generator_steps applies to {', '.join(STEPPED_GENERATORS)}, not {self.generator!r}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0 (0 disables the cache), got {self.cache_size}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 (or None for torch's default), got {self.threads}")
        if self.max_bytes < 1:
            raise ConfigError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be positive, got {self.max_pixels}")
        if len(self.detection_thresholds) != 3 or not all(
            0.0 < t < 1.0 for t in self.detection_thresholds
        ):
            raise ConfigError("detection_thresholds: three values in (0, 1) are required")

    @property
    def far(self) -> float:
        """False-accept rate of the privacy level, e.g. 0.01 for ``"far1e-2"``."""
        return float(self.privacy_level.removeprefix("far"))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
