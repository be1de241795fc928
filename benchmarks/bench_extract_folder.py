"""``distilldift extract DIR --out FOLDER`` (extract_to_folder) vs a loop of ``extract_features`` calls, images/s.

    python benchmarks/bench_extract_folder.py [--model lite] [--images 64] [--rounds 3] [--device cpu]

The images: JPEG photos of 640x480 (crops of scikit-image's photos) in a temporary folder, decoded from disk by
every method. The baseline is what a user writes without the command: ``extract_features(path, model)`` per
image, then ``save_features`` of them all into one file. The folder methods: the defaults (on CPU: batch 1, 2
decoding processes, two forward passes at once on half of the cores each; on a GPU: batch 16, up to 8 decoding
processes, one pass at a time), then one setting changed at a time; shards of 128 images. Methods run
interleaved, ``--rounds`` rounds, each into a new output; median images/s and the ratio against the loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def write_photos(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from PIL import Image
    from skimage import data

    sources = [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = sources[i % len(sources)]
        w, h = img.size
        x, y = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = img.crop((x, y, x + 3 * w // 4, y + 3 * h // 4)).resize((640, 480))
        paths.append(folder / f"photo{i:04d}.jpg")
        crop.save(paths[-1], quality=90)
    return paths


def main() -> None:
    from distilldift import extract_features, load_model
    from distilldift.features import extract_to_folder, save_features
    from distilldift.features.extract import FeatureMap

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = load_model(args.model, device=args.device)
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    (work / "photos").mkdir()
    paths = write_photos(work / "photos", args.images)
    counter = iter(range(10**6))

    def loop() -> None:
        maps = []
        for p in paths:
            f = extract_features(p, model)
            maps.append(FeatureMap(f.features[0], f.geometry[0]))
        save_features(maps, work / f"loop{next(counter)}.safetensors", names=[p.name for p in paths])

    def folder(**kw):
        return lambda: extract_to_folder(work / "photos", work / f"out{next(counter)}", model, **kw)

    methods = {
        "extract_features loop": loop,
        "extract DIR (defaults)": folder(),
        "no background decoding": folder(decoders=0),
        "1 forward pass at a time": folder(workers=1),
        "batch 4": folder(batch_size=4),
        "batch 8, 1 pass at a time": folder(batch_size=8, workers=1),
    }
    for fn in methods.values():  # warm-up (allocator, first-call costs)
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(
        f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, device {args.device}"
    )
    print(f"{args.model} at its input size, {args.images} JPEGs 640x480, median of {args.rounds} rounds")
    base = statistics.median(times["extract_features loop"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:30s} {args.images / t:7.2f} img/s   x{base / t:.2f} vs the loop")


if __name__ == "__main__":
    main()
