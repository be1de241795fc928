"""Frames of a video: a file (PyAV, decoded in a background thread), a folder of images, a list or an array.

Used by ``track_video``, ``render_tracks`` and the CLI; nothing here knows about tracking or drawing.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError, VideoError
from ..images import IMAGE_SUFFIXES, GridGeometry, ImageInput, load_image
from ..models.model import DistillDiftModel

__all__ = ["VideoInput", "FrameSource", "iter_frames", "frame_batches"]

VideoInput = str | os.PathLike | Sequence[ImageInput] | torch.Tensor | np.ndarray


def _natural_key(p: Path) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


class FrameSource:
    """Frames of a video file (PyAV), an image folder, a list of images, or a (T, C, H, W) / (T, H, W, C) array.

    Iterating gives ``(3, H, W)`` float tensors in [0, 1]. ``kind``, ``fps``, ``length`` (``None`` if unknown),
    ``size`` ``(W, H)`` describe the source; ``scale_to = (w, h)`` asks the video decoder for frames at that size.
    """

    def __init__(self, video: VideoInput):
        self.video, self.fps, self.length, self.size = video, None, None, None
        self.scale_to: tuple[int, int] | None = None  # files: let the decoder scale frames to this (w, h)
        if isinstance(video, (str, os.PathLike)):
            p = Path(video)
            if not p.exists():
                raise VideoError(f"video not found: {str(p)!r}")
            if p.is_dir():
                self.files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
                if not self.files:
                    raise VideoError(f"folder {str(p)!r} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
                self.length, self.kind = len(self.files), "folder"
            else:
                if p.stat().st_size == 0:
                    raise VideoError(f"video file is empty (0 bytes): {str(p)!r}")
                self.kind = "file"
                with self._open() as container:
                    stream = container.streams.video[0]
                    self.fps = float(stream.average_rate) if stream.average_rate else None
                    self.length = int(stream.frames) or None
                    self.size = (stream.codec_context.width, stream.codec_context.height)
        elif isinstance(video, torch.Tensor | np.ndarray):
            if video.ndim != 4:
                raise VideoError(f"a video array must be (T, C, H, W) or (T, H, W, C), got shape {tuple(video.shape)}")
            self.kind, self.length = "array", int(video.shape[0])
        elif isinstance(video, (list, tuple)):
            self.kind, self.length = "list", len(video)
        else:
            raise InvalidInputError(
                f"unsupported video type {type(video).__name__}; accepted: a video file path, a folder of frames, "
                "a list of images, or a (T, C, H, W) tensor"
            )
        if self.length == 0:
            raise VideoError("the video has no frames")

    def arriving(self, geom: GridGeometry) -> GridGeometry:
        """The geometry of frames as they arrive: ``geom``, or, when the decoder scales them (``scale_to``), the
        same grid from frames already at the input size."""
        return dataclasses.replace(geom, image_size=geom.input_size) if self.scale_to else geom

    def _open(self):
        try:
            import av
        except ImportError:
            raise VideoError("reading video files needs PyAV: pip install 'distilldift[video]'") from None
        try:
            container = av.open(str(self.video))
        except Exception as e:  # noqa: BLE001 - PyAV raises several error types for unreadable files
            raise VideoError(f"could not open {str(self.video)!r} as a video (not a video, or corrupt): {e}") from e
        if not container.streams.video:
            container.close()
            raise VideoError(f"{str(self.video)!r} has no video stream")
        return container

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.kind == "file":
            with self._open() as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                kw = {}
                if self.scale_to is not None:  # swscale resizes during colour conversion: far cheaper
                    w, h = self.scale_to
                    down = w * h < stream.codec_context.width * stream.codec_context.height
                    kw = dict(width=w, height=h, interpolation="AREA" if down else "BILINEAR")
                try:
                    for frame in container.decode(stream):
                        arr = frame.to_ndarray(format="rgb24", **kw)
                        yield torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)
                except Exception as e:  # noqa: BLE001 - a corrupt packet mid-stream
                    raise VideoError(f"decoding {str(self.video)!r} failed: {e}") from e
        elif self.kind == "folder":
            for f in self.files:
                yield load_image(f)
        else:  # arrays (T, ...) and lists: load_image takes (H, W, C) arrays and (C, H, W) tensors alike
            for frame in self.video:
                yield load_image(frame)


def iter_frames(video: VideoInput) -> Iterator[torch.Tensor]:
    """Stream the frames of ``video`` as ``(3, H, W)`` float tensors in [0, 1], one at a time.

    Example:
        >>> import torch
        >>> from distilldift.tracking.track import iter_frames
        >>> [tuple(f.shape) for f in iter_frames(torch.rand(2, 3, 8, 10))]
        [(3, 8, 10), (3, 8, 10)]
    """
    yield from FrameSource(video)


def frame_batches(source: FrameSource, model: DistillDiftModel, geom: GridGeometry, batch_size: int, prefetch: bool):
    """Yield ``(B, 3, h, w)`` model inputs; decoding + resizing overlap the model if ``prefetch``.

    Frames come at their original size (resized here) or already at the model input size (scaled by the decoder).
    """
    arriving = source.arriving(geom)

    def produce() -> Iterator[torch.Tensor]:
        batch = []
        for i, frame in enumerate(source):
            size = (int(frame.shape[-1]), int(frame.shape[-2]))
            if size != arriving.image_size:
                (w1, h1), (w0, h0) = size, geom.image_size
                raise VideoError(f"frame {i} is {w1}x{h1}, the query frame is {w0}x{h0}: all frames must have one size")
            batch.append(model.prepare(frame, geometry=arriving)[0])
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    if not prefetch:
        yield from produce()
        return
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def worker():
        try:
            for item in produce():
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=worker, daemon=True, name="distilldift-decode")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
