"""Exceptions raised by distilldift.

Every error a user can cause derives from :class:`DistillDiftError`, so callers (and the CLI) can catch one
type. Each also derives from the matching builtin (``ValueError``, ``FileNotFoundError``) so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = [
    "DistillDiftError",
    "InvalidInputError",
    "ShapeError",
    "ImageLoadError",
    "PointsOutsideImageError",
    "UnknownVariantError",
    "UnknownImageError",
    "WeightsNotFoundError",
    "DownloadError",
    "CheckpointError",
    "VideoError",
    "DatasetError",
    "MissingDependencyError",
    "OutputError",
    "TrainingDivergedError",
    "torch_load_reason",
]


class DistillDiftError(Exception):
    """Base class of every error distilldift raises on bad input or missing resources."""


class InvalidInputError(DistillDiftError, ValueError):
    """An argument has an unsupported type or value."""


class ShapeError(InvalidInputError):
    """An array or tensor has the wrong shape.

    The message shows the expected and the actual shape, e.g.
    ``points: expected shape (N, 2), got (3, 4)``.
    """

    def __init__(self, name: str, expected: str, actual: tuple[int, ...] | str):
        actual_s = actual if isinstance(actual, str) else "(" + ", ".join(str(int(a)) for a in actual) + ")"
        super().__init__(f"{name}: expected shape {expected}, got {actual_s}")
        self.expected = expected
        self.actual = actual


class ImageLoadError(InvalidInputError):
    """An image file is missing, empty, truncated or not an image."""


class PointsOutsideImageError(InvalidInputError):
    """A query point is NaN/inf or lies outside the image it refers to."""


class UnknownVariantError(InvalidInputError):
    """A model name is neither a registered variant, a local folder nor a Hub repo id."""


class UnknownImageError(InvalidInputError, KeyError):
    """An image name is not in a features folder (:class:`~distilldift.FeatureStore`)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(DistillDiftError, FileNotFoundError):
    """Weights could not be found locally or downloaded."""


class DownloadError(WeightsNotFoundError):
    """A download failed (HTTP error, timeout, truncated transfer) or its content did not verify."""


class CheckpointError(DistillDiftError, ValueError):
    """A weights file is corrupt, truncated, or has unexpected/missing keys or wrong shapes."""


class VideoError(InvalidInputError):
    """A video is missing, unreadable, empty, or has frames of changing size."""


class DatasetError(InvalidInputError):
    """A dataset root is missing, has the wrong layout, or holds a corrupt annotation file."""


class MissingDependencyError(DistillDiftError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that adds it."""


class TrainingDivergedError(DistillDiftError, ArithmeticError):
    """A training step gave a non-finite loss, gradient or weight; the message names the step and the loss term, and
    the last checkpoint (written before it) is kept for ``--resume``."""


class OutputError(DistillDiftError, OSError):
    """An output could not be written (a read-only or immutable folder, a full disk); the message names the path
    and the system's reason. Nothing partial is left at the path."""


def torch_load_reason(error: BaseException) -> str:
    """The part of a ``torch.load`` failure a user can act on, in one line.

    torch's messages run over several paragraphs, ask to file issues, and for a refused pickle suggest
    ``weights_only=False`` (which would run the file's code): that advice is dropped.

    Example:
        >>> torch_load_reason(RuntimeError("PytorchStreamReader failed reading zip archive: not a ZIP archive. "
        ...                                "This is an internal miniz error. If you are seeing this error ..."))
        'PytorchStreamReader failed reading zip archive: not a ZIP archive'
        >>> torch_load_reason(Exception("Weights only load failed. In PyTorch 2.6 ...\\n\\nTrying to load unsupported "
        ...                             "GLOBAL posix.system whose module posix is blocked.\\n\\nCheck the docs"))
        'the file asks for the Python object posix.system (refused: only tensors are read)'
    """
    import re

    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"[Uu]nsupported global: (?:GLOBAL )?([\w.]+)", text)
    if found:
        return f"the file asks for the Python object {found.group(1)} (refused: only tensors are read)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    for tail in (". This is an internal", " This is an internal", ". If you are seeing", " Please file an issue"):
        first = first.split(tail)[0]
    return first.rstrip(".")
