"""One-command GPU benchmark of the paper's student: throughput, MFU, tracking speed, peak memory.

    python benchmarks/gpu.py                         # on the GPU: ViT-B/14-reg + LoRA merged, 434 x 434, < 5 min
    python benchmarks/gpu.py --device cpu --quick    # a tiny ViT at 112 px: checks the script itself (a test runs it)

Prints one table: images/s at batch 1 and at the best batch (of 8 ... 128) for fp32, bf16 autocast and bf16 +
``torch.compile``; MFU = achieved FLOP/s over the device's peak (FLOPs per image counted with
``torch.utils.flop_counter`` as in ``bench_flops.py``; peak from ``--peak-tflops`` or a table of known GPUs);
``track_video`` frames/s at 434 x 434 (64 points, a synthetic panning clip); peak memory. Random-init weights,
nothing downloaded.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

# dense bf16 / fp32 (TF32 where the GPU has it) peaks in TFLOP/s, from the vendors' data sheets
PEAKS = {
    "H200": (989.0, 494.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "A10": (125.0, 62.5),
    "L4": (121.0, 60.0),
    "4090": (165.0, 82.6),
}


def build(quick: bool, device: str):
    from distilldift.weights import create_model

    torch.manual_seed(0)
    if quick:
        model = create_model("dinov2_b14_reg", embed_dim=64, depth=2, num_heads=2)
    else:
        model = create_model("distilldift_us")  # the paper's student architecture, random init
    model.merge_adapter()
    return model.to(device).eval()


def flops_per_image(model, size: int, device: str) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(fn, model, batch: int, size: int, device: str, iters: int, precision: str) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    model.set_precision("fp32" if precision == "fp32" else "bf16")  # the library's bf16 autocast (load_model's)
    with torch.inference_mode():
        for _ in range(2):  # warm-up (and compilation)
            fn(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(x)
        sync(device)
    return batch * iters / (time.perf_counter() - t0)


def peak_memory(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS (process)"


def track_fps(model, size: int, device: str, frames: int) -> float:
    from distilldift import track_video

    g = torch.Generator().manual_seed(0)
    texture = torch.rand(3, size, size + 4 * frames, generator=g)
    video = torch.stack([texture[:, :, 4 * t : 4 * t + size] for t in range(frames)])  # panning 4 px per frame
    points = torch.rand(64, 2, generator=g) * (size - 1)
    track_video(video[:2], points, model=model, size=size, progress=False)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    track_video(video, points, model=model, size=size, progress=False)
    sync(device)
    return frames / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="a tiny ViT at 112 px, few iterations (checks the script)")
    ap.add_argument("--size", type=int, default=None, help="input size [default: 434; --quick: 112]")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, for MFU")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = ap.parse_args()
    device, quick = args.device, args.quick
    size = args.size or (112 if quick else 434)
    iters = 3 if quick else 20
    batches = [2, 4] if quick else [8, 16, 32, 64, 128]
    model = build(quick, device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "CPU"
    peaks = next((v for k, v in PEAKS.items() if k in name), None)
    if args.peak_tflops:
        peaks = (args.peak_tflops, args.peak_tflops / 2)
    flops = flops_per_image(model, size, device)
    print(f"device: {name}; model: {'tiny ViT (quick)' if quick else 'ViT-B/14-reg + LoRA (merged)'} at {size}x{size}")
    print(f"FLOPs per image: {flops / 1e9:.4g} GFLOP; torch {torch.__version__}")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows = []
    compiled = None
    for precision in ("fp32", "bf16", "bf16+compile"):
        if precision == "bf16+compile":
            if args.no_compile:
                continue
            compiled = torch.compile(model, dynamic=False)
        fn = compiled if precision == "bf16+compile" else model
        one = throughput(fn, model, 1, size, device, iters, precision)
        best, best_b = 0.0, 0
        for b in batches:
            try:
                ips = throughput(fn, model, b, size, device, max(2, iters // 2), precision)
            except torch.OutOfMemoryError:
                break
            if ips > best:
                best, best_b = ips, b
        peak = peaks[0] if peaks and precision != "fp32" else (peaks[1] if peaks else None)
        mfu = f"{100 * best * flops / (peak * 1e12):.1f} %" if peak else "n/a"
        rows.append((precision, one, best, best_b, mfu))
    model.set_precision("bf16" if device.startswith("cuda") else "fp32")  # what load_model picks there
    tfps = track_fps(model, size, device, 8 if quick else 64)
    print(f"{'precision':14} {'img/s b=1':>10} {'img/s best':>11} {'batch':>6} {'MFU':>8}")
    for precision, one, best, b, mfu in rows:
        print(f"{precision:14} {one:10.1f} {best:11.1f} {b:6d} {mfu:>8}")
    print(f"track_video at {size}x{size}, 64 points, {model.precision}: {tfps:.1f} frames/s")
    print(f"peak memory: {peak_memory(device)}")


if __name__ == "__main__":
    main()
