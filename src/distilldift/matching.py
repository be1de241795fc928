"""Point matching on dense features: exact upsampled similarity, nearest neighbour, window soft-argmax,
mutual (cycle) check, and flip / pose-align.

Similarity follows the paper's protocol: cosine similarity between the query descriptor and the target's feature
map *bilinearly upsampled to the target image's pixels*. It is computed without materialising the upsampled
``(C, H, W)`` map: with ``v(p) = sum_k w_k(p) f_k`` (bilinear weights over the 4 nearest cells),
``cos(q, v(p)) = sum_k w_k(p) (q . f_k) / |v(p)|``, where the numerator is the bilinear upsampling of the grid
similarity and ``|v(p)|^2 = sum_kl w_k w_l (f_k . f_l)`` needs only dot products of neighbouring cells, computed
once per target image. Memory is ``O(N H W)`` instead of ``O(C H W)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import InvalidInputError
from .features import FeatureMap, Features, extract_feature_maps, resolve_model
from .images import GridGeometry, ImageInput, as_points, check_points_inside, load_image
from .model import DistillDiftModel

__all__ = [
    "Matches",
    "match_points",
    "match_features",
    "match_feature_maps",
    "similarity_heatmaps",
    "match_record",
    "sample_features",
    "upsampled_similarity",
    "global_similarity",
    "flip_queries",
    "LocalWindow",
    "Localizer",
    "register_localizer",
    "list_localizers",
    "SimilarityMap",
    "locate",
    "check_method",
    "window_pixels",
    "LOCAL_CELLS",
    "use_mirror",
    "MatchSettings",
]

Method = Literal["nn", "soft"]  # the built-in localizers; any registered name works (list_localizers())
_SIM_BUDGET = 1 << 25  # floats of similarity maps held at once (128 MB)
_LOCAL_CHUNK = 1024  # queries per coarse-to-fine pass (its windows: ~30 k floats per query, ~120 MB per pass)


@dataclass(frozen=True)
class Matches:
    """Correspondences of query points of image 1 in image 2.

    Attributes:
        query: ``(N, 2)`` the query points, pixel ``(x, y)`` in image 1, as given.
        points: ``(N, 2)`` matched points, pixel ``(x, y)`` in image 2 (pixel centres at integers).
        scores: ``(N,)`` cosine similarity in [-1, 1] between the query's descriptor and the best match.
        mutual: ``(N,)`` bool: matching ``points`` back to image 1 lands within ``mutual_radius`` of the query.
        cycle_error: ``(N,)`` distance in image-1 pixels between the query and its back-match (NaN when the
            mutual check is off).
        flipped: True when the horizontally flipped image 1 was matched (``flip=True`` or chosen by ``"auto"``).
    """

    query: torch.Tensor
    points: torch.Tensor
    scores: torch.Tensor
    mutual: torch.Tensor
    cycle_error: torch.Tensor
    flipped: bool = False

    def __len__(self) -> int:
        return self.points.shape[0]

    def to_dict(self) -> dict:
        """JSON-serialisable dict: lists of ``[x, y]``, scores, mutual flags."""
        return {
            "query": self.query.tolist(),
            "points": self.points.tolist(),
            "scores": self.scores.tolist(),
            "mutual": self.mutual.tolist(),
            "cycle_error": [None if v != v else v for v in self.cycle_error.tolist()],
            "flipped": self.flipped,
        }

    @staticmethod
    def empty(flipped: bool = False) -> Matches:
        z = torch.zeros(0, 2)
        return Matches(z, z.clone(), torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0), flipped)


# ------------------------------------------------------------------------------------------ primitives
def _axis_weights(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear source indices/weights of ``F.interpolate(align_corners=False)`` from ``n_in`` to ``n_out``."""
    src = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    src = src.clamp(min=0.0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    lam = (src - i0).clamp(0.0, 1.0).float()
    return i0, i1, lam


def sample_features(features: torch.Tensor, grid_points: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a feature map at continuous grid points and L2-normalise.

    Args:
        features: ``(C, gh, gw)``.
        grid_points: ``(N, 2)`` grid coordinates ``(gx, gy)``, cell centres at integers; clamped to the grid
            (as ``F.interpolate(align_corners=False)`` does at the border).

    Returns:
        ``(N, C)`` unit descriptors.

    Example:
        >>> import torch
        >>> f = torch.nn.functional.normalize(torch.randn(8, 4, 5), dim=0)
        >>> torch.allclose(sample_features(f, torch.tensor([[2.0, 1.0]]))[0], f[:, 1, 2])
        True
    """
    c, gh, gw = features.shape
    g = grid_points.to(features.device, torch.float32)
    gx = g[:, 0].clamp(0, gw - 1)
    gy = g[:, 1].clamp(0, gh - 1)
    x0 = gx.floor().long().clamp(max=gw - 1)
    y0 = gy.floor().long().clamp(max=gh - 1)
    x1 = (x0 + 1).clamp(max=gw - 1)
    y1 = (y0 + 1).clamp(max=gh - 1)
    ax, ay = (gx - x0).unsqueeze(0), (gy - y0).unsqueeze(0)
    v = (
        features[:, y0, x0] * (1 - ax) * (1 - ay)
        + features[:, y0, x1] * ax * (1 - ay)
        + features[:, y1, x0] * (1 - ax) * ay
        + features[:, y1, x1] * ax * ay
    )
    return torch.nn.functional.normalize(v.t(), dim=1)


class SimilarityMap:
    """Exact cosine similarity of queries with a ``(C, gh, gw)`` feature map bilinearly upsampled to ``image_size``.

    The norm of the interpolated feature at a pixel needs only the dot products of neighbouring cells (computed
    here, at grid size); it is evaluated lazily, for the whole image (``sim(queries)`` -> ``(N, H, W)``) or just
    the pixels asked for (:meth:`at`, :meth:`window`). :func:`locate` finds the best matches on it.

    Example:
        >>> import torch
        >>> from distilldift.matching import SimilarityMap
        >>> f = torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0)
        >>> sim = SimilarityMap(f, (36, 27))  # a 4 x 3 grid shown at 36 x 27 pixels: 9 px cells
        >>> s = sim(f[:, 1, 2][None])  # the descriptor of cell (2, 1), whose centre is pixel (22, 13)
        >>> s.shape, round(float(s[0, 13, 22]), 4)
        (torch.Size([1, 27, 36]), 1.0)
    """

    def __init__(self, features: torch.Tensor, image_size: tuple[int, int], axes: tuple | None = None):
        """``features``: ``(C, gh, gw)``; ``image_size``: ``(W, H)``; ``axes``: ``SimilarityMap.axes(...)`` of the
        same sizes, to reuse across many maps (video frames)."""
        c, gh, gw = features.shape
        w, h = image_size
        self.features = features
        (self.iy0, self.iy1, self.ay_flat), (self.ix0, self.ix1, self.ax_flat) = axes or self.axes(
            (gw, gh), image_size, features.device
        )
        self.ay, self.ax = self.ay_flat.view(h, 1), self.ax_flat.view(1, w)
        f = features
        right = torch.cat([f[:, :, 1:], f[:, :, -1:]], 2)  # f[y, x+1] (edge repeated)
        down = torch.cat([f[:, 1:], f[:, -1:]], 1)  # f[y+1, x]
        self.sq = (f * f).sum(0)  # |f|^2
        self.hor = (f * right).sum(0)  # f[y, x] . f[y, x+1]
        self.ver = (f * down).sum(0)  # f[y, x] . f[y+1, x]
        self.dia = (f * torch.cat([down[:, :, 1:], down[:, :, -1:]], 2)).sum(0)  # f[y, x] . f[y+1, x+1]
        self.anti = (right * down).sum(0)  # f[y, x+1] . f[y+1, x]
        self._inv_norm: torch.Tensor | None = None

    @staticmethod
    def axes(grid_size: tuple[int, int], image_size: tuple[int, int], device: torch.device | str = "cpu") -> tuple:
        """Bilinear indices and weights along y and x, for ``grid_size = (gw, gh)`` -> ``image_size = (W, H)``."""
        (gw, gh), (w, h) = grid_size, image_size
        return _axis_weights(gh, h, torch.device(device)), _axis_weights(gw, w, torch.device(device))

    def inv_norm_at(self, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """``1 / |interpolated feature|`` at pixel rows ``ys`` and columns ``xs`` (broadcast together)."""
        y0, y1, ay = self.iy0[ys], self.iy1[ys], self.ay_flat[ys]
        x0, x1, ax = self.ix0[xs], self.ix1[xs], self.ax_flat[xs]
        w00, w01, w10, w11 = (1 - ay) * (1 - ax), (1 - ay) * ax, ay * (1 - ax), ay * ax
        norm2 = (
            w00 * w00 * self.sq[y0, x0]
            + w01 * w01 * self.sq[y0, x1]
            + w10 * w10 * self.sq[y1, x0]
            + w11 * w11 * self.sq[y1, x1]
            + 2 * w00 * w01 * self.hor[y0, x0]
            + 2 * w10 * w11 * self.hor[y1, x0]
            + 2 * w00 * w10 * self.ver[y0, x0]
            + 2 * w01 * w11 * self.ver[y0, x1]
            + 2 * w00 * w11 * self.dia[y0, x0]
            + 2 * w01 * w10 * self.anti[y0, x0]
        )
        return norm2.clamp(min=1e-12).rsqrt()

    @property
    def inv_norm(self) -> torch.Tensor:
        """``(H, W)`` for the whole image (computed once)."""
        if self._inv_norm is None:
            dev = self.features.device
            ys = torch.arange(self.ay.shape[0], device=dev).view(-1, 1)
            xs = torch.arange(self.ax.shape[1], device=dev).view(1, -1)
            self._inv_norm = self.inv_norm_at(ys, xs)
        return self._inv_norm

    def grid(self, queries: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` unit queries -> ``(N, gh, gw)`` cosine similarity with the grid cells."""
        c, gh, gw = self.features.shape
        return (queries @ self.features.reshape(c, gh * gw)).view(-1, gh, gw)

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` unit queries -> ``(N, H, W)`` cosine similarity."""
        s = self.grid(queries)
        s = s[:, :, self.ix0] * (1 - self.ax) + s[:, :, self.ix1] * self.ax  # (N, gh, W)
        s = s[:, self.iy0, :] * (1 - self.ay) + s[:, self.iy1, :] * self.ay  # (N, H, W)
        return s * self.inv_norm

    def window(
        self, queries: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, size: tuple[int, int], step: int = 1
    ) -> torch.Tensor:
        """The same similarity on per-query windows: ``[n, j, i]`` is pixel ``(x0[n] + i * step, y0[n] + j * step)``.

        ``size = (ww, wh)`` pixels; windows must lie inside the image. Returns ``(N, ceil(wh / step),
        ceil(ww / step))``.
        """
        ww, wh = size
        n = queries.shape[0]
        xs = x0.view(n, 1) + torch.arange(0, ww, step, device=x0.device)  # (N, ww')
        ys = y0.view(n, 1) + torch.arange(0, wh, step, device=y0.device)  # (N, wh')
        return self.at(queries, xs, ys)

    def at(self, queries: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """The similarity at per-query pixel columns ``xs`` ``(N, ww)`` and rows ``ys`` ``(N, wh)`` (inside the
        image): ``[n, j, i]`` is pixel ``(xs[n, i], ys[n, j])``. Returns ``(N, wh, ww)``."""
        s = self.grid(queries)  # (N, gh, gw)
        n, gh, _ = s.shape
        ww, wh = xs.shape[1], ys.shape[1]
        ax, ay = self.ax_flat[xs].unsqueeze(1), self.ay_flat[ys].unsqueeze(2)
        s = (
            s.gather(2, self.ix0[xs].unsqueeze(1).expand(n, gh, ww)) * (1 - ax)
            + s.gather(2, self.ix1[xs].unsqueeze(1).expand(n, gh, ww)) * ax
        )  # (N, gh, ww)
        s = (
            s.gather(1, self.iy0[ys].unsqueeze(2).expand(n, wh, ww)) * (1 - ay)
            + s.gather(1, self.iy1[ys].unsqueeze(2).expand(n, wh, ww)) * ay
        )  # (N, wh, ww)
        return s * self.inv_norm_at(ys.unsqueeze(2), xs.unsqueeze(1))


def upsampled_similarity(queries: torch.Tensor, features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity between descriptors and a feature map bilinearly upsampled to the image's pixels.

    Equal (to float precision) to ``cos(q, F.interpolate(features, (H, W), mode="bilinear",
    align_corners=False))`` per pixel, without building the ``(C, H, W)`` map.

    Args:
        queries: ``(N, C)`` unit descriptors.
        features: ``(C, gh, gw)`` unit feature map.
        image_size: ``(W, H)`` of the image the map belongs to.

    Returns:
        ``(N, H, W)``; entry ``[n, y, x]`` is the similarity at pixel ``(x, y)``.

    Example:
        >>> import torch
        >>> from distilldift import upsampled_similarity
        >>> f = torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0)
        >>> s = upsampled_similarity(f[:, 1, 2][None], f, image_size=(36, 27))  # query: cell (x=2, y=1)
        >>> s.shape, round(float(s[0, 13, 22]), 4)  # 9 px cells: that cell's centre is pixel (22, 13)
        (torch.Size([1, 27, 36]), 1.0)
    """
    return SimilarityMap(features, image_size)(queries.to(features.dtype))


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
        >>> from distilldift import create_model, match_points, register_localizer
        >>> def half_right(sample, best, score, window):  # the best pixel, moved half a pixel right
        ...     return best.float() + torch.tensor([0.5, 0.0], device=best.device)
        >>> _ = register_localizer("half_right", half_right, overwrite=True)
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> img = torch.rand(3, 100, 150)
        >>> match_points(img, img, [[75.0, 50.0]], model=model, method="half_right", size=140).points
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
        >>> from distilldift import list_localizers
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


def _dense_sampler(sim: torch.Tensor) -> Sampler:
    """Read a ``(N, H, W)`` similarity map at pixel columns ``xs`` ``(N, kx)`` and rows ``ys`` ``(N, ky)``."""
    n, h, w = sim.shape
    flat = sim.reshape(n, -1)

    def sample(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        idx = (ys.unsqueeze(2) * w + xs.unsqueeze(1)).reshape(n, -1)
        return flat.gather(1, idx).view(n, ys.shape[1], xs.shape[1])

    return sample


def _locate(
    sim: torch.Tensor, method: str, radius: tuple[int, int], temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, H, W)`` similarity -> (``(N, 2)`` pixel ``(x, y)``, ``(N,)`` max similarity)."""
    n, h, w = sim.shape
    score, flat = sim.reshape(n, -1).max(dim=1)
    best = torch.stack([flat % w, flat // w], 1)
    window = LocalWindow(radius, 1, temperature, (w, h))
    return _LOCALIZERS[method](_dense_sampler(sim), best, score, window), score


def _match_local(
    queries: torch.Tensor,
    up: SimilarityMap,
    geom: GridGeometry,
    method: str,
    radius: tuple[int, int],
    temperature: float,
    cells: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse to fine on the exact upsampled similarity: the best grid cell; the best point of a quarter-cell lattice
    within ``cells`` cells of it; the best pixel within two lattice steps of that point; for ``soft``, the
    soft-argmax over the exhaustive search's window around that pixel, sampled on a lattice of 1/8 of its radius.
    """
    w, h = geom.image_size
    sx, sy = geom.cell_size
    n = queries.shape[0]
    best = up.grid(queries).reshape(n, -1).argmax(dim=1)
    gw = geom.grid_size[0]
    centre = geom.grid_to_image(torch.stack([best % gw, best // gw], 1).double()).to(queries.device)
    ww, wh = min(w, 2 * int(cells * sx) + 1), min(h, 2 * int(cells * sy) + 1)
    x0 = (centre[:, 0].round().long() - ww // 2).clamp(0, w - ww)
    y0 = (centre[:, 1].round().long() - wh // 2).clamp(0, h - wh)
    # the best pixel of a lattice (a quarter cell apart) in that region, then the best pixel within 2 lattice steps
    step = max(1, int(min(sx, sy)) // 4)
    lattice = up.window(queries, x0, y0, (ww, wh), step=step)
    best = lattice.reshape(n, -1).argmax(dim=1)
    lw = lattice.shape[-1]
    fw, fh = min(w, 4 * step + 1), min(h, 4 * step + 1)
    x0 = (x0 + (best % lw) * step - 2 * step).clamp(0, w - fw)
    y0 = (y0 + (best // lw) * step - 2 * step).clamp(0, h - fh)
    loc, score = _locate(up.window(queries, x0, y0, (fw, fh)), "nn", radius, temperature)
    best = loc.long() + torch.stack([x0, y0], 1)
    # the localizer over the same window as the exhaustive search, centred on that pixel, sampled every `step` px
    window = LocalWindow(radius, max(1, min(radius) // 8), temperature, (w, h))
    return _LOCALIZERS[method](lambda xs, ys: up.at(queries, xs, ys), best, score, window), score


LOCAL_CELLS = 2.0  # coarse-to-fine search: exact similarity within this many feature cells of the best cell
SOFT_DEBIAS_STEPS = 3  # "soft": fixed-point steps removing its own bias (self-match median: 1 step 0.39 px, 3: 0.04)


def _debias(sim: SimilarityMap, geometry: GridGeometry, found: torch.Tensor, window: LocalWindow) -> torch.Tensor:
    """``found`` minus the soft-argmax's own drift: the point whose drifted estimate is ``found`` (a few fixed-point
    steps). Points within a window of the image edge (the cut window, not the lattice, dominates there) and points
    whose correction would exceed a quarter cell (no lattice drift: the target's own peak is flat or split there)
    keep ``found``."""
    w, h = window.image_size
    low, high = torch.zeros(2, device=found.device), torch.tensor([w - 1.0, h - 1.0], device=found.device)
    point = found
    for _ in range(SOFT_DEBIAS_STEPS):
        point = (found - _self_offset(sim, geometry, point, window)).clamp(min=low, max=high)
    limit = 0.25 * min(geometry.cell_size)
    r = torch.tensor(window.radius, device=found.device, dtype=found.dtype)
    inside = ((found >= r) & (found <= high - r)).all(dim=1)  # near an edge the cut window dominates: left as is
    return torch.where((inside & ((point - found).norm(dim=1) <= limit)).unsqueeze(1), point, found)


def _self_offset(sim: SimilarityMap, geometry: GridGeometry, points: torch.Tensor, window: LocalWindow) -> torch.Tensor:
    """Where the window soft-argmax puts the target's own descriptor at ``points``, minus ``points``: its bias there.

    Bilinearly interpolated features turn slowly near cell centres and fast between them, so every similarity peak
    is flatter on its cell-centre side and a soft-argmax drifts that way (up to ~0.06 cell; ~1.5 px median for
    ``lite`` on an image matched to itself). The localizer's own offset at the found point is that drift: ``soft``
    subtracts it. A descriptor's own peak is at its point, so the best pixel is searched within 2 px of it.
    """
    w, h = window.image_size
    own = sample_features(sim.features, geometry.image_to_grid(points.double()).float())
    fw, fh = min(w, 5), min(h, 5)
    x0 = (points[:, 0].round().long() - 2).clamp(0, w - fw)
    y0 = (points[:, 1].round().long() - 2).clamp(0, h - fh)
    near, score = _locate(sim.window(own, x0, y0, (fw, fh)), "nn", window.radius, window.temperature)
    best = near.long() + torch.stack([x0, y0], 1)
    again = _window_soft_argmax(lambda xs, ys: sim.at(own, xs, ys), best, score, window)
    return again - points


def locate(
    sim: SimilarityMap,
    queries: torch.Tensor,
    geometry: GridGeometry,
    *,
    method: str = "soft",
    window: float = 1.0,
    temperature: float = 0.02,
    exhaustive: bool = True,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The matching core: where ``queries`` match best on ``sim``, refined by the localizer ``method``.

    Every path uses it: ``match_features`` / ``match_points`` (and so ``evaluate``) and ``track_video``, for
    matches and for back-matches.

    Args:
        sim: the target's :class:`SimilarityMap`; ``geometry``: the target's :class:`GridGeometry`.
        queries: ``(N, C)`` unit descriptors (e.g. :func:`sample_features` at the source points).
        method, window, temperature: the localizer (:func:`list_localizers`), its window radius in feature
            cells and its temperature.
        exhaustive: search every pixel of the exact upsampled similarity (memory-bounded chunks of queries);
            ``False``: coarse to fine (the best cell, then a quarter-cell lattice within ``LOCAL_CELLS`` cells,
            then every pixel near its best point), much faster for many frames.
        mask: ``(N, H, W)`` bool, pixels each query may match (exhaustive search only).

    Returns:
        ``(N, 2)`` pixel ``(x, y)`` in the target image and ``(N,)`` similarity of the best pixel.

    Example:
        >>> import torch
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching import SimilarityMap, locate
        >>> f = torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0)
        >>> g = GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3))
        >>> pts, score = locate(SimilarityMap(f, (36, 27)), f[:, 1, 2][None], g, method="nn")
        >>> pts, round(float(score), 4)  # the centre of cell (2, 1)
        (tensor([[22., 13.]]), 1.0)
    """
    check_method(method, window, temperature)
    radius = window_pixels(geometry, window)
    w, h = geometry.image_size
    local = not exhaustive and mask is None

    def find(s: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries[s : s + chunk]
        if local:
            found, score = _match_local(q, sim, geometry, method, radius, temperature, LOCAL_CELLS)
        else:
            maps = sim(q)
            if mask is not None:
                maps = maps.masked_fill(~mask[s : s + chunk], float("-inf"))
            found, score = _locate(maps, method, radius, temperature)
        if method == "soft":
            step = max(1, min(radius) // 8) if local else 1
            found = _debias(sim, geometry, found, LocalWindow(radius, step, temperature, (w, h)))
        return found, score

    # chunks of queries bound the memory: the similarity maps (exhaustive) or ~30 k floats of windows per query
    chunk = _LOCAL_CHUNK if local else max(1, _SIM_BUDGET // max(1, w * h))
    if queries.shape[0] == 0:  # no queries: no matches
        return queries.new_zeros(0, 2), queries.new_zeros(0)
    parts = [find(s, chunk) for s in range(0, queries.shape[0], chunk)]
    return torch.cat([p for p, _ in parts]), torch.cat([sc for _, sc in parts])


def back_match(
    source: SimilarityMap,
    source_geometry: GridGeometry,
    target_features: torch.Tensor,
    target_geometry: GridGeometry,
    matched: torch.Tensor,
    points: torch.Tensor,
    *,
    settings: MatchSettings | None = None,
    exhaustive: bool = True,
    radius: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one definition of *mutual* (``Matches.mutual``) and *visible* (``Tracks.visible``): a match is kept when
    matching it back to the source image lands near the point it came from.

    The descriptor at each match is located in the source with the same localizer and search as the forward
    match (:func:`locate`); the cycle error is the distance in source pixels between that back-match and the
    query point, and a match is mutual when it is at most ``radius`` (default: one feature cell of the source, its
    larger side in pixels).

    Args:
        source: the source image's :class:`SimilarityMap`; ``source_geometry`` its geometry.
        target_features: ``(C, gh, gw)`` unit features of the target; ``target_geometry`` its geometry.
        matched: ``(N, 2)`` pixel ``(x, y)`` of the matches in the target.
        points: ``(N, 2)`` pixel ``(x, y)`` of the queries in the source.
        settings: the localizer (:class:`MatchSettings`); ``exhaustive``: as in :func:`locate`.

    Returns:
        ``(N,)`` cycle error in source pixels, ``(N,)`` bool mutual.

    Example:
        >>> import torch
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching import SimilarityMap, back_match
        >>> f = torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0)
        >>> g = GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3))
        >>> cycle, mutual = back_match(SimilarityMap(f, (36, 27)), g, f, g, torch.tensor([[22.0, 13.0]]),
        ...                            torch.tensor([[22.0, 13.0]]), settings=MatchSettings(method="nn"))
        >>> cycle.tolist(), mutual.tolist()  # an image matched with itself: the cycle closes exactly
        ([0.0], [True])
    """
    ms = MatchSettings.resolve(settings)
    descriptors = sample_features(target_features, target_geometry.image_to_grid(matched.to(target_features.device)))
    back, _ = locate(
        source,
        descriptors,
        source_geometry,
        method=ms.method,
        window=ms.window,
        temperature=ms.temperature,
        exhaustive=exhaustive,
    )
    cycle = (back.float() - points.to(back.device).float()).norm(dim=1)
    limit = max(source_geometry.cell_size) if radius is None else float(radius)
    return cycle, cycle <= limit


def global_similarity(src: torch.Tensor, dst: torch.Tensor) -> float:
    """Mean over ``src`` cells of the best cosine similarity in ``dst``: how well ``src`` is explained by ``dst``.

    Used by pose-align to choose between an image and its mirror. ``src``: ``(C, h1, w1)``, ``dst``:
    ``(C, h2, w2)``, both unit over ``C``. Returns a float in [-1, 1].

    Example:
        >>> import torch
        >>> from distilldift import global_similarity
        >>> f = torch.nn.functional.normalize(torch.randn(16, 5, 5), dim=0)
        >>> g = torch.nn.functional.normalize(torch.randn(16, 5, 5), dim=0)
        >>> round(global_similarity(f, f), 4), global_similarity(f, g) < 1.0
        (1.0, True)
    """
    a = src.reshape(src.shape[0], -1).t()
    b = dst.reshape(dst.shape[0], -1)
    return float((a @ b).max(dim=1).values.mean())


@dataclass(frozen=True)
class MatchSettings:
    """How points are located: the settings ``match_points``, ``match_features``, ``track_video`` and ``evaluate``
    share, in one validated record (their ``method=`` / ``window=`` / ``temperature=`` keywords override it).

    Attributes:
        method: a registered localizer (:func:`list_localizers`): ``"soft"`` (window soft-argmax, sub-pixel; the
            paper's inference, with its own drift toward feature-cell centres removed) or ``"nn"`` (the best pixel).
        window: the localizer's window radius in feature-grid cells (converted to target pixels).
        temperature: softmax temperature on cosine similarities.

    Example:
        >>> from distilldift import MatchSettings
        >>> s = MatchSettings(method="nn")
        >>> s.replace(window=2.0)
        MatchSettings(method='nn', window=2.0, temperature=0.02)
        >>> MatchSettings(window=0)
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: window must be > 0 (radius in feature-grid cells), got 0
    """

    method: str = "soft"
    window: float = 1.0
    temperature: float = 0.02

    def __post_init__(self) -> None:
        check_method(self.method, self.window, self.temperature)

    def replace(self, **changes) -> MatchSettings:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(cls, settings: MatchSettings | None = None, **overrides) -> MatchSettings:
        """``settings`` (default: ``MatchSettings()``) with the keyword overrides that are not ``None``."""
        if settings is not None and not isinstance(settings, cls):
            raise InvalidInputError(f"settings must be a MatchSettings, got {type(settings).__name__}")
        base = settings or cls()
        changes = {k: v for k, v in overrides.items() if v is not None}
        return base.replace(**changes) if changes else base


def check_method(method: str, window: float = 1.0, temperature: float = 0.02) -> None:
    """Check matching settings: a registered localizer, ``window > 0`` cells, ``temperature > 0``.

    Example:
        >>> from distilldift.matching import check_method
        >>> check_method("soft", 1.0, 0.02)  # fine: nothing happens
    """
    if method not in _LOCALIZERS:
        raise InvalidInputError(
            f"unknown method {method!r}; registered localizers: {', '.join(list_localizers())} (register_localizer)"
        )
    if not window > 0:
        raise InvalidInputError(f"window must be > 0 (radius in feature-grid cells), got {window}")
    if not temperature > 0:
        raise InvalidInputError(f"temperature must be > 0, got {temperature}")


def window_pixels(geom: GridGeometry, window: float) -> tuple[int, int]:
    """``(rx, ry)``: a radius of ``window`` feature cells in target pixels (at least 1).

    Example:
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching import window_pixels
        >>> window_pixels(GridGeometry(image_size=(620, 310), input_size=(434, 434), grid_size=(31, 31)), 1.0)
        (20, 10)
    """
    sx, sy = geom.cell_size
    return max(1, round(window * sx)), max(1, round(window * sy))


# --------------------------------------------------------------------------------------------- public
def match_features(
    src: Features,
    dst: Features,
    points: object,
    *,
    method: Method | None = None,
    window: float | None = None,
    temperature: float | None = None,
    mutual: bool = True,
    mutual_radius: float | None = None,
    settings: MatchSettings | None = None,
    exhaustive: bool = True,
) -> Matches:
    """Match points between two images whose features are already computed (reuse features across pairs).

    Args:
        src, dst: single-image :class:`Features` (``extract_features(img)`` or ``feats[i]``).
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image.
        method: ``"nn"``: best pixel of the upsampled similarity; ``"soft"``: window soft-argmax around it
            (sub-pixel; the paper's inference).
        window: soft-argmax window radius in feature-grid cells (converted to pixels of the target image).
        temperature: soft-argmax softmax temperature on cosine similarities.
        mutual: also match back from each match to the source and report ``cycle_error`` / ``mutual``.
        mutual_radius: cycle error (source pixels) under which a match is mutual; default: one grid cell.
        settings: a :class:`MatchSettings` (default ``MatchSettings()``: soft, 1 cell, 0.02); ``method``,
            ``window`` and ``temperature`` given as keywords override it.
        exhaustive: ``True``: every pixel of the upsampled similarity is searched (time grows with points x
            pixels); ``False``: coarse to fine (the best feature cell, then the exact similarity within two cells of
            it; what ``track_video`` does) - for thousands of points, see :func:`locate`.

    Returns:
        :class:`Matches` with ``points`` ``(N, 2)`` in target pixels.

    Example:
        >>> import torch
        >>> from distilldift import create_model, extract_features, match_features
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> img = torch.rand(3, 140, 140)
        >>> f = extract_features(img, model, size=140)
        >>> match_features(f, f, [[70.0, 35.0]], method="nn").points  # an image matched with itself
        tensor([[70., 35.]])
    """
    ms = MatchSettings.resolve(settings, method=method, window=window, temperature=temperature)
    if len(src) != 1 or len(dst) != 1:
        raise InvalidInputError("match_features expects single-image Features: index a batch, e.g. feats[0]")
    pts = as_points(points)
    if pts.shape[0] == 0:
        return Matches.empty()
    g1, g2 = src.geometry[0], dst.geometry[0]
    check_points_inside(pts, g1.image_size)
    f1, f2 = src.features[0], dst.features[0]
    queries = sample_features(f1, g1.image_to_grid(pts))
    how = dict(method=ms.method, window=ms.window, temperature=ms.temperature)
    matched, scores = locate(SimilarityMap(f2, g2.image_size), queries, g2, exhaustive=exhaustive, **how)
    if mutual:
        cycle, is_mutual = back_match(
            SimilarityMap(f1, g1.image_size),
            g1,
            f2,
            g2,
            matched,
            pts,
            settings=ms,
            exhaustive=exhaustive,
            radius=mutual_radius,
        )
        cycle, is_mutual = cycle.cpu(), is_mutual.cpu()
    else:
        cycle = torch.full((pts.shape[0],), float("nan"))
        is_mutual = torch.zeros(pts.shape[0], dtype=torch.bool)
    return Matches(pts, matched.cpu(), scores.float().cpu(), is_mutual, cycle)


def use_mirror(
    flip: bool | Literal["auto"], source: torch.Tensor, mirrored: torch.Tensor, target: torch.Tensor
) -> bool:
    """The pose-align decision, one for every API: match from the mirrored source image?

    ``flip=True``: always; ``False``: never; ``"auto"``: when the mirrored source explains the target better
    (higher :func:`global_similarity`). ``source``, ``mirrored``, ``target``: ``(C, h, w)`` unit feature maps.

    Example:
        >>> import torch
        >>> from distilldift.matching import use_mirror
        >>> f, g = (torch.nn.functional.normalize(torch.randn(16, 4, 5), dim=0) for _ in range(2))
        >>> use_mirror("auto", g, f, f), use_mirror("auto", f, g, f), use_mirror(True, f, g, f)  # target f
        (True, False, True)
    """
    if flip not in (True, False, "auto"):
        raise InvalidInputError(f"flip must be True, False or 'auto', got {flip!r}")
    if flip != "auto":
        return bool(flip)
    return global_similarity(mirrored, target) > global_similarity(source, target)


def flip_queries(points: torch.Tensor, width: int, permutation: Sequence[int] | None = None) -> torch.Tensor:
    """Query points for the mirrored source image: point ``i`` is the mirror of ``points[permutation[i]]``.

    Args:
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image of width ``width``.
        permutation: left/right partner of each point (e.g. SPair's ``left eye`` <-> ``right eye``), or ``None``.

    Returns:
        ``(N, 2)`` points in the mirrored image (``x -> width - 1 - x``).

    Example:
        >>> import torch
        >>> flip_queries(torch.tensor([[0.0, 5.0], [9.0, 1.0]]), 10, [1, 0])
        tensor([[0., 1.],
                [9., 5.]])
    """
    if permutation is not None:
        perm = torch.as_tensor(list(permutation), dtype=torch.long)
        n = points.shape[0]
        if perm.shape != (n,) or (n and (perm.min() < 0 or perm.max() >= n)):
            raise InvalidInputError(f"flip_permutation must list {n} indices in [0, {n - 1}], got {perm.tolist()}")
        points = points[perm]
    out = points.clone()
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def match_points(
    img1: ImageInput,
    img2: ImageInput,
    points: object,
    *,
    model: DistillDiftModel | None = None,
    method: Method | None = None,
    window: float | None = None,
    temperature: float | None = None,
    flip: bool | Literal["auto"] = False,
    flip_permutation: Sequence[int] | None = None,
    mutual: bool = True,
    mutual_radius: float | None = None,
    size: int | None = None,
    resize: str | None = None,
    settings: MatchSettings | None = None,
    exhaustive: bool = True,
) -> Matches:
    """Find the points of ``img2`` with the same meaning as ``points`` of ``img1``.

    Args:
        img1, img2: path, PIL, numpy ``HxWx{1,3,4}`` or tensor ``CxHxW`` in [0, 1]; any size and aspect ratio.
        points: ``(N, 2)`` pixel ``(x, y)`` in ``img1`` (pixel centres at integers, ``0 <= x <= W1-1``).
        model: from :func:`load_model`; default: the default variant.
        method: ``"nn"`` or ``"soft"`` (window soft-argmax, sub-pixel; default), or a registered localizer.
        window, temperature: soft-argmax window radius (feature cells) and temperature.
        settings: a :class:`MatchSettings`; ``method`` / ``window`` / ``temperature`` keywords override it.
        flip: ``True`` matches the mirrored ``img1``; ``"auto"`` (pose-align) mirrors it when that explains
            ``img2`` better (higher :func:`global_similarity`).
        flip_permutation: for mirrored matching, query ``i`` is taken at the mirror of point
            ``flip_permutation[i]`` (swap left/right keypoints, e.g. SPair's ``left eye`` <-> ``right eye``).
        mutual, mutual_radius: the back-matching check, see :func:`match_features`.
        size, resize: model input size / resize mode (default: the model variant's).
        exhaustive: ``False`` searches coarse to fine: for thousands of points, many times faster and almost
            always the same matches (``benchmarks/bench_match_scale.py``); see :func:`match_features`.

    Returns:
        :class:`Matches`: ``points`` ``(N, 2)`` pixel ``(x, y)`` in ``img2``, ``scores`` ``(N,)``, ``mutual``
        ``(N,)``. No points -> an empty result (the model is not run).

    Raises:
        PointsOutsideImageError: a point outside ``img1`` or NaN. ImageLoadError / InvalidInputError: bad image.

    Example:
        >>> import torch
        >>> from distilldift import create_model, match_points
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> img = torch.rand(3, 100, 150)
        >>> m = match_points(img, img, [[75.0, 50.0]], model=model, method="nn", size=140)
        >>> m.points, bool(m.mutual[0])
        (tensor([[75., 50.]]), True)
    """
    ms = MatchSettings.resolve(settings, method=method, window=window, temperature=temperature)
    if flip not in (True, False, "auto"):
        raise InvalidInputError(f"flip must be True, False or 'auto', got {flip!r}")
    pts = as_points(points)
    a, b = load_image(img1), load_image(img2)
    check_points_inside(pts, (a.shape[-1], a.shape[-2]), "points")
    if pts.shape[0] == 0:
        return Matches.empty()
    model = resolve_model(model)
    images = [a, b] + ([a.flip(-1)] if flip else [])
    results = extract_feature_maps(model, images, size=size, resize=resize, batch_size=len(images))
    return match_feature_maps(
        results[0],
        results[1],
        pts,
        mirrored=results[2] if flip else None,
        flip=flip,
        flip_permutation=flip_permutation,
        settings=ms,
        mutual=mutual,
        mutual_radius=mutual_radius,
        exhaustive=exhaustive,
    )


def match_feature_maps(
    src: FeatureMap,
    dst: FeatureMap,
    points: object,
    *,
    mirrored: FeatureMap | None = None,
    flip: bool | Literal["auto"] = False,
    flip_permutation: Sequence[int] | None = None,
    settings: MatchSettings | None = None,
    mutual: bool = True,
    mutual_radius: float | None = None,
    exhaustive: bool = True,
) -> Matches:
    """:func:`match_points` after the features are computed: what to reuse when one image meets many clicks.

    Args:
        src, dst: :class:`FeatureMap` of the source and target image (``extract_feature_maps``).
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image.
        mirrored: the :class:`FeatureMap` of the horizontally flipped source; needed when ``flip`` is not False.
        flip, flip_permutation, settings, mutual, mutual_radius, exhaustive: as in :func:`match_points`.

    Returns:
        :class:`Matches` (``query`` = ``points``; ``flipped`` says whether the mirrored source was matched).

    Example:
        >>> import torch
        >>> from distilldift.features import FeatureMap
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching import MatchSettings, match_feature_maps
        >>> f = FeatureMap(torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0),
        ...                GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3)))
        >>> match_feature_maps(f, f, [[22.0, 13.0]], settings=MatchSettings(method="nn")).points
        tensor([[22., 13.]])
    """
    pts = as_points(points)
    if flip not in (True, False, "auto"):
        raise InvalidInputError(f"flip must be True, False or 'auto', got {flip!r}")
    if flip and mirrored is None:
        raise InvalidInputError("flip needs the mirrored source's features: pass mirrored=")
    use_flip = bool(flip) and use_mirror(flip, src.features, mirrored.features, dst.features)
    queries = pts
    if use_flip:
        src = mirrored
        queries = flip_queries(pts, src.geometry.image_size[0], flip_permutation)
    m = match_features(
        Features(src.features[None], (src.geometry,)),
        Features(dst.features[None], (dst.geometry,)),
        queries,
        settings=settings,
        mutual=mutual,
        mutual_radius=mutual_radius,
        exhaustive=exhaustive,
    )
    if len(m) == 0:
        return Matches.empty(flipped=use_flip)
    return Matches(pts, m.points, m.scores, m.mutual, m.cycle_error, flipped=use_flip)


def similarity_heatmaps(src: FeatureMap, dst: FeatureMap, points: object, *, flipped: bool = False) -> torch.Tensor:
    """The maps the matches are found on: cosine similarity of each source point's descriptor to every target pixel.

    Args:
        src, dst: :class:`FeatureMap` of the source and target image; with ``flipped=True``, ``src`` is the
            mirrored source (``Matches.flipped``) and ``points`` are still given in the unflipped source.
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image.

    Returns:
        ``(N, H2, W2)`` float in [-1, 1]: entry ``[n, y, x]`` is the similarity at target pixel ``(x, y)`` (the
        bilinearly upsampled map of :func:`upsampled_similarity`; its best pixel is the ``nn`` match).

    Example:
        >>> import torch
        >>> from distilldift.features import FeatureMap
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching import similarity_heatmaps
        >>> f = FeatureMap(torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0),
        ...                GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3)))
        >>> h = similarity_heatmaps(f, f, [[22.0, 13.0]])
        >>> h.shape, round(float(h[0, 13, 22]), 4)  # a cell centre matched with itself
        (torch.Size([1, 27, 36]), 1.0)
    """
    pts = as_points(points)
    g1, g2 = src.geometry, dst.geometry
    check_points_inside(pts, g1.image_size)
    if flipped:
        pts = flip_queries(pts, g1.image_size[0])
    queries = sample_features(src.features, g1.image_to_grid(pts.to(src.features.device)))
    return upsampled_similarity(queries, dst.features, g2.image_size).cpu()


def match_record(
    matches: Matches, *, image1: str, image2: str, image1_size, image2_size, model: str, method: str
) -> dict:
    """The JSON record of one image pair's matches (``distilldift match --json``, the demo's download).

    ``image1_size`` / ``image2_size``: ``(W, H)``. Keys: the two images and sizes, model, method, the coordinate
    convention, then :meth:`Matches.to_dict`.

    Example:
        >>> from distilldift.matching import Matches, match_record
        >>> r = match_record(Matches.empty(), image1="a.jpg", image2="b.jpg", image1_size=(640, 480),
        ...                  image2_size=(320, 240), model="lite", method="soft")
        >>> r["image2_size"], r["points"]
        ([320, 240], [])
    """
    return {
        "image1": str(image1),
        "image2": str(image2),
        "image1_size": [int(v) for v in image1_size],
        "image2_size": [int(v) for v in image2_size],
        "model": model,
        "method": method,
        "coordinates": "pixel (x, y), origin at the centre of the top-left pixel",
        **matches.to_dict(),
    }
