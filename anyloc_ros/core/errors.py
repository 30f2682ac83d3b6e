"""Errors raised by the core library.

Every error a user can cause (bad image, wrong vocabulary, missing weights, damaged map)
is an `AnyLocError` with a message that says what was wrong and what to do, so nodes and
the CLI can report it without a traceback from deep inside torch or faiss.
"""


class AnyLocError(Exception):
    """Base class of every error the core library raises on bad input or artefacts."""


class ImageError(AnyLocError, ValueError):
    """An input image is empty, of an unsupported dtype, or has the wrong channel count."""


class ConfigError(AnyLocError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class WeightsNotFoundError(AnyLocError, FileNotFoundError):
    """Model weights could not be found locally (and could not be downloaded)."""


class VocabularyError(AnyLocError, ValueError):
    """A vocabulary file is unreadable or does not match the backbone / features."""


class FeatureDimensionError(AnyLocError, ValueError):
    """Features or descriptors do not have the dimension the consumer was built for."""


class MapError(AnyLocError):
    """A map directory is damaged, incompatible with the encoder, or cannot be written."""
