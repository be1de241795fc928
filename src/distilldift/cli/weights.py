"""Model files: ``export``, ``convert``, ``push``, ``models``, ``download``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import DistillDiftError, InvalidInputError
from ..files import EXPORT_FORMATS
from ..models.variants import DEFAULT_VARIANT
from .common import (
    CacheDirOpt,
    ExportFormat,
    FormatChoice,
    ModelOpt,
    PrecisionChoice,
    QuantizeChoice,
    app,
    as_path,
    check_outputs,
    console,
    load,
    user_errors,
)


@app.command("export")
@user_errors
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
    quantize: Annotated[
        QuantizeChoice | None,
        typer.Option(help="int8: int8 matrix products (ONNX Runtime's quantiser; CPU speed).", show_default=False),
    ] = None,
) -> None:
    """Export the dense feature extractor (normalised images -> feature maps) for ONNX Runtime / TensorRT.

    `load_model("file.onnx")` (and every command's --model file.onnx) runs the file in ONNX Runtime."""
    from ..export.onnx import check_onnx, check_sizes, export_onnx

    check_outputs(None, (out, EXPORT_FORMATS[format.value], "--out"), inputs=(("--model", as_path(model)),))
    net = load(model, "cpu", PrecisionChoice.fp32)
    path = export_onnx(net, out, size=size, dynamic=dynamic, quantize=quantize.value if quantize else None)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; input 'images' (B, 3, H, W), output 'features')")
    if check:
        try:
            diffs = check_onnx(path, net, check_sizes(net, size, dynamic=dynamic))
        except DistillDiftError as e:
            console.print(f"not checked: {e}")
            return
        console.print(
            "ONNX Runtime vs PyTorch, largest |difference|: "
            + ", ".join(f"{a}x{b}: {d:.1e}" for (a, b), d in diffs.items())
        )


def variant_arg(value: str):
    """A registered variant name, or a ``.json`` file holding a :class:`Variant` record (``Variant.to_dict``)."""
    from ..models.variants import Variant

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


@app.command()
@user_errors
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
    from ..weights.convert import convert_checkpoint, read_conversion

    check_outputs(
        None,
        (out, "folder", "--out"),
        inputs=(("CHECKPOINT", checkpoint), ("--base", base), ("--variant", as_path(variant))),
    )
    folder = convert_checkpoint(
        checkpoint, out, variant=variant_arg(variant), base=base, self_contained=self_contained, overwrite=overwrite
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
@user_errors
def push(
    folder: Annotated[Path, typer.Argument(help="A model folder (save_pretrained / convert output).")],
    repo_id: Annotated[str, typer.Argument(help="Hugging Face repo id, e.g. you/distilldift-us.")],
    format: Annotated[
        FormatChoice, typer.Option(help="adapter: peft adapter + distilldift config; timm: merged timm model.")
    ] = FormatChoice.adapter,
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
) -> None:
    """Upload a model folder to the Hugging Face Hub (log in first: `hf auth login`)."""
    from ..weights.loading import load_model
    from ..weights.publish import push_to_hub

    model = load_model(folder, merge=False)
    url = push_to_hub(model, repo_id, format=format.value, private=private)
    console.print(f"pushed {folder} to {repo_id} ({format.value} format): {url}")


@app.command()
@user_errors
def models(cache_dir: CacheDirOpt = None) -> None:
    """List the registered model variants, where their weights come from, and whether they are cached."""
    from ..models.variants import DEFAULT_VARIANT, get_variant, list_variants
    from ..weights.loading import weight_sources

    table = Table(title="distilldift model variants", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("model", ratio=3)
    table.add_column("weights from, in order (cached: *)", ratio=2, overflow="fold")
    for name in list_variants():
        v = get_variant(name)
        label = f"{name}\n(default)" if name == DEFAULT_VARIANT else name
        sources = weight_sources(v, cache_dir=cache_dir)
        where = "\n".join(s.describe() + (" *" if s.cached() else "") for s in sources)
        table.add_row(label, v.description, where)
    console.print(table)
    for line in precision_lines():
        console.print(line, highlight=False)
    console.print(
        "* in the local cache: loads without network. `distilldift download NAME` fills the cache (the authors' "
        "checkpoints are verified by their git blob id and converted once).",
        highlight=False,
    )


def precision_lines() -> list[str]:
    """What ``precision="auto"`` picks on this machine's devices, and why."""
    from ..models.precision import BF16_SPEEDUP_ON_CPU, choose_precision

    devices = ["cpu"]
    import torch

    if torch.cuda.is_available():
        devices.append("cuda")
    lines = ["precision='auto' on this machine:"]
    for device in devices:
        for kind in BF16_SPEEDUP_ON_CPU:
            choice = choose_precision("auto", device=device, kind=kind)
            lines.append(f"  {device}, {kind}: {choice.precision} ({choice.reason})")
    return lines


@app.command()
@user_errors
def download(
    names: Annotated[list[str] | None, typer.Argument(help="Variant names (default: the default model).")] = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Fill the local cache with variants' weights (before going offline, or on a cluster's login node)."""
    from ..models.variants import DEFAULT_VARIANT, get_variant
    from ..weights.loading import fetch_weights

    names = names or [DEFAULT_VARIANT]
    for name in names:
        get_variant(name)  # an unknown name fails before any download
    for name in names:
        source = fetch_weights(name, cache_dir=cache_dir)
        console.print(f"{name}: cached ({source.describe()})", highlight=False)
