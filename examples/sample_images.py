"""Write a pair of real photos to match: scikit-image's "chelsea" cat, and a moved copy of it.

The copy is mirrored, zoomed, cropped, slightly rotated and re-coloured, so matching it is a real test of the
model and of the coordinate maps (``distilldift.samples``). (Photos of two *different* cats: bring your own.)

    python examples/sample_images.py [OUT_DIR]     # default: examples/data
"""

from __future__ import annotations

import sys
from pathlib import Path

from distilldift.errors import MissingDependencyError
from distilldift.samples import write_sample_photos

out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data")
try:
    for path in write_sample_photos(out):
        print(path)
except MissingDependencyError as e:
    sys.exit(str(e))
