"""track_video throughput and memory.

1. Frames per second of ``track_video`` (batched, decoding overlapped with the model, two forward passes at once
   on CPU, coarse-to-fine matching)
   vs calling ``extract_features`` frame by frame in a Python loop over the same decoded video, same process,
   interleaved rounds, medians. Target: ratio >= 1.5 on CPU.
2. Peak memory: tracking a video vs the same video 10x longer (both written with PyAV), each in a fresh child
   process; peak RSS above the process after loading the model. Target: no measurable growth.

    python benchmarks/bench_track.py [--video ../shared/data/videos/apple.mp4] [--model lite] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from distilldift import TrackSettings

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "apple.mp4"
POINTS = [[455, 260], [420, 220], [500, 300], [300, 500]]


def fps_loop(video, model) -> float:
    from distilldift import extract_features
    from distilldift.tracking.track import iter_frames

    t, n = time.perf_counter(), 0
    for frame in iter_frames(video):
        extract_features(frame, model)
        n += 1
    return n / (time.perf_counter() - t)


def fps_track(video, model, batch_size) -> float:
    from distilldift import track_video

    t = time.perf_counter()
    tracks = track_video(video, POINTS, model=model, progress=False, settings=TrackSettings(batch_size=batch_size))
    return len(tracks) / (time.perf_counter() - t)


def write_video(src, dst, repeats: int, size=(640, 360)) -> int:
    """Re-encode ``src`` at ``size``, ``repeats`` times over (H.264). Returns the frame count."""
    import av
    from PIL import Image

    from distilldift.tracking.track import iter_frames

    frames = [Image.fromarray((f.permute(1, 2, 0) * 255).byte().numpy()).resize(size) for f in iter_frames(src)]
    with av.open(str(dst), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(repeats):
            for img in frames:
                for p in s.encode(av.VideoFrame.from_image(img)):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return len(frames) * repeats


def child(video: str, model_name: str) -> None:
    from distilldift import load_model, track_video

    model = load_model(model_name)
    track_video(video, POINTS[:2], model=model, progress=False)  # warm-up on the same video kind
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = track_video(video, [[300, 150], [200, 100]], model=model, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"frames": len(t), "peak_mib": peak / 1024, "growth_mib": (peak - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", default=str(DEFAULT_VIDEO))
    ap.add_argument("--model", default="lite")
    ap.add_argument("--batch-size", type=int, default=None, help="default: track_video's")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("VIDEO", "MODEL"))
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    from distilldift import load_model

    model = load_model(a.model)
    fps_track(a.video, model, a.batch_size), fps_loop(a.video, model)  # warm-up
    ours, loop = [], []
    for _ in range(a.rounds):
        loop.append(fps_loop(a.video, model))
        ours.append(fps_track(a.video, model, a.batch_size))
    m_ours, m_loop = statistics.median(ours), statistics.median(loop)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"video {Path(a.video).name}, model {a.model}, {len(POINTS)} points, batch {a.batch_size or 'default'}, "
          f"{a.rounds} rounds")  # fmt: skip
    print(f"  extract_features loop : {m_loop:6.2f} frames/s (features only)")
    print(f"  track_video           : {m_ours:6.2f} frames/s (features + matching + visibility)")
    print(f"ratio = track_video / loop = {m_ours / m_loop:.2f}  (target >= 1.5)")

    with tempfile.TemporaryDirectory() as tmp:
        short, long = Path(tmp) / "short.mp4", Path(tmp) / "long.mp4"
        n_short, n_long = write_video(a.video, short, 1), write_video(a.video, long, 10)
        mem = {}
        for name, path in (("short", short), ("long", long)):
            cmd = [sys.executable, __file__, "--child", str(path), a.model]
            mem[name] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    s, lg = mem["short"], mem["long"]
    print(f"memory: {n_short} frames: peak {s['peak_mib']:.0f} MiB (+{s['growth_mib']:.0f} while tracking); "
          f"{n_long} frames: peak {lg['peak_mib']:.0f} MiB (+{lg['growth_mib']:.0f})")  # fmt: skip
    print(f"peak ratio long / short = {lg['peak_mib'] / s['peak_mib']:.3f}  (target: ~1.0)")


if __name__ == "__main__":
    main()
