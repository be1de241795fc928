"""``distilldift eval``: benchmark scores (PCK on image pairs; TAP-Vid tracking)."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..datasets import DATASETS, TRACKING_DATASETS
from ..errors import InvalidInputError
from ..models.variants import DEFAULT_VARIANT
from .common import (
    BackendChoice,
    BackendOpt,
    CompileOpt,
    DeviceOpt,
    FlipChoice,
    ModelOpt,
    PrecisionChoice,
    PrecisionOpt,
    ProtocolChoice,
    ResizeOpt,
    SizeOpt,
    VerboseOpt,
    app,
    as_path,
    check_outputs,
    console,
    load,
    user_errors,
)


@app.command("eval")
@user_errors
def eval_(
    dataset: Annotated[
        str,
        typer.Option(
            help=f"Benchmark: {', '.join(DATASETS)} (image pairs) or {', '.join(TRACKING_DATASETS)} (tracking)."
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
    backend: BackendOpt = BackendChoice.torch,
    verbose: VerboseOpt = False,
    compile: CompileOpt = False,
) -> None:
    """PCK@0.1/0.05/0.01 (image and bbox thresholds) per point, pair and category; tapvid: AJ, delta_avg, OA."""
    from ..datasets import read_dataset
    from ..evaluation.pck import evaluate, save_result
    from ..matching.settings import MatchSettings

    check_outputs(
        device,
        (out, (".json",), "--out"),
        method=method or "soft",
        inputs=(("--root", root), ("--model", as_path(model))),
    )
    if dataset in TRACKING_DATASETS:
        loader = functools.partial(load, model, device, precision, compile)
        eval_tracking(dataset, root, model, loader, method or "soft", size, query, resolution, limit, out)
        return
    clash = [f"--{k}" for k, v in dict(method=method, flip=flip, size=size, resize=resize).items() if v is not None]
    if protocol.value == "paper" and clash:  # (the library says it too, with its keyword names, after loading)
        raise InvalidInputError(f"--protocol paper sets the matching itself; drop {', '.join(clash)}")
    data = read_dataset(dataset, root, split)
    net = load(model, device, precision, compile, backend=backend, verbose=verbose)
    flip_arg = flip.setting if flip else False
    settings = None if protocol.value == "paper" else MatchSettings(method=method or "soft", flip=flip_arg)
    r = evaluate(
        data,
        net,
        settings=settings,
        size=size,
        resize=resize.value if resize else None,
        limit=limit,
        protocol=protocol.value,
    )
    print_pck(r, f"{dataset} ({model})")
    if out is not None:
        save_result(r, out)
        console.print(f"wrote {out}")


def print_pck(r, title: str) -> None:
    """The PCK table (per category, their mean, all points, mean over pairs) and the protocol line."""
    table = Table(title=f"{title}: PCK per category, per-point average within each")
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


def eval_tracking(dataset, root, model, load, method, size, query, resolution, limit, out) -> None:
    """``eval --dataset tapvid``: TAP-Vid's protocol on ``track_video``, a table per clip and overall."""
    from ..evaluation.tracking import QUERY_MODES, evaluate_tracking, tracking_report
    from ..files import write_json
    from ..matching.settings import MatchSettings
    from ..tracking.track import TrackSettings

    if query not in QUERY_MODES:
        raise InvalidInputError(f"--query must be one of {', '.join(QUERY_MODES)}, got {query!r}")
    settings = TrackSettings(match=MatchSettings(method=method))
    clips = TRACKING_DATASETS[dataset](root)
    clips = clips if limit is None else itertools.islice(clips, limit)  # pickles are read lazily
    net = load()
    overall, per_clip = evaluate_tracking(
        clips, net, query_mode=query, resolution=resolution, settings=settings, size=size
    )
    report = tracking_report(overall, per_clip, query_mode=query, resolution=resolution)
    table = Table(title=f"{dataset} ({model}): point tracking")
    table.add_column("clip", overflow="fold")
    for name in ("AJ", "delta_avg", "OA"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, m in [*per_clip.items(), ("mean over clips", overall)]:
        table.add_row(name, *(f"{100 * v:.2f}" for v in (m.average_jaccard, m.average_delta, m.occlusion_accuracy)))
    console.print(table)
    console.print(report["protocol"])
    if out is not None:
        write_json(out, report, indent=1)
        console.print(f"wrote {out}")
