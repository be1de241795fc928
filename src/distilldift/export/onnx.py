"""Export the dense feature extractor to ONNX, with any input size.

The exported graph takes a normalised image batch ``(B, 3, H, W)`` (``DistillDiftModel.prepare``'s output; ``H`` and
``W`` multiples of the model's ``size_multiple``) and returns the L2-normalised feature map ``(B, C, H / stride,
W / stride)`` (what :meth:`DistillDiftModel.forward` returns, before any upsampling).

The one obstacle is DINOv2's position embeddings: timm resamples the 37 x 37 trained grid to each input's grid with
antialiased bicubic interpolation, which ONNX (and ONNX Runtime, TensorRT) lacks, and whose scale would be baked in
as a constant. Here that resampling is written as what it is, a linear map along each axis: the new grid is
``Wy @ P @ Wx^T`` with ``Wy`` ``(gh, 37)`` and ``Wx`` ``(gw, 37)`` the antialiased bicubic weights (Keys cubic,
``a = -0.5``, support widened by the scale when shrinking, each row normalised), computed in the graph from the
input's size. It equals PyTorch's ``F.interpolate(mode="bicubic", antialias=True)`` to float32 rounding (measured:
at most 1.4e-5 on unit-variance grids, 1e-6 on DINOv2's); it costs two small matrix products per forward pass.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import InvalidInputError, MissingDependencyError
from ..files import EXPORT_FORMATS, QUANTIZE_CHOICES, atomic_path, check_output
from ..models.model import DistillDiftModel

__all__ = [
    "export_onnx",
    "check_onnx",
    "aa_bicubic_weights",
    "resample_pos_embed",
    "exportable_pos_embed",
]


OPSET = 18
METADATA_PREFIX = "distilldift."  # the metadata keys of our exports: format, variant, precision, stride, ...
METADATA_FORMAT = "1"


def aa_bicubic_weights(out_size: int | torch.Tensor, in_size: int) -> torch.Tensor:
    """``(out_size, in_size)`` weights of PyTorch's antialiased bicubic resampling along one axis.

    ``F.interpolate(x, size, mode="bicubic", antialias=True, align_corners=False)`` along that axis equals
    ``weights @ x`` (float32 rounding apart). ``out_size`` may be a traced size (ONNX export with dynamic shapes).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from distilldift.export.onnx import aa_bicubic_weights
        >>> x = torch.randn(1, 1, 37, 8, generator=torch.Generator().manual_seed(0))
        >>> ref = F.interpolate(x, size=(31, 8), mode="bicubic", antialias=True)[0, 0]  # rows only
        >>> bool((aa_bicubic_weights(31, 37) @ x[0, 0] - ref).abs().max() < 3e-5)
        True
    """
    i = torch.arange(out_size, dtype=torch.float32)
    scale = in_size / torch.ones_like(i).sum()  # out_size as a tensor computed in the graph: not a baked constant
    shrink = scale >= 1
    invscale = torch.where(shrink, 1.0 / scale, torch.ones_like(scale))
    center = scale * (i + 0.5)
    j = torch.arange(in_size, dtype=torch.float32)
    x = ((j[None, :] - center[:, None] + 0.5) * invscale).abs()
    a = -0.5  # Keys' cubic, as PyTorch's antialiased bicubic (plain bicubic uses -0.75)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    w = torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    return w / w.sum(1, keepdim=True)


def resample_pos_embed(
    posemb: torch.Tensor,
    new_size: list[int],
    old_size: list[int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
    verbose: bool = False,
    align_corners: bool | None = None,
) -> torch.Tensor:
    """timm's ``resample_abs_pos_embed`` (same arguments) with the antialiased bicubic case as two matrix products.

    ``posemb``: ``(1, prefix + gh0 * gw0, C)``; returns ``(1, prefix + gh * gw, C)``.
    """
    if interpolation != "bicubic" or not antialias or align_corners:
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(
            posemb, new_size, old_size, num_prefix_tokens, interpolation, antialias, verbose, align_corners
        )
    if old_size is None:
        side = int(round((posemb.shape[1] - num_prefix_tokens) ** 0.5))
        old_size = [side, side]
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    c = grid.shape[-1]
    p = grid.float().reshape(old_size[0], old_size[1], c)
    wy = aa_bicubic_weights(new_size[0], int(old_size[0])).to(p.device)
    wx = aa_bicubic_weights(new_size[1], int(old_size[1])).to(p.device)
    out = torch.einsum("yi,ijc,xj->yxc", wy, p, wx).reshape(1, -1, c).to(posemb.dtype)
    return torch.cat([prefix, out], dim=1) if num_prefix_tokens else out


@contextlib.contextmanager
def exportable_pos_embed() -> Iterator[None]:
    """Within the block, timm's ViTs resample position embeddings with :func:`resample_pos_embed` (exportable)."""
    import timm.models.vision_transformer as vit

    original = vit.resample_abs_pos_embed
    vit.resample_abs_pos_embed = resample_pos_embed
    try:
        yield
    finally:
        vit.resample_abs_pos_embed = original


@contextlib.contextmanager
def _fp32(model: DistillDiftModel) -> Iterator[None]:
    """Within the block the model runs in float32 (export and its check); its precision is restored after."""
    saved = model.precision, model.precision_reason
    model.set_precision("fp32")
    try:
        yield
    finally:
        model.precision, model.precision_reason = saved


class _Features(torch.nn.Module):
    """The graph to export: normalised images -> normalised feature maps."""

    def __init__(self, model: DistillDiftModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def export_onnx(
    model: DistillDiftModel,
    out: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    dynamic: bool = True,
    opset: int = OPSET,
    exporter: str = "auto",
    quantize: str | None = None,
) -> Path:
    """Write ``model``'s feature extractor as an ONNX file (which ``load_model`` runs in ONNX Runtime).

    Args:
        model: a :class:`DistillDiftModel`; a LoRA adapter is merged into the exported weights (the model is left
            as it was).
        out: the ``.onnx`` file (written atomically).
        size: ``(H, W)`` of the example input (multiples of ``model.size_multiple``); default: the variant's input
            size, square. With ``dynamic=False`` the only size the file accepts.
        dynamic: batch, height and width free (any multiple of ``size_multiple``).
        exporter: ``"dynamo"`` (``torch.export``; ViTs), ``"torchscript"`` (the tracing exporter; CNNs, whose
            "same" padding is the same for every multiple of the total stride and whose shape arithmetic makes
            ``torch.export`` crawl) or ``"auto"`` (dynamo for ViTs, torchscript otherwise).
        quantize: ``"int8"``: int8 weights and dynamic int8 activations for the matrix products (ONNX Runtime's
            quantiser, ``MatMul``/``Gemm``; convolutions stay float: int8 ones were measured ~10x slower);
            ``None``: float32.

    The file carries the variant record and the output geometry as metadata (:data:`METADATA_PREFIX` keys), so
    ``load_model("model.onnx")`` feeds it images exactly as the PyTorch model is fed.

    Returns:
        The path written. Input ``"images"`` ``(B, 3, H, W)`` float32, output ``"features"`` ``(B, C, H / stride,
        W / stride)`` float32, L2-normalised over ``C``.

    Raises:
        MissingDependencyError: ``onnx`` / ``onnxscript`` not installed (``pip install 'distilldift[export]'``).

    Example:
        >>> import tempfile, pathlib
        >>> from distilldift.weights import create_model
        >>> from distilldift.export.onnx import check_onnx, export_onnx
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> path = export_onnx(model, pathlib.Path(tempfile.mkdtemp()) / "m.onnx", size=(56, 70))
        >>> diffs = check_onnx(path, model, [(56, 70), (84, 42)])  # another size than the example's
        >>> max(diffs.values()) < 1e-4
        True
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "ONNX export needs onnx and onnxscript: pip install 'distilldift[export]'"
        ) from None
    out = check_output(out, EXPORT_FORMATS["onnx"], "ONNX file")
    if quantize not in QUANTIZE_CHOICES:
        raise InvalidInputError(f"quantize must be one of {', '.join(map(str, QUANTIZE_CHOICES))}, got {quantize!r}")
    if model.precision == "int8":
        raise InvalidInputError("export the float model: its weights are int8 now; use quantize='int8' instead")
    m = model.size_multiple
    if size is None:
        size = (model.variant.input_size, model.variant.input_size)
    h, w = (int(v) for v in size)
    if h % m or w % m or h <= 0 or w <= 0:
        raise InvalidInputError(f"export size {h}x{w}: height and width must be positive multiples of {m}")
    p = next(model.parameters())
    example = torch.zeros(2 if dynamic else 1, 3, h, w, device=p.device, dtype=torch.float32)  # 2: not a fixed 1
    if exporter == "auto":
        exporter = "dynamo" if hasattr(model.timm_model, "pos_embed") else "torchscript"
    if exporter not in ("dynamo", "torchscript"):
        raise InvalidInputError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    was_training, was_merged = model.training, model.merged
    model.eval()
    model.merge_adapter()  # one weight per layer in the graph; undone exactly below
    try:
        # the graph is float32: a bf16 autocast would put bf16 casts in it
        with _fp32(model), exportable_pos_embed(), atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
            names = dict(input_names=["images"], output_names=["features"], opset_version=opset)
            if exporter == "dynamo":
                from torch.export import Dim

                free = {0: Dim("batch", min=1), 2: m * Dim("h", min=1), 3: m * Dim("w", min=1)}
                program = torch.onnx.export(
                    _Features(model).eval(),
                    (example,),
                    dynamic_shapes={"x": free} if dynamic else None,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                    **names,
                )
                program.save(str(tmp))
            else:
                # the tracer warns about shape comparisons it records as constants: for a CNN they hold for every
                # multiple of the total stride (checked at several sizes by tests/test_export.py)
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                axes = {"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch", 2: "h", 3: "w"}}
                torch.onnx.export(
                    _Features(model).eval(),
                    (example,),
                    str(tmp),
                    dynamic_axes=axes if dynamic else None,
                    dynamo=False,
                    **names,
                )
            if quantize == "int8":
                _quantize_int8(tmp)
            _write_metadata(tmp, model, quantize or "fp32")
    finally:
        if not was_merged:
            model.unmerge_adapter()
        model.train(was_training)
    return out


def _quantize_int8(path: Path) -> None:
    """Quantise the file's matrix products to int8 in place (ONNX Runtime's dynamic quantiser)."""
    import logging

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise MissingDependencyError("quantize='int8' needs onnxruntime: pip install 'distilldift[export]'") from None
    float_file = path.with_name(path.name + ".float")
    path.replace(float_file)
    quiet = logging.getLogger()  # the quantiser suggests a pre-processing pass through the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(float_file, path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        quiet.setLevel(level)
        float_file.unlink(missing_ok=True)


def _write_metadata(path: Path, model: DistillDiftModel, precision: str) -> None:
    """Record what ``load_model`` needs to run the file as the model: the variant, geometry and precision."""
    import json

    import onnx

    proto = onnx.load(str(path))
    meta = {
        "format": METADATA_FORMAT,
        "variant": json.dumps(model.variant.to_dict()),
        "precision": precision,
        "stride": str(model.stride),
        "size_multiple": str(model.size_multiple),
        "feature_dim": str(model.feature_dim),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    onnx.save(proto, str(path))


def check_sizes(model: DistillDiftModel, size: tuple[int, int] | None = None, *, dynamic: bool = True) -> list:
    """The ``(H, W)`` input sizes an export is checked at: the example size (default: the variant's, square) and,
    for a file with free sizes, a second one of another shape (smaller height, larger width).

    Example:
        >>> from distilldift.weights import create_model
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> check_sizes(m, (224, 224)), check_sizes(m, (224, 224), dynamic=False)
        ([(224, 224), (182, 252)], [(224, 224)])
    """
    m = model.size_multiple
    h, w = size or (model.variant.input_size, model.variant.input_size)
    return [(h, w)] + ([(max(m, h - 3 * m), w + 2 * m)] if dynamic else [])


def check_onnx(
    path: str | os.PathLike, model: DistillDiftModel, sizes: list[tuple[int, int]], *, batch: int = 1, seed: int = 0
) -> dict[tuple[int, int], float]:
    """Run the exported file with ONNX Runtime (CPU) and ``model`` on the same random inputs.

    Args:
        sizes: ``(H, W)`` input sizes to try (multiples of ``model.size_multiple``).

    Returns:
        ``{(H, W): largest absolute difference of the feature maps}``.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError(
            "checking an ONNX file needs onnxruntime: pip install 'distilldift[export]'"
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    out = {}
    try:
        for h, w in sizes:
            x = torch.randn(batch, 3, h, w, generator=gen)
            with torch.no_grad(), _fp32(model):
                ref = model(x.to(p.device, p.dtype)).float().cpu()
            got = torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
            if got.shape != ref.shape:
                raise InvalidInputError(
                    f"the ONNX file gives {tuple(got.shape)} at {h}x{w}, the model {tuple(ref.shape)}"
                )
            out[(h, w)] = float((got - ref).abs().max())
    finally:
        model.train(was_training)
    return out
