"""ONNX Runtime as an execution backend behind the same API as the PyTorch model.

:class:`OnnxRuntimeModel` is a :class:`~distilldift.models.model.DistillDiftModel` whose forward pass runs an ONNX
file written by :func:`~distilldift.export.onnx.export_onnx` (``distilldift export``) in ONNX Runtime on the CPU.
Everything else - ``prepare``, the geometry, the variant record - is the PyTorch model's, read from the file's
metadata, so ``extract_features``, ``match_points``, ``track_video``, ``evaluate`` and the CLI run on it unchanged.
``load_model("model.onnx")`` opens one; ``load_model(name, backend="onnxruntime")`` exports one into the cache once
(:func:`cached_export`) and opens it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..download import cache_root
from ..errors import CheckpointError, InvalidInputError, MissingDependencyError
from ..models.model import DistillDiftModel
from ..models.variants import Variant
from .onnx import METADATA_FORMAT, METADATA_PREFIX, OPSET, export_onnx

__all__ = ["OnnxRuntimeModel", "cached_export"]


def _session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("running an ONNX file needs onnxruntime: pip install 'distilldift[cpu]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads torch would use: one knob for both
    # no busy-waiting after a run: torch's threads run the next step on the same cores (spinning cost lite's
    # features ~40 %: 18 vs 12.9 ms per image on 2 cores, BENCHMARKS.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own (unexported) exception types for unreadable files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: ONNX Runtime cannot read it ({first}); export it again") from None


class OnnxRuntimeModel(DistillDiftModel):
    """A model whose forward pass runs an exported ONNX file in ONNX Runtime (CPU).

    Args:
        path: a ``.onnx`` file written by :func:`~distilldift.export.onnx.export_onnx` (it carries the variant).

    Attributes:
        path: the file. precision: ``"fp32"`` or ``"int8"`` (how it was exported). The rest as
        :class:`DistillDiftModel`; :meth:`prepare` and :meth:`geometry` are the same.

    Raises:
        CheckpointError: not an ONNX file, or not one of ours (no distilldift metadata).
        MissingDependencyError: onnxruntime is not installed.

    Example:
        >>> import pathlib, tempfile, torch
        >>> from distilldift import load_model
        >>> from distilldift.export.onnx import export_onnx
        >>> from distilldift.weights import create_model
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> path = export_onnx(model, pathlib.Path(tempfile.mkdtemp()) / "m.onnx", size=(56, 56))
        >>> fast = load_model(path)  # an OnnxRuntimeModel
        >>> x = torch.randn(1, 3, 42, 70)
        >>> fast(x).shape, bool((fast(x) - model(x)).abs().max() < 1e-4)
        (torch.Size([1, 32, 3, 5]), True)
    """

    def __init__(self, path: str | os.PathLike):
        nn.Module.__init__(self)
        self.path = Path(path)
        self._run = _session(self.path)
        meta = self._run.get_modelmeta().custom_metadata_map
        if meta.get(METADATA_PREFIX + "format") != METADATA_FORMAT:
            raise CheckpointError(
                f"{self.path} is not a distilldift ONNX export (no {METADATA_PREFIX}* metadata); "
                "write one with `distilldift export --format onnx` or distilldift.export.export_onnx"
            )
        self.variant = Variant.from_dict(json.loads(meta[METADATA_PREFIX + "variant"]))
        self.stride = int(meta[METADATA_PREFIX + "stride"])
        self.size_multiple = int(meta[METADATA_PREFIX + "size_multiple"])
        self.feature_dim = int(meta[METADATA_PREFIX + "feature_dim"])
        self.precision = meta[METADATA_PREFIX + "precision"]
        self.precision_reason = f"exported as {self.precision}"
        self.backbone = nn.Identity()  # no PyTorch weights: the graph lives in the session
        self._device = nn.Parameter(torch.zeros(0), requires_grad=False)  # where inputs are prepared (CPU)
        self._premerge = {}

    def set_precision(self, precision: str = "auto") -> OnnxRuntimeModel:
        """The file's precision is fixed at export; ``"auto"`` or that precision are accepted, others refused."""
        if precision not in ("auto", self.precision):
            quantize = " --quantize int8" if precision == "int8" else ""
            raise InvalidInputError(
                f"{self.path.name} was exported as {self.precision}; for {precision!r} export it again{quantize} "
                "or load the PyTorch model"
            )
        return self

    def _apply(self, fn, recurse=True):  # .to() / .cuda(): refused before anything moves
        if fn(torch.zeros(0)).device.type != "cpu":
            raise InvalidInputError(
                "the ONNX Runtime backend runs on CPU; on a GPU load the PyTorch model (backend='torch')"
            )
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised images (``H``, ``W`` multiples of :attr:`size_multiple`) ->
        ``(B, C, H / stride, W / stride)`` float32 features, L2-normalised over ``C``."""
        self.check_input(x)
        if not normalize:
            raise InvalidInputError("an ONNX export holds L2-normalised features only; use the PyTorch model")
        images = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self._run.run(["features"], {"images": images})[0]
        # unit norm again after the file's float32 / int8 rounding (numpy: no torch thread pool woken in between)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, variant={self.variant.name!r}, precision={self.precision!r}"


def _fingerprint(model: DistillDiftModel, quantize: str | None) -> str:
    """Digest of what the export depends on: weights, variant, precision, opset (16 hex digits)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([model.variant.to_dict(), quantize, OPSET], sort_keys=True).encode())
    for key, value in sorted(model.timm_model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_export(
    model: DistillDiftModel, *, precision: str = "fp32", cache_dir: str | os.PathLike | None = None
) -> Path:
    """The ONNX export of ``model`` in the cache, written on first use.

    ``<cache>/onnx/<variant>-<digest of weights and settings>-<precision>.onnx`` (``<cache>`` from
    :func:`distilldift.download.cache_root`): a model exported once is reused until its weights change.

    Args:
        precision: ``"fp32"`` or ``"int8"`` (ONNX Runtime's quantiser).
    """
    if precision not in ("fp32", "int8"):
        raise InvalidInputError(f"the ONNX Runtime backend runs fp32 or int8, not {precision!r}")
    quantize = "int8" if precision == "int8" else None
    path = cache_root(cache_dir) / "onnx" / f"{model.variant.name}-{_fingerprint(model, quantize)}-{precision}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, quantize=quantize)
    return path
