"""The ``distilldift`` command line: a thin layer over the public API.

User errors (bad image, bad point, unknown model, missing weights) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import warnings
from enum import Enum
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DistillDiftError, InvalidInputError
from .files import EXPORT_FORMATS, FEATURE_DTYPE_NAMES, write_failure
from .variants import DEFAULT_VARIANT, EVAL_PROTOCOLS, PRECISION_CHOICES, RESIZE_MODES

app = typer.Typer(
    name="distilldift",
    help="Semantic correspondence with DistillDIFT: match points between images of different objects of the same kind.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help text is printed as written: "[x, y]" and "[demo]" stay
    pretty_exceptions_enable=False,
)
console = Console(markup=False, highlight=False)  # user text (paths, names) is printed as written
err_console = Console(stderr=True)


class FlipChoice(str, Enum):
    no = "no"
    yes = "yes"
    auto = "auto"


HEATMAP_ROWS = 16  # match --heatmap: rows drawn at most
ResizeChoice = Enum("ResizeChoice", {mode: mode for mode in RESIZE_MODES}, type=str)  # from the library
PrecisionChoice = Enum("PrecisionChoice", {p: p for p in PRECISION_CHOICES}, type=str)
ProtocolChoice = Enum("ProtocolChoice", {p: p for p in EVAL_PROTOCOLS}, type=str)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _user_errors(fn):
    """Turn distilldift's user errors into a one-line message and exit code 2 (no traceback); warnings: one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except DistillDiftError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # (typer would turn it into a silent exit 130)
            err_console.print("interrupted: nothing half-written was left (outputs are written whole)", highlight=False)
            raise typer.Exit(130) from None
        except OSError as e:  # a folder that cannot be made or written (read-only, immutable, full disk)
            if write_failure(e) is None:
                raise
            where = f"{e.filename!r}: " if e.filename else ""
            err_console.print(
                f"[bold red]error:[/] cannot write {escape(where)}{escape(e.strerror or str(e))}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper


def _parse_points(values: list[str]) -> list[list[float]]:
    """``["120,80", "200,150 30,40"]`` -> ``[[120, 80], [200, 150], [30, 40]]``."""
    out = []
    for value in values:
        for item in value.replace(";", " ").split():
            parts = item.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError
                out.append([float(parts[0]), float(parts[1])])
            except ValueError:
                raise typer.BadParameter(f"{item!r} is not a point; write x,y (pixels), e.g. --points 120,80") from None
    return out


def _read_points_file(path: Path) -> list[list[float]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"points file not found: {str(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"points file {str(path)!r} is not valid JSON: {e}") from None
    if isinstance(data, dict):
        data = data.get("points", data.get("query"))
    if not isinstance(data, list):
        raise InvalidInputError(f"points file {str(path)!r}: expected a JSON list of [x, y] or {{'points': [...]}}")
    return data


def _collect_points(values, points_file, grid: int, first_image) -> list[list[float]]:
    """Points from --points and --points-file; with none, a grid x grid spread over ``first_image()`` (3, H, W)."""
    pts = _parse_points(values or [])
    if values and not pts:
        raise InvalidInputError("--points was given but holds no point; write x,y (pixels), e.g. --points 120,80")
    if points_file is not None:
        from_file = _read_points_file(points_file)
        if not from_file:
            raise InvalidInputError(f"points file {str(points_file)!r} holds no point; write a list of [x, y]")
        pts += from_file
    if not pts:
        img = first_image()
        pts = _grid_points(img.shape[-1], img.shape[-2], grid)
    return pts


def _grid_points(width: int, height: int, n: int) -> list[list[float]]:
    """An ``n x n`` spread of points over the image, inset by half a step."""
    xs = [(i + 0.5) * width / n - 0.5 for i in range(n)]
    ys = [(j + 0.5) * height / n - 0.5 for j in range(n)]
    return [[x, y] for y in ys for x in xs]


def _load(model: str, device: str | None, precision: PrecisionChoice | None = None, compile: bool = False):
    from .loading import load_model

    return load_model(model, device=device, precision=precision.value if precision else "auto", compile=compile)


def _check_outputs(
    device: str | None,
    *outputs: tuple[Path | None, tuple[str, ...] | None, str],
    method: str | None = None,
    inputs: tuple[tuple[str, Path | None], ...] = (),
) -> None:
    """Check the device, the method and every output path before any work (a typo fails in a second); no output
    may be an input (or hold one, or be another output)."""
    from .files import check_distinct, check_output
    from .loading import check_device
    from .matching import list_localizers

    check_device(device)
    if method is not None and method not in list_localizers():
        raise InvalidInputError(f"--method {method!r}: choose one of {', '.join(list_localizers())}")
    check_distinct([(what, path) for path, _, what in outputs], inputs)
    for path, suffixes, what in outputs:
        if path is not None and suffixes != "folder":
            check_output(path, suffixes, what)


def _as_path(value: str | None) -> Path | None:
    """A command-line value naming a model / recipe / init: a path when it is one, else ``None`` (a name)."""
    return Path(value) if value is not None and Path(value).exists() else None


MethodOpt = Annotated[
    str, typer.Option(help="Localizer: nn, soft (window soft-argmax), or any registered with register_localizer.")
]
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Variant name (see `distilldift models`), model folder, or Hub repo id.")
]
DeviceOpt = Annotated[str | None, typer.Option(help="torch device, e.g. cpu or cuda (default: cpu).")]
SizeOpt = Annotated[int | None, typer.Option(min=1, help="Model input size in pixels (default: the variant's).")]
ResizeOpt = Annotated[ResizeChoice | None, typer.Option(help="Resize mode (default: the variant's).")]
PrecisionOpt = Annotated[
    PrecisionChoice,
    typer.Option(help="Arithmetic: auto (bf16 autocast on a CUDA GPU that has it, else fp32), fp32, bf16."),
]
CompileOpt = Annotated[
    bool, typer.Option("--compile", help="torch.compile the model (slow first batch; for many images of one size).")
]


@app.command()
@_user_errors
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
) -> None:
    """Find the points of IMAGE2 that correspond to points of IMAGE1."""
    from .features import extract_feature_maps
    from .images import as_points, check_points_inside, load_image
    from .matching import MatchSettings, match_feature_maps, match_record, similarity_heatmaps
    from .viz import draw_heatmap_rows, draw_matches, image_formats

    formats = image_formats()
    _check_outputs(
        device,
        (out, formats, "--out"),
        (json_out, (".json",), "--json"),
        (heatmap, formats, "--heatmap"),
        method=method,
        inputs=(("IMAGE1", image1), ("IMAGE2", image2), ("--points-file", points_file), ("--model", _as_path(model))),
    )
    a, b = load_image(image1), load_image(image2)
    pts = as_points(_collect_points(points, points_file, grid, lambda: a))
    check_points_inside(pts, (a.shape[-1], a.shape[-2]), "points")
    net = _load(model, device, precision)
    flip_arg = {"no": False, "yes": True, "auto": "auto"}[flip.value]
    images = [a, b] + ([a.flip(-1)] if flip_arg else [])  # what match_points computes, kept for the heat maps
    maps = extract_feature_maps(net, images, size=size, resize=resize.value if resize else None)
    mirrored = maps[2] if flip_arg else None
    settings = MatchSettings(method=method)
    m = match_feature_maps(
        maps[0], maps[1], pts, mirrored=mirrored, flip=flip_arg, settings=settings, exhaustive=not coarse_to_fine
    )
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
        heats = similarity_heatmaps(mirrored if m.flipped else maps[0], maps[1], pts[:n], flipped=m.flipped)
        draw_heatmap_rows(a, b, m.query[:n], m.points[:n], heats, mutual=m.mutual[:n], out=heatmap)
        console.print(f"wrote {heatmap}" + (f" (the first {n} of {len(m)} points)" if n < len(m) else ""))
    if json_out is not None:
        record = match_record(
            m,
            image1=str(image1),
            image2=str(image2),
            image1_size=(a.shape[-1], a.shape[-2]),
            image2_size=(b.shape[-1], b.shape[-2]),
            model=model,
            method=method,
        )
        from .files import atomic_path

        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}")


DtypeChoice = Enum("DtypeChoice", {d: d for d in FEATURE_DTYPE_NAMES}, type=str)


@app.command()
@_user_errors
def extract(
    sources: Annotated[
        list[Path],
        typer.Argument(help="Image files, folders (every image below) or .txt lists of image paths (one per line)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="A folder: features in shards + index.json, resumable, shared by torchrun processes. "
            "Or a .safetensors file: all features in one file (small sets)."
        ),
    ],
    model: ModelOpt = DEFAULT_VARIANT,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per forward pass (default: 16 on GPU, 1 on CPU).", show_default=False),
    ] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Folder: images per shard file.")] = 128,
    decoders: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Folder: processes decoding images (default: one per core, up to 8 on GPU, 2 on CPU).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Folder: forward passes at once (default: 2 on CPU, 1 on GPU).", show_default=False),
    ] = None,
    dtype: Annotated[DtypeChoice, typer.Option(help="Stored type (float16 halves the disk).")] = DtypeChoice.float32,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Folder: record unreadable images in the index and go on.")
    ] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
    compile: CompileOpt = False,
) -> None:
    """Save the dense features of images: to a folder (datasets; rerun to resume; torchrun-aware) or one file.

    Read a folder back by image name with ``distilldift.FeatureStore(folder)`` (names: paths relative to the folder
    given, or as listed / given), a file with ``distilldift.load_features``.
    """
    import os

    from .features import extract_feature_maps, save_features
    from .images import load_image
    from .store import FEATURE_DTYPES, extract_to_folder, list_images

    resize_arg = resize.value if resize else None
    sources_in = tuple(("the source", p) for p in sources)
    _check_outputs(None, (out, "folder", "--out"), inputs=(*sources_in, ("--model", _as_path(model))))
    if out.suffix and out.suffix.lower() != ".safetensors" and not out.is_dir():
        raise InvalidInputError(
            f"--out {str(out)!r}: give a folder (features in shards + index.json) or a .safetensors file"
        )
    if out.suffix.lower() != ".safetensors":
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
        _check_outputs(device)
        net = _load(model, device, precision, compile)
        try:
            r = extract_to_folder(
                sources,
                out,
                net,
                model_name=model,
                size=size,
                resize=resize_arg,
                batch_size=batch_size,
                shard_size=shard_size,
                decoders=decoders,
                workers=workers,
                dtype=dtype.value,
                skip_bad=skip_bad,
                progress=True,
            )
        except KeyboardInterrupt:
            err_console.print(
                f"interrupted: the finished shards in {escape(str(out))} are kept; rerun the same command to resume",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        if r.processes > 1:  # torchrun: each process says its share
            console.print(
                f"process {r.process} of {r.processes}: {r.written} shards written, {r.done_before} were done before"
            )
        if r.process == 0:
            before = f"; {r.done_before} were done before" if r.done_before else ""
            bad = f"; {len(r.unreadable)} unreadable image(s) skipped" if r.unreadable else ""
            console.print(f"wrote {out}: {r.images} images in {r.shards} shards ({r.written} written now{before}{bad})")
        return
    _check_outputs(device, (out, (".safetensors",), "--out"))
    items = [item for source in sources for item in list_images(source)]  # files in argument order
    net = _load(model, device, precision, compile)
    bs, maps = batch_size or 1, []
    for start in range(0, len(items), bs):  # images are decoded a batch at a time; only features are kept
        images = [load_image(path) for _, path in items[start : start + bs]]
        maps += extract_feature_maps(net, images, size=size, resize=resize_arg, batch_size=bs)
    save_features(maps, out, names=[name for name, _ in items], model=model, dtype=FEATURE_DTYPES[dtype.value])
    console.print(f"wrote {out} ({len(maps)} feature maps)")


@app.command()
@_user_errors
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
    compile: CompileOpt = False,
) -> None:
    """Follow points placed on one frame through a whole VIDEO."""
    import time

    from .frames import iter_frames
    from .video import TRACK_FORMATS, track_video
    from .viz import VIDEO_FORMATS, render_tracks

    _check_outputs(
        device,
        (out, TRACK_FORMATS, "--out"),
        (render, VIDEO_FORMATS, "--render"),
        method=method,
        inputs=(("VIDEO", video), ("--points-file", points_file), ("--model", _as_path(model))),
    )
    pts = _collect_points(points, points_file, grid, lambda: next(iter_frames(video)))
    net = _load(model, device, precision, compile)
    start = time.perf_counter()
    tracks = track_video(
        video,
        pts,
        model=net,
        query_frame=query_frame,
        batch_size=batch_size,
        size=size,
        resize=resize.value if resize else None,
        method=method,
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


@app.command("eval")
@_user_errors
def eval_(
    dataset: Annotated[
        str,
        typer.Option(
            help="Benchmark: spair, pf-willow, pf-pascal, cub (distilldift.datasets.DATASETS) or tapvid (tracking)."
        ),
    ],
    root: Annotated[
        Path,
        typer.Option(
            help="The folder the download unpacks to (SPair-71k, PF-WILLOW, PF-dataset-PASCAL, CUB_200_2011), "
            "or a TAP-Vid .pkl / folder of .pkl shards / folder of clips."
        ),
    ],
    model: ModelOpt = DEFAULT_VARIANT,
    split: Annotated[str, typer.Option(help="Split: test (SPair also val, trn; CUB also train).")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N pairs.")] = None,
    protocol: Annotated[
        ProtocolChoice,
        typer.Option(
            help="default: distilldift's matching (the options below); paper: the authors' evaluation for this model "
            "and benchmark (their settings, printed with the result)."
        ),
    ] = ProtocolChoice("default"),
    method: Annotated[str | None, typer.Option(help="Localizer: nn, soft (the default), or any registered.")] = None,
    flip: Annotated[FlipChoice | None, typer.Option(help="Pose-align: no (the default), yes, auto.")] = None,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON.")] = None,
    device: DeviceOpt = None,
    query: Annotated[
        str, typer.Option(help="tapvid: queries at each track's first visible frame or strided.")
    ] = "first",
    resolution: Annotated[int, typer.Option(min=16, help="tapvid: frames and metrics at this square size.")] = 256,
    precision: PrecisionOpt = PrecisionChoice.auto,
    compile: CompileOpt = False,
) -> None:
    """PCK@0.1/0.05/0.01 (image and bbox thresholds) per point, pair and category; tapvid: AJ, delta_avg, OA."""
    from .datasets import TRACKING_DATASETS, read_dataset
    from .evaluation import evaluate, save_result

    _check_outputs(
        device,
        (out, (".json",), "--out"),
        method=method or "soft",
        inputs=(("--root", root), ("--model", _as_path(model))),
    )
    if dataset in TRACKING_DATASETS:
        load = functools.partial(_load, model, device, precision, compile)
        _eval_tracking(dataset, root, model, load, method or "soft", size, query, resolution, limit, out)
        return
    clash = [f"--{k}" for k, v in dict(method=method, flip=flip, size=size, resize=resize).items() if v is not None]
    if protocol.value == "paper" and clash:  # (the library says it too, with its keyword names, after loading)
        raise InvalidInputError(f"--protocol paper sets the matching itself; drop {', '.join(clash)}")
    data = read_dataset(dataset, root, split)
    net = _load(model, device, precision, compile)
    flip_arg = {None: False, "no": False, "yes": True, "auto": "auto"}[flip.value if flip else None]
    r = evaluate(
        data,
        net,
        method=method,
        flip=flip_arg,
        size=size,
        resize=resize.value if resize else None,
        limit=limit,
        protocol=protocol.value,
    )
    table = Table(title=f"{dataset} ({model}): PCK per category, per-point average within each")
    table.add_column("category", overflow="fold")
    for kind in ("img", "bbox"):
        for a in r.alphas:
            table.add_column(f"{kind}\n@{a:g}", justify="right", no_wrap=True)  # two short lines: fits 80 columns
    rows = [(c, v) for c, v in r.categories.items()]
    rows += [("mean over categories", r.per_category), ("all points", r.per_point), ("mean over pairs", r.per_pair)]
    for name, values in rows:
        table.add_row(name, *[f"{100 * values[k][a]:.2f}" for k in ("img", "bbox") for a in r.alphas])
    console.print(table)
    console.print(
        f"{r.protocol}. {r.n_pairs} pairs, {r.n_points} points; features computed for "
        f"{r.settings['features_computed']} images."
    )
    if out is not None:
        save_result(r, out)
        console.print(f"wrote {out}")


def _eval_tracking(dataset, root, model, load, method, size, query, resolution, limit, out) -> None:
    """``eval --dataset tapvid``: TAP-Vid's protocol on ``track_video``, a table per clip and overall."""
    from .datasets import TRACKING_DATASETS
    from .files import atomic_path
    from .tapvid import QUERY_MODES, evaluate_tracking

    if query not in QUERY_MODES:
        raise InvalidInputError(f"--query must be one of {', '.join(QUERY_MODES)}, got {query!r}")
    clips = TRACKING_DATASETS[dataset](root)
    clips = clips if limit is None else itertools.islice(clips, limit)  # pickles are read lazily
    net = load()
    overall, per_clip = evaluate_tracking(clips, net, query_mode=query, resolution=resolution, method=method, size=size)
    protocol = (
        f"TAP-Vid protocol: {query} queries, frames and metrics at {resolution}x{resolution}, thresholds 1-16 px; "
        f"{overall.videos} clips, {overall.evaluated} (point, frame) entries; AJ and OA use track_video's visibility"
    )
    table = Table(title=f"{dataset} ({model}): point tracking")
    table.add_column("clip", overflow="fold")
    for name in ("AJ", "delta_avg", "OA"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, m in [*per_clip.items(), ("mean over clips", overall)]:
        table.add_row(name, *(f"{100 * v:.2f}" for v in (m.average_jaccard, m.average_delta, m.occlusion_accuracy)))
    console.print(table)
    console.print(protocol)
    if out is not None:
        record = {
            "protocol": protocol,
            "overall": overall.to_dict(),
            "clips": {k: m.to_dict() for k, m in per_clip.items()},
        }
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        console.print(f"wrote {out}")


ExportFormat = Enum("ExportFormat", {name: name for name in EXPORT_FORMATS}, type=str)  # from the library


@app.command("export")
@_user_errors
def export_model(
    out: Annotated[Path, typer.Option(help="Output file (.onnx).")],
    format: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.onnx,
    model: ModelOpt = DEFAULT_VARIANT,
    size: Annotated[
        tuple[int, int] | None,
        typer.Option(help="H W of the example input (default: the variant's size, square).", show_default=False),
    ] = None,
    dynamic: Annotated[
        bool, typer.Option("--dynamic/--static", help="--dynamic: any batch, height, width; --static: only --size.")
    ] = True,
    check: Annotated[bool, typer.Option(help="Compare with the PyTorch model in ONNX Runtime at two sizes.")] = True,
) -> None:
    """Export the dense feature extractor (normalised images -> feature maps) for ONNX Runtime / TensorRT."""
    from .export import check_onnx, export_onnx

    _check_outputs(None, (out, EXPORT_FORMATS[format.value], "--out"), inputs=(("--model", _as_path(model)),))
    net = _load(model, "cpu")
    path = export_onnx(net, out, size=size, dynamic=dynamic)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; input 'images' (B, 3, H, W), output 'features')")
    if check:
        m = net.size_multiple
        h, w = size or (net.variant.input_size, net.variant.input_size)
        sizes = [(h, w)] + ([(max(m, h - 3 * m), w + 2 * m)] if dynamic else [])
        try:
            diffs = check_onnx(path, net, sizes)
        except DistillDiftError as e:
            console.print(f"not checked: {e}")
            return
        console.print(
            "ONNX Runtime vs PyTorch, largest |difference|: "
            + ", ".join(f"{a}x{b}: {d:.1e}" for (a, b), d in diffs.items())
        )


class YesNo(str, Enum):
    no = "no"
    yes = "yes"


@app.command()
@_user_errors
def demo(
    model: ModelOpt = DEFAULT_VARIANT,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: 7860 or the next free one).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every network interface).")] = "127.0.0.1",
    share: Annotated[YesNo, typer.Option(help="yes: also a public *.gradio.live link (needs internet).")] = YesNo.no,
    device: DeviceOpt = None,
) -> None:
    """Start the interactive web page: click a point on one image, see where it lands in others (needs [demo])."""
    from .demo.app import launch

    _check_outputs(device)
    console.print(f"distilldift demo: model {model}; Ctrl+C stops it")
    launch(model, host=host, port=port, share=share == YesNo.yes, device=device, log=console.print)


@app.command(context_settings={"allow_extra_args": True})
@_user_errors
def train(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Option(help="A shipped recipe (an unknown name lists them) or a .json file.")],
    data: Annotated[Path, typer.Option(help="Folder of training images (recursive).")],
    out: Annotated[Path, typer.Option(help="Output folder: teacher cache, checkpoint, log, model/.")],
    override: Annotated[
        list[str] | None,
        typer.Option(help="Recipe key=value (JSON values), one or more: --override steps=100 lr=1e-3."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/checkpoint.pt (a larger steps extends the run).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Start again in an OUT that holds a run (deletes it).")] = False,
    init: Annotated[
        str | None,
        typer.Option(
            help="Start from this model: pretrained, random, a variant name or a model folder (student_init)."
        ),
    ] = None,
) -> None:
    """Train a recipe: distillation, 3D fine-tuning, keypoints (multi-GPU / multi-node: launch with torchrun)."""
    from .recipes.config import apply_overrides, load_recipe
    from .recipes.trainer import train as run

    # click gives an option one value: the key=value items after the first (`--override a=1 b=2`) arrive as extras
    extra = list(ctx.args)
    stray = [a for a in extra if "=" not in a]
    if stray or (extra and not override):
        raise InvalidInputError(
            f"unexpected argument(s) {stray or extra}: recipe settings are key=value after --override "
            "(e.g. --override steps=100 lr=1e-3); see `distilldift train --help`"
        )
    _check_outputs(
        None,
        (out, "folder", "--out"),
        inputs=(("--data", data), ("--recipe", _as_path(recipe)), ("--init", _as_path(init))),
    )
    config = apply_overrides(load_recipe(recipe), [*(override or []), *extra])
    if init is not None:
        config = apply_overrides(config, {"student_init": init})
    name = Path(recipe).stem if recipe.endswith(".json") else recipe
    try:
        folder = run(config, data, out, resume=resume, overwrite=overwrite, recipe=name, log=console.print)
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: checkpoints are written every {config.checkpoint_every} steps to "
            f"{escape(str(out / 'checkpoint.pt'))}; continue with the same command and --resume",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    console.print(f"wrote {folder}")


def _variant_arg(value: str):
    """A registered variant name, or a ``.json`` file holding a :class:`Variant` record (``Variant.to_dict``)."""
    from .variants import Variant

    if not value.endswith(".json"):
        return value
    path = Path(value)
    try:
        return Variant.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InvalidInputError(f"variant file not found: {value!r}") from None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise InvalidInputError(
            f"variant file {value!r} is not a Variant record (JSON of Variant.to_dict()): {e}"
        ) from None


class FormatChoice(str, Enum):
    adapter = "adapter"
    timm = "timm"


@app.command()
@_user_errors
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="The authors' checkpoint (.pt/.ckpt/.bin or .safetensors).")],
    out: Annotated[Path, typer.Option(help="Output model folder (load_model reads it).")],
    variant: Annotated[
        str,
        typer.Option(help="Variant the checkpoint belongs to: a registered name, or a JSON file of a Variant record."),
    ] = DEFAULT_VARIANT,
    base: Annotated[
        Path | None, typer.Option(help="Local base weights (default: the variant's, from the Hub).")
    ] = None,
    self_contained: Annotated[bool, typer.Option(help="Also write the base weights into the folder.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Convert an authors' checkpoint into a distilldift model folder (exact same features)."""
    from .convert import convert_checkpoint, read_conversion

    _check_outputs(
        None,
        (out, "folder", "--out"),
        inputs=(("CHECKPOINT", checkpoint), ("--base", base), ("--variant", _as_path(variant))),
    )
    folder = convert_checkpoint(
        checkpoint, out, variant=_variant_arg(variant), base=base, self_contained=self_contained, overwrite=overwrite
    )
    console.print(f"wrote {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    r = read_conversion(folder)
    taken = r["from_checkpoint"]
    console.print(
        f"from {r['checkpoint']}: LoRA on {len(r['lora_blocks'])} blocks, {len(taken)} backbone tensors"
        + (f" ({', '.join(taken[:4])}{' ...' if len(taken) > 4 else ''})" if taken else "")
        + (f"; {r['from_base_count']} from {r['from_base']}" if r["from_base"] else "")
        + " (all listed in conversion.json)"
    )


@app.command()
@_user_errors
def push(
    folder: Annotated[Path, typer.Argument(help="A model folder (save_pretrained / convert output).")],
    repo_id: Annotated[str, typer.Argument(help="Hugging Face repo id, e.g. you/distilldift-us.")],
    format: Annotated[
        FormatChoice, typer.Option(help="adapter: peft adapter + distilldift config; timm: merged timm model.")
    ] = FormatChoice.adapter,
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
) -> None:
    """Upload a model folder to the Hugging Face Hub (log in first: `hf auth login`)."""
    from .loading import load_model

    model = load_model(folder, merge=False)
    url = model.push_to_hub(repo_id, format=format.value, private=private)
    console.print(f"pushed {folder} to {repo_id} ({format.value} format): {url}")


CacheDirOpt = Annotated[
    Path | None, typer.Option(help="Hugging Face cache folder (default: HF_HOME's); converted weights go inside.")
]


@app.command()
@_user_errors
def models(cache_dir: CacheDirOpt = None) -> None:
    """List the registered model variants, where their weights come from, and whether they are cached."""
    from .loading import weight_sources
    from .variants import DEFAULT_VARIANT, get_variant, list_variants

    table = Table(title="distilldift model variants", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("model", ratio=3)
    table.add_column("weights from, in order (cached: *)", ratio=2, overflow="fold")
    for name in list_variants():
        v = get_variant(name)
        label = f"{name}\n(default)" if name == DEFAULT_VARIANT else name
        sources = weight_sources(v, cache_dir=cache_dir)
        where = "\n".join(s.describe() + (" *" if s.cached else "") for s in sources)
        table.add_row(label, v.description, where)
    console.print(table)
    console.print(
        "* in the local cache: loads without network. `distilldift download NAME` fills the cache (the authors' "
        "checkpoints are verified by their git blob id and converted once).",
        highlight=False,
    )


@app.command()
@_user_errors
def download(
    names: Annotated[list[str] | None, typer.Argument(help="Variant names (default: the default model).")] = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Fill the local cache with variants' weights (before going offline, or on a cluster's login node)."""
    from .loading import fetch_weights
    from .variants import DEFAULT_VARIANT, get_variant

    names = names or [DEFAULT_VARIANT]
    for name in names:
        get_variant(name)  # an unknown name fails before any download
    for name in names:
        source = fetch_weights(name, cache_dir=cache_dir)
        console.print(f"{name}: cached ({source.describe()})", highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"distilldift {version('distilldift')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """Semantic correspondence with DistillDIFT."""


# click's UsageError (typer vendors click, so it is reached through a public subclass)
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main() -> None:
    """Console-script entry point: usage mistakes print one line and exit with status 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="distilldift", standalone_mode=False)
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `distilldift` / `distilldift CMD`: the help text
            console.print(e.format_message(), markup=False, highlight=False)
            sys.exit(0)
        where = f"`{e.ctx.command_path} --help`" if e.ctx is not None else "`distilldift --help`"
        err_console.print(
            f"[bold red]error:[/] {escape(e.format_message())} (see {where})", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
