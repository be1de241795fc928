"""``match_points`` time and peak memory vs the number of points (1 ... 10,000) and the image size, for the
exhaustive search (the default) and the coarse-to-fine one (``exhaustive=False``, ``match --coarse-to-fine``).

    python benchmarks/bench_match_scale.py [--model lite] [--points 1 10 100 1000 10000]

Each (size, points, search) runs in a fresh child process: the model is loaded and one 1-point match warms it up,
then the timed call; memory is the peak RSS above the process after the warm-up (the similarity maps are computed
in chunks of at most 2^25 floats, so it should not grow with the number of points). Images: the sample photo (a
cat) resized to each size, matched with a mirrored copy (the default ``soft`` localizer). "same": the share of
coarse-to-fine matches within 1 px of the exhaustive ones, and within 1 % of the image's long side (PCK@0.01's
threshold).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from distilldift import MatchSettings

SIZES = [(320, 240), (640, 480), (1280, 960)]


def child(model_name: str, w: int, h: int, n: int, exhaustive: bool) -> dict:
    from distilldift import load_model, match_points
    from distilldift.samples import sample_photos

    torch.manual_seed(0)
    model = load_model(model_name)
    cat = sample_photos()["cat.png"].resize((w, h))
    other = cat.transpose(0)  # mirrored
    match_points(cat, other, [[w / 2, h / 2]], model=model)  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pts = torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([w - 1, h - 1])
    t0 = time.perf_counter()
    m = match_points(cat, other, pts, model=model, settings=MatchSettings(exhaustive=exhaustive))
    took = time.perf_counter() - t0
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"seconds": took, "peak_mb": grew / 1024, "points": m.points.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--points", type=int, nargs="+", default=[1, 10, 100, 1000, 10000])
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, w, h, n, search = args.child
        print(json.dumps(child(name, int(w), int(h), int(n), search == "exhaustive")))
        return
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, model {args.model}")
    print(
        f"{'image':>10} {'points':>7} | {'exhaustive s':>12} {'ms/point':>9} {'peak +MB':>9} | "
        f"{'coarse s':>9} {'ms/point':>9} {'peak +MB':>9} {'speed-up':>8} {'same 1px':>8} {'@0.01':>6}"
    )
    for w, h in SIZES:
        for n in args.points:
            r = {}
            for search in ("exhaustive", "coarse"):
                cmd = [sys.executable, __file__, "--child", args.model, str(w), str(h), str(n), search]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
                r[search] = json.loads(out)
            e, c = r["exhaustive"], r["coarse"]
            d = (torch.tensor(e["points"]) - torch.tensor(c["points"])).norm(dim=1)
            same, near = d.le(1.0).float().mean(), d.le(0.01 * max(w, h)).float().mean()
            print(
                f"{w}x{h:>4} {n:7d} | {e['seconds']:12.2f} {1000 * e['seconds'] / n:9.2f} {e['peak_mb']:9.0f} | "
                f"{c['seconds']:9.2f} {1000 * c['seconds'] / n:9.2f} {c['peak_mb']:9.0f} "
                f"{e['seconds'] / c['seconds']:8.1f} {100 * same:7.1f}% {100 * near:5.1f}%"
            )


if __name__ == "__main__":
    main()
