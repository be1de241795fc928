"""``distilldift train``: a recipe (distillation, 3D fine-tuning, keypoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import InvalidInputError
from .common import app, as_path, check_outputs, console, err_console, user_errors


@app.command(context_settings={"allow_extra_args": True})
@user_errors
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
    from .. import training
    from ..training.config import apply_overrides, load_recipe

    # click gives an option one value: the key=value items after the first (`--override a=1 b=2`) arrive as extras
    extra = list(ctx.args)
    stray = [a for a in extra if "=" not in a]
    if stray or (extra and not override):
        raise InvalidInputError(
            f"unexpected argument(s) {stray or extra}: recipe settings are key=value after --override "
            "(e.g. --override steps=100 lr=1e-3); see `distilldift train --help`"
        )
    check_outputs(
        None,
        (out, "folder", "--out"),
        inputs=(("--data", data), ("--recipe", as_path(recipe)), ("--init", as_path(init))),
    )
    config = apply_overrides(load_recipe(recipe), [*(override or []), *extra])
    if init is not None:
        config = apply_overrides(config, {"student_init": init})
    name = Path(recipe).stem if recipe.endswith(".json") else recipe
    try:
        folder = training.train(config, data, out, resume=resume, overwrite=overwrite, recipe=name, log=console.print)
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: checkpoints are written every {config.checkpoint_every} steps to "
            f"{escape(str(out / 'checkpoint.pt'))}; continue with the same command and --resume",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    console.print(f"wrote {folder}")
