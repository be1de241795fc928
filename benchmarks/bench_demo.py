"""Latency of a click in ``distilldift demo`` with ``lite`` on this machine: features cached vs computed.

    python benchmarks/bench_demo.py [--model lite] [--clicks 8] [--browser] [--screenshot docs/demo.jpg]

1. The work behind a click (``DemoSession.click``: match every clicked point, the newest point's heat map, the
   overlay): the first click (features of source and target computed) vs later clicks (features reused); prints
   medians and their ratio. 2. With ``--browser``: the same clicks through the page in headless Chromium
   (Playwright), timed from the mouse click to the updated status line (Gradio's round trip included); with
   ``--screenshot`` the page is saved there (the README's picture).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

POINTS = [[220, 120], [330, 200], [100, 250], [300, 60], [150, 90], [380, 150], [60, 60], [250, 270]]


def main() -> None:
    from distilldift import load_model
    from distilldift.demo.session import DemoSession, DemoSettings
    from distilldift.samples import write_sample_photos

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--clicks", type=int, default=8)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    src, tgt = write_sample_photos(work / "photos")
    model = load_model(args.model)
    settings = DemoSettings(model=args.model)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, model {args.model}")

    first, cached = [], []
    for _ in range(3):  # fresh sessions: the first click computes the features, the next ones reuse them
        session = DemoSession(loader=lambda name: model, workdir=work / "session")
        t0 = time.perf_counter()
        session.click(src, [tgt], POINTS[:1], settings)
        first.append(time.perf_counter() - t0)
        for k in range(2, args.clicks + 1):
            t0 = time.perf_counter()
            session.click(src, [tgt], POINTS[:k], settings)
            cached.append(time.perf_counter() - t0)
    a, b = statistics.median(first), statistics.median(cached)
    print(f"click, features computed: {1000 * a:.0f} ms; features cached: {1000 * b:.0f} ms (1-{args.clicks} points)")
    print(f"ratio computed / cached: {a / b:.1f}")
    if args.browser:
        print(f"through the page (headless Chromium): {_browser(args, src, tgt)}")
    shutil.rmtree(work, ignore_errors=True)


def _browser(args, src: Path, tgt: Path) -> str:
    from playwright.sync_api import sync_playwright

    from distilldift.demo.app import launch

    demo = launch(args.model, port=None, block=False)
    times = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(demo.local_url)
            page.locator("#source input[type=file]").set_input_files(str(src))
            _wait(page, "click a point")
            page.locator("#targets input[type=file]").set_input_files(str(tgt))
            _wait(page, "0 point(s)", timeout=120_000)  # the model loads and the features are computed here
            img = page.locator("#source img")
            for k, (x, y) in enumerate(POINTS[: args.clicks], start=1):
                box = img.bounding_box()
                w, h = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
                t0 = time.perf_counter()
                page.mouse.click(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h)
                _wait(page, f"{k} point(s)")
                times.append(time.perf_counter() - t0)
            if args.screenshot:
                page.locator("#source input[type=file]").set_input_files(str(src))
                _wait(page, "click a point")
                for k, (x, y) in enumerate(POINTS[:2], start=1):
                    box = img.bounding_box()
                    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h)
                    _wait(page, f"{k} point(s)")
                page.screenshot(path=str(args.screenshot), full_page=True)
            browser.close()
    finally:
        demo.close()
    return f"median {1000 * statistics.median(times):.0f} ms, max {1000 * max(times):.0f} ms over {len(times)} clicks"


def _wait(page, text: str, timeout: float = 60_000) -> None:
    page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text, timeout=timeout)


if __name__ == "__main__":
    main()
