"""Correspondences from geometry: pixels of one view, lifted with depth and moved into another view.

Conventions (the only place they are stated for training): cameras are pinhole ``K`` (``(3, 3)``, pixels with
centres at integers, ``u = fx * x / z + cx``) and ``world_to_camera`` (``(4, 4)``, column vectors, OpenCV axes:
+x right, +y down, +z forward), as :class:`distilldift.datasets.co3d.Co3dCamera` gives them; depth maps hold each
pixel's camera-space z in the scene's units, 0 where unknown. Projection and unprojection are kornia's.

A source pixel is kept in a target view when its projection lies inside the target image, in front of the camera,
on the target's valid-depth and foreground pixels, and its projected depth agrees with the target's depth there
(``|z_projected - z_target| < eps``, in scene units; the target depth is interpolated bilinearly between four valid
pixels, so points at a depth edge are dropped rather than guessed): that drops points hidden by other surfaces in
the target (occlusion) and points that leave the view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, MissingDependencyError

__all__ = ["View", "reproject", "correspondences"]


def _kornia():
    try:
        from kornia.geometry.camera.perspective import project_points, unproject_points
        from kornia.geometry.linalg import compose_transformations, inverse_transformation, transform_points
    except ImportError:
        raise MissingDependencyError("3D training needs kornia: pip install 'distilldift[train]'") from None
    return project_points, unproject_points, compose_transformations, inverse_transformation, transform_points


@dataclass(frozen=True)
class View:
    """One posed view: ``K`` ``(3, 3)``, ``world_to_camera`` ``(4, 4)``, ``depth`` ``(H, W)`` (0 = unknown) and
    ``mask`` ``(H, W)`` bool (foreground; pixels that may carry a label)."""

    K: torch.Tensor
    world_to_camera: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)``."""
        return int(self.depth.shape[1]), int(self.depth.shape[0])


def reproject(
    points: torch.Tensor, depth: torch.Tensor, source: View, target: View
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move source pixels with known depth into the target view.

    Args:
        points: ``(N, 2)`` pixel ``(x, y)`` in the source; ``depth``: ``(N,)`` their camera-space z.

    Returns:
        ``(N, 2)`` float64 pixel ``(x, y)`` in the target and ``(N,)`` float64 camera-space z there.

    Example:
        >>> import torch
        >>> K = torch.tensor([[100.0, 0, 49.5], [0, 100.0, 49.5], [0, 0, 1]], dtype=torch.float64)
        >>> moved = torch.eye(4, dtype=torch.float64)
        >>> moved[0, 3] = -1.0  # the target camera sits one unit to the right
        >>> a = View(K, torch.eye(4, dtype=torch.float64), torch.ones(100, 100), torch.ones(100, 100, dtype=torch.bool))
        >>> b = View(K, moved, a.depth, a.mask)
        >>> xy, z = reproject(torch.tensor([[49.5, 49.5]]), torch.tensor([4.0]), a, b)
        >>> xy.tolist(), z.tolist()  # 100 px * 1 unit / 4 units = 25 px to the left
        ([[24.5, 49.5]], [4.0])
    """
    project_points, unproject_points, compose, inverse, transform = _kornia()
    pts = points.to(torch.float64)
    cam = unproject_points(pts, depth.to(torch.float64)[:, None], source.K.to(torch.float64))  # (N, 3) source camera
    source_to_target = compose(
        target.world_to_camera.to(torch.float64), inverse(source.world_to_camera.to(torch.float64))
    )
    moved = transform(source_to_target[None], cam[None])[0]
    z = moved[:, 2]
    xy = project_points(moved, target.K.to(torch.float64))
    return xy, z


def _sample(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``(H, W)`` at pixel ``(x, y)`` (centres at integers); ``(N,)``."""
    h, w = image.shape
    grid = torch.stack([(xy[:, 0] + 0.5) / w * 2 - 1, (xy[:, 1] + 0.5) / h * 2 - 1], -1).view(1, 1, -1, 2)
    image = image[None, None].to(torch.float64)
    out = F.grid_sample(image, grid.to(torch.float64), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(-1)


def correspondences(
    source: View, target: View, *, eps: float = 0.01, points: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel correspondences from ``source`` to ``target`` by geometry (see the module docstring for the tests).

    Args:
        source, target: posed views with depth and foreground masks.
        eps: largest ``|z_projected - z_target|`` (scene units) for a point to count as seen in the target.
        points: ``(N, 2)`` integer source pixels to try; default: every foreground pixel with a valid depth.

    Returns:
        ``(M, 2)`` source pixels (integers, as float64) and ``(M, 2)`` float64 target pixels, ``M <= N``.
    """
    if eps <= 0:
        raise InvalidInputError(f"eps must be > 0 (scene units), got {eps}")
    if points is None:
        ys, xs = torch.nonzero(source.mask & (source.depth > 0), as_tuple=True)
        points = torch.stack([xs, ys], 1)
    points = points.long()
    z0 = source.depth[points[:, 1], points[:, 0]].to(torch.float64)
    ok = z0 > 0
    points, z0 = points[ok], z0[ok]
    xy, z = reproject(points.to(torch.float64), z0, source, target)
    w, h = target.size
    keep = (z > 0) & (xy[:, 0] >= -0.5) & (xy[:, 0] < w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] < h - 0.5)
    xy_c = xy.clone()
    xy_c[:, 0] = xy_c[:, 0].clamp(0, w - 1)
    xy_c[:, 1] = xy_c[:, 1].clamp(0, h - 1)
    nearest = xy_c.round().long()
    on_mask = target.mask[nearest[:, 1], nearest[:, 0]]
    valid = (target.depth > 0).to(torch.float64)
    all_valid = _sample(valid, xy_c) > 1 - 1e-9  # the four neighbours all have a depth
    z_target = _sample(target.depth * (target.depth > 0), xy_c)
    keep &= on_mask & all_valid & ((z - z_target).abs() < eps)
    return points[keep].to(torch.float64), xy[keep]
