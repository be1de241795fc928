"""Does supervised fine-tuning (``--recipe spair``, objective ``keypoints``) teach a small student?

    python benchmarks/bench_spair_learning.py [--steps 300] [--loss cross_entropy|soft_argmax|both]

Writes an SPair-71k-format dataset from real PF-WILLOW photos and known transforms (tests/spair_fixture.py:
scale, rotation, shift, colour; exact keypoints): ``trn`` from 7 classes, ``test`` from the 3 others. Fine-tunes
the pretrained ``lite`` student on ``trn`` with the recipe's objective and reports ``evaluate`` PCK on ``test``
(the SPair reader and protocol) before and after, for each loss.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from distilldift import (
    MatchSettings,
    load_model,  # noqa: E402
)
from distilldift.datasets import read_spair  # noqa: E402
from distilldift.evaluation.pck import evaluate  # noqa: E402
from distilldift.training import train  # noqa: E402
from distilldift.training.config import apply_overrides, load_recipe  # noqa: E402
from spair_fixture import write_spair_fixture  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pf-willow"


def pck(model, root: Path, size: int) -> tuple[float, float]:
    r = evaluate(
        read_spair(root, "test"),
        model,
        size=size,
        resize="stretch",
        progress=False,
        settings=MatchSettings(method="nn"),
    )
    return r.per_point["bbox"][0.1], r.per_point["img"][0.05]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--loss", default="both")
    ap.add_argument("--out", type=Path, default=Path("/tmp/spair-bench"))
    ap.add_argument("--sigma", type=float, default=1.4, help="cross_entropy: the Gaussian's sigma (cells)")
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    classes = sorted(p for p in PHOTOS.iterdir() if p.is_dir())
    n_trn = write_spair_fixture(
        args.out / "data", [p for c in classes[:7] for p in sorted(c.glob("*.png"))], "trn", pairs_per_photo=2
    )
    n_test = write_spair_fixture(args.out / "data", [p for c in classes[7:] for p in sorted(c.glob("*.png"))], "test")
    size = 224
    before = pck(load_model("lite"), args.out / "data", size)
    print(f"trn {n_trn} pairs (7 classes), test {n_test} pairs (3 other classes); {size} px, nn")
    print(f"lite, pretrained: test PCK_bbox@0.1 {before[0]:.3f}, PCK_img@0.05 {before[1]:.3f}")
    for loss in ["cross_entropy", "soft_argmax"] if args.loss == "both" else [args.loss]:
        overrides = [
            'student="lite"',
            'student_init="lite"',
            'train="full"',
            "freeze_batchnorm=true",
            f"image_size={size}",
            "batch_size=4",
            f"steps={args.steps}",
            f"lr_step={args.steps}",
            f"lr={args.lr}",
            "temperature=0.05",
            "checkpoint_every=100",
            f'keypoints.loss="{loss}"',
            f"keypoints.sigma={args.sigma}",
        ]
        cfg = apply_overrides(load_recipe("spair"), overrides)
        t0 = time.perf_counter()
        folder = train(cfg, args.out / "data", args.out / loss, recipe="spair", log=lambda *_: None)
        after = pck(load_model(folder), args.out / "data", size)
        print(
            f"fine-tuned, {loss}, {args.steps} steps ({time.perf_counter() - t0:.0f} s): "
            f"PCK_bbox@0.1 {after[0]:.3f}, PCK_img@0.05 {after[1]:.3f}"
        )


if __name__ == "__main__":
    main()
