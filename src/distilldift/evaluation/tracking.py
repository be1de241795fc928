"""TAP-Vid point-tracking metrics: Average Jaccard (AJ), delta_avg and occlusion accuracy (OA).

The protocol of the TAP-Vid benchmark (Doersch et al., NeurIPS 2022), which every point tracker reports: positions
are compared in pixels of a 256 x 256 frame at the thresholds 1, 2, 4, 8 and 16 px; only frames after the query
frame (``"first"`` queries) or all frames but the query frame (``"strided"`` queries) are evaluated.

For one threshold ``d`` over the evaluated (point, frame) entries:

- ``delta_d`` = (truly visible and within ``d``) / truly visible — predicted visibility is ignored;
- ``jaccard_d`` = TP / (TP + FP + FN) with TP = predicted visible, truly visible and within ``d``; FP = predicted
  visible and (truly occluded or farther than ``d``); TP + FN = truly visible;
- ``OA`` = fraction of entries whose predicted visibility equals the truth.

AJ and delta_avg average over the thresholds. A distance exactly ``d`` is *not* within ``d`` (as in the reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InvalidInputError, ShapeError
from ..tracking.track import TrackSettings, track_video

__all__ = ["THRESHOLDS", "QUERY_MODES", "TrackingMetrics", "tapvid_metrics", "tapvid_queries", "evaluate_tracking"]

THRESHOLDS = (1, 2, 4, 8, 16)  # pixels of a 256 x 256 frame
QUERY_MODES = ("first", "strided")


@dataclass(frozen=True)
class TrackingMetrics:
    """TAP-Vid metrics of one video (or their mean over videos, see :meth:`mean`).

    ``nan`` where a ratio is undefined (e.g. ``delta`` of a video with no visible evaluated entry).
    """

    average_jaccard: float
    average_delta: float
    occlusion_accuracy: float
    jaccard: dict[int, float] = field(default_factory=dict)
    delta: dict[int, float] = field(default_factory=dict)
    evaluated: int = 0  # (point, frame) entries evaluated
    videos: int = 1

    def to_dict(self) -> dict:
        """JSON-serialisable dict (``jaccard`` / ``delta`` keyed by threshold in px)."""
        return {
            "average_jaccard": self.average_jaccard,
            "average_delta": self.average_delta,
            "occlusion_accuracy": self.occlusion_accuracy,
            "jaccard": {str(k): v for k, v in self.jaccard.items()},
            "delta": {str(k): v for k, v in self.delta.items()},
            "evaluated": self.evaluated,
            "videos": self.videos,
        }

    @staticmethod
    def mean(per_video: Sequence[TrackingMetrics]) -> TrackingMetrics:
        """The benchmark's overall numbers: each metric averaged over videos (videos weigh equally).

        Example:
            >>> a = TrackingMetrics(0.5, 0.6, 0.9, {1: 0.5}, {1: 0.6}, 10)
            >>> b = TrackingMetrics(0.3, 0.4, 0.7, {1: 0.3}, {1: 0.4}, 20)
            >>> m = TrackingMetrics.mean([a, b])
            >>> round(m.average_jaccard, 6), m.jaccard, m.evaluated, m.videos
            (0.4, {1: 0.4}, 30, 2)
        """
        if not per_video:
            nan = float("nan")
            return TrackingMetrics(nan, nan, nan, {}, {}, 0, 0)

        def avg(values) -> float:
            return float(np.mean(list(values)))

        keys = per_video[0].jaccard.keys()
        return TrackingMetrics(
            average_jaccard=avg(m.average_jaccard for m in per_video),
            average_delta=avg(m.average_delta for m in per_video),
            occlusion_accuracy=avg(m.occlusion_accuracy for m in per_video),
            jaccard={k: avg(m.jaccard[k] for m in per_video) for k in keys},
            delta={k: avg(m.delta[k] for m in per_video) for k in keys},
            evaluated=sum(m.evaluated for m in per_video),
            videos=len(per_video),
        )


def _array(x: object, name: str, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name}: expected a numeric array ({e})") from e


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def tapvid_metrics(
    pred_points: object,
    pred_visible: object,
    gt_points: object,
    gt_visible: object,
    query_frames: object,
    *,
    query_mode: str = "first",
    thresholds: Sequence[float] = THRESHOLDS,
) -> TrackingMetrics:
    """TAP-Vid metrics of one video's tracks against the ground truth.

    Args:
        pred_points, gt_points: ``(T, N, 2)`` pixel ``(x, y)`` (pixel centres at integers) in a frame scaled to
            256 x 256 for the standard protocol (the layout of :class:`distilldift.Tracks`: frame first).
        pred_visible, gt_visible: ``(T, N)`` bool (TAP-Vid's ``occluded`` is ``~visible``).
        query_frames: ``(N,)`` the frame each point was queried on.
        query_mode: ``"first"``: evaluate the frames after the query frame; ``"strided"``: all frames but it.
        thresholds: distances in pixels.

    Returns:
        :class:`TrackingMetrics`.

    Example:
        >>> import torch
        >>> gt = torch.zeros(3, 1, 2)
        >>> pred = torch.tensor([[[0.0, 0.0]], [[3.0, 0.0]], [[0.0, 0.0]]])  # frame 1: 3 px off
        >>> vis = torch.ones(3, 1, dtype=torch.bool)
        >>> m = tapvid_metrics(pred, vis, gt, vis, [0])
        >>> m.delta  # frames 1 and 2 evaluated: frame 1 within 4 px and more
        {1: 0.5, 2: 0.5, 4: 1.0, 8: 1.0, 16: 1.0}
        >>> m.average_delta, m.average_jaccard, m.occlusion_accuracy
        (0.8, 0.7333333333333333, 1.0)
    """
    if query_mode not in QUERY_MODES:
        raise InvalidInputError(f"query_mode must be one of {', '.join(QUERY_MODES)}, got {query_mode!r}")
    pp = _array(pred_points, "pred_points", np.float64)
    gp = _array(gt_points, "gt_points", np.float64)
    pv = _array(pred_visible, "pred_visible", bool)
    gv = _array(gt_visible, "gt_visible", bool)
    qf = _array(query_frames, "query_frames", np.float64)
    if gp.ndim != 3 or gp.shape[-1] != 2:
        raise ShapeError("gt_points", "(T, N, 2)", gp.shape)
    t, n = gp.shape[:2]
    for name, arr, shape in (
        ("pred_points", pp, (t, n, 2)),
        ("pred_visible", pv, (t, n)),
        ("gt_visible", gv, (t, n)),
        ("query_frames", qf, (n,)),
    ):
        if arr.shape != shape:
            raise ShapeError(name, str(shape).replace(" ", ""), arr.shape)
    q = np.round(qf).astype(np.int64)
    if n and (q.min() < 0 or q.max() >= t):
        raise InvalidInputError(f"query_frames must lie in [0, {t - 1}] (the video has {t} frames)")
    frames = np.arange(t).reshape(t, 1)
    evaluated = frames > q.reshape(1, n) if query_mode == "first" else frames != q.reshape(1, n)

    occ_acc = _ratio(np.sum((pv == gv) & evaluated), np.sum(evaluated))
    dist2 = np.sum((pp - gp) ** 2, axis=-1)
    visible = gv & evaluated
    jaccard, delta = {}, {}
    for d in thresholds:
        within = dist2 < float(d) ** 2
        tp = np.sum(within & gv & pv & evaluated)
        fp = np.sum(pv & (~gv | ~within) & evaluated)
        key = int(d) if float(d).is_integer() else d
        delta[key] = _ratio(np.sum(within & visible), np.sum(visible))
        jaccard[key] = _ratio(tp, np.sum(visible) + fp)
    return TrackingMetrics(
        average_jaccard=float(np.mean(list(jaccard.values()))),
        average_delta=float(np.mean(list(delta.values()))),
        occlusion_accuracy=occ_acc,
        jaccard=jaccard,
        delta=delta,
        evaluated=int(np.sum(evaluated)),
    )


def tapvid_queries(occluded: np.ndarray, query_mode: str = "first", stride: int = 5) -> list[tuple[int, int]]:
    """The benchmark's queries as ``(track, frame)``: ``"first"``: each track at its first visible frame;
    ``"strided"``: each track at every ``stride``-th frame where it is visible. ``occluded``: ``(N, T)`` bool.

    Example:
        >>> occ = np.array([[True, False, False, False, False, False], [False] * 6, [True] * 6])
        >>> tapvid_queries(occ), tapvid_queries(occ, "strided")
        ([(0, 1), (1, 0)], [(1, 0), (0, 5), (1, 5)])
    """
    if query_mode not in QUERY_MODES:
        raise InvalidInputError(f"query_mode must be one of {', '.join(QUERY_MODES)}, got {query_mode!r}")
    visible = ~np.asarray(occluded, bool)
    if query_mode == "first":
        return [(n, int(np.argmax(v))) for n, v in enumerate(visible) if v.any()]
    return [(n, t) for t in range(0, visible.shape[1], stride) for n in range(visible.shape[0]) if visible[n, t]]


def evaluate_tracking(
    clips: Iterable,
    model=None,
    *,
    query_mode: str = "first",
    resolution: int = 256,
    stride: int = 5,
    settings: TrackSettings | None = None,
    size: int | None = None,
) -> tuple[TrackingMetrics, dict[str, TrackingMetrics]]:
    """TAP-Vid evaluation of :func:`distilldift.track_video` on clips (:func:`distilldift.datasets.tapvid.read_tapvid`).

    The protocol: frames resized to ``resolution`` x ``resolution`` (256), queries from the ground truth
    (:func:`tapvid_queries`), one ``track_video`` call per distinct query frame (its tracks cover every frame), the
    metrics of :func:`tapvid_metrics` per clip and their mean over clips. ``settings`` and ``size`` go to
    ``track_video``.

    Returns:
        ``(overall, {clip name: metrics})``.
    """
    import torch.nn.functional as F

    per_clip = {}
    for clip in clips:
        w, h = clip.size
        frames = torch.from_numpy(clip.video).permute(0, 3, 1, 2).float() / 255
        frames = F.interpolate(frames, size=(resolution, resolution), mode="bilinear", antialias=True)
        scale = np.array([resolution / w, resolution / h])
        gt = (clip.points + 0.5) * scale - 0.5  # (N, T, 2) at the evaluation resolution
        queries = tapvid_queries(clip.occluded, query_mode, stride)
        if not queries:
            continue
        t_all = clip.video.shape[0]
        pred = np.zeros((t_all, len(queries), 2))
        pred_vis = np.zeros((t_all, len(queries)), bool)
        for t0 in sorted({t for _, t in queries}):
            rows = [i for i, (_, t) in enumerate(queries) if t == t0]
            pts = np.clip(gt[[queries[i][0] for i in rows], t0], 0, resolution - 1)
            tracks = track_video(frames, pts, model=model, query_frame=t0, settings=settings, size=size)
            pred[:, rows] = tracks.points.numpy()
            pred_vis[:, rows] = tracks.visible.numpy()
        tracks_of = [n for n, _ in queries]
        per_clip[clip.name] = tapvid_metrics(
            pred,
            pred_vis,
            gt[tracks_of].transpose(1, 0, 2),
            ~clip.occluded[tracks_of].T,
            [t for _, t in queries],
            query_mode=query_mode,
        )
    return TrackingMetrics.mean(list(per_clip.values())), per_clip


def tracking_report(
    overall: TrackingMetrics, per_clip: dict[str, TrackingMetrics], *, query_mode: str, resolution: int
) -> dict:
    """The record of one TAP-Vid evaluation (``eval --dataset tapvid --out``): the protocol in words, the overall
    metrics and each clip's.

    Example:
        >>> m = TrackingMetrics(0.5, 0.6, 0.9, videos=1, evaluated=10)
        >>> r = tracking_report(m, {"clip": m}, query_mode="first", resolution=256)
        >>> r["protocol"].split(";")[0]
        'TAP-Vid protocol: first queries, frames and metrics at 256x256, thresholds 1-16 px'
        >>> sorted(r)
        ['clips', 'overall', 'protocol']
    """
    protocol = (
        f"TAP-Vid protocol: {query_mode} queries, frames and metrics at {resolution}x{resolution}, thresholds 1-16 px; "
        f"{overall.videos} clips, {overall.evaluated} (point, frame) entries; AJ and OA use track_video's visibility"
    )
    return {"protocol": protocol, "overall": overall.to_dict(), "clips": {k: m.to_dict() for k, m in per_clip.items()}}
