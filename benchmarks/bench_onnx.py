"""ONNX Runtime and torch.compile vs PyTorch eager for the feature extractor, same process, this machine.

    python benchmarks/bench_onnx.py [--rounds 5] [--threads N]

Models: ``lite`` (real weights) at 448 x 448 (its size multiple is 32) and the paper's ViT-B/14-reg + LoRA (random
init, merged) at 434 x 434; batch 1, float32, CPU. Each model is exported once (dynamic shapes) with
``export_onnx``; the three ways then run interleaved, ``--rounds`` rounds of a few calls each; medians of the
per-call time and their ratios against eager.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, x, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - t0) / calls


def main() -> None:
    import onnxruntime as ort

    from distilldift import load_model
    from distilldift.export.onnx import export_onnx
    from distilldift.weights import create_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    torch.manual_seed(0)
    vitb = create_model("distilldift_us")
    vitb.merge_adapter()
    for name, model, size in (("lite", load_model("lite"), 448), ("ViT-B/14-reg", vitb, 434)):
        model.eval()
        path = export_onnx(model, work / "model.onnx", size=(size, size))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        compiled = torch.compile(model)
        x = torch.randn(1, 3, size, size)
        ways = {
            "eager": model,
            "onnxruntime": lambda t, s=session: s.run(["features"], {"images": t.numpy()}),
            "torch.compile": compiled,
        }
        times = {k: [] for k in ways}
        with torch.inference_mode():
            for fn in ways.values():  # warm-up, compilation
                fn(x)
                fn(x)
            for _ in range(args.rounds):
                for k, fn in ways.items():
                    times[k].append(timed(fn, x, 3))
        eager = statistics.median(times["eager"])
        line = ", ".join(
            f"{k} {1000 * statistics.median(v):.0f} ms (x{eager / statistics.median(v):.2f})" for k, v in times.items()
        )
        print(f"{name} at {size}x{size}, batch 1: {line}")


if __name__ == "__main__":
    main()
