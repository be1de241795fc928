"""The one-command GPU benchmark works before a GPU is there: its CPU run (tiny ViT) is green."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_cpu():
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for precision in ("fp32", "bf16", "bf16+compile"):
        row = re.search(rf"^{re.escape(precision)} +([\d.]+) +([\d.]+) +(\d+) +n/a$", out, re.M)
        assert row and float(row[1]) > 0 and float(row[2]) > 0, out
    assert re.search(r"FLOPs per image: [\d.]+ GFLOP", out)
    assert re.search(r"track_video at 112x112, 64 points, fp32: [\d.]+ frames/s", out)
    assert "peak memory:" in out
