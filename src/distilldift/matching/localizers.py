"""Localizers: how a match is placed around the best pixel (``method=``), registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError

__all__ = ["LocalWindow", "Sampler", "Localizer", "register_localizer", "list_localizers", "get_localizer"]


@dataclass(frozen=True)
class LocalWindow:
    """Where a localizer may look around the best pixel: what every localizer receives besides the similarities.

    Attributes:
        radius: ``(rx, ry)`` window half-size in target pixels (``window`` feature cells converted to pixels).
        step: spacing of the pixels sampled inside the window (1: every pixel).
        temperature: softmax temperature for soft localizers.
        image_size: ``(W, H)`` of the target image; pixels outside it must be ignored.
    """

    radius: tuple[int, int]
    step: int
    temperature: float
    image_size: tuple[int, int]

    def offsets(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kx, ky)``: the sampled pixel offsets along x and y, multiples of ``step`` within the radius."""
        rx, ry, s = self.radius[0], self.radius[1], self.step
        kx = torch.arange(-(rx // s), rx // s + 1, device=device) * s
        ky = torch.arange(-(ry // s), ry // s + 1, device=device) * s
        return kx, ky


Sampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``sample(xs (N, kx), ys (N, ky)) -> (N, ky, kx)``: similarity of query ``n`` at pixels ``(xs[n, i], ys[n, j])``
(integer pixel coordinates inside the image)."""

Localizer = Callable[[Sampler, torch.Tensor, torch.Tensor, LocalWindow], torch.Tensor]
"""``localizer(sample, best, score, window) -> (N, 2)`` float pixel ``(x, y)``: refines the best pixel ``best``
``(N, 2)`` (long ``(x, y)``, whose similarity is ``score`` ``(N,)``) using similarities read through ``sample``
within ``window``. Every matching path (``match_points`` / ``match_features``, ``track_video``, ``evaluate``)
calls the same localizer, on the exact similarity map or on the coarse-to-fine search's best pixel."""

_LOCALIZERS: dict[str, Localizer] = {}


def register_localizer(name: str, fn: Localizer, *, overwrite: bool = False) -> Localizer:
    """Add a localizer: ``method=name`` then works in ``match_points``, ``track_video``, ``evaluate`` and the CLI.

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift import MatchSettings, match_points
        >>> from distilldift.matching import register_localizer
        >>> def half_right(sample, best, score, window):  # the best pixel, moved half a pixel right
        ...     return best.float() + torch.tensor([0.5, 0.0], device=best.device)
        >>> _ = register_localizer("half_right", half_right, overwrite=True)
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> img = torch.rand(3, 100, 150)
        >>> how = MatchSettings(method="half_right")
        >>> match_points(img, img, [[75.0, 50.0]], model=model, settings=how, size=140).points
        tensor([[75.5000, 50.0000]])
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"localizer name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise InvalidInputError(f"localizer {name!r} must be callable (sample, best, score, window) -> (N, 2)")
    if name in _LOCALIZERS and not overwrite:
        raise InvalidInputError(f"localizer {name!r} is already registered; pass overwrite=True to replace it")
    _LOCALIZERS[name] = fn
    return fn


def list_localizers() -> list[str]:
    """Names of the registered localizers (``method=`` values), sorted.

    Example:
        >>> from distilldift.matching import list_localizers
        >>> {"nn", "soft"} <= set(list_localizers())
        True
    """
    return sorted(_LOCALIZERS)


def _nearest(sample: Sampler, best: torch.Tensor, score: torch.Tensor, window: LocalWindow) -> torch.Tensor:
    """``"nn"``: the best pixel itself."""
    return best.float()


def _window_soft_argmax(sample: Sampler, best: torch.Tensor, score: torch.Tensor, window: LocalWindow) -> torch.Tensor:
    """``"soft"``: softmax(similarity / temperature)-weighted mean pixel over the window around the best pixel."""
    w, h = window.image_size
    kx, ky = window.offsets(best.device)
    xs = best[:, :1] + kx  # (N, kx)
    ys = best[:, 1:] + ky  # (N, ky)
    valid = ((ys >= 0) & (ys < h)).unsqueeze(2) & ((xs >= 0) & (xs < w)).unsqueeze(1)
    vals = sample(xs.clamp(0, w - 1), ys.clamp(0, h - 1))
    n = vals.shape[0]
    logits = ((vals - score.view(n, 1, 1)) / window.temperature).masked_fill(~valid, float("-inf"))
    p = torch.softmax(logits.reshape(n, -1), dim=1).view_as(vals)
    cx, cy = xs.unsqueeze(1), ys.unsqueeze(2)
    return torch.stack([(p * cx).sum((1, 2)), (p * cy).sum((1, 2))], 1).float()


register_localizer("nn", _nearest)
register_localizer("soft", _window_soft_argmax)


def get_localizer(name: str) -> Localizer:
    """The localizer registered as ``name``.

    Example:
        >>> get_localizer("nn").__name__
        '_nearest'
        >>> get_localizer("blur")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: unknown method 'blur'; registered localizers: ... (register_localizer)
    """
    fn = _LOCALIZERS.get(name)
    if fn is None:
        raise InvalidInputError(
            f"unknown method {name!r}; registered localizers: {', '.join(list_localizers())} (register_localizer)"
        )
    return fn
