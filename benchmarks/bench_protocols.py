"""PCK on PF-WILLOW under distilldift's default protocol and the authors' (``protocol="paper"``), step by step.

PF-WILLOW's program in the paper is the authors' ``train/eval.py``: a stretched square input, the best pixel of the
target's upsampled similarity for the keypoint rounded to a pixel, float16 coordinates. distilldift's default keeps
the aspect ratio (for ``lite``), samples the query at the exact keypoint and localises with a window soft-argmax.
Each row changes one thing, so the difference is attributed:

    python benchmarks/bench_protocols.py [--root ../shared/data/pf-willow] [--model lite] [--limit N]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pf-willow"


def main() -> None:
    from distilldift import load_model
    from distilldift.datasets import read_dataset
    from distilldift.evaluation.pck import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(DEFAULT_ROOT))
    ap.add_argument("--model", default="lite")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    data, model = read_dataset("pf-willow", a.root), load_model(a.model)
    v, paper = model.variant, model.variant.paper_protocol
    size = paper.input_size or v.input_size
    rows = [
        ("default (ours)", dict()),
        ("stretched square input", dict(resize="stretch", size=size)),
        ("+ best pixel (nn)", dict(resize="stretch", size=size, method="nn")),
        ("paper: train/eval.py (PF-WILLOW's program)", dict(protocol="paper")),
        (
            "paper: eval/eval.py (SPair's program) on PF-WILLOW",
            dict(protocol="paper", dataset=dataclasses.replace(data, paper_program="eval/eval.py")),
        ),
    ]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}")
    print(f"PF-WILLOW ({len(data) if a.limit is None else a.limit} pairs), model {a.model}; PCK per point, percent")
    print(f"{'setting':52s} {'bbox@0.1':>9s} {'bbox@0.05':>9s} {'img@0.1':>8s} {'s':>6s}")
    for name, kw in rows:
        t = time.perf_counter()
        r = evaluate(kw.pop("dataset", data), model, limit=a.limit, progress=False, **kw)
        b, i = r.per_point["bbox"], r.per_point["img"]
        print(f"{name:52s} {100 * b[0.1]:9.2f} {100 * b[0.05]:9.2f} {100 * i[0.1]:8.2f} {time.perf_counter() - t:6.1f}")


if __name__ == "__main__":
    main()
