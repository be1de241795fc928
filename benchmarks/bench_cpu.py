"""CPU inference paths vs fp32 eager, same process: eager and torch.compile'd fp32 / bf16 / int8, ONNX Runtime.

    python benchmarks/bench_cpu.py [--rounds 5] [--pairs 900] [--threads N] [--tiny] [--model vit|lite]

Models: the paper's ViT-B/14-reg + LoRA (random init, merged) at 434 x 434, and ``lite`` (real weights) at its input
size, square; batch 1, each model in a process of its own (after the ViT-B's ways, ``lite`` ran ~20 % slower on every
path in the same process); the compiled ways (``compile_for_inference``: inductor with frozen weights, batch norms
folded) get a PCK too, each new image size of the pairs compiling once. Each way runs interleaved with the others,
``--rounds`` rounds of about half a second each; medians of the per-call times (a way that follows another meets the
other's threads still spinning for a moment: the median is the steady state), their ratio against eager fp32, the first
call's time (the compiled ways' compile time), and the mean per-pixel cosine of the features against fp32 on one random
input. For ``lite`` also PF-WILLOW PCK_bbox@0.1 over ``--pairs`` pairs (``../shared/data/pf-willow``; all 900 by
default). The first lines name the CPU and what it does natively: another CPU gives other ratios, so record them with
the numbers. ``--tiny`` swaps the ViT-B for a one-block ViT at 56 px and evaluates 10 pairs (the test's smoke run). The
last line says what ``precision="auto"`` picks here.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

PF_WILLOW = Path(__file__).resolve().parents[2] / "shared" / "data" / "pf-willow"
WAYS = (
    "eager fp32",
    "eager bf16",
    "eager int8",
    "compiled bf16",
    "compiled int8",
    "onnxruntime fp32",
    "onnxruntime int8",
)


def _ways(model, folder: Path) -> dict:
    """Each way's model, built from ``model`` (left in fp32)."""
    import copy

    from distilldift import load_model
    from distilldift.export.onnx import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    out = {"eager fp32": model.set_precision("fp32")}
    out["eager bf16"] = copy.deepcopy(model).set_precision("bf16")
    out["eager int8"] = copy.deepcopy(model).set_precision("int8")
    for precision in ("bf16", "int8"):  # what load_model(..., compile=True) does
        compiled = copy.deepcopy(model).set_precision(precision)
        compiled.compile_for_inference()
        out[f"compiled {precision}"] = compiled
    out["onnxruntime fp32"] = load_model(export_onnx(model, folder / "fp32.onnx"))
    out["onnxruntime int8"] = load_model(export_onnx(model, folder / "int8.onnx", quantize="int8"))
    return out


def _timings(ways: dict, x: torch.Tensor, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per call (each round runs every way for about half a second) and each way's first call in s (the
    compile time of the compiled ways)."""
    times: dict[str, list[float]] = {k: [] for k in ways}
    first, calls = {}, {}
    with torch.inference_mode():
        for name, m in ways.items():
            t0 = time.perf_counter()
            m(x)  # warm-up: first-call allocations, ONNX Runtime's graph setup, torch.compile
            first[name] = time.perf_counter() - t0
            t0 = time.perf_counter()
            m(x)
            calls[name] = max(1, int(0.5 / (time.perf_counter() - t0)))
        for _ in range(rounds):
            for name, m in ways.items():
                for _ in range(calls[name]):
                    t0 = time.perf_counter()
                    m(x)
                    times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}, first


def _pck(model, pairs: int) -> float | None:
    from distilldift import evaluate
    from distilldift.datasets import read_pf_willow

    if not PF_WILLOW.exists():
        return None
    return evaluate(read_pf_willow(PF_WILLOW), model, limit=pairs).per_point["bbox"][0.1]


def cpu_name() -> str:
    """The CPU's model name, for the record (what it can do is asked of torch, not read here)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bench(name: str, args: argparse.Namespace) -> None:
    """One model's rows (``vit`` or ``lite``), in this process."""
    from distilldift import load_model
    from distilldift.models.precision import choose_precision, model_kind
    from distilldift.weights import create_model

    torch.manual_seed(0)
    if name == "vit":
        tiny = dict(embed_dim=32, depth=1, num_heads=2) if args.tiny else {}
        model, size = create_model("distilldift_us", **tiny), 56 if args.tiny else 434
        model.merge_adapter()
    else:
        model = load_model("lite", precision="fp32")
        size = model.variant.input_size
    ways = _ways(model.eval(), Path(tempfile.mkdtemp(prefix="bench-cpu-")))
    x = torch.randn(1, 3, size, size)
    ms, first = _timings(ways, x, args.rounds)
    with torch.inference_mode():
        ref = ways["eager fp32"](x)
        cos = {k: float((m(x) * ref).sum(1).mean()) for k, m in ways.items()}
    for way in WAYS:
        pck = _pck(ways[way], 10 if args.tiny else args.pairs) if name == "lite" else None
        shown = "n/a" if pck is None else f"{pck:.3f}"
        print(
            f"{name:5s} {size:4d} {way:17s} {ms[way]:9.1f} ms  x{ms['eager fp32'] / ms[way]:.2f}  "
            f"cos {cos[way]:.4f}  pck_bbox@0.1 {shown}  first call {first[way]:.1f} s",
            flush=True,
        )
    auto = choose_precision("auto", kind=model_kind(model.timm_model))
    print(f"{name}: precision='auto' here -> {auto.precision} ({auto.reason})", flush=True)


def main() -> None:
    import subprocess
    import sys

    import onnxruntime as ort

    from distilldift.models.precision import cpu_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=900)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--model", choices=("vit", "lite"), help="only this model, in this process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        _bench(args.model, args)
        return
    print(f"CPU: {cpu_name()}, {args.threads} threads")
    print(f"native: {cpu_features().describe()}; torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}", flush=True)
    for name in ("vit", "lite"):  # each model in a fresh process: one model's ways slowed the next one's
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--model", name], check=True)


if __name__ == "__main__":
    main()
