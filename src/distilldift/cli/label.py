"""``distilldift label``: keypoints annotated on a few images (COCO) transferred to many (COCO)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import InvalidInputError
from ..models.variants import DEFAULT_VARIANT
from .common import (
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
    check_outputs,
    console,
    load,
    user_errors,
)


@app.command()
@user_errors
def label(
    refs: Annotated[
        Path, typer.Argument(help="COCO keypoints file of the annotated references (CVAT, Label Studio...).")
    ],
    targets: Annotated[
        list[Path], typer.Argument(help="Images to label: files, folders (every image below) or .txt lists.")
    ],
    out: Annotated[Path, typer.Option(help="The labels: a COCO keypoints .json (references included).")],
    model: ModelOpt = DEFAULT_VARIANT,
    image_root: Annotated[
        Path | None, typer.Option(help="Folder the references' file_name are relative to (default: REFS' folder).")
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            min=1, help="References per target: the most similar (default: all of its category).", show_default=False
        ),
    ] = None,
    min_score: Annotated[float, typer.Option(min=0, max=1, help="Score for v=2; below: v=1 (kept).")] = 0.3,
    radius: Annotated[
        float, typer.Option(min=0.001, max=1, help="References within radius x the image's longer side agree.")
    ] = 0.08,
    pose_align: Annotated[
        FlipChoice, typer.Option(help="Mirror references (swapping left_*/right_*): auto (names pair), yes, no.")
    ] = FlipChoice.auto,
    category: Annotated[
        list[str] | None, typer.Option(help="Label this category on every target; repeat (default: most similar).")
    ] = None,
    method: MethodOpt = "soft",
    features: Annotated[
        Path | None, typer.Option(help="Keep the targets' features in this folder (a rerun resumes).")
    ] = None,
    preview: Annotated[Path | None, typer.Option(help="Write one drawing per labelled image into this folder.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 1,
    size: SizeOpt = None,
    resize: ResizeOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
    verbose: VerboseOpt = False,
) -> None:
    """Label keypoints on every target image from a few annotated references (COCO in, COCO out).

    Annotate a handful of images in any COCO keypoints tool, run this, check the --preview drawings (hollow
    points: low score), then train on --out.
    """
    from ..labelling import LabelSettings, check_labels_output, label_keypoints, preview_labels, write_labels
    from ..matching.settings import MatchSettings

    check_outputs(device, method=method)
    check_labels_output(out, overwrite=overwrite)
    if preview is not None and preview.exists() and not preview.is_dir():
        raise InvalidInputError(f"--preview {str(preview)!r} is a file; give a folder")
    how = LabelSettings(
        top_k=top_k,
        min_score=min_score,
        radius=radius,
        pose_align=pose_align.setting,
        categories=tuple(category) if category else None,
        match=MatchSettings(method=method),
        size=size,
        resize=resize.value if resize else None,
        batch_size=batch_size,
    )
    net = load(model, device, precision, verbose=verbose)
    labels = label_keypoints(refs, targets, net, image_root=image_root, settings=how, features=features, progress=True)
    write_labels(labels, out, overwrite=overwrite)
    new = [a for a in labels["annotations"] if a.get("labelled_by") == "distilldift"]
    points = [s for a in new for s in a["keypoint_scores"]]
    sure = sum(1 for a in new for i in range(2, len(a["keypoints"]), 3) if a["keypoints"][i] == 2)
    console.print(
        f"wrote {escape(str(out))}: {len({a['image_id'] for a in new})} images labelled, {len(points)} keypoints "
        f"({sure} with score >= {min_score})",
        highlight=False,
    )
    if preview is not None:
        drawn = preview_labels(labels, preview, progress=True)
        console.print(f"wrote {len(drawn)} drawings to {escape(str(preview))}", highlight=False)
