"""idmrag-plugin: the face-privacy layer for multimodal RAG.

Every face in an image is replaced by a synthetic identity verified by an ensemble of
face-recognition oracles, or irreversibly obfuscated when it cannot be verified.
"""

from idmrag_plugin.config import AnonymizerConfig
from idmrag_plugin.engine.detect import Detection, FaceDetector
from idmrag_plugin.engine.generator import FaceGenerator, GenerationRequest
from idmrag_plugin.engine.oracles import FaceOracle, OracleVerdict
from idmrag_plugin.errors import (
    AnonymizationFailedError,
    CalibrationError,
    ConfigError,
    IdmragError,
    ImageTooLargeError,
    ImageWithheldError,
    InvalidImageError,
    ModelLoadError,
    UnfitDrawingError,
)
from idmrag_plugin.pipeline import FaceAnonymizer
from idmrag_plugin.report import AnonymizationResult, FaceReport

__version__ = "0.1.0"

__all__ = [
    "AnonymizationFailedError",
    "AnonymizationResult",
    "AnonymizerConfig",
    "CalibrationError",
    "ConfigError",
    "Detection",
    "FaceAnonymizer",
    "FaceDetector",
    "FaceGenerator",
    "FaceOracle",
    "FaceReport",
    "GenerationRequest",
    "IdmragError",
    "ImageTooLargeError",
    "ImageWithheldError",
    "InvalidImageError",
    "ModelLoadError",
    "OracleVerdict",
    "UnfitDrawingError",
    "__version__",
]
