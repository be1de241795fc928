"""``distilldift match``: points of one image in another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..models.variants import DEFAULT_VARIANT
from .common import (
    HEATMAP_ROWS,
    BackendChoice,
    BackendOpt,
    DeviceOpt,
    FlipChoice,
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
def match(
    image1: Annotated[Path, typer.Argument(help="Source image (the points are on it).")],
    image2: Annotated[Path, typer.Argument(help="Target image.")],
    points: Annotated[
        list[str] | None,
        typer.Option("--points", "-p", help="Query point x,y in image1 pixels; repeat, or quote several: '1,2 3,4'."),
    ] = None,
    points_file: Annotated[Path | None, typer.Option(help="JSON file: a list of [x, y], or {'points': [...]}.")] = None,
    grid: Annotated[int, typer.Option(min=1, help="With no points: an N x N spread of points over image1.")] = 4,
    model: ModelOpt = DEFAULT_VARIANT,
    method: MethodOpt = "soft",
    flip: Annotated[FlipChoice, typer.Option(help="Match the mirrored image1: no, yes, auto (pose-align).")] = (
        FlipChoice.no
    ),
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write a side-by-side drawing (PNG/JPEG).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the matches as JSON.")] = None,
    heatmap: Annotated[
        Path | None,
        typer.Option(
            help=f"Write each point's similarity map over IMAGE2 (PNG/JPEG; the first {HEATMAP_ROWS} points)."
        ),
    ] = None,
    coarse_to_fine: Annotated[
        bool,
        typer.Option(
            "--coarse-to-fine", help="Search the best cell, then pixels near it (much faster for 1000s of points)."
        ),
    ] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
    backend: BackendOpt = BackendChoice.torch,
    verbose: VerboseOpt = False,
) -> None:
    """Find the points of IMAGE2 that correspond to points of IMAGE1."""
    from ..files import write_json
    from ..images import as_points, check_points_inside, load_image
    from ..matching.points import match_points, match_record
    from ..matching.settings import MatchSettings
    from ..viz import draw_heatmap_rows, draw_matches, image_formats

    formats = image_formats()
    check_outputs(
        device,
        (out, formats, "--out"),
        (json_out, (".json",), "--json"),
        (heatmap, formats, "--heatmap"),
        method=method,
        inputs=(("IMAGE1", image1), ("IMAGE2", image2), ("--points-file", points_file), ("--model", as_path(model))),
    )
    a, b = load_image(image1), load_image(image2)
    pts = as_points(collect_points(points, points_file, grid, lambda: a))
    check_points_inside(pts, (a.shape[-1], a.shape[-2]), "points")  # before the model loads
    flip_arg = flip.setting
    settings = MatchSettings(method=method, flip=flip_arg, exhaustive=not coarse_to_fine)
    net = load(model, device, precision, backend=backend, verbose=verbose)
    rows, resize_arg = (HEATMAP_ROWS if heatmap is not None else 0), (resize.value if resize else None)
    m = match_points(a, b, pts, model=net, settings=settings, size=size, resize=resize_arg, heatmaps=rows)
    table = Table(title=f"{image1.name} -> {image2.name} ({model})")
    for col in ("#", "x1", "y1", "x2", "y2", "score", "mutual"):
        table.add_column(col, justify="right")
    for i in range(len(m)):
        q, p = m.query[i].tolist(), m.points[i].tolist()
        mut = "yes" if m.mutual[i] else "no"
        table.add_row(str(i), f"{q[0]:.1f}", f"{q[1]:.1f}", f"{p[0]:.1f}", f"{p[1]:.1f}", f"{m.scores[i]:.3f}", mut)
    console.print(table)
    if m.flipped:
        console.print("matched the mirrored image1 (pose-align)")
    if out is not None:
        draw_matches(a, b, m.query, m.points, mask=m.mutual, out=out)
        console.print(f"wrote {out}")
    if heatmap is not None:
        n = min(len(m), HEATMAP_ROWS)
        draw_heatmap_rows(a, b, m.query[:n], m.points[:n], m.heatmaps, mutual=m.mutual[:n], out=heatmap)
        console.print(f"wrote {heatmap}" + (f" (the first {n} of {len(m)} points)" if n < len(m) else ""))
    if json_out is not None:
        sizes = dict(image1_size=(a.shape[-1], a.shape[-2]), image2_size=(b.shape[-1], b.shape[-2]))
        record = match_record(m, image1=str(image1), image2=str(image2), **sizes, model=model, method=method)
        write_json(json_out, record)
        console.print(f"wrote {json_out}")
