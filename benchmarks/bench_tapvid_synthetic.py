"""TAP-Vid metrics of ``track_video`` on real-texture synthetic clips with exact ground truth (synthetic_tracks.py).

    python benchmarks/bench_tapvid_synthetic.py [--clips 8] [--model lite] [--exhaustive]

Prints AJ / delta_avg / OA (TAP-Vid protocol, "first" queries, 256 x 256) for ``track_video`` and two baselines
computed by the same code: points that stand still (all visible), and the same tracks with every point marked
visible. Needs ../shared/data/pf-willow (real photos). The set is written as a TAP-Vid pickle (``--out``) and read
back with ``read_tapvid``; ``evaluate_tracking`` (the library's TAP-Vid evaluation) must give the same AJ.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from synthetic_tracks import make_set

from distilldift import load_model, track_video
from distilldift.datasets.tapvid import read_tapvid, write_tapvid
from distilldift.tapvid import TrackingMetrics, evaluate_tracking, tapvid_metrics

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pf-willow"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--model", default="lite")
    ap.add_argument("--exhaustive", action="store_true", help="track_video(exhaustive=True)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/tapvid-synthetic.pkl"), help="the set, as a TAP-Vid pickle")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    rows: dict[str, list[TrackingMetrics]] = {"track_video": [], "all visible": [], "standing still": []}
    t0 = time.perf_counter()
    write_tapvid(args.out, make_set(PHOTOS, args.clips))
    clips = read_tapvid(args.out)
    for clip in clips:
        gt = torch.from_numpy(clip.points).permute(1, 0, 2).float()  # (T, N, 2) pixels
        gt_vis = ~torch.from_numpy(clip.occluded).T
        frames = torch.from_numpy(clip.video).permute(0, 3, 1, 2).float() / 255
        q = gt[0]
        tr = track_video(frames, q, model=model, exhaustive=args.exhaustive, progress=False)
        zeros = [0] * q.shape[0]
        rows["track_video"].append(tapvid_metrics(tr.points, tr.visible, gt, gt_vis, zeros))
        rows["all visible"].append(tapvid_metrics(tr.points, torch.ones_like(gt_vis), gt, gt_vis, zeros))
        still = q.expand_as(gt)
        rows["standing still"].append(tapvid_metrics(still, torch.ones_like(gt_vis), gt, gt_vis, zeros))
    library, _ = evaluate_tracking(clips, model, exhaustive=args.exhaustive)  # the same protocol, as a library call
    assert abs(library.average_jaccard - TrackingMetrics.mean(rows["track_video"]).average_jaccard) < 1e-6
    took = time.perf_counter() - t0
    print(f"{args.clips} clips x 24 frames x 40 points, model {args.model}, exhaustive={args.exhaustive}, {took:.0f} s")
    print(f"{'':16} {'AJ':>6} {'d_avg':>6} {'OA':>6}")
    for name, ms in rows.items():
        m = TrackingMetrics.mean(ms)
        print(f"{name:16} {m.average_jaccard:6.3f} {m.average_delta:6.3f} {m.occlusion_accuracy:6.3f}")
    vis = np.mean([np.mean(~clip.occluded) for clip in clips])
    print(f"(fraction of visible entries: {vis:.3f})")


if __name__ == "__main__":
    main()
