"""Where queries match on a similarity map: exhaustive or coarse to fine, then the localizer; the back-match."""

from __future__ import annotations

import torch

from ..images import GridGeometry
from .localizers import LocalWindow, Sampler, get_localizer
from .settings import MatchSettings, check_method, window_pixels
from .similarity import SimilarityMap, sample_features

__all__ = ["locate", "back_match", "LOCAL_CELLS", "SOFT_DEBIAS_STEPS"]

_SIM_BUDGET = 1 << 25  # floats of similarity maps held at once (128 MB)
_LOCAL_CHUNK = 1024  # queries per coarse-to-fine pass (its windows: ~30 k floats per query, ~120 MB per pass)


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
    return get_localizer(method)(_dense_sampler(sim), best, score, window), score


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
    return get_localizer(method)(lambda xs, ys: up.at(queries, xs, ys), best, score, window), score


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
    again = get_localizer("soft")(lambda xs, ys: sim.at(own, xs, ys), best, score, window)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one definition of *mutual* (``Matches.mutual``) and *visible* (``Tracks.visible``): a match is kept when
    matching it back to the source image lands near the point it came from.

    The descriptor at each match is located in the source with the same localizer and search as the forward
    match (:func:`locate`); the cycle error is the distance in source pixels between that back-match and the
    query point, and a match is mutual when it is at most ``settings.mutual_radius`` (default: one feature cell of
    the source, its larger side in pixels).

    Args:
        source: the source image's :class:`SimilarityMap`; ``source_geometry`` its geometry.
        target_features: ``(C, gh, gw)`` unit features of the target; ``target_geometry`` its geometry.
        matched: ``(N, 2)`` pixel ``(x, y)`` of the matches in the target.
        points: ``(N, 2)`` pixel ``(x, y)`` of the queries in the source.
        settings: the localizer and ``mutual_radius`` (:class:`MatchSettings`); ``exhaustive``: as in :func:`locate`
            (the caller's resolved choice).

    Returns:
        ``(N,)`` cycle error in source pixels, ``(N,)`` bool mutual.

    Example:
        >>> import torch
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching.search import SimilarityMap, back_match
        >>> f = torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0)
        >>> g = GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3))
        >>> cycle, mutual = back_match(SimilarityMap(f, (36, 27)), g, f, g, torch.tensor([[22.0, 13.0]]),
        ...                            torch.tensor([[22.0, 13.0]]), settings=MatchSettings(method="nn"))
        >>> cycle.tolist(), mutual.tolist()  # an image matched with itself: the cycle closes exactly
        ([0.0], [True])
    """
    ms = MatchSettings.of(settings)
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
    limit = max(source_geometry.cell_size) if ms.mutual_radius is None else float(ms.mutual_radius)
    return cycle, cycle <= limit
