"""``track_video``: follow points through a video by matching the query frame's descriptors in every frame.

Frames are decoded and resized in a background thread while the model runs on earlier batches (on CPU, two
forward passes run at once, one per half of the cores, which a small model uses better than one pass on all of
them), and only a few batches are held at a time: memory stays flat however long the video is.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..features.extract import resolve_model, run_concurrently
from ..files import atomic_path, check_output
from ..images import as_points, check_points_inside
from ..matching.search import back_match, locate
from ..matching.settings import MatchSettings, window_pixels
from ..matching.similarity import SimilarityMap, sample_features
from ..models.model import DistillDiftModel
from ..progress import ProgressBar
from .frames import FrameSource, VideoInput, frame_batches, iter_frames

__all__ = ["Tracks", "TrackSettings", "track_video", "iter_frames", "VideoInput"]

TRACK_FORMATS = (".json", ".csv")  # Tracks.save
# A match at least this similar to its query is visible even when its back-match misses (repeated texture, a
# second look-alike in the query frame). Chosen on a development set of synthetic TAP-Vid clips disjoint from the
# reported one (benchmarks/bench_tapvid_synthetic.py --first 40): it trades 0.6 points of AJ for 0.8 of OA there.
VISIBLE_SCORE = 0.8


@dataclass(frozen=True)
class Tracks:
    """Point tracks through a video.

    Attributes:
        points: ``(T, N, 2)`` pixel ``(x, y)`` of each query point in each frame (pixel centres at integers).
        scores: ``(T, N)`` cosine similarity of the match in each frame.
        visible: ``(T, N)`` bool: the match is mutual (:func:`~distilldift.matching.search.back_match`: matching it
            back to the query frame lands within one feature cell of the query, in pixels, the same test as
            ``Matches.mutual``) or its score is at least ``visible_score``; and, if ``min_score`` was given, its
            score is at least that.
        query: ``(N, 2)`` the query points, pixels of frame ``query_frame``.
        query_frame: index of the frame the points were placed on.
        fps: the video's frame rate, if known.
        image_size: ``(W, H)`` of the frames.
        frames_declared: how many frames the video file says it holds (``None``: not a file, or not said); more
            than ``len(tracks)`` means the file is truncated or corrupt and only its first frames were decoded.
    """

    points: torch.Tensor
    scores: torch.Tensor
    visible: torch.Tensor
    query: torch.Tensor
    query_frame: int
    fps: float | None
    image_size: tuple[int, int]
    frames_declared: int | None = None

    def __len__(self) -> int:
        return self.points.shape[0]

    def to_dict(self) -> dict:
        """JSON-serialisable dict (``points[t][n] = [x, y]``)."""
        return {
            "coordinates": "pixel (x, y), origin at the centre of the top-left pixel",
            "image_size": list(self.image_size),
            "fps": self.fps,
            "frames": len(self),
            "frames_declared": self.frames_declared,
            "query_frame": self.query_frame,
            "query": self.query.tolist(),
            "points": self.points.tolist(),
            "scores": self.scores.tolist(),
            "visible": self.visible.tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.json`` (see :meth:`to_dict`) or ``.csv`` (``frame,point,x,y,score,visible`` rows)."""
        path = check_output(path, TRACK_FORMATS, "tracks file")
        with atomic_path(path) as tmp:
            self._write(tmp)
        return path

    def _write(self, path: Path) -> None:
        if path.suffix.lower() == ".csv":
            lines = ["frame,point,x,y,score,visible"]
            for t in range(self.points.shape[0]):
                for n in range(self.points.shape[1]):
                    x, y = self.points[t, n].tolist()
                    lines.append(f"{t},{n},{x:.3f},{y:.3f},{float(self.scores[t, n]):.5f},{int(self.visible[t, n])}")
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif path.suffix.lower() == ".json":
            import json

            path.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")


def _window_mask(prev: torch.Tensor, radius: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W)`` bool: pixels within ``radius = (rx, ry)`` of each previous position ``(N, 2)``."""
    w, h = size
    xs = torch.arange(w, device=prev.device).view(1, 1, w)
    ys = torch.arange(h, device=prev.device).view(1, h, 1)
    px, py = prev[:, 0].view(-1, 1, 1), prev[:, 1].view(-1, 1, 1)
    return ((xs - px).abs() <= radius[0]) & ((ys - py).abs() <= radius[1])


@dataclass(frozen=True)
class TrackSettings:
    """How ``track_video`` follows points, in one validated record.

    Attributes:
        match: the matching (:class:`MatchSettings`; ``exhaustive=None`` means coarse to fine here: the best
            feature cell, then the exact upsampled similarity within 2 cells of it - the same result unless the best
            pixel lies far from the best cell, and many times faster on large frames; ``flip`` is unused).
        search_radius: temporal stability: search each frame only within this many feature cells of the point's
            position in the previous frame where it was visible there, else the whole frame (re-detection after
            an occlusion); ``None``: always the whole frame.
        min_score: also mark matches with a lower score as not visible.
        visible_score: a match scoring at least this is visible even when its back-match misses (default 0.8;
            ``None``: the back-match alone decides). On synthetic TAP-Vid clips (BENCHMARKS.md) it raises occlusion
            accuracy above marking every point visible.
        batch_size: frames per forward pass. Default: 4 on CPU (measured best with two workers), 8 elsewhere.
        workers: forward passes run at once. Default: 2 on CPU with 2+ threads (each pass on half of torch's
            threads: a small model gains more from two passes than from more threads per pass), else 1.
        prefetch: decode and resize the next batch in a background thread while the model runs.

    Example:
        >>> from distilldift import MatchSettings
        >>> TrackSettings(match=MatchSettings(method="nn"), search_radius=2.0).match.method
        'nn'
        >>> TrackSettings(workers=0)
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: workers must be >= 1, got 0
    """

    match: MatchSettings = field(default_factory=MatchSettings)
    search_radius: float | None = None
    min_score: float | None = None
    visible_score: float | None = VISIBLE_SCORE
    batch_size: int | None = None
    workers: int | None = None
    prefetch: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.match, MatchSettings):
            raise InvalidInputError(f"match must be a MatchSettings, got {type(self.match).__name__}")
        if self.workers is not None and self.workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {self.workers}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.search_radius is not None and not self.search_radius > 0:
            raise InvalidInputError(f"search_radius must be > 0 feature cells or None, got {self.search_radius}")

    def replace(self, **changes) -> TrackSettings:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


@torch.inference_mode()
def track_video(
    video: VideoInput,
    points: object,
    *,
    model: DistillDiftModel | None = None,
    query_frame: int = 0,
    settings: TrackSettings | None = None,
    size: int | None = None,
    resize: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    callback: Callable[[int, int | None], None] | None = None,
) -> Tracks:
    """Follow points placed on one frame through a whole video.

    Each frame's features are matched against the query frame's descriptors (the paper's video protocol), with
    the same upsampled similarity and window soft-argmax as :func:`match_points`.

    Args:
        video: a video file (any format PyAV reads), a folder of frames (natural sort order), a list of images,
            or a ``(T, C, H, W)`` tensor / ``(T, H, W, C)`` array in [0, 1] (or uint8).
        points: ``(N, 2)`` pixel ``(x, y)`` in frame ``query_frame``.
        model: from :func:`load_model`; default: the default variant.
        query_frame: index of the frame the points are on.
        settings: how to track (:class:`TrackSettings`: the matching, visibility rules, batches, workers).
        size, resize: model input size / resize mode (default: the variant's).
        device: run on this device (the model is moved there); default: where the model is.
        progress: show a progress bar (rich).
        callback: called as ``callback(frames_done, total_frames_or_None)`` after each batch (a web page's
            progress bar, a log).

    Returns:
        :class:`Tracks` with ``points`` ``(T, N, 2)``, ``scores`` ``(T, N)``, ``visible`` ``(T, N)``.

    Raises:
        VideoError: missing/unreadable file, no frames, frames of changing size. InvalidInputError: query frame
        out of range. PointsOutsideImageError: a point outside the query frame.

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift import MatchSettings, track_video
        >>> from distilldift.tracking import TrackSettings
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> frames = torch.rand(1, 3, 56, 84).expand(5, -1, -1, -1)  # a still video of 5 frames
        >>> t = track_video(frames, [[40.0, 20.0]], model=model, size=84,
        ...                 settings=TrackSettings(match=MatchSettings(method="nn")))
        >>> t.points.shape, t.points[4].tolist()
        (torch.Size([5, 1, 2]), [[40.0, 20.0]])
    """
    ts = settings if settings is not None else TrackSettings()
    if not isinstance(ts, TrackSettings):
        raise InvalidInputError(f"settings must be a TrackSettings, got {type(ts).__name__}")
    pts = as_points(points)
    source = FrameSource(video)
    if query_frame < 0 or (source.length is not None and query_frame >= source.length):
        n = "an unknown number of" if source.length is None else source.length
        raise InvalidInputError(f"query_frame {query_frame} is out of range: the video has {n} frames")
    model = resolve_model(model)
    if device is not None:
        model.to(device)
    follow = _Follower(_query(source, model, query_frame, pts, size, resize), pts, ts)
    p = next(model.parameters())
    workers = ts.workers or (2 if p.device.type == "cpu" and torch.get_num_threads() >= 2 else 1)
    batch_size = ts.batch_size or (4 if p.device.type == "cpu" else 8)
    threads = torch.get_num_threads()
    if workers > 1:  # the forward workers own the cores; the small matching ops run best on one thread
        torch.set_num_threads(1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(p.device, p.dtype)).float()

    batches = frame_batches(source, model, follow.geometry, batch_size, ts.prefetch)
    try:
        with ProgressBar(progress, source.length, "tracking") as bar:
            for feats in run_concurrently(batches, forward, workers=workers, threads=threads):
                for f in feats:
                    follow.frame(f)
                bar.advance(feats.shape[0])
                if callback is not None:
                    callback(follow.frames, source.length)
    finally:
        torch.set_num_threads(threads)
    if query_frame >= follow.frames:
        raise InvalidInputError(f"query_frame {query_frame} is out of range: the video has {follow.frames} frames")
    declared = source.length if source.kind == "file" else None
    if declared is not None and follow.frames < declared:
        warnings.warn(
            f"{str(video)!r}: decoded {follow.frames} of the {declared} frames the file declares (truncated or "
            f"corrupt); the tracks cover the first {follow.frames}",
            stacklevel=2,
        )
    return follow.tracks(query_frame, source.fps, declared)


def _query(source: FrameSource, model: DistillDiftModel, query_frame: int, pts, size, resize):
    """The query frame's features and geometry (the decoder set to scale every frame straight to the input size)."""
    geom = None
    if source.kind == "file" and source.size is not None:  # the decoder scales frames straight to the input size
        geom = model.geometry(source.size, size, resize)
        source.scale_to = geom.input_size
    query_img, n_seen = None, 0
    for n_seen, frame in enumerate(source, start=1):
        if n_seen - 1 == query_frame:
            query_img = frame
            break
    if query_img is None:
        raise InvalidInputError(f"query_frame {query_frame} is out of range: the video has {n_seen} frames")
    if geom is None:
        geom = model.geometry((int(query_img.shape[-1]), int(query_img.shape[-2])), size, resize)
    check_points_inside(pts, geom.image_size)
    p = next(model.parameters())
    x, _ = model.prepare(query_img, geometry=source.arriving(geom))
    return model(x[None].to(p.device, p.dtype))[0].float(), geom


class _Follower:
    """The per-frame step: locate the query descriptors, back-match for visibility, remember the last positions."""

    def __init__(self, query, pts: torch.Tensor, ts: TrackSettings):
        fq, geom = query
        self.geometry, self.pts, self.ts = geom, pts, ts
        self.queries = sample_features(fq, geom.image_to_grid(pts.to(fq.device)))
        self.axes = SimilarityMap.axes(geom.grid_size, geom.image_size, fq.device)  # the same for every frame
        self.up_query = SimilarityMap(fq, geom.image_size, self.axes)
        self.search = None if ts.search_radius is None else window_pixels(geom, ts.search_radius)
        self.exhaustive = ts.match.search_everywhere(default=False)
        self.prev = pts.to(fq.device)
        self.prev_ok = torch.ones(pts.shape[0], dtype=torch.bool, device=fq.device)
        self.out: tuple[list, list, list] = ([], [], [])

    @property
    def frames(self) -> int:
        return len(self.out[0])

    def frame(self, f: torch.Tensor) -> None:
        out_pts, out_scores, out_vis = self.out
        if self.pts.shape[0] == 0:
            out_pts.append(torch.zeros(0, 2))
            out_scores.append(torch.zeros(0))
            out_vis.append(torch.zeros(0, dtype=torch.bool))
            return
        ms, ts, geom = self.ts.match, self.ts, self.geometry
        up = SimilarityMap(f, geom.image_size, self.axes)
        mask = None
        if self.search is not None:
            mask = _window_mask(self.prev, self.search, geom.image_size) | ~self.prev_ok.view(-1, 1, 1)
        how = dict(method=ms.method, window=ms.window, temperature=ms.temperature)
        loc, score = locate(up, self.queries, geom, exhaustive=self.exhaustive, mask=mask, **how)
        _, vis = back_match(self.up_query, geom, f, geom, loc, self.pts, settings=ms, exhaustive=self.exhaustive)
        if ts.visible_score is not None:
            vis |= score >= ts.visible_score
        if ts.min_score is not None:
            vis &= score >= ts.min_score
        self.prev = torch.where(vis.view(-1, 1), loc, self.prev)
        self.prev_ok = vis  # a point lost in this frame is searched for in the whole next frame
        out_pts.append(loc.cpu())
        out_scores.append(score.cpu())
        out_vis.append(vis.cpu())

    def tracks(self, query_frame: int, fps, declared: int | None) -> Tracks:
        out_pts, out_scores, out_vis = self.out
        return Tracks(
            points=torch.stack(out_pts),
            scores=torch.stack(out_scores),
            visible=torch.stack(out_vis),
            query=self.pts,
            query_frame=query_frame,
            fps=fps,
            image_size=self.geometry.image_size,
            frames_declared=declared,
        )
