"""extract_features (merged LoRA adapter, preprocessing included) vs the bare timm backbone forward.

Same architecture (ViT-B/14-reg, random init: weights do not change speed), same input size and batch, same
process; runs are interleaved and the median of each is compared, so machine noise hits both alike.
Peak memory (RSS, sampled during one call after a warm-up) is measured in a fresh child process per method.

    python benchmarks/bench_extract.py [--size 434] [--batch 4] [--rounds 5]

Prints ``ratio = bare_time / ours_time`` (target >= 0.98: no overhead from distilldift's wrapper).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch


def build(size: int, batch: int, which: tuple[str, ...] = ("ours", "bare")):
    import timm

    from distilldift.weights import create_model

    torch.manual_seed(0)
    ours = create_model("distilldift_us").merge_adapter() if "ours" in which else None  # ViT-B/14-reg + q/v LoRA
    bare = None
    if "bare" in which:
        bare = timm.create_model("vit_base_patch14_reg4_dinov2", dynamic_img_size=True, num_classes=0).eval()
    images = torch.rand(batch, 3, 480, 640)  # raw [0, 1] images: ours resizes + normalises them
    x = torch.randn(batch, 3, size, size)  # the bare forward gets a ready input
    return ours, bare, images, x


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_during(fn) -> tuple[float, float]:
    """(RSS before, peak RSS while fn runs), sampled every 2 ms (Linux /proc)."""
    before, peak, done = rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return before, max(peak[0], rss_mib())


def run_ours(ours, images, size):
    from distilldift import extract_features

    return extract_features(images, ours, size=size, batch_size=images.shape[0]).features


@torch.inference_mode()
def run_bare(bare, x):
    return bare.forward_features(x)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def child(method: str, size: int, batch: int) -> None:
    ours, bare, images, x = build(size, batch, (method,))
    fn = (lambda: run_ours(ours, images, size)) if method == "ours" else (lambda: run_bare(bare, x))
    fn()  # warm-up: allocator pools, lazy init
    before, peak = peak_during(fn)
    print(json.dumps({"peak_mib": peak, "forward_mib": peak - before}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=434)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", choices=["ours", "bare"])
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.size, a.batch)
    ours, bare, images, x = build(a.size, a.batch)
    run_ours(ours, images, a.size), run_bare(bare, x)  # warm-up
    t_ours, t_bare = [], []
    for _ in range(a.rounds):
        t_bare.append(timed(lambda: run_bare(bare, x)))
        t_ours.append(timed(lambda: run_ours(ours, images, a.size)))
    m_ours, m_bare = statistics.median(t_ours), statistics.median(t_bare)
    mem = {}
    for method in ("ours", "bare"):
        cmd = [sys.executable, __file__, "--child", method, "--size", str(a.size), "--batch", str(a.batch)]
        mem[method] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"ViT-B/14-reg, {a.size}x{a.size}, batch {a.batch}, {a.rounds} interleaved rounds (median)")
    print(f"  bare timm forward_features : {m_bare * 1000:8.1f} ms/batch  ({a.batch / m_bare:.2f} img/s)")
    print(f"  distilldift.extract_features: {m_ours * 1000:8.1f} ms/batch  ({a.batch / m_ours:.2f} img/s)")
    o, b = mem["ours"], mem["bare"]
    print(f"  peak RSS during a call: ours {o['peak_mib']:.0f} MiB (+{o['forward_mib']:.0f} above the process before), "
          f"bare {b['peak_mib']:.0f} MiB (+{b['forward_mib']:.0f})")  # fmt: skip
    print(f"ratio = bare_time / ours_time = {m_bare / m_ours:.3f}  (target >= 0.98)")


if __name__ == "__main__":
    main()
