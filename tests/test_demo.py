"""The demo: its work (DemoSession) against the library, the heat map drawing, and the page in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from distilldift import MatchSettings, load_image, match_points
from distilldift.demo.session import DemoSession, DemoSettings
from distilldift.errors import ImageLoadError, InvalidInputError, ShapeError
from distilldift.matching.points import match_record, similarity_heatmaps
from distilldift.samples import write_sample_photos
from distilldift.viz import draw_heatmap, draw_heatmap_rows, heat_colours, palette
from distilldift.weights import save_pretrained

POINTS = [[220.0, 120.0], [330.0, 200.0], [100.0, 250.0]]  # an eye corner, the nose side, the chest of the cat


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_sample_photos(tmp_path_factory.mktemp("samples"))


@pytest.fixture
def session(lite_model, tmp_path):
    return DemoSession(loader=lambda name: lite_model, workdir=tmp_path / "work")


@pytest.mark.parametrize("pose_align", [False, True])
def test_clicks_equal_match_points_and_reuse_features(session, photos, lite_model, pose_align):
    src, tgt = photos
    settings = DemoSettings(model="lite", pose_align=pose_align)
    first = session.click(src, [tgt, src], POINTS[:1], settings)
    # source (+ its mirror) and the target computed; the source again as the second target: from the cache
    assert session.misses == (3 if pose_align else 2) and session.hits == 1
    again = session.click(src, [tgt, src], POINTS, settings)  # more clicks: nothing recomputed
    assert session.misses == (3 if pose_align else 2)
    flip = "auto" if pose_align else False
    for result, target in zip(again, (tgt, src), strict=True):
        ref = match_points(src, target, POINTS, model=lite_model, settings=MatchSettings(flip=flip))
        assert torch.allclose(result.matches.points, ref.points, atol=1e-4)
        assert torch.equal(result.matches.mutual, ref.mutual) and result.matches.flipped == ref.flipped
        assert result.overlay.size == Image.open(target).size
    assert torch.allclose(first[0].matches.points, again[0].matches.points[:1], atol=1e-4)
    # the source matched with itself: every click lands on itself, up to the soft-argmax's pull within its window
    # (measured 1.6 - 2.3 px; a feature cell is 22 px here)
    assert (again[1].matches.points - torch.tensor(POINTS)).norm(dim=1).max() < 3.0
    assert re.fullmatch(r"target 1: \(\d+\.\d, \d+\.\d\) score 0\.\d{3}, (not )?mutual", again[0].caption())


def test_heat_map_is_the_similarity_the_match_is_found_on(session, photos, lite_model):
    src, tgt = photos
    [r] = session.click(src, [tgt], POINTS[:1], DemoSettings(model="lite", method="nn"))
    misses = session.misses
    fmap_src = session.feature_map(load_image(src), DemoSettings(model="lite", method="nn"))
    fmap_tgt = session.feature_map(load_image(tgt), DemoSettings(model="lite", method="nn"))
    assert session.misses == misses  # the click's own maps
    heat = similarity_heatmaps(fmap_src, fmap_tgt, POINTS[:1])[0]
    y, x = divmod(int(heat.argmax()), heat.shape[1])
    assert [float(x), float(y)] == r.matches.points[0].tolist()  # nn: the best pixel of the heat map
    assert heat.max() == pytest.approx(float(r.matches.scores[0]), abs=1e-5)
    expected = draw_heatmap(
        tgt, heat, point=r.matches.points[0], mutual=bool(r.matches.mutual[0]), colour=palette(1)[0]
    )
    assert np.array_equal(np.asarray(r.overlay), np.asarray(expected))


def test_json_download_is_the_cli_format(session, photos, tmp_path):
    src, tgt = photos
    settings = DemoSettings(model="lite")
    results = session.click(src, [tgt], POINTS, settings, names=["cat_moved.png"])
    path = session.save_json(results, "cat.png", Image.open(src).size, settings)
    assert path.parent == session.workdir
    record = json.loads(path.read_text())
    expected = match_record(
        results[0].matches,
        image1="cat.png",
        image2="cat_moved.png",
        image1_size=Image.open(src).size,
        image2_size=Image.open(tgt).size,
        model="lite",
        method="soft",
    )
    assert record == json.loads(json.dumps(expected))
    two = session.save_json(results * 2, "cat.png", Image.open(src).size, settings)
    assert isinstance(json.loads(two.read_text()), list)


def _click_on_a_bad_image(session, src, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    session.click(src, [bad], POINTS[:1], DemoSettings())


@pytest.mark.parametrize(
    "act, error, message",
    [
        (_click_on_a_bad_image, ImageLoadError, "bad.png"),
        (lambda s, src, tmp: s.click(src, [src], [[5000.0, 10.0]], DemoSettings()), InvalidInputError, "outside"),
        (
            lambda s, src, tmp: s.track(tmp / "clip.mp4", [], DemoSettings()),
            InvalidInputError,
            "click at least one point",
        ),
    ],
    ids=["bad target image", "click outside", "track without points"],
)
def test_bad_inputs_give_messages(session, photos, tmp_path, act, error, message):
    with pytest.raises(error, match=message):
        act(session, photos[0], tmp_path)


def test_video_tab_tracks_into_the_work_folder(session, tmp_path):
    pytest.importorskip("av")
    frames = (torch.rand(1, 3, 48, 64) * 255).byte().expand(6, -1, -1, -1)  # a still clip
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    assert session.video_frame(folder, 2).size == (64, 48)
    with pytest.raises(InvalidInputError, match="out of range"):
        session.video_frame(folder, 9)
    seen = []
    overlay, tracks = session.track(
        folder, [[30.0, 20.0]], DemoSettings(method="nn"), callback=lambda d, t: seen.append(d)
    )
    assert overlay.parent == tracks.parent == session.workdir and overlay.stat().st_size > 0
    data = json.loads(tracks.read_text())
    assert np.allclose(np.array(data["points"])[:, 0], [30.0, 20.0], atol=1.0)  # a still clip: the point stays
    assert seen and seen[-1] == 6


def test_draw_heatmap_and_rows():
    heat = torch.linspace(0, 1, 30 * 40).reshape(30, 40)
    im = draw_heatmap(torch.zeros(3, 30, 40), heat, alpha=1.0)
    assert im.getpixel((39, 29)) == tuple(int(round(v * 255)) for v in heat_colours(torch.tensor(1.0)).tolist())
    assert im.getpixel((0, 0)) == tuple(int(round(v * 255)) for v in heat_colours(torch.tensor(0.0)).tolist())
    half = draw_heatmap(torch.ones(3, 30, 40), heat, alpha=0.0)  # alpha 0: the image itself
    assert set(np.asarray(half).ravel().tolist()) == {255}
    with pytest.raises(ShapeError, match=r"heat: expected shape \(30, 40\)"):
        draw_heatmap(torch.zeros(3, 30, 40), heat.T)
    with pytest.raises(InvalidInputError, match="alpha"):
        draw_heatmap(torch.zeros(3, 30, 40), heat, alpha=2)
    rows = draw_heatmap_rows(
        torch.zeros(3, 30, 40), torch.zeros(3, 30, 40), [[1, 1]] * 3, [[2, 2]] * 3, heat.expand(3, -1, -1), height=50
    )
    assert rows.size == (2 * round(40 * 50 / 30), 150)  # each row: both images scaled to 50 px high
    with pytest.raises(ShapeError):
        draw_heatmap_rows(
            torch.zeros(3, 30, 40), torch.zeros(3, 30, 40), [[1, 1]], [[2, 2]], heat[None].expand(2, -1, -1)
        )


def test_match_cli_heatmap(photos, tmp_path, lite_model, monkeypatch):
    from typer.testing import CliRunner

    from distilldift.cli.main import app

    folder = tmp_path / "lite"
    save_pretrained(lite_model, folder, save_base=True)
    out = tmp_path / "heat.png"
    res = CliRunner().invoke(
        app,
        [
            "match",
            str(photos[0]),
            str(photos[1]),
            "--model",
            str(folder),
            "-p",
            "220,120 330,200",
            "--heatmap",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    im = Image.open(out)
    assert im.height == 2 * 240  # one row per point
    res = CliRunner().invoke(app, ["match", str(photos[0]), str(photos[1]), "--heatmap", str(tmp_path / "h.txt")])
    assert res.exit_code == 2 and "--heatmap" in res.output


# ---------------------------------------------------------------------------------------------------- browser
def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no system Chromium (apt-get install chromium): the browser test cannot run")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install 'distilldift[dev]')")
    pytest.importorskip("gradio", reason="Gradio is not installed (pip install 'distilldift[demo]')")
    return chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(lite_model, tmp_path_factory):
    """``distilldift demo`` started as a user would (a subprocess, the lite model's folder), its URL; at the end:
    no traceback in its output and nothing written where it was started."""
    _browser()
    root = tmp_path_factory.mktemp("demo")
    folder = root / "lite"
    save_pretrained(lite_model, folder, save_base=True)
    port = _free_port()
    run_dir, tmp = root / "cwd", root / "tmp"
    run_dir.mkdir()
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "distilldift", "demo", "--model", str(folder), "--port", str(port)],
        cwd=run_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, server)
        yield url
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert "Traceback" not in log, log
    assert not any(run_dir.iterdir())  # nothing written where it was started


@pytest.fixture
def page(demo_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_browser(), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(demo_url)
        yield page
        browser.close()


def test_demo_in_a_real_browser(page, photos, lite_model, tmp_path):
    """Upload two real photos, click a known point: the heat map appears and the reported match is match_points'
    (within one pixel); a bad upload shows a message and the page keeps working."""
    bad = tmp_path / "bad.png"
    bad.write_text("this is not an image")
    page.locator("#source input[type=file]").set_input_files(str(photos[0]))
    _wait_text(page, "#status", "click a point")
    page.locator("#targets input[type=file]").set_input_files(str(photos[1]))
    _wait_text(page, "#status", "0 point(s), 1 target(s)")
    query = _click(page, "#source", 220, 120)
    table = _wait_text(page, "#matches", "cat_moved.png")
    page.wait_for_selector("#results img")
    row = _rows(table)[-1]
    assert np.allclose(row["source"], query, atol=1.0)  # the page reports the pixel clicked
    ref = match_points(photos[0], photos[1], [row["source"]], model=lite_model)
    assert np.abs(np.array(row["match"]) - ref.points[0].numpy()).max() <= 1.0
    assert row["mutual"] == bool(ref.mutual[0])
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("DISTILLDIFT_SCREENSHOT"):
        shutil.copy(shot, os.environ["DISTILLDIFT_SCREENSHOT"])
    # a bad upload: a message, no traceback, and the page keeps working
    page.locator("#targets input[type=file]").set_input_files(str(bad))
    status = _wait_text(page, "#status", "error")
    assert "bad.png is not an image" in status and "Traceback" not in status and "uploads" not in status
    page.locator("#targets input[type=file]").set_input_files(str(photos[1]))  # uploads add to the list
    _wait_text(page, "#status", "2 target(s)")
    _click(page, "#source", 330, 200)
    _wait_text(page, "#status", "2 point(s)")
    rows = [r for r in _rows(page.locator("#matches").inner_text()) if r["target"] == "cat_moved.png"]
    assert len(rows) >= 2 and np.allclose(rows[1]["source"], (330, 200), atol=1.0)


def test_demo_video_tab_in_a_real_browser(page, tmp_path):
    """Upload a clip, click two points on its first frame, track: the overlay video comes back."""
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    texture = (rng.random((120, 200, 3)) * 255).astype(np.uint8)
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for t in range(8):  # a texture panning right by 4 px per frame
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[12:108, 4 * t : 4 * t + 160]), "rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    page.get_by_role("tab", name="Video").click()
    page.locator("#video input[type=file]").set_input_files(str(clip))
    _wait_text(page, "#status", "frame 0: click the points")
    _click(page, "#frame", 80, 48)
    _wait_text(page, "#status", "1 point(s) on frame 0")  # as a person does: the next click on the updated frame
    _click(page, "#frame", 120, 30)
    _wait_text(page, "#status", "2 point(s) on frame 0")  # both clicks handled
    page.click("#track")
    _wait_text(page, "#status", "tracked 2 point(s)", timeout=120_000)
    page.wait_for_selector("#tracked video")
    assert page.locator("#tracked video").get_attribute("src").endswith("tracks.mp4")


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the demo exited: {server.communicate()[0]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the demo did not answer on {url} within {timeout} s")


def _wait_text(page, selector: str, text: str, timeout: float = 60_000) -> str:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
        arg=[selector, text],
        timeout=timeout,
    )
    return page.locator(selector).inner_text()


def _click(page, where: str, x: float, y: float) -> tuple[float, float]:
    """Click pixel (x, y) of the image in ``where`` as displayed (scaled to its box)."""
    img = page.locator(f"{where} img")
    box = img.bounding_box()
    w, h = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h)
    return x, y


def _rows(table: str) -> list[dict]:
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) == 7 and cells[0].isdigit():
            rows.append(
                {
                    "source": [float(v) for v in cells[2].split(",")],
                    "target": cells[3],
                    "match": [float(v) for v in cells[4].split(",")],
                    "score": float(cells[5]),
                    "mutual": cells[6] == "yes",
                }
            )
    return rows
