"""Write a pair of real photos to match: scikit-image's "chelsea" cat, and a moved copy of it.

The copy is mirrored, zoomed, cropped, slightly rotated and re-coloured, so matching it is a real test of the
model and of the coordinate maps. (Photos of two *different* cats: bring your own.)

    python examples/sample_images.py [OUT_DIR]     # default: examples/data
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

try:
    from skimage import data
except ImportError:
    sys.exit("this example needs scikit-image: pip install 'distilldift[examples]'")

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data")
out.mkdir(parents=True, exist_ok=True)
cat = Image.fromarray(data.chelsea())  # 451 x 300, public domain photo shipped with scikit-image
moved = ImageOps.mirror(cat).rotate(8, resample=Image.BICUBIC, expand=False, fillcolor=(40, 40, 40))
moved = moved.crop((40, 20, 431, 290)).resize((520, 360), Image.BICUBIC)
moved = ImageEnhance.Color(ImageEnhance.Brightness(moved).enhance(1.15)).enhance(0.7)
cat.save(out / "cat.png")
moved.save(out / "cat_moved.png")
print(out / "cat.png")
print(out / "cat_moved.png")
