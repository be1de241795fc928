"""Distillation step time with the teacher cache vs running the teachers on the fly, and FLOPs per image.

Same process, same student, same pairs; interleaved rounds, medians. FLOPs are counted with torch's
``FlopCounterMode`` on the ``meta`` device (weights do not change the count).

    python benchmarks/bench_train.py [--teacher lite] [--student lite] [--size 224] [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops(variant: str, size: int) -> float:
    """Forward FLOPs of one ``size`` x ``size`` image, counted on the ``meta`` device (CPU's fused attention kernel
    has no FLOP formula; on ``meta`` attention decomposes into counted matmuls)."""
    from distilldift.weights import create_model

    with torch.device("meta"):
        model = create_model(variant).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def main() -> None:
    from distilldift import load_model
    from distilldift.training.cache import TeacherCache, build_teacher_cache
    from distilldift.training.losses import distillation_loss
    from distilldift.training.teachers import ModelTeacher
    from distilldift.weights import create_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="lite")
    ap.add_argument("--student", default="lite")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    teacher = ModelTeacher(load_model(a.teacher))
    student = create_model(a.student).train().requires_grad_(True)
    grid = student.geometry((a.size, a.size), a.size).grid_size
    images = torch.rand(2 * a.batch, 3, a.size, a.size)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        ids = [str(i) for i in range(len(images))]
        build_teacher_cache(teacher, ids, tmp, grid=grid, image_size=(a.size, a.size), loader=lambda s: images[int(s)])
        cache = TeacherCache(tmp)

        def step(cached: bool) -> float:
            t = time.perf_counter()
            tf = torch.stack([cache[i] for i in range(len(images))]) if cached else teacher(images, grid)
            v = student.variant
            x = (images - torch.tensor(v.mean).view(3, 1, 1)) / torch.tensor(v.std).view(3, 1, 1)
            s = student(x)
            loss = distillation_loss(s[: a.batch], s[a.batch :], tf[: a.batch], tf[a.batch :], 0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return time.perf_counter() - t

        step(True), step(False)
        cached, live = [], []
        for _ in range(a.rounds):
            live.append(step(False))
            cached.append(step(True))
    c, lv = statistics.median(cached), statistics.median(live)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"student {a.student}, teacher {a.teacher}, {a.size} px, {a.batch} pairs per step, {a.rounds} rounds")
    print(f"  step with teachers on the fly: {lv * 1000:7.1f} ms")
    print(f"  step with the teacher cache  : {c * 1000:7.1f} ms")
    print(f"ratio = on-the-fly / cached = {lv / c:.2f}")
    print("FLOPs per image (forward; the paper's teachers and student: benchmarks/bench_flops.py):")
    for name, variant in (("student " + a.student, a.student), ("teacher " + a.teacher, a.teacher)):
        print(f"  {name:40s} {flops(variant, a.size) / 1e12:8.4f} TFLOP")


if __name__ == "__main__":
    main()
