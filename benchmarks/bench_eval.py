"""Evaluation throughput: features computed once per image and reused across its pairs, vs recomputed per pair.

Same process, same pairs (PF-WILLOW: 90 pairs per class among 10 images), interleaved rounds, medians.

    python benchmarks/bench_eval.py [--root ../shared/data/pf-willow] [--model lite] [--pairs 90] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
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
    ap.add_argument("--pairs", type=int, default=90)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    data, model = read_dataset("pf-willow", a.root), load_model(a.model)

    def run(reuse: bool) -> float:
        t = time.perf_counter()
        evaluate(data, model, limit=a.pairs, reuse_features=reuse, progress=False)
        return a.pairs / (time.perf_counter() - t)

    run(True)  # warm-up
    reuse, again = [], []
    for _ in range(a.rounds):
        again.append(run(False))
        reuse.append(run(True))
    r, g = statistics.median(reuse), statistics.median(again)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"PF-WILLOW, first {a.pairs} pairs, model {a.model}, {a.rounds} rounds")
    print(f"  features recomputed per pair : {g:6.1f} pairs/s")
    print(f"  features reused per image    : {r:6.1f} pairs/s")
    print(f"ratio = reuse / recompute = {r / g:.2f}")


if __name__ == "__main__":
    main()
