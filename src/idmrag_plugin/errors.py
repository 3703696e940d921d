"""One exception tree: catch :class:`IdmragError` to handle everything this package raises."""

from __future__ import annotations


class IdmragError(Exception):
    """Base class of every error raised by idmrag-plugin."""


class InvalidImageError(IdmragError, ValueError):
    """The input could not be read as an image (unsupported type, corrupt or truncated data)."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than ``AnonymizerConfig.max_pixels`` allows."""


class ConfigError(IdmragError, ValueError):
    """An option of :class:`~idmrag_plugin.config.AnonymizerConfig` has an invalid value."""


class ModelLoadError(IdmragError, RuntimeError):
    """A model or its weights could not be found, verified or loaded."""


class CalibrationError(IdmragError, RuntimeError):
    """Oracle thresholds are missing for the requested privacy level, or calibration failed."""


class UnfitDrawingError(IdmragError, RuntimeError):
    """A generator found no drawing fit to show for one attempt at a face (every candidate
    speckled, smudged, of the other gender...): the engine counts the attempt as refused and
    tries the next, and a face with none left fails closed."""


class AnonymizationFailedError(IdmragError, RuntimeError):
    """A face could not be verified anonymous and the failure policy is ``raise``.

    ``result`` holds the report (with no pixels) for auditing.
    """

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class ImageWithheldError(IdmragError):
    """An image could not be handed on safely and was withheld (e.g. the policy dropped it,
    or it was given only by URL and fetching is off)."""
