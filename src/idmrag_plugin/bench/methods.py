"""Anonymization methods under test, behind one interface.

Adding a method is one entry in :data:`METHODS`. A method name may carry a sampling-step
count, ``"lcm@4"``, for generators that have one.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from idmrag_plugin.config import DEFAULT_FACE_BLEND, AnonymizerConfig
from idmrag_plugin.engine.detect import Detection, FaceDetector, MTCNNDetector
from idmrag_plugin.engine.oracles import FaceOracle
from idmrag_plugin.errors import ConfigError


@dataclass
class MethodOutput:
    """The anonymized image and what happened to each face the method found."""

    pixels: np.ndarray
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    face_methods: list[str] = field(default_factory=list)  # generated / obfuscated / filtered
    timings_ms: dict[str, float] = field(default_factory=dict)


class BenchMethod(ABC):
    """One anonymizer: an RGB uint8 image in, an anonymized RGB uint8 image out."""

    name: str
    generates = False  # True when faces can end generated, so a fail-closed rate applies

    def prepare(self, detector: FaceDetector, oracles: list[FaceOracle]) -> None:
        """Share the benchmark's already-loaded detector and oracles (saves memory and time)."""

    @abstractmethod
    def run(self, image: np.ndarray) -> MethodOutput: ...


class Original(BenchMethod):
    """No anonymization: the reference row (what recognition achieves on untouched photos)."""

    name = "original"

    def run(self, image: np.ndarray) -> MethodOutput:
        return MethodOutput(image.copy())


class BoxFilter(BenchMethod):
    """A filter over each detected face box, enlarged by ``margin`` (what most tools do)."""

    margin = 0.1

    def __init__(self) -> None:
        self.detector: FaceDetector | None = None

    def prepare(self, detector: FaceDetector, oracles: list[FaceOracle]) -> None:
        self.detector = detector

    def run(self, image: np.ndarray) -> MethodOutput:
        if self.detector is None:
            self.detector = MTCNNDetector()
        start = time.perf_counter()
        detections = self.detector.detect(image)
        detect_ms = (time.perf_counter() - start) * 1000.0
        out = image.copy()
        for det in detections:
            x1, y1, x2, y2 = self._region(det, image.shape)
            out[y1:y2, x1:x2] = self.apply(out[y1:y2, x1:x2])
        return MethodOutput(
            out, [d.box for d in detections], ["filtered"] * len(detections),
            {"detect": detect_ms, "filter": (time.perf_counter() - start) * 1000.0 - detect_ms},
        )

    def _region(self, det: Detection, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        x1, y1, x2, y2 = det.box
        mx, my = (x2 - x1) * self.margin, (y2 - y1) * self.margin
        h, w = shape[:2]
        return (max(int(x1 - mx), 0), max(int(y1 - my), 0), min(int(np.ceil(x2 + mx)), w), min(int(np.ceil(y2 + my)), h))

    @abstractmethod
    def apply(self, region: np.ndarray) -> np.ndarray: ...


class GaussianBlur(BoxFilter):
    """Gaussian blur with sigma = 1/8 of the face width (a typical 'blur faces' setting)."""

    name = "blur"

    def apply(self, region: np.ndarray) -> np.ndarray:
        sigma = max(region.shape[1] / 8.0, 1.0)
        return cv2.GaussianBlur(region, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


class Pixelate(BoxFilter):
    """Mosaic of 8 x 8 blocks across the face."""

    name = "pixelate"
    blocks = 8

    def apply(self, region: np.ndarray) -> np.ndarray:
        h, w = region.shape[:2]
        small = cv2.resize(region, (self.blocks, self.blocks), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


class SolidMask(BoxFilter):
    """A black box over the face."""

    name = "mask"

    def apply(self, region: np.ndarray) -> np.ndarray:
        return np.zeros_like(region)


class EngineMethod(BenchMethod):
    """The :class:`~idmrag_plugin.pipeline.FaceAnonymizer` with a given generator setting."""

    def __init__(self, name: str, config: AnonymizerConfig) -> None:
        self.name = name
        self.config = config
        self.generates = config.generator != "none"
        self._engine = None

    def prepare(self, detector: FaceDetector, oracles: list[FaceOracle]) -> None:
        from idmrag_plugin.pipeline import FaceAnonymizer

        self._engine = FaceAnonymizer(self.config, detector=detector, oracles=oracles)
        self._fix_pseudonym_secret()

    def _fix_pseudonym_secret(self) -> None:
        # A generator's pseudonym secret is random per instance (unlinkable across sessions);
        # the benchmark fixes it from the config's seed so that a rerun gives the same numbers.
        generator = self._engine.generator if self._engine is not None else None
        if generator is not None and hasattr(generator, "secret"):
            generator.secret = f"idmrag-bench/{self.config.seed}".encode()

    def run(self, image: np.ndarray) -> MethodOutput:
        if self._engine is None:
            from idmrag_plugin.pipeline import FaceAnonymizer

            self._engine = FaceAnonymizer(self.config)
            self._fix_pseudonym_secret()
        result = self._engine.anonymize(image)
        if result.pixels is None:  # cannot happen with on_failure="obfuscate"; fail loudly if it does
            raise RuntimeError(f"{self.name}: the engine withheld an image under on_failure='obfuscate'")
        return MethodOutput(
            np.asarray(result.pixels),
            [f.detection.box for f in result.faces],
            [f.method for f in result.faces],
            {k: v for k, v in result.timings_ms.items() if k != "total"},
        )


def _engine(generator: str) -> Callable[[int | None, Path | None], BenchMethod]:
    def build(steps: int | None, diffusion_weights: Path | None) -> BenchMethod:
        if steps is not None:
            raise ConfigError(f"{generator!r} has no sampling steps; drop '@{steps}'")
        config = AnonymizerConfig(generator=generator, on_failure="obfuscate", cache_size=0)
        return EngineMethod("obfuscate" if generator == "none" else generator, config)

    return build


def _diffusion(generator: str, folder: str, default_steps: int, refine: bool = True,
               face_blend: str = DEFAULT_FACE_BLEND) -> Callable[[int | None, Path | None], BenchMethod]:
    """``lcm`` / ``ldm-teacher`` / ``renderer-lcm``: weights from ``diffusion_weights/{folder}``
    when given (the OUTPUT of ``idmrag train-lcm`` / ``train-code-lcm``), else the packaged ones.
    ``refine=False``: the renderer's drawing resized up instead of refined (``-unrefined``);
    ``face_blend``: another composite than the default (``-poisson``, ``-tone``)."""

    def build(steps: int | None, diffusion_weights: Path | None) -> BenchMethod:
        config = AnonymizerConfig(
            generator=generator, generator_steps=steps or default_steps, on_failure="obfuscate", cache_size=0,
            generator_weights=Path(diffusion_weights) / folder if diffusion_weights is not None else None,
            refine_faces=refine, face_blend=face_blend,
        )
        suffix = ("" if refine else "-unrefined") + ("" if face_blend == DEFAULT_FACE_BLEND else f"-{face_blend}")
        return EngineMethod(f"{generator}{suffix}@{steps or default_steps}", config)

    return build


def _renderer(steps: int | None, weights: Path | None) -> BenchMethod:
    """``renderer``: weights from ``weights/renderer`` when given (the OUTPUT of
    ``idmrag train-renderer``), else the packaged ones."""
    if steps is not None:
        raise ConfigError(f"'renderer' has no sampling steps; drop '@{steps}'")
    config = AnonymizerConfig(generator="renderer", on_failure="obfuscate", cache_size=0,
                              generator_weights=Path(weights) / "renderer" if weights is not None else None)
    return EngineMethod("renderer", config)


def _plain(cls: type[BenchMethod]) -> Callable[[int | None, Path | None], BenchMethod]:
    def build(steps: int | None, diffusion_weights: Path | None) -> BenchMethod:
        if steps is not None:
            raise ConfigError(f"{cls.name!r} has no sampling steps; drop '@{steps}'")
        return cls()

    return build


METHODS: dict[str, Callable[[int | None, Path | None], BenchMethod]] = {
    "original": _plain(Original),
    "blur": _plain(GaussianBlur),
    "pixelate": _plain(Pixelate),
    "mask": _plain(SolidMask),
    "obfuscate": _engine("none"),
    "vae-decode": _engine("vae-decode"),
    "renderer": _renderer,
    "renderer-lcm": _diffusion("renderer-lcm", "lcm", 1),
    "renderer-lcm-unrefined": _diffusion("renderer-lcm", "lcm", 1, refine=False),
    "renderer-lcm-tone": _diffusion("renderer-lcm", "lcm", 1, face_blend="tone"),
    "renderer-lcm-poisson": _diffusion("renderer-lcm", "lcm", 1, face_blend="poisson"),
    "lcm": _diffusion("lcm", "lcm", 4),
    "ldm-teacher": _diffusion("ldm-teacher", "teacher", 50),
}

DEFAULT_METHODS = ("original", "blur", "pixelate", "mask", "obfuscate", "vae-decode", "renderer-lcm")


def build_method(spec: str, diffusion_weights: Path | None = None) -> BenchMethod:
    """``"blur"`` or ``"lcm@4"`` -> a method instance."""
    name, _, steps_text = spec.partition("@")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    steps = None
    if steps_text:
        try:
            steps = int(steps_text)
        except ValueError as exc:
            raise ConfigError(f"sampling steps in {spec!r} must be an integer") from exc
        if steps < 1:
            raise ConfigError(f"sampling steps in {spec!r} must be at least 1")
    return METHODS[name](steps, diffusion_weights)
