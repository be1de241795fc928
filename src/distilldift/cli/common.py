"""What every command shares: the app, consoles, option types, error handling, points and outputs."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import DistillDiftError, InvalidInputError
from ..files import EXPORT_FORMATS, FEATURE_DTYPE_NAMES, QUANTIZE_CHOICES, write_failure
from ..models.precision import BACKENDS, PRECISION_CHOICES
from ..models.variants import EVAL_PROTOCOLS, RESIZE_MODES

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

    @property
    def setting(self) -> bool | str:
        """What ``MatchSettings.flip`` / ``LabelSettings.pose_align`` take: False, True or ``"auto"``."""
        return {"no": False, "yes": True, "auto": "auto"}[self.value]


HEATMAP_ROWS = 16  # match --heatmap: rows drawn at most

ResizeChoice = Enum("ResizeChoice", {mode: mode for mode in RESIZE_MODES}, type=str)  # from the library

PrecisionChoice = Enum("PrecisionChoice", {p: p for p in PRECISION_CHOICES}, type=str)

QuantizeChoice = Enum("QuantizeChoice", {q: q for q in QUANTIZE_CHOICES if q}, type=str)

BackendChoice = Enum("BackendChoice", {b: b for b in BACKENDS}, type=str)

ProtocolChoice = Enum("ProtocolChoice", {p: p for p in EVAL_PROTOCOLS}, type=str)

DtypeChoice = Enum("DtypeChoice", {d: d for d in FEATURE_DTYPE_NAMES}, type=str)

ExportFormat = Enum("ExportFormat", {name: name for name in EXPORT_FORMATS}, type=str)  # from the library


class YesNo(str, Enum):
    no = "no"
    yes = "yes"


class FormatChoice(str, Enum):
    adapter = "adapter"
    timm = "timm"


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _not_torchao_enum_notice(record: logging.LogRecord) -> bool:
    """torch >= 2.14 logs a deprecation notice when torchao (imported by transformers through peft, when installed)
    registers its enums; it concerns torchao's code, not the user's run."""
    return "is an Enum subclass and is now natively supported" not in record.getMessage()


def user_errors(fn):
    """Turn distilldift's user errors into a one-line message and exit code 2 (no traceback); warnings: one line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = show_warning
        logging.getLogger("torch.utils._pytree").addFilter(_not_torchao_enum_notice)
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


def parse_points(values: list[str]) -> list[list[float]]:
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


def read_points_file(path: Path) -> list[list[float]]:
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


def collect_points(values, points_file, grid: int, first_image) -> list[list[float]]:
    """Points from --points and --points-file; with none, a grid x grid spread over ``first_image()`` (3, H, W)."""
    pts = parse_points(values or [])
    if values and not pts:
        raise InvalidInputError("--points was given but holds no point; write x,y (pixels), e.g. --points 120,80")
    if points_file is not None:
        from_file = read_points_file(points_file)
        if not from_file:
            raise InvalidInputError(f"points file {str(points_file)!r} holds no point; write a list of [x, y]")
        pts += from_file
    if not pts:
        img = first_image()
        pts = grid_points(img.shape[-1], img.shape[-2], grid)
    return pts


def grid_points(width: int, height: int, n: int) -> list[list[float]]:
    """An ``n x n`` spread of points over the image, inset by half a step."""
    xs = [(i + 0.5) * width / n - 0.5 for i in range(n)]
    ys = [(j + 0.5) * height / n - 0.5 for j in range(n)]
    return [[x, y] for y in ys for x in xs]


def load(
    model: str,
    device: str | None,
    precision: PrecisionChoice | None = None,
    compile: bool = False,
    *,
    backend: BackendChoice | None = None,
    verbose: bool = False,
):
    """``load_model`` with the command's options; ``--verbose`` says which precision runs and why (stderr)."""
    from ..weights.loading import load_model

    net = load_model(
        model,
        device=device,
        precision=precision.value if precision else "auto",
        compile=compile,
        backend=backend.value if backend else "torch",
    )
    if verbose:
        where = f"ONNX Runtime ({net.path.name})" if getattr(net, "path", None) else "PyTorch"
        err_console.print(
            f"model {escape(model)}: {where}, precision {net.precision} ({escape(net.precision_reason)})",
            highlight=False,
            soft_wrap=True,
        )
    return net


def check_outputs(
    device: str | None,
    *outputs: tuple[Path | None, tuple[str, ...] | None, str],
    method: str | None = None,
    inputs: tuple[tuple[str, Path | None], ...] = (),
) -> None:
    """Check the device, the method and every output path before any work (a typo fails in a second); no output
    may be an input (or hold one, or be another output)."""
    from ..files import check_distinct, check_output
    from ..matching.localizers import list_localizers
    from ..weights.loading import check_device

    check_device(device)
    if method is not None and method not in list_localizers():
        raise InvalidInputError(f"--method {method!r}: choose one of {', '.join(list_localizers())}")
    check_distinct([(what, path) for path, _, what in outputs], inputs)
    for path, suffixes, what in outputs:
        if path is not None and suffixes != "folder":
            check_output(path, suffixes, what)


def as_path(value: str | None) -> Path | None:
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
    typer.Option(
        help="Arithmetic: auto (bf16 on a CUDA GPU and on a CPU with native bf16, else fp32), fp32, bf16, "
        "int8 (CPU: int8 Linear weights)."
    ),
]

BackendOpt = Annotated[
    BackendChoice,
    typer.Option(help="torch, or onnxruntime (CPU; exported once into the cache; --precision fp32 or int8)."),
]

VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say which backend and precision run, and why.")]

CompileOpt = Annotated[
    bool, typer.Option("--compile", help="torch.compile the model (slow first batch; for many images of one size).")
]

CacheDirOpt = Annotated[
    Path | None, typer.Option(help="Hugging Face cache folder (default: HF_HOME's); converted weights go inside.")
]
