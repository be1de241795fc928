"""``distilldift demo``: the web page."""

from __future__ import annotations

from typing import Annotated

import typer

from ..models.variants import DEFAULT_VARIANT
from .common import DeviceOpt, ModelOpt, YesNo, app, check_outputs, console, user_errors


@app.command()
@user_errors
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
    from ..demo.app import launch

    check_outputs(device)
    console.print(f"distilldift demo: model {model}; Ctrl+C stops it")
    launch(model, host=host, port=port, share=share == YesNo.yes, device=device, log=console.print)
