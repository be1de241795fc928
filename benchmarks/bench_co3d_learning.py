"""Does 3D fine-tuning (``--recipe co3d``) teach a small student correspondences it did not know?

    python benchmarks/bench_co3d_learning.py [--steps 300] [--train-sequences 24] [--out /tmp/co3d-bench]

Writes synthetic multi-view scenes in CO3D's on-disk format (tests/co3d_scene.py: a box and a pillar in front of
a plane, textured with real PF-WILLOW photos, seen from cameras that orbit them), trains the pretrained ``lite``
student on them with the ``co3d`` objective (labels from depth and cameras), and measures PCK on held-out scenes
(photos of other classes, other camera poses) before and after: correspondences of the geometric labels, matched
with ``match_points`` (``nn``), correct within 5 % / 10 % of the image's longer side.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from safetensors.torch import load_file  # noqa: E402

from co3d_scene import write_scene  # noqa: E402
from distilldift import MatchSettings, load_model, match_points  # noqa: E402
from distilldift.datasets.co3d import read_co3d  # noqa: E402
from distilldift.training import train  # noqa: E402
from distilldift.training.config import apply_overrides, load_recipe  # noqa: E402
from distilldift.training.multiview import build_co3d_labels  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pf-willow"


def scenes(root: Path, photos: list[Path], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = np.asarray(Image.open(photos[i % len(photos)]).convert("RGB"))
        cams = [(0.0, 0.0, 0.0, "ndc_norm_image_bounds")]
        for _ in range(3):
            yaw, pitch, shift = rng.uniform(-30, 30), rng.uniform(-8, 8), rng.uniform(-0.4, 0.4)
            cams.append(
                (float(yaw), float(pitch), float(shift), str(rng.choice(["ndc_isotropic", "ndc_norm_image_bounds"])))
            )
        write_scene(root, category="scene", sequence=f"seq_{i:03d}", photo=photo, cameras=cams)


def pck(model, root: Path, labels: Path, cfg, size: int) -> dict[float, float]:
    data = read_co3d(root)
    files = build_co3d_labels(data, labels, cfg, log=lambda *_: None)
    rng = np.random.default_rng(0)
    errors, sides = [], []
    for f, ((_, _), frames) in zip(files, data.sequences().items(), strict=True):
        lab = load_file(str(f))
        for j, frame in enumerate(frames[1:]):
            src, tgt = lab[f"source_{j}"], lab[f"target_{j}"]
            if len(src) == 0:
                continue
            pick = rng.choice(len(src), min(len(src), 100), replace=False)
            m = match_points(
                frames[0].image,
                frame.image,
                src[pick],
                model=model,
                size=size,
                settings=MatchSettings(method="nn", mutual=False),
            )
            errors.append((m.points - tgt[pick]).norm(dim=1))
            sides.append(torch.full((len(pick),), float(max(frame.image_size))))
    e, s = torch.cat(errors), torch.cat(sides)
    return {a: float((e <= a * s).float().mean()) for a in (0.05, 0.1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-sequences", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("/tmp/co3d-bench"))
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--sigma", type=float, default=1.4, help="the Gaussian target's sigma (feature cells)")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    classes = sorted(p for p in PHOTOS.iterdir() if p.is_dir())
    train_photos = [p for c in classes[:7] for p in sorted(c.glob("*.png"))]
    held_photos = [p for c in classes[7:] for p in sorted(c.glob("*.png"))]
    scenes(args.out / "train", train_photos[::3], args.train_sequences, seed=1)
    scenes(args.out / "held-out", held_photos[::3], 8, seed=2)
    size = args.size
    overrides = [
        'student="lite"',
        'student_init="lite"',
        'train="full"',
        f"image_size={size}",
        "batch_size=4",
        f"steps={args.steps}",
        f"lr_step={args.steps}",
        f"lr={args.lr}",
        f"temperature={args.temperature}",
        "checkpoint_every=100",
        "freeze_batchnorm=true",
        "co3d.points_per_pair=64",
        "co3d.max_labels=1000",
        f"co3d.sigma={args.sigma}",
    ]
    cfg = apply_overrides(load_recipe("co3d"), overrides)
    before = pck(load_model("lite"), args.out / "held-out", args.out / "held-out-labels", cfg, size)
    t0 = time.perf_counter()
    folder = train(cfg, args.out / "train", args.out / "run", recipe="co3d", log=lambda *_: None)
    took = time.perf_counter() - t0
    after = pck(load_model(folder), args.out / "held-out", args.out / "held-out-labels", cfg, size)
    print(f"train: {args.train_sequences} scenes x 3 pairs, {args.steps} steps, batch 4, {size} px, {took:.0f} s")
    print(
        f"held-out PCK@0.05 / @0.10 (8 scenes, other photos and poses): lite {before[0.05]:.3f} / {before[0.1]:.3f}"
        f"  ->  fine-tuned {after[0.05]:.3f} / {after[0.1]:.3f}"
    )


if __name__ == "__main__":
    main()
