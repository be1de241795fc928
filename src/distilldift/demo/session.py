"""The demo's work, without the web page: models and features cached across clicks, matches, heat maps, tracks.

Everything the page shows comes from here, so it is tested without a browser (``tests/test_demo.py``), and the
page (:mod:`distilldift.demo.app`) only wires components to these methods.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..errors import InvalidInputError
from ..features.extract import FeatureMap, ImageCache, extract_feature_maps
from ..images import load_image
from ..matching.points import Matches, match_feature_maps, match_record, similarity_heatmaps
from ..matching.settings import MatchSettings
from ..models.model import DistillDiftModel
from ..viz import draw_heatmap, palette, to_pil

__all__ = ["DemoSettings", "TargetResult", "DemoSession", "side_by_side"]


@dataclass(frozen=True)
class DemoSettings:
    """What the page lets the user choose: the model (a variant name or folder), the localizer, pose-align
    (``flip="auto"``), the model input size (``None``: the variant's) and the resize mode (``None``: the variant's)."""

    model: str = "lite"
    method: str = "soft"
    pose_align: bool = False
    size: int | None = None
    resize: str | None = None


@dataclass
class TargetResult:
    """One target image after a click: all points' matches and the newest point's heat map drawn on it."""

    name: str
    matches: Matches
    overlay: Image.Image
    image_size: tuple[int, int] = field(default=(0, 0))

    def caption(self) -> str:
        """``"name: (x, y) score 0.81, mutual"`` for the newest point."""
        if len(self.matches) == 0:
            return self.name
        x, y = self.matches.points[-1].tolist()
        mutual = "mutual" if bool(self.matches.mutual[-1]) else "not mutual"
        return f"{self.name}: ({x:.1f}, {y:.1f}) score {float(self.matches.scores[-1]):.3f}, {mutual}"


class DemoSession:
    """Models loaded once per name, features computed once per (image, model, size, resize) and reused.

    Args:
        loader: ``name -> DistillDiftModel`` (default :func:`distilldift.load_model`).
        device: where models run (``None``: :func:`load_model`'s default).
        workdir: the only folder written to (outputs for download); default: a new temporary folder.
        cache_size: feature maps kept (least recently used dropped first).

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift.demo.session import DemoSession, DemoSettings
        >>> session = DemoSession(loader=lambda name: create_model("dinov2_b14_reg", embed_dim=32, depth=1,
        ...                                                        num_heads=2))
        >>> img = torch.rand(3, 70, 84)
        >>> [r] = session.click(img, [img], [[40.0, 30.0]], DemoSettings(model="tiny", method="nn", size=84))
        >>> r.matches.points.tolist(), r.overlay.size  # an image matched with itself
        ([[40.0, 30.0]], (84, 70))
    """

    def __init__(
        self,
        loader: Callable[[str], DistillDiftModel] | None = None,
        *,
        device: str | None = None,
        workdir: str | os.PathLike | None = None,
        cache_size: int = 32,
    ):
        self._loader = loader
        self.device = device
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="distilldift-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._models: dict[str, DistillDiftModel] = {}
        self._features = ImageCache(None, cache_size)  # the library's one feature cache, keyed by content here
        self._frame: tuple | None = None  # (video, index) -> its frame, the last one asked for

    @property
    def hits(self) -> int:
        """Feature maps served from the cache (tests, the latency benchmark)."""
        return self._features.hits

    @property
    def misses(self) -> int:
        """Feature maps computed."""
        return self._features.computed

    # ------------------------------------------------------------------------------------------ models, features
    def model(self, name: str) -> DistillDiftModel:
        """The model ``name`` (loaded on first use)."""
        if name not in self._models:
            if self._loader is not None:
                self._models[name] = self._loader(name)
            else:
                from ..weights.loading import load_model

                self._models[name] = load_model(name, device=self.device)
        return self._models[name]

    def feature_map(self, image: torch.Tensor, settings: DemoSettings, *, mirrored: bool = False) -> FeatureMap:
        """Features of ``image`` ``(3, H, W)`` (or of its mirror image) under ``settings``, cached by content."""
        digest = hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()
        key = (digest, tuple(image.shape), settings.model, settings.size, settings.resize, mirrored)

        def make() -> FeatureMap:
            x = image.flip(-1) if mirrored else image
            return extract_feature_maps(self.model(settings.model), [x], size=settings.size, resize=settings.resize)[0]

        return self._features.lookup(key, make)

    # ------------------------------------------------------------------------------------------ images
    def click(
        self,
        source: object,
        targets: Sequence[object],
        points: object,
        settings: DemoSettings,
        names: Sequence[str] | None = None,
    ) -> list[TargetResult]:
        """Match ``points`` ``(N, 2)`` pixel ``(x, y)`` of ``source`` in every target; heat map of the last point.

        Images: anything :func:`distilldift.load_image` reads (paths of uploads). Each target's overlay shows the
        newest point's similarity map and its match (ring, filled when mutual), earlier points as dots, each in
        its :func:`distilldift.viz.palette` colour.
        """
        src_img = load_image(source)
        pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
        ms = MatchSettings(method=settings.method, flip="auto" if settings.pose_align else False)
        src = self.feature_map(src_img, settings)
        mirrored = self.feature_map(src_img, settings, mirrored=True) if ms.flip else None
        colours = palette(max(1, pts.shape[0]))
        results = []
        for i, target in enumerate(targets):
            tgt_img = load_image(target)
            dst = self.feature_map(tgt_img, settings)
            name = names[i] if names is not None else f"target {i + 1}"
            m = match_feature_maps(src, dst, pts, mirrored=mirrored, settings=ms)
            if len(m) == 0:
                overlay = to_pil(tgt_img)
            else:
                heat = similarity_heatmaps(mirrored if m.flipped else src, dst, pts[-1:], flipped=m.flipped)[0]
                overlay = draw_heatmap(
                    tgt_img, heat, point=m.points[-1], mutual=bool(m.mutual[-1]), colour=colours[pts.shape[0] - 1]
                )
                _dots(overlay, m.points[:-1], colours)
            size = (int(tgt_img.shape[-1]), int(tgt_img.shape[-2]))
            results.append(TargetResult(name, m, overlay, size))
        return results

    def draw_points(self, source: object, points: object) -> Image.Image:
        """The source image with the clicked points as dots in their colours."""
        canvas = to_pil(source)
        pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
        _dots(canvas, pts, palette(max(1, pts.shape[0])), outline=True)
        return canvas

    def save_json(self, results: Sequence[TargetResult], source_name: str, source_size, settings: DemoSettings) -> Path:
        """Write the matches as ``distilldift match --json`` writes them (one record; a list for several targets)."""
        records = [
            match_record(
                r.matches,
                image1=source_name,
                image2=r.name,
                image1_size=source_size,
                image2_size=r.image_size,
                model=settings.model,
                method=settings.method,
            )
            for r in results
        ]
        path = self.workdir / "matches.json"
        path.write_text(json.dumps(records[0] if len(records) == 1 else records, indent=2) + "\n", encoding="utf-8")
        return path

    def sample_paths(self) -> list[Path]:
        """The sample photos (:mod:`distilldift.samples`), written once into :attr:`workdir`; the source first."""
        from ..samples import write_sample_photos

        folder = self.workdir / "samples"
        if not folder.is_dir():
            write_sample_photos(folder)
        return sorted(folder.iterdir())

    # ------------------------------------------------------------------------------------------ video
    def video_frame(self, video: str | os.PathLike, index: int = 0) -> Image.Image:
        """Frame ``index`` of ``video`` (where the user clicks the points to follow)."""
        from ..tracking.frames import iter_frames

        if index < 0:
            raise InvalidInputError(f"the query frame must be >= 0, got {index}")
        key = (str(video), index)
        if self._frame is not None and self._frame[0] == key:  # every click on the frame asks for it again
            return self._frame[1]
        n = 0
        for n, frame in enumerate(iter_frames(video), start=1):
            if n - 1 == index:
                self._frame = (key, to_pil(frame))
                return self._frame[1]
        raise InvalidInputError(f"query frame {index} is out of range: the clip has {n} frames")

    def track(
        self,
        video: str | os.PathLike,
        points: object,
        settings: DemoSettings,
        *,
        query_frame: int = 0,
        callback: Callable[[int, int | None], None] | None = None,
    ) -> tuple[Path, Path]:
        """Track ``points`` (pixels of frame ``query_frame``) through ``video``; returns the overlay video and the
        tracks (``.json``), both in :attr:`workdir`."""
        from ..tracking.track import TrackSettings, track_video
        from ..viz import render_tracks

        pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
        if pts.shape[0] == 0:
            raise InvalidInputError("click at least one point on the frame first")
        tracks = track_video(
            video,
            pts,
            model=self.model(settings.model),
            query_frame=query_frame,
            size=settings.size,
            resize=settings.resize,
            settings=TrackSettings(match=MatchSettings(method=settings.method)),
            callback=callback,
        )
        overlay = Path(render_tracks(video, tracks, self.workdir / "tracks.mp4"))
        return overlay, tracks.save(self.workdir / "tracks.json")


def _dots(canvas: Image.Image, points: torch.Tensor, colours, *, outline: bool = False) -> None:
    draw = ImageDraw.Draw(canvas)
    r = max(3, min(canvas.size) // 60)
    for i, (x, y) in enumerate(points.tolist()):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colours[i], outline=(0, 0, 0) if outline else None)


def side_by_side(images: Sequence[Image.Image], height: int = 360, gap: int = 8) -> Image.Image | None:
    """Images scaled to ``height`` and placed left to right with ``gap`` white pixels between (``None`` if none).

    Example:
        >>> from PIL import Image
        >>> from distilldift.demo.session import side_by_side
        >>> side_by_side([Image.new("RGB", (40, 20)), Image.new("RGB", (10, 10))], height=30).size
        (98, 30)
    """
    if not images:
        return None
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled) + gap * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas
