"""Draw correspondences with Pillow."""

from __future__ import annotations

import colorsys
import os

import torch
from PIL import Image, ImageDraw

from .errors import InvalidInputError, MissingDependencyError, ShapeError
from .files import atomic_path, check_distinct, check_output
from .images import ImageInput, as_points, load_image

__all__ = [
    "draw_matches",
    "draw_heatmap",
    "draw_heatmap_rows",
    "draw_tracks",
    "draw_keypoints",
    "render_tracks",
    "palette",
    "heat_colours",
    "to_pil",
    "image_formats",
    "VIDEO_FORMATS",
]

VIDEO_FORMATS = (".mp4", ".mkv", ".mov")  # render_tracks: H.264 in these containers


def image_formats() -> tuple[str, ...]:
    """File extensions Pillow can write (``draw_matches(out=...)``), e.g. ``(".bmp", ..., ".png", ...)``.

    Example:
        >>> from distilldift.viz import image_formats
        >>> {".png", ".jpg"} <= set(image_formats())
        True
    """
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE))


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, bright RGB colours (golden-ratio hue steps); the same ``n`` gives the same colours."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


# dark blue -> blue -> cyan -> yellow -> red: a perceptually ordered map that reads on photos
_HEAT_ANCHORS = torch.tensor(
    [[0.05, 0.03, 0.25], [0.10, 0.30, 0.85], [0.10, 0.80, 0.85], [0.95, 0.90, 0.15], [0.85, 0.10, 0.05]]
)


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """Colours of a heat map: ``values`` ``(...)`` in [0, 1] (clamped) -> ``(..., 3)`` RGB in [0, 1].

    Example:
        >>> import torch
        >>> from distilldift.viz import heat_colours
        >>> (heat_colours(torch.tensor([0.0, 0.5, 1.0])) * 100).round().tolist()  # dark blue, cyan, red
        [[5.0, 3.0, 25.0], [10.0, 80.0, 85.0], [85.0, 10.0, 5.0]]
    """
    anchors = _HEAT_ANCHORS.to(values.device)
    pos = values.float().clamp(0, 1) * (len(anchors) - 1)
    lo = pos.floor().long().clamp(max=len(anchors) - 2)
    frac = (pos - lo).unsqueeze(-1)
    return anchors[lo] * (1 - frac) + anchors[lo + 1] * frac


def _refuse_inputs(out, **inputs) -> None:
    """An output that is one of the input files (given as paths) is refused before any drawing."""
    if out is not None:
        paths = [(name, value) for name, value in inputs.items() if isinstance(value, (str, os.PathLike))]
        check_distinct([("out", out)], paths)


def draw_heatmap(
    image: ImageInput,
    heat: torch.Tensor,
    *,
    point: object | None = None,
    mutual: bool = True,
    colour: tuple[int, int, int] = (255, 255, 255),
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    out: str | os.PathLike | None = None,
) -> Image.Image:
    """Overlay a similarity map on an image, e.g. where one clicked point's descriptor matches in another image.

    Args:
        image: any image input accepted by :func:`load_image`, ``W x H``.
        heat: ``(H, W)`` values at the image's pixels, e.g. one map of
            :func:`~distilldift.matching.points.similarity_heatmaps`.
        point: optional pixel ``(x, y)`` to mark (the match): a ring in ``colour``, filled when ``mutual``.
        alpha: opacity of the colours (0: the image only, 1: the map only).
        vmin, vmax: the values shown as the coldest / hottest colour (default: the map's minimum / maximum).
        out: save the drawing there (format from the extension).

    Returns:
        The RGB ``PIL.Image`` at the image's size.

    Raises:
        ShapeError: ``heat`` is not ``(H, W)`` of the image.

    Example:
        >>> import torch
        >>> from distilldift.viz import draw_heatmap
        >>> heat = torch.zeros(40, 60)
        >>> heat[10, 20] = 1.0
        >>> im = draw_heatmap(torch.zeros(3, 40, 60), heat, alpha=1.0)
        >>> im.size, im.getpixel((20, 10)), im.getpixel((0, 0))  # hottest: red, coldest: dark blue
        ((60, 40), (217, 26, 13), (13, 8, 64))
    """
    _refuse_inputs(out, image=image)
    img = load_image(image)
    h, w = img.shape[-2:]
    heat = torch.as_tensor(heat).detach().float().cpu()
    if heat.shape != (h, w):
        raise ShapeError("heat", f"({h}, {w}) (the image's H, W)", tuple(heat.shape))
    if not 0 <= alpha <= 1:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha}")
    lo = float(heat.min()) if vmin is None else float(vmin)
    hi = float(heat.max()) if vmax is None else float(vmax)
    norm = (heat - lo) / max(hi - lo, 1e-12)
    mixed = (1 - alpha) * img.cpu().permute(1, 2, 0) + alpha * heat_colours(norm)
    canvas = Image.fromarray((mixed.clamp(0, 1) * 255).round().byte().numpy(), "RGB")
    if point is not None:
        p = torch.as_tensor(point, dtype=torch.float64).flatten()
        if p.numel() != 2:
            raise ShapeError("point", "(2,): one (x, y)", tuple(torch.as_tensor(point).shape))
        (x, y), r = p.tolist(), max(4, min(w, h) // 40)
        draw = ImageDraw.Draw(canvas)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour if mutual else None, outline=(0, 0, 0), width=2)
        draw.ellipse([x - r - 2, y - r - 2, x + r + 2, y + r + 2], outline=colour, width=2)
    if out is not None:
        out = check_output(out, image_formats(), "drawing")
        with atomic_path(out) as tmp:
            canvas.save(tmp)
    return canvas


def draw_heatmap_rows(
    img1: ImageInput,
    img2: ImageInput,
    query: object,
    points: object,
    heats: torch.Tensor,
    *,
    mutual: torch.Tensor | None = None,
    height: int = 240,
    out: str | os.PathLike | None = None,
) -> Image.Image:
    """One row per point: image 1 with the query marked | image 2 under that query's similarity map, match marked.

    Args:
        query, points: ``(N, 2)`` pixel ``(x, y)`` in ``img1`` / ``img2``; ``heats``: ``(N, H2, W2)`` (e.g.
            :func:`~distilldift.matching.points.similarity_heatmaps`); ``mutual``: ``(N,)`` bool (hollow marker if
            False).
        height: height of each row in drawing pixels.

    Returns:
        The RGB ``PIL.Image``, ``N * height`` tall (each point in its :func:`palette` colour).

    Example:
        >>> import torch
        >>> from distilldift.viz import draw_heatmap_rows
        >>> im = draw_heatmap_rows(torch.zeros(3, 50, 80), torch.zeros(3, 100, 100), [[10, 10], [40, 20]],
        ...                        [[20, 40], [50, 50]], torch.rand(2, 100, 100), height=60)
        >>> im.size
        (156, 120)
    """
    _refuse_inputs(out, img1=img1, img2=img2)
    q, p = as_points(query, "query"), as_points(points, "points")
    heats = torch.as_tensor(heats)
    if q.shape != p.shape or heats.ndim != 3 or heats.shape[0] != q.shape[0]:
        shapes = f"{tuple(q.shape)}, {tuple(p.shape)}, {tuple(heats.shape)}"
        raise ShapeError("query, points, heats", "(N, 2), (N, 2), (N, H, W)", shapes)
    keep = torch.ones(q.shape[0], dtype=torch.bool) if mutual is None else torch.as_tensor(mutual).bool().cpu()
    a = to_pil(img1)
    rows = []
    for i, colour in enumerate(palette(q.shape[0])):
        left = a.copy()
        x, y = q[i].tolist()
        r = max(4, min(a.size) // 40)
        ImageDraw.Draw(left).ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0), width=2)
        right = draw_heatmap(img2, heats[i], point=p[i], mutual=bool(keep[i]), colour=colour)
        rows.append(draw_matches(left, right, q[:0], p[:0], height=height))
    canvas = Image.new("RGB", (max((r.width for r in rows), default=0), height * len(rows)))
    for i, row in enumerate(rows):
        canvas.paste(row, (0, i * height))
    if out is not None:
        out = check_output(out, image_formats(), "drawing")
        with atomic_path(out) as tmp:
            canvas.save(tmp)
    return canvas


def to_pil(image: ImageInput) -> Image.Image:
    """Any image input (:func:`load_image`) as an RGB ``PIL.Image`` of the same ``W x H``.

    Example:
        >>> import torch
        >>> from distilldift.viz import to_pil
        >>> to_pil(torch.ones(3, 20, 30)).size, to_pil(torch.ones(3, 20, 30)).getpixel((0, 0))
        ((30, 20), (255, 255, 255))
    """
    t = load_image(image)
    arr = (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def draw_matches(
    img1: ImageInput,
    img2: ImageInput,
    points1: object,
    points2: object,
    *,
    mask: torch.Tensor | None = None,
    height: int | None = None,
    radius: int | None = None,
    lines: bool = True,
    out: str | os.PathLike | None = None,
) -> Image.Image:
    """Draw two images side by side with each correspondence in its own colour.

    Args:
        img1, img2: any image input accepted by :func:`load_image`.
        points1, points2: ``(N, 2)`` pixel ``(x, y)`` in ``img1`` / ``img2`` (original image pixels).
        mask: optional ``(N,)`` bool; False points (e.g. not mutual) are drawn hollow and without a line.
        height: height of the drawing (both images scaled to it); default: the larger image height, capped at 800.
        radius: marker radius in drawing pixels; default: scaled to the height.
        lines: connect corresponding points.
        out: save the drawing there (format from the extension, e.g. ``.png``).

    Returns:
        The RGB ``PIL.Image``, ``(width1 + width2)`` scaled to ``height``.

    Example:
        >>> import numpy as np
        >>> from distilldift import draw_matches
        >>> im = draw_matches(np.zeros((50, 80, 3), np.uint8), np.zeros((100, 100, 3), np.uint8),
        ...                   [[10, 10]], [[20, 40]])
        >>> im.size
        (260, 100)
    """
    _refuse_inputs(out, img1=img1, img2=img2)
    a, b = to_pil(img1), to_pil(img2)
    p1, p2 = as_points(points1, "points1"), as_points(points2, "points2")
    if p1.shape != p2.shape:
        raise InvalidInputError(
            f"points1 and points2 must have the same shape, got {tuple(p1.shape)} and {tuple(p2.shape)}"
        )
    h = height or min(800, max(a.height, b.height))
    s1, s2 = h / a.height, h / b.height
    a = a.resize((max(1, round(a.width * s1)), h), Image.BILINEAR)
    b = b.resize((max(1, round(b.width * s2)), h), Image.BILINEAR)
    canvas = Image.new("RGB", (a.width + b.width, h))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    draw = ImageDraw.Draw(canvas)
    r = radius or max(2, h // 100)
    keep = torch.ones(p1.shape[0], dtype=torch.bool) if mask is None else mask.bool().cpu()
    for i, color in enumerate(palette(p1.shape[0])):
        # pixel-centre (x, y) -> drawing coordinates: scale the continuous position (x + 0.5)
        x1, y1 = (p1[i, 0].item() + 0.5) * s1 - 0.5, (p1[i, 1].item() + 0.5) * s1 - 0.5
        x2, y2 = (p2[i, 0].item() + 0.5) * s2 - 0.5 + a.width, (p2[i, 1].item() + 0.5) * s2 - 0.5
        if lines and keep[i]:
            draw.line([(x1, y1), (x2, y2)], fill=color, width=max(1, r // 2))
        for x, y in ((x1, y1), (x2, y2)):
            box = [x - r, y - r, x + r, y + r]
            draw.ellipse(box, fill=color if keep[i] else None, outline=(0, 0, 0) if keep[i] else color, width=1)
    if out is not None:
        out = check_output(out, image_formats(), "drawing")
        with atomic_path(out) as tmp:
            canvas.save(tmp)
    return canvas


def draw_keypoints(
    image: ImageInput,
    keypoints: object,
    *,
    skeleton: list[list[int]] | None = None,
    height: int | None = None,
    out: str | os.PathLike | None = None,
) -> Image.Image:
    """Draw an object's keypoints, each in its own colour (keypoint ``i`` always gets ``palette(K)[i]``).

    Args:
        image: any image input accepted by :func:`load_image`.
        keypoints: ``(K, 2)`` pixel ``(x, y)``, or ``(K, 3)`` COCO ``(x, y, v)``: ``v = 2`` filled, ``v = 1``
            hollow (labelled with a low score, or not visible), ``v = 0`` left out.
        skeleton: COCO ``skeleton``: pairs of 1-based keypoint numbers joined by a grey line.
        height: height of the drawing; default: the image's, capped at 800.
        out: save the drawing there (format from the extension).

    Returns:
        The RGB ``PIL.Image``.

    Example:
        >>> import numpy as np
        >>> kp = [[10, 10, 2], [40, 20, 1], [60, 40, 0]]  # filled, hollow, left out
        >>> im = draw_keypoints(np.zeros((50, 80, 3), np.uint8), kp, skeleton=[[1, 2], [1, 3]])
        >>> im.size, im.getpixel((10, 10)) == palette(3)[0], im.getpixel((40, 20)), im.getpixel((25, 15))
        ((80, 50), True, (200, 200, 200), (200, 200, 200))
    """
    _refuse_inputs(out, image=image)
    pil = to_pil(image)
    kp = torch.as_tensor(keypoints, dtype=torch.float32) if not isinstance(keypoints, torch.Tensor) else keypoints
    if kp.numel() == 0:
        kp = torch.zeros(0, 3)
    if kp.ndim != 2 or kp.shape[1] not in (2, 3):
        raise ShapeError("keypoints", "(K, 2) (x, y) or (K, 3) (x, y, v)", tuple(kp.shape))
    v = kp[:, 2] if kp.shape[1] == 3 else torch.full((kp.shape[0],), 2.0)
    h = height or min(800, pil.height)
    s = h / pil.height
    pil = pil.resize((max(1, round(pil.width * s)), h), Image.BILINEAR) if s != 1 else pil.copy()
    draw = ImageDraw.Draw(pil)
    r = max(2, h // 90)
    xy = [((x + 0.5) * s - 0.5, (y + 0.5) * s - 0.5) for x, y in kp[:, :2].tolist()]
    for a, b in skeleton or []:
        if 1 <= a <= len(xy) and 1 <= b <= len(xy) and v[a - 1] > 0 and v[b - 1] > 0:
            draw.line([xy[a - 1], xy[b - 1]], fill=(200, 200, 200), width=max(1, r // 2))
    for i, colour in enumerate(palette(len(xy))):
        if v[i] <= 0:
            continue
        x, y = xy[i]
        filled = v[i] >= 2
        draw.ellipse(
            [x - r, y - r, x + r, y + r],
            fill=colour if filled else None,
            outline=(0, 0, 0) if filled else colour,
            width=2,
        )
    if out is not None:
        out = check_output(out, image_formats(), "drawing")
        with atomic_path(out) as tmp:
            pil.save(tmp)
    return pil


def draw_tracks(frame: ImageInput, points: torch.Tensor, visible: torch.Tensor | None = None, *, radius: int = 0):
    """Draw one frame of tracks: ``points`` ``(L, N, 2)``, the last ``L`` positions of ``N`` points (oldest first).

    Each point gets its own colour (:func:`palette`); its trail is a line through the visible positions, the
    current position a dot (hollow when not visible). Returns the RGB ``PIL.Image`` at the frame's size.

    Example:
        >>> import numpy as np, torch
        >>> from distilldift.viz import draw_tracks
        >>> im = draw_tracks(np.zeros((40, 60, 3), np.uint8), torch.tensor([[[5.0, 5.0]], [[20.0, 10.0]]]))
        >>> im.size, im.getpixel((20, 10)) != (0, 0, 0)
        ((60, 40), True)
    """
    img = to_pil(frame)
    draw = ImageDraw.Draw(img)
    r = radius or max(3, img.height // 120)
    length, n = points.shape[0], points.shape[1]
    vis = torch.ones(length, n, dtype=torch.bool) if visible is None else visible.bool()
    for i, color in enumerate(palette(n)):
        trail = [tuple(points[t, i].tolist()) for t in range(length) if vis[t, i]]
        if len(trail) > 1:
            draw.line(trail, fill=color, width=max(1, r // 2), joint="curve")
        x, y = points[-1, i].tolist()
        box = [x - r, y - r, x + r, y + r]
        draw.ellipse(box, fill=color if vis[-1, i] else None, outline=(0, 0, 0) if vis[-1, i] else color, width=2)
    return img


def render_tracks(video, tracks, out: str | os.PathLike, *, trail: int = 12, fps: float | None = None) -> str:
    """Write ``video`` with ``tracks`` drawn on it (each point's trail in its own colour) to ``out`` (H.264 .mp4).

    Frames are streamed: memory stays flat. ``trail``: number of past frames shown. Returns the output path.
    """
    _refuse_inputs(out, video=video)
    try:
        import av
    except ImportError:
        raise MissingDependencyError("rendering video needs PyAV: pip install 'distilldift[video]'") from None

    from .tracking.frames import iter_frames

    out = check_output(out, VIDEO_FORMATS, "video output")
    rate = fps or tracks.fps or 10.0
    with atomic_path(out) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(rate))
        stream.pix_fmt = "yuv420p"
        w, h = tracks.image_size
        stream.width, stream.height = w - w % 2, h - h % 2  # yuv420p needs even sizes
        for t, frame in enumerate(iter_frames(video)):
            if t >= len(tracks):
                break
            lo = max(0, t - trail + 1)
            img = draw_tracks(frame, tracks.points[lo : t + 1], tracks.visible[lo : t + 1])
            img = img.crop((0, 0, stream.width, stream.height))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(out)
