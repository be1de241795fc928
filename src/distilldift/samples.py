"""Sample photos to try the library with nothing at hand (the demo's "sample photos", ``examples/``).

scikit-image's public-domain "chelsea" cat, and a moved copy of it: mirrored, zoomed, cropped, slightly rotated
and re-coloured, so matching it exercises the model and the coordinate maps. (Photos of two *different* cats:
bring your own.) Needs scikit-image (``pip install 'distilldift[examples]'`` or ``[demo]``).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from .errors import MissingDependencyError

__all__ = ["sample_photos", "write_sample_photos"]


def sample_photos() -> dict[str, Image.Image]:
    """``{"cat.png": the photo (451 x 300), "cat_moved.png": its moved copy (520 x 360)}``, RGB.

    Example:
        >>> from distilldift.samples import sample_photos
        >>> {name: im.size for name, im in sample_photos().items()}
        {'cat.png': (451, 300), 'cat_moved.png': (520, 360)}
    """
    try:
        from skimage import data
    except ImportError:
        raise MissingDependencyError(
            "the sample photos need scikit-image: pip install 'distilldift[examples]'"
        ) from None
    cat = Image.fromarray(data.chelsea())
    moved = ImageOps.mirror(cat).rotate(8, resample=Image.BICUBIC, expand=False, fillcolor=(40, 40, 40))
    moved = moved.crop((40, 20, 431, 290)).resize((520, 360), Image.BICUBIC)
    moved = ImageEnhance.Color(ImageEnhance.Brightness(moved).enhance(1.15)).enhance(0.7)
    return {"cat.png": cat, "cat_moved.png": moved}


def write_sample_photos(folder: str | os.PathLike) -> list[Path]:
    """Write :func:`sample_photos` into ``folder`` (created if missing); returns the paths, the source first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in sample_photos().items():
        image.save(folder / name)
        paths.append(folder / name)
    return paths
