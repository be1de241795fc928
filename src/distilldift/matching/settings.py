"""How points are located: one validated settings record for every matching path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidInputError
from ..images import GridGeometry
from .localizers import get_localizer

__all__ = ["MatchSettings", "check_method", "window_pixels"]


@dataclass(frozen=True)
class MatchSettings:
    """How points are matched: every option of ``match_points``, ``match_features``, ``match_feature_maps``,
    ``evaluate`` and (as ``TrackSettings.match``) ``track_video``, in one validated record - the only way to set
    them.

    Attributes:
        method: a registered localizer (:func:`list_localizers`): ``"soft"`` (window soft-argmax, sub-pixel; the
            paper's inference, with its own drift toward feature-cell centres removed) or ``"nn"`` (the best pixel).
        window: the localizer's window radius in feature-grid cells (converted to target pixels).
        temperature: softmax temperature on cosine similarities.
        mutual: also match each match back to the source: ``Matches.cycle_error`` / ``Matches.mutual`` (tracking
            always does: it is how ``Tracks.visible`` is decided).
        mutual_radius: cycle error (source pixels) up to which a match is mutual; ``None``: one feature cell.
        exhaustive: ``True``: search every pixel of the upsampled similarity; ``False``: coarse to fine (the best
            feature cell, then the exact similarity within two cells of it: many times faster for thousands of
            points or frames, almost always the same matches); ``None``: each path's default - exhaustive for
            image pairs, coarse to fine for video.
        flip: pose-align for image pairs: ``True`` matches the mirrored source image, ``"auto"`` mirrors it when
            that explains the target better (higher :func:`global_similarity`), ``False`` never (video: unused).

    Example:
        >>> from distilldift import MatchSettings
        >>> s = MatchSettings(method="nn")
        >>> s.replace(window=2.0).window, s.search_everywhere(default=True)
        (2.0, True)
        >>> MatchSettings(window=0)
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: window must be > 0 (radius in feature-grid cells), got 0
    """

    method: str = "soft"
    window: float = 1.0
    temperature: float = 0.02
    mutual: bool = True
    mutual_radius: float | None = None
    exhaustive: bool | None = None
    flip: bool | Literal["auto"] = False

    def __post_init__(self) -> None:
        check_method(self.method, self.window, self.temperature)
        if self.flip not in (True, False, "auto"):
            raise InvalidInputError(f"flip must be True, False or 'auto', got {self.flip!r}")
        if self.mutual_radius is not None and not self.mutual_radius > 0:
            raise InvalidInputError(f"mutual_radius must be > 0 source pixels or None, got {self.mutual_radius}")
        if self.exhaustive not in (None, True, False):
            raise InvalidInputError(f"exhaustive must be True, False or None, got {self.exhaustive!r}")

    def replace(self, **changes) -> MatchSettings:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def search_everywhere(self, default: bool) -> bool:
        """``exhaustive``, or the calling path's ``default`` when it is ``None``."""
        return default if self.exhaustive is None else bool(self.exhaustive)

    @classmethod
    def of(cls, settings: MatchSettings | None) -> MatchSettings:
        """``settings``, or the defaults for ``None``; anything else is refused with the fix."""
        if settings is None:
            return cls()
        if not isinstance(settings, cls):
            raise InvalidInputError(
                f"settings must be a MatchSettings, got {type(settings).__name__}; "
                "e.g. settings=MatchSettings(method='nn')"
            )
        return settings


def check_method(method: str, window: float = 1.0, temperature: float = 0.02) -> None:
    """Check matching settings: a registered localizer, ``window > 0`` cells, ``temperature > 0``.

    Example:
        >>> from distilldift.matching.settings import check_method
        >>> check_method("soft", 1.0, 0.02)  # fine: nothing happens
    """
    get_localizer(method)  # a registered localizer, or the error naming them
    if not window > 0:
        raise InvalidInputError(f"window must be > 0 (radius in feature-grid cells), got {window}")
    if not temperature > 0:
        raise InvalidInputError(f"temperature must be > 0, got {temperature}")


def window_pixels(geom: GridGeometry, window: float) -> tuple[int, int]:
    """``(rx, ry)``: a radius of ``window`` feature cells in target pixels (at least 1).

    Example:
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching.settings import window_pixels
        >>> window_pixels(GridGeometry(image_size=(620, 310), input_size=(434, 434), grid_size=(31, 31)), 1.0)
        (20, 10)
    """
    sx, sy = geom.cell_size
    return max(1, round(window * sx)), max(1, round(window * sy))
