"""Which arithmetic a model runs in on this machine - fp32, bf16 autocast or int8 weights (CPU) - and why.

``precision="auto"`` decides per device *and* model kind:

- a CUDA GPU with bf16 support: bf16 autocast (about 2x faster on recent GPUs);
- a CPU with native bf16 (AVX512-BF16 or AMX, asked of torch, whose answer comes from cpuinfo): bf16 where it was
  measured faster for the model's kind (:data:`BF16_SPEEDUP_ON_CPU`); a CPU without it emulates bf16 (measured ~9x
  slower), so fp32 stays;
- anything else: fp32.

``"int8"`` (CPU only) quantises the weights of every Linear layer to int8 with dynamic int8 activations (torchao's
``Int8DynamicActivationInt8WeightConfig``); convolutions stay float (ONNX Runtime's dynamic int8 convolutions were
measured ~10x slower than float ones and moved ``lite``'s features to a cosine of 0.92). It is opt-in: its effect on
the paper's weights could not be measured offline (``BENCHMARKS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidInputError, MissingDependencyError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads the choices below without it
    import torch
    from torch import nn

__all__ = [
    "PRECISIONS",
    "PRECISION_CHOICES",
    "BACKENDS",
    "BF16_SPEEDUP_ON_CPU",
    "CpuFeatures",
    "Precision",
    "cpu_features",
    "choose_precision",
    "model_kind",
    "quantize_int8",
]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")  # float32; bfloat16 autocast; int8 Linear weights (CPU)
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")  # load_model(backend=...): eager PyTorch, or ONNX Runtime (CPU)

# bf16 autocast vs fp32 eager on a CPU with native bf16, per model kind (benchmarks/bench_cpu.py, BENCHMARKS.md):
# 2-core AMD EPYC with AVX512-BF16 + VNNI, torch 2.14.1, batch 1. A kind missing here keeps fp32 on CPU.
BF16_SPEEDUP_ON_CPU: dict[str, float] = {
    "vit": 1.42,  # ViT-B/14-reg at 434x434: 1169 -> 826 ms
    "cnn": 1.32,  # lite (EfficientNet-Lite0) at 320x320: 18.9 -> 14.4 ms
}


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU does natively, as torch reports it (cpuinfo), never parsed from ``/proc/cpuinfo`` by hand."""

    avx512_bf16: bool
    amx: bool
    vnni: bool

    @property
    def native_bf16(self) -> bool:
        return self.avx512_bf16 or self.amx

    def describe(self) -> str:
        names = [n for n, has in (("AVX512-BF16", self.avx512_bf16), ("AMX", self.amx), ("VNNI", self.vnni)) if has]
        return ", ".join(names) if names else "no AVX512-BF16, AMX or VNNI"


def cpu_features() -> CpuFeatures:
    """This CPU's bf16 / int8 instructions, from torch (``torch.cpu._is_avx512_bf16_supported`` and friends).

    Example:
        >>> from distilldift.models.precision import cpu_features
        >>> isinstance(cpu_features().native_bf16, bool)
        True
    """

    import torch

    def ask(name: str) -> bool:
        probe = getattr(torch.cpu, name, None)
        return bool(probe()) if probe is not None else False

    return CpuFeatures(
        avx512_bf16=ask("_is_avx512_bf16_supported"), amx=ask("_is_amx_tile_supported"), vnni=ask("_is_vnni_supported")
    )


@dataclass(frozen=True)
class Precision:
    """A resolved precision and the sentence saying why (``distilldift models`` and ``--verbose`` print it)."""

    precision: str
    reason: str


def model_kind(module: nn.Module) -> str:
    """``"vit"`` for a transformer with position embeddings, ``"cnn"`` otherwise (the keys of the speed table)."""
    return "vit" if hasattr(module, "pos_embed") else "cnn"


def choose_precision(
    requested: str, *, device: torch.device | str = "cpu", kind: str = "vit", dtype: torch.dtype | None = None
) -> Precision:
    """Resolve ``requested`` (``"auto"``, ``"fp32"``, ``"bf16"`` or ``"int8"``) for a model of ``kind`` on ``device``.

    Args:
        requested: one of :data:`PRECISION_CHOICES`.
        device: where the model runs.
        kind: ``"vit"`` or ``"cnn"`` (:func:`model_kind`).
        dtype: the weights' dtype; bf16 autocast and int8 apply to float32 weights only.

    Raises:
        InvalidInputError: an unknown precision, or ``int8`` anywhere but a CPU (says what to use instead).

    Example:
        >>> from distilldift.models.precision import choose_precision
        >>> choose_precision("fp32").precision
        'fp32'
        >>> choose_precision("int8", device="cuda")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: precision 'int8' runs on CPU only ...; on a GPU use ...
    """
    import torch

    if requested not in PRECISION_CHOICES:
        raise InvalidInputError(f"precision {requested!r}: choose one of {', '.join(PRECISION_CHOICES)}")
    device = torch.device(device)
    if requested == "int8" and device.type != "cpu":
        raise InvalidInputError(
            "precision 'int8' runs on CPU only (int8 dynamic matmuls); on a GPU use precision='auto' (bf16) or 'bf16'"
        )
    if requested != "auto":
        return Precision(requested, "asked for")
    if dtype not in (None, torch.float32):
        return Precision("fp32", f"the weights are {str(dtype).removeprefix('torch.')}: no autocast on top")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "a CUDA GPU with bf16")
        return Precision("fp32", "this GPU has no bf16")
    if device.type != "cpu":
        return Precision("fp32", f"the default on {device.type}")
    cpu = cpu_features()
    if not cpu.native_bf16:
        return Precision("fp32", f"this CPU has no native bf16 ({cpu.describe()}; emulated bf16 is ~9x slower)")
    speedup = BF16_SPEEDUP_ON_CPU.get(kind)
    if speedup is None or speedup <= 1:
        return Precision("fp32", f"bf16 was not measured faster than fp32 for a {kind} on CPU")
    return Precision("bf16", f"this CPU has native bf16 ({cpu.describe()}): {speedup:.2f}x fp32 for a {kind}")


def quantize_int8(module: nn.Module) -> nn.Module:
    """Quantise ``module``'s Linear layers in place: int8 weights, int8 dynamic activations (torchao).

    Raises:
        MissingDependencyError: torchao is not installed (``pip install 'distilldift[cpu]'``).
    """
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise MissingDependencyError("precision 'int8' needs torchao: pip install 'distilldift[cpu]'") from None
    # set_inductor_config=False: torchao would otherwise change inductor's settings for the whole process; the one
    # that matters on CPU (force_fuse_int_mm_with_mul) is set while a compiled model's forward runs instead
    quantize_(module, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    return module
