"""Image inputs, resizing/normalisation, and the exact map between image pixels and the feature grid.

Coordinate convention (used everywhere in distilldift): a point is ``(x, y)`` in pixels of the *original*
image, float, with integer values at pixel **centres**: ``(0, 0)`` is the centre of the top-left pixel and an
image of width ``W`` and height ``H`` spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (the OpenCV / kornia
convention). Sizes are written ``(width, height)`` wherever they pair with points.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError, InvalidInputError, PointsOutsideImageError, ShapeError

__all__ = [
    "ImageInput",
    "GridGeometry",
    "load_image",
    "load_images",
    "input_size_for",
    "preprocess",
    "as_points",
    "check_points_inside",
]

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

_ACCEPTED = (
    "a file path, a PIL.Image, a numpy array HxW / HxWx{1,3,4} (uint8, uint16, or float in [0, 1]), "
    "or a torch tensor CxHxW / 1xCxHxW (float in [0, 1] or uint8)"
)


def _from_pil(img: Image.Image) -> torch.Tensor:
    img = ImageOps.exif_transpose(img)  # points refer to the image as displayed
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return torch.from_numpy(np.clip(arr, 0.0, 1.0)).expand(3, *arr.shape).clone()
    if img.mode == "F":
        return _from_numpy(np.asarray(img, dtype=np.float32), "PIL image (mode F)")
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA") else img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _from_numpy(arr: np.ndarray, what: str = "numpy array") -> torch.Tensor:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ShapeError(what, "HxW or HxWx{1,3,4}", arr.shape)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ShapeError(what, "a non-empty HxW image", arr.shape)
    if arr.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32)).div_(65535.0)
    elif arr.dtype == np.bool_:
        t = torch.from_numpy(arr.astype(np.float32))
    elif np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        _check_float_range(t, what)
    else:
        raise InvalidInputError(f"{what} has unsupported dtype {arr.dtype}; accepted: uint8, uint16, bool, float")
    t = t.permute(2, 0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    return t.contiguous()


def _check_float_range(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise InvalidInputError(f"{what} contains NaN or inf values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise InvalidInputError(
            f"{what} has float values in [{lo:.3g}, {hi:.3g}]; float images must be in [0, 1] "
            "(divide uint8 data by 255, and pass images before any mean/std normalisation)"
        )


def _from_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ShapeError("image tensor", "CxHxW or 1xCxHxW with C in {1, 3, 4}", tuple(t.shape))
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ShapeError("image tensor", "a non-empty CxHxW image", tuple(t.shape))
    t = t.detach().to("cpu")
    if t.dtype == torch.uint8:
        t = t.float().div(255.0)
    elif t.is_floating_point():
        t = t.float()
        _check_float_range(t, "image tensor")
    else:
        raise InvalidInputError(f"image tensor has unsupported dtype {t.dtype}; accepted: float in [0, 1] or uint8")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    return t.contiguous()


def _from_path(path: str | os.PathLike) -> torch.Tensor:
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"image file not found: {str(p)!r}")
    if p.is_dir():
        raise ImageLoadError(f"expected an image file, got a folder: {str(p)!r}")
    if p.stat().st_size == 0:
        raise ImageLoadError(f"image file is empty (0 bytes): {str(p)!r}")
    try:
        with Image.open(p) as img:
            img.load()
            return _from_pil(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(
            f"could not decode {str(p)!r} as an image (corrupt, truncated or not an image file): {e}"
        ) from e


def load_image(image: ImageInput) -> torch.Tensor:
    """Load one image as an RGB float tensor.

    Args:
        image: a path, ``PIL.Image`` (EXIF orientation applied), numpy array ``HxW`` / ``HxWx{1,3,4}``
            (uint8, uint16, bool, or float in [0, 1]) or tensor ``CxHxW`` / ``1xCxHxW`` (float in [0, 1] or
            uint8). Grayscale is repeated to RGB, alpha is dropped, 16-bit is scaled to [0, 1].

    Returns:
        ``(3, H, W)`` float32 tensor in [0, 1] on the CPU.

    Raises:
        ImageLoadError: missing, empty or undecodable file. ShapeError / InvalidInputError: bad array, or an
        image smaller than 2 x 2 pixels (nothing to match in).

    Example:
        >>> import numpy as np
        >>> from distilldift import load_image
        >>> load_image(np.zeros((4, 6), dtype=np.uint8)).shape
        torch.Size([3, 4, 6])
    """
    if isinstance(image, (str, os.PathLike)):
        t, what = _from_path(image), f"image {str(image)!r}"
    elif isinstance(image, Image.Image):
        t, what = _from_pil(image), "PIL image"
    elif isinstance(image, np.ndarray):
        t, what = _from_numpy(image), "numpy image"
    elif isinstance(image, torch.Tensor):
        t, what = _from_tensor(image), "image tensor"
    else:
        raise InvalidInputError(f"unsupported image type {type(image).__name__}; accepted: {_ACCEPTED}")
    if min(t.shape[-2:]) < MIN_IMAGE_SIDE:
        raise InvalidInputError(
            f"{what} is {t.shape[-1]}x{t.shape[-2]} pixels: too small to match in; use at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )
    return t


def load_images(images: ImageInput | Sequence[ImageInput]) -> list[torch.Tensor]:
    """Load one image, a list of images, or a ``BxCxHxW`` batch tensor as a list of ``(3, H_i, W_i)`` tensors."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [load_image(t) for t in images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [load_image(a) for a in images]
    if isinstance(images, (list, tuple)):
        return [load_image(im) for im in images]
    return [load_image(images)]


MIN_IMAGE_SIDE = 2  # pixels
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})  # image files in folders


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def input_size_for(image_size: tuple[int, int], size: int, resize: str, multiple: int) -> tuple[int, int]:
    """Model input size ``(width, height)`` for an image of ``image_size = (width, height)``.

    ``"stretch"``: ``size x size``; ``"keep_aspect"``: the long side is ``size`` and the short side keeps the
    aspect ratio. Both sides are rounded to the nearest multiple of ``multiple`` (at least one multiple).
    ``size`` must be a whole number of at least ``2 * multiple`` pixels (two feature cells).

    Example:
        >>> from distilldift.images import input_size_for
        >>> input_size_for((640, 480), 434, "keep_aspect", 14)
        (434, 322)
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2 * multiple:
        raise InvalidInputError(
            f"size must be a whole number of pixels >= {2 * multiple} (two feature cells of {multiple} px), "
            f"got {size!r}"
        )
    if resize == "stretch":
        s = _round_to(size, multiple)
        return (s, s)
    if resize == "keep_aspect":
        w, h = image_size
        if w >= h:
            return (_round_to(size, multiple), _round_to(size * h / w, multiple))
        return (_round_to(size * w / h, multiple), _round_to(size, multiple))
    raise InvalidInputError(f"resize must be 'stretch' or 'keep_aspect', got {resize!r}")


@dataclass(frozen=True)
class GridGeometry:
    """The exact map between pixels of an original image and cells of its feature grid.

    The image (``image_size = (W, H)``) is resized to the model input ``input_size = (w, h)``, and the backbone
    gives a grid of ``grid_size = (gw, gh)`` cells of ``stride`` input pixels. Grid coordinates put cell
    centres at integers (cell ``(0, 0)`` is centred at ``(0, 0)``), like pixel coordinates, so per axis::

        g = (x + 0.5) * gw / W - 0.5        x = (g + 0.5) * W / gw - 0.5

    This is the same sampling convention as ``F.interpolate(..., align_corners=False)``.

    Example:
        >>> import torch
        >>> from distilldift.images import GridGeometry
        >>> g = GridGeometry(image_size=(620, 310), input_size=(434, 434), grid_size=(31, 31))
        >>> g.image_to_grid(torch.tensor([[9.5, 4.5]]))
        tensor([[0., 0.]])
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    grid_size: tuple[int, int]

    @property
    def cell_size(self) -> tuple[float, float]:
        """Size of one grid cell in original-image pixels, ``(sx, sy)``."""
        return (self.image_size[0] / self.grid_size[0], self.image_size[1] / self.grid_size[1])

    def _scale(self, device: torch.device) -> torch.Tensor:
        sx, sy = self.cell_size
        return torch.tensor([sx, sy], dtype=torch.float64, device=device)

    def image_to_grid(self, points: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` image pixel ``(x, y)`` -> ``(N, 2)`` continuous grid ``(gx, gy)``."""
        s = self._scale(points.device)
        return ((points.double() + 0.5) / s - 0.5).to(points.dtype)

    def grid_to_image(self, points: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` continuous grid ``(gx, gy)`` -> ``(N, 2)`` image pixel ``(x, y)``."""
        s = self._scale(points.device)
        return ((points.double() + 0.5) * s - 0.5).to(points.dtype)


def preprocess(
    image: torch.Tensor, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize ``(3, H, W)`` or ``(B, 3, H, W)`` [0, 1] to ``input_size = (w, h)`` (bilinear, antialiased) and
    normalise per channel. Returns float32 of the same rank. Used through :meth:`DistillDiftModel.prepare`.
    """
    w, h = input_size
    x = image if image.ndim == 4 else image[None]
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    x = (x - m) / s
    return x if image.ndim == 4 else x[0]


def as_points(points: object, name: str = "points") -> torch.Tensor:
    """Convert a list of ``[x, y]`` / numpy / tensor to a ``(N, 2)`` float32 tensor; NaN/inf is an error.

    ``[]`` and ``None`` give an empty ``(0, 2)`` tensor.

    Example:
        >>> from distilldift.images import as_points
        >>> as_points([[1, 2], [3.5, 4]]).shape
        torch.Size([2, 2])
    """
    if points is None:
        return torch.zeros(0, 2)
    if isinstance(points, torch.Tensor):
        t = points.detach().to("cpu", torch.float32)
    else:
        try:
            arr = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"{name}: expected a (N, 2) array of (x, y) pixel coordinates ({e})") from e
        t = torch.from_numpy(arr).float()
    if t.numel() == 0:
        return torch.zeros(0, 2)
    if t.ndim == 1 and t.shape[0] == 2:
        raise ShapeError(name, "(N, 2); for one point pass [[x, y]]", tuple(t.shape))
    if t.ndim != 2 or t.shape[1] != 2:
        raise ShapeError(name, "(N, 2) with columns (x, y)", tuple(t.shape))
    bad = ~torch.isfinite(t).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise PointsOutsideImageError(f"{name}[{i}] = {t[i].tolist()} is not finite (NaN or inf)")
    return t


def check_points_inside(points: torch.Tensor, image_size: tuple[int, int], name: str = "points") -> None:
    """Raise :class:`PointsOutsideImageError` unless every ``(x, y)`` lies in ``[-0.5, W-0.5] x [-0.5, H-0.5]``."""
    w, h = image_size
    x, y = points[:, 0], points[:, 1]
    outside = (x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)
    if outside.any():
        idx = outside.nonzero()[:, 0].tolist()
        i = idx[0]
        more = f" (and {len(idx) - 1} more)" if len(idx) > 1 else ""
        raise PointsOutsideImageError(
            f"{name}[{i}] = ({float(x[i]):g}, {float(y[i]):g}) is outside the {w}x{h} image{more}; points are "
            f"(x, y) pixels with 0 <= x <= {w - 1} and 0 <= y <= {h - 1} (pixel centres; +-0.5 allowed)"
        )
