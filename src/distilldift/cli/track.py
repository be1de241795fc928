"""``distilldift track``: points through a video."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..models.variants import DEFAULT_VARIANT
from .common import (
    BackendChoice,
    BackendOpt,
    CompileOpt,
    DeviceOpt,
    MethodOpt,
    ModelOpt,
    PrecisionChoice,
    PrecisionOpt,
    ResizeOpt,
    SizeOpt,
    VerboseOpt,
    app,
    as_path,
    check_outputs,
    collect_points,
    console,
    load,
    user_errors,
)


@app.command()
@user_errors
def track(
    video: Annotated[Path, typer.Argument(help="Video file (any format PyAV reads) or a folder of frames.")],
    points: Annotated[
        list[str] | None,
        typer.Option("--points", "-p", help="Point x,y on the query frame; repeat, or quote several: '1,2 3,4'."),
    ] = None,
    points_file: Annotated[Path | None, typer.Option(help="JSON file: a list of [x, y], or {'points': [...]}.")] = None,
    grid: Annotated[
        int, typer.Option(min=1, help="With no points: an N x N spread of points over the query frame.")
    ] = 3,
    query_frame: Annotated[int, typer.Option(help="Index of the frame the points are on.")] = 0,
    model: ModelOpt = DEFAULT_VARIANT,
    batch_size: Annotated[
        int | None, typer.Option(help="Frames per forward pass (default: 4 on CPU, 8 on GPU).", show_default=False)
    ] = None,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    method: MethodOpt = "soft",
    out: Annotated[Path | None, typer.Option(help="Write the tracks: .json or .csv.")] = None,
    render: Annotated[Path | None, typer.Option(help="Write the video with the tracks drawn on it (.mp4).")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
    backend: BackendOpt = BackendChoice.torch,
    verbose: VerboseOpt = False,
    compile: CompileOpt = False,
) -> None:
    """Follow points placed on one frame through a whole VIDEO."""
    import time

    from ..matching.settings import MatchSettings
    from ..tracking.frames import iter_frames
    from ..tracking.track import TRACK_FORMATS, TrackSettings, track_video
    from ..viz import VIDEO_FORMATS, render_tracks

    check_outputs(
        device,
        (out, TRACK_FORMATS, "--out"),
        (render, VIDEO_FORMATS, "--render"),
        method=method,
        inputs=(("VIDEO", video), ("--points-file", points_file), ("--model", as_path(model))),
    )
    pts = collect_points(points, points_file, grid, lambda: next(iter_frames(video)))
    settings = TrackSettings(match=MatchSettings(method=method), batch_size=batch_size)
    net = load(model, device, precision, compile, backend=backend, verbose=verbose)
    start = time.perf_counter()
    tracks = track_video(
        video,
        pts,
        model=net,
        query_frame=query_frame,
        settings=settings,
        size=size,
        resize=resize.value if resize else None,
        progress=True,
    )
    elapsed = time.perf_counter() - start
    frames = len(tracks)
    of = f" (of the {tracks.frames_declared} the file declares)" if (tracks.frames_declared or 0) > frames else ""
    console.print(
        f"tracked {len(tracks.query)} points through {frames} frames{of} in {elapsed:.1f} s: "
        f"{frames / elapsed:.1f} FPS ({tracks.visible.float().mean():.0%} visible)"
    )
    if out is not None:
        tracks.save(out)
        console.print(f"wrote {out}")
    if render is not None:
        render_tracks(video, tracks, render)
        console.print(f"wrote {render}")
