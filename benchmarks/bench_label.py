"""Labelling from k = 1, 3, 5 references: per-point PCK_bbox@0.1 on PF-WILLOW, and whether the score ranks them.

    python benchmarks/bench_label.py [--model lite] [--classes 10]

Per class of PF-WILLOW (``../shared/data/pf-willow``: 10 classes x 10 images, 10 keypoints each, all visible), its
first 5 images (sorted by name) are the targets and the other 5 the references, written as a COCO keypoints file
and labelled with :func:`label_keypoints`: k = 1 from each reference alone (5 runs), k = 3 from 5 windows of three
(references i, i+1, i+2 mod 5), k = 5 from all. A point is right when it lies within 0.1 x the longer side of the
target's keypoint box (the PF-WILLOW protocol). ``top half`` / ``rest``: PCK of the points whose keypoint score
is in the upper / lower half (does the score rank correctness?). ``ms/target``: the median wall time per target
image of a run, features included, on this machine (named first).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

PF_WILLOW = Path(__file__).resolve().parents[2] / "shared" / "data" / "pf-willow"


def read_class(folder: Path) -> tuple[list[Path], list[torch.Tensor]]:
    """The images of a PF-WILLOW class and their keypoints ``(10, 2)``, 0-based pixel centres."""
    from scipy.io import loadmat

    images = sorted(folder.glob("*.png"))
    return images, [torch.tensor(loadmat(str(p.with_suffix(".mat")))["pts_coord"]).float().t() - 1 for p in images]


def refs_file(images: list[Path], keypoints: list[torch.Tensor]) -> dict:
    """A COCO keypoints dict of the references (absolute file names), as an annotation tool exports it."""
    from PIL import Image

    n = keypoints[0].shape[0]
    out = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object", "keypoints": []}]}
    out["categories"][0]["keypoints"] = [f"point_{i + 1}" for i in range(n)]
    for i, (path, kp) in enumerate(zip(images, keypoints, strict=True)):
        w, h = Image.open(path).size
        out["images"].append({"id": i + 1, "file_name": str(path), "width": w, "height": h})
        flat = [v for x, y in kp.tolist() for v in (x, y, 2)]
        out["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "keypoints": flat})
    return out


def main() -> None:
    from distilldift import load_model
    from distilldift.labelling import label_keypoints

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    try:
        cpu = next(s for s in Path("/proc/cpuinfo").read_text().splitlines() if s.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "model name: unknown"
    print(f"CPU {cpu.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads; model {args.model}")
    model = load_model(args.model)
    print(f"precision {model.precision} ({model.precision_reason})")
    windows = {1: [[i] for i in range(5)], 3: [[i, (i + 1) % 5, (i + 2) % 5] for i in range(5)], 5: [list(range(5))]}
    hits: dict[int, list[float]] = {k: [] for k in windows}
    scores: dict[int, list[float]] = {k: [] for k in windows}
    times: dict[int, list[float]] = {k: [] for k in windows}
    for folder in sorted(p for p in PF_WILLOW.iterdir() if p.is_dir())[: args.classes]:
        images, kps = read_class(folder)
        targets, refs = images[:5], images[5:10]
        for k, runs in windows.items():
            for chosen in runs:
                coco = refs_file([refs[i] for i in chosen], [kps[5 + i] for i in chosen])
                t0 = time.perf_counter()
                labels = label_keypoints(coco, targets, model)
                times[k].append((time.perf_counter() - t0) / len(targets))
                by_file = {im["id"]: im["file_name"] for im in labels["images"]}
                for a in labels["annotations"]:
                    if a.get("labelled_by") != "distilldift":
                        continue
                    t = [str(p.resolve()) for p in targets].index(by_file[a["image_id"]])
                    gt = kps[t]
                    got = torch.tensor(a["keypoints"]).reshape(-1, 3)[:, :2]
                    side = (gt.max(0).values - gt.min(0).values).max()
                    hits[k] += ((got - gt).norm(dim=1) <= 0.1 * side).float().tolist()
                    scores[k] += a["keypoint_scores"]
    print("k  points  pck_bbox@0.1  top half  rest   ms/target")
    for k in windows:
        h, s = torch.tensor(hits[k]), torch.tensor(scores[k])
        order = s.argsort(descending=True)
        half = len(order) // 2
        print(
            f"{k}  {len(h):6d}  {h.mean():.3f}         {h[order[:half]].mean():.3f}     {h[order[half:]].mean():.3f}  "
            f"{statistics.median(times[k]) * 1000:7.0f}"
        )


if __name__ == "__main__":
    main()
