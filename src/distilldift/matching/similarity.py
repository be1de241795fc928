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

import torch

__all__ = ["sample_features", "SimilarityMap", "upsampled_similarity", "global_similarity"]


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
        >>> from distilldift.matching import upsampled_similarity
        >>> f = torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0)
        >>> s = upsampled_similarity(f[:, 1, 2][None], f, image_size=(36, 27))  # query: cell (x=2, y=1)
        >>> s.shape, round(float(s[0, 13, 22]), 4)  # 9 px cells: that cell's centre is pixel (22, 13)
        (torch.Size([1, 27, 36]), 1.0)
    """
    return SimilarityMap(features, image_size)(queries.to(features.dtype))


def global_similarity(src: torch.Tensor, dst: torch.Tensor) -> float:
    """Mean over ``src`` cells of the best cosine similarity in ``dst``: how well ``src`` is explained by ``dst``.

    Used by pose-align to choose between an image and its mirror. ``src``: ``(C, h1, w1)``, ``dst``:
    ``(C, h2, w2)``, both unit over ``C``. Returns a float in [-1, 1].

    Example:
        >>> import torch
        >>> from distilldift.matching import global_similarity
        >>> f = torch.nn.functional.normalize(torch.randn(16, 5, 5), dim=0)
        >>> g = torch.nn.functional.normalize(torch.randn(16, 5, 5), dim=0)
        >>> round(global_similarity(f, f), 4), global_similarity(f, g) < 1.0
        (1.0, True)
    """
    a = src.reshape(src.shape[0], -1).t()
    b = dst.reshape(dst.shape[0], -1)
    return float((a @ b).max(dim=1).values.mean())
