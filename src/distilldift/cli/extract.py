"""``distilldift extract``: features of images to a folder (datasets) or one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import InvalidInputError
from ..models.variants import DEFAULT_VARIANT
from .common import (
    BackendChoice,
    BackendOpt,
    CompileOpt,
    DeviceOpt,
    DtypeChoice,
    ModelOpt,
    PrecisionChoice,
    PrecisionOpt,
    ResizeOpt,
    SizeOpt,
    VerboseOpt,
    app,
    as_path,
    check_outputs,
    console,
    err_console,
    load,
    user_errors,
)


@app.command()
@user_errors
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
    backend: BackendOpt = BackendChoice.torch,
    verbose: VerboseOpt = False,
    compile: CompileOpt = False,
) -> None:
    """Save the dense features of images: to a folder (datasets; rerun to resume; torchrun-aware) or one file.

    Read a folder back by image name with ``FeatureStore(folder)`` (names: paths relative to the folder
    given, or as listed / given), a file with ``load_features`` (both in ``distilldift.features``).
    """
    from ..features.folder import ExtractSettings, extract_to_file, extract_to_folder, process_device

    resize_arg = resize.value if resize else None
    sources_in = tuple(("the source", p) for p in sources)
    check_outputs(None, (out, "folder", "--out"), inputs=(*sources_in, ("--model", as_path(model))))
    if out.suffix and out.suffix.lower() != ".safetensors" and not out.is_dir():
        raise InvalidInputError(
            f"--out {str(out)!r}: give a folder (features in shards + index.json) or a .safetensors file"
        )
    to_file = out.suffix.lower() == ".safetensors"
    device = device if to_file else process_device(device)
    check_outputs(device, *([(out, (".safetensors",), "--out")] if to_file else []))
    net = load(model, device, precision, compile, backend=backend, verbose=verbose)
    if to_file:
        n = extract_to_file(
            sources,
            out,
            net,
            model_name=model,
            size=size,
            resize=resize_arg,
            batch_size=batch_size or 1,
            dtype=dtype.value,
        )
        console.print(f"wrote {out} ({n} feature maps)")
        return
    how = ExtractSettings(batch_size, shard_size, decoders, workers, dtype.value, skip_bad)
    try:
        r = extract_to_folder(
            sources, out, net, model_name=model, size=size, resize=resize_arg, settings=how, progress=True
        )
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: the finished shards in {escape(str(out))} are kept; rerun the same command to resume",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    report_folder(r, out)


def report_folder(r, out) -> None:
    """What ``extract`` to a folder did (under torchrun: this process's share, and the whole from process 0)."""
    if r.processes > 1:  # torchrun: each process says its share
        console.print(
            f"process {r.process} of {r.processes}: {r.written} shards written, {r.done_before} were done before"
        )
    if r.process == 0:
        before = f"; {r.done_before} were done before" if r.done_before else ""
        bad = f"; {len(r.unreadable)} unreadable image(s) skipped" if r.unreadable else ""
        console.print(f"wrote {out}: {r.images} images in {r.shards} shards ({r.written} written now{before}{bad})")
