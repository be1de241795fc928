"""TAP-Vid metrics of ``track_video`` on real-texture synthetic clips with exact ground truth (synthetic_tracks.py).

    python benchmarks/bench_tapvid_synthetic.py [--clips 8] [--first 0] [--model lite] [--size N] [--exhaustive]

Prints AJ / delta_avg / OA (TAP-Vid protocol, "first" queries, 256 x 256) for ``track_video`` and baselines computed
by the same code: the previous default (visibility from the back-match alone), the same tracks with every point
marked visible, per-frame nearest neighbour without visibility, and points that stand still; then ``strided``
queries (points queried in the middle of the clip are tracked backwards and forwards). ``--first 40`` gives the
development set the defaults were chosen on (other photos and motions). Needs ../shared/data/pf-willow (real
photos). The set is written as a TAP-Vid pickle (``--out``) and read back with ``read_tapvid``; ``evaluate_tracking``
(the library's TAP-Vid evaluation) must give the same numbers as the first row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from synthetic_tracks import make_set

from distilldift import MatchSettings, TrackSettings, load_model, track_video
from distilldift.datasets.tapvid import read_tapvid, write_tapvid
from distilldift.evaluation.tracking import TrackingMetrics, evaluate_tracking, tapvid_metrics

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pf-willow"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--first", type=int, default=0, help="index of the first clip (40: the development set)")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--size", type=int, default=None, help="model input size (default: the variant's)")
    ap.add_argument("--exhaustive", action="store_true", help="track_video(exhaustive=True)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/tapvid-synthetic.pkl"), help="the set, as a TAP-Vid pickle")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model)
    kw = dict(model=model, size=args.size, exhaustive=args.exhaustive, progress=False)
    rows: dict[str, list[TrackingMetrics]] = {
        "track_video": [],
        "previous default": [],
        "all visible": [],
        "per-frame NN": [],
        "standing still": [],
    }
    t0 = time.perf_counter()
    write_tapvid(args.out, make_set(PHOTOS, args.clips, first=args.first))
    clips = read_tapvid(args.out)
    for clip in clips:
        gt = torch.from_numpy(clip.points).permute(1, 0, 2).float()  # (T, N, 2) pixels
        gt_vis = ~torch.from_numpy(clip.occluded).T
        frames = torch.from_numpy(clip.video).permute(0, 3, 1, 2).float() / 255
        q = gt[0]
        everything = torch.ones_like(gt_vis)
        zeros = [0] * q.shape[0]

        def metrics(points, visible, gt=gt, gt_vis=gt_vis, zeros=zeros):
            return tapvid_metrics(points, visible, gt, gt_vis, zeros)

        tr = track_video(frames, q, **kw)
        rows["track_video"].append(metrics(tr.points, tr.visible))
        rows["all visible"].append(metrics(tr.points, everything))
        old = track_video(frames, q, settings=TrackSettings(visible_score=None), **kw)
        rows["previous default"].append(metrics(old.points, old.visible))
        nn = track_video(frames, q, settings=TrackSettings(match=MatchSettings(method="nn")), **kw)
        rows["per-frame NN"].append(metrics(nn.points, everything))
        rows["standing still"].append(metrics(q.expand_as(gt), everything))
    library, _ = evaluate_tracking(
        clips, model, size=args.size, settings=TrackSettings(match=MatchSettings(exhaustive=args.exhaustive))
    )
    mine = TrackingMetrics.mean(rows["track_video"])
    assert abs(library.average_jaccard - mine.average_jaccard) < 1e-6, (library, mine)
    strided, _ = evaluate_tracking(
        clips,
        model,
        query_mode="strided",
        size=args.size,
        settings=TrackSettings(match=MatchSettings(exhaustive=args.exhaustive)),
    )
    took = time.perf_counter() - t0
    size = args.size or "default"
    print(
        f"{args.clips} clips from {args.first} x 24 frames x 40 points, model {args.model}, size {size}, "
        f"exhaustive={args.exhaustive}, {took:.0f} s"
    )
    print(f"{'first queries':22} {'AJ':>6} {'d_avg':>6} {'OA':>6}")
    for name, ms in rows.items():
        m = TrackingMetrics.mean(ms)
        print(f"{name:22} {m.average_jaccard:6.3f} {m.average_delta:6.3f} {m.occlusion_accuracy:6.3f}")
    m = strided
    print(f"{'track_video, strided':22} {m.average_jaccard:6.3f} {m.average_delta:6.3f} {m.occlusion_accuracy:6.3f}")
    vis = np.mean([np.mean(~clip.occluded) for clip in clips])
    print(f"(fraction of visible entries: {vis:.3f})")


if __name__ == "__main__":
    main()
