"""The model: any timm backbone with ``forward_intermediates`` -> a dense, L2-normalised feature map. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, ShapeError
from ..images import GridGeometry, input_size_for, preprocess
from .precision import choose_precision, model_kind, quantize_int8
from .variants import Variant

__all__ = ["DistillDiftModel"]


def _reductions(backbone: nn.Module, layers: Sequence[int]) -> list[int]:
    """Stride (input pixels per cell) of each requested intermediate, from timm's ``feature_info``."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise InvalidInputError(f"{type(backbone).__name__} has no feature_info; use a timm backbone")
    reductions = [int(i["reduction"]) for i in info] if isinstance(info, list) else list(info.reduction())
    n = len(reductions)
    out = []
    for layer in layers:
        if not -n <= layer < n:
            raise InvalidInputError(f"layer index {layer} out of range for a backbone with {n} feature levels")
        out.append(reductions[layer])
    return out


def _qv_grad_mask(module: nn.Module, rank: int) -> None:
    """Keep a rank-2r peft LoRA on a fused qkv exactly a q/v-only adapter of rank r while training.

    ``lora_B`` (3C x 2r) may only be non-zero in the q rows x first r columns and the v rows x last r columns.
    """
    for name, sub in module.named_modules():
        if not name.endswith("lora_B.default"):
            continue
        w = sub.weight
        c = w.shape[0] // 3
        mask = torch.zeros_like(w)
        mask[:c, :rank] = 1
        mask[2 * c :, rank:] = 1
        with torch.no_grad():
            w.mul_(mask)
        if not getattr(sub, "_distilldift_qv_mask", False):
            w.requires_grad_(True)
            w.register_hook(lambda g, m=mask: g * m)
            sub._distilldift_qv_mask = True


class DistillDiftModel(nn.Module):
    """Dense descriptor network: a timm backbone (+ optional LoRA adapter) giving L2-normalised feature maps.

    Build one with :func:`distilldift.weights.create_model` (random init, no download) or
    :func:`distilldift.load_model` (weights). The model holds its :class:`Variant`, which fixes the input
    size, resize mode and normalisation used by :meth:`prepare`.

    Attributes:
        variant: the variant record this model was built from.
        backbone: the timm model (a ``peft.PeftModel`` around it when an adapter is attached).
        stride: input pixels per feature-grid cell (14 for ViT-B/14).
        size_multiple: input sides are rounded to a multiple of this (the coarsest stride used).
        feature_dim: channels ``C`` of the feature map.
        precision: ``"fp32"``, ``"bf16"`` (the forward pass under bfloat16 autocast) or ``"int8"`` (int8 Linear
            weights, CPU); features are returned as float32 either way. :meth:`set_precision`; ``load_model``'s
            ``"auto"`` picks bf16 on CUDA GPUs and on CPUs with native bf16. ``precision_reason`` says why.

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> model = create_model("distilldift_us", embed_dim=32, depth=1, num_heads=2)
        >>> x, geometry = model.prepare(torch.rand(3, 300, 400))  # (3, H, W) in [0, 1] -> model input
        >>> tuple(x.shape), geometry.grid_size
        ((3, 434, 434), (31, 31))
        >>> model(x[None]).shape  # (B, C, H / 14, W / 14), unit norm over C
        torch.Size([1, 32, 31, 31])
    """

    _compiled_features: Callable[[torch.Tensor, bool], torch.Tensor] | None = None  # compile_for_inference

    def __init__(self, backbone: nn.Module, variant: Variant):
        super().__init__()
        self.variant = variant
        self.backbone = backbone
        self.timm_model.to(memory_format=torch.channels_last)  # faster convolutions (CPU oneDNN, cuDNN)
        reductions = _reductions(self.timm_model, variant.layers)
        self.stride = min(reductions)
        self.size_multiple = max(reductions)
        self.feature_dim = int(self._probe_dim())
        self._premerge: dict[str, torch.Tensor] = {}  # exact base weights while the adapter is merged
        self.precision = "fp32"
        self.precision_reason = "the default of a new model"

    def set_precision(self, precision: str = "auto") -> DistillDiftModel:
        """Run the forward pass in ``"fp32"``, under ``"bf16"`` autocast, or with ``"int8"`` Linear weights (CPU).

        ``"auto"`` picks by device and model kind (:func:`~distilldift.models.precision.choose_precision`: bf16 on
        CUDA GPUs and on CPUs with native bf16, fp32 elsewhere); :attr:`precision_reason` says why. The features come
        back as float32 and L2-normalised either way; bf16 changes them by ~1e-2 (relative). An autocast context the
        caller opened (training) is left in charge. ``"int8"`` merges the adapter and quantises the weights in place
        (torchao): it is one-way (load the model again for float weights), and such a model cannot be saved.

        Example:
            >>> import torch
            >>> from distilldift.weights import create_model
            >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
            >>> x = torch.randn(1, 3, 28, 28)
            >>> f32 = m(x)
            >>> f16 = m.set_precision("bf16")(x)
            >>> f16.dtype, bool((f16 - f32).abs().max() < 0.1), torch.equal(f16, f32)
            (torch.float32, True, False)
            >>> m.precision_reason
            'asked for'
        """
        p = next(self.parameters())
        choice = choose_precision(precision, device=p.device, kind=model_kind(self.timm_model), dtype=p.dtype)
        if self.precision == "int8" and choice.precision != "int8":
            raise InvalidInputError(
                f"the weights are int8 now; load the model again for precision {choice.precision!r}"
            )
        if choice.precision == "int8" and self.precision != "int8":
            if p.dtype != torch.float32:
                raise InvalidInputError(f"precision 'int8' quantises float32 weights; these are {p.dtype}")
            self.merge_adapter()
            quantize_int8(self.timm_model)
        self.precision, self.precision_reason = choice.precision, choice.reason
        return self

    def compile_for_inference(self) -> DistillDiftModel:
        """``torch.compile`` the forward pass for inference, in place: one graph per input size (``dynamic=False``:
        dynamic shapes took over 10 minutes to compile ``lite`` on 2 cores), compiled with inductor's ``freezing``
        (weights as constants: batch norms folded into convolutions, weights pre-packed for oneDNN; ``lite`` in bf16
        ran ~1.6x faster than compiled without it on the AVX512-BF16 dev box, BENCHMARKS.md).

        ``freezing`` (and, for int8, the fusion of each int8 matrix product with its rescaling) is set only while
        this model's forward runs (read when a graph compiles), never for the rest of the process. Frozen weights
        are read when a graph compiles: load the model again after changing them. Under autograd (training) inductor
        does not freeze. What ``load_model(..., compile=True)`` / ``--compile`` call.

        Example:
            >>> import torch
            >>> from distilldift.weights import create_model
            >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2).eval()
            >>> x = torch.randn(1, 3, 28, 28)
            >>> eager = m(x)
            >>> with torch.inference_mode():
            ...     bool((m.compile_for_inference()(x) - eager).abs().max() < 1e-5)
            True
        """
        self._compiled_features = torch.compile(self._features, dynamic=False)
        return self

    def _run_features(self, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        if self._compiled_features is None:
            return self._features(x, normalize)
        from torch._inductor import config as inductor_config  # the documented switch; imported only when compiled

        # read while a graph compiles, by dynamo too (torch.compile's options= reach only inductor: measured no
        # faster than without freezing); int_mm fused with its rescale is what torchao recommends for int8
        with inductor_config.patch(freezing=True, force_fuse_int_mm_with_mul=True):
            return self._compiled_features(x, normalize)

    @property
    def timm_model(self) -> nn.Module:
        """The underlying timm model (LoRA layers, if any, live inside it)."""
        b = self.backbone
        return b.base_model.model if hasattr(b, "peft_config") else b

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    @property
    def merged(self) -> bool:
        """True when the adapter weights are merged into the base weights (zero inference overhead)."""
        if not self.has_adapter:
            return False
        layers = [m for _, m in self._tuner_layers()]
        return bool(layers) and all(m.merged for m in layers)

    def _tuner_layers(self) -> list[tuple[str, nn.Module]]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [(n, m) for n, m in self.timm_model.named_modules() if isinstance(m, BaseTunerLayer)]

    def merge_adapter(self) -> DistillDiftModel:
        """Merge the LoRA weights into the backbone (in place); forward then costs the same as the bare backbone.

        The exact base weights of the adapted layers are kept (on CPU) so that :meth:`unmerge_adapter` and saving
        restore them bit for bit (``W + dW - dW`` is not exactly ``W`` in floating point).
        """
        if self.has_adapter and not self.merged:
            self._premerge = {
                f"{name}.base_layer.weight": m.base_layer.weight.detach().to("cpu", copy=True)
                for name, m in self._tuner_layers()
            }
            self.backbone.merge_adapter()
        return self

    def unmerge_adapter(self) -> DistillDiftModel:
        """Undo :meth:`merge_adapter` exactly (needed before training the adapter again)."""
        if self.has_adapter and self.merged and self.precision == "int8":
            raise InvalidInputError("the weights are int8: the adapter cannot be unmerged; load the model again")
        if self.has_adapter and self.merged:
            self.backbone.unmerge_adapter()
            with torch.no_grad():
                for name, m in self._tuner_layers():
                    saved = self._premerge.get(f"{name}.base_layer.weight")
                    if saved is not None:
                        m.base_layer.weight.copy_(saved)
            self._premerge = {}
        return self

    @property
    def premerge_weights(self) -> dict[str, torch.Tensor]:
        """While merged: the exact base weights of the adapted layers (timm state-dict keys with peft's
        ``base_layer``); empty otherwise. :func:`~distilldift.weights.publish.base_state_dict` uses them, so saving a
        merged model never touches its weights."""
        return dict(self._premerge) if self.merged else {}

    def enable_qv_only_training(self) -> None:
        """Make ``lora_B`` trainable, zero it outside the q/v blocks, and mask its gradients there.

        A rank-2r peft adapter on the fused ``qkv`` then stays exactly a q/v-only adapter of rank r (the paper's).
        Idempotent.
        """
        lora = self.variant.lora
        if lora is None or not lora.qv_only:
            return
        _qv_grad_mask(self.timm_model, lora.rank)

    @torch.no_grad()
    def _probe_dim(self) -> int:
        m = self.size_multiple
        was_training = self.training
        self.eval()
        p = next(self.parameters())
        out = self._features(torch.zeros(1, 3, m, m, device=p.device, dtype=p.dtype))
        self.train(was_training)
        return out.shape[1]

    def _features(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        maps = self.timm_model.forward_intermediates(
            x, indices=list(self.variant.layers), norm=self.variant.final_norm, intermediates_only=True
        )
        if len(maps) == 1:
            return F.normalize(maps[0], dim=1) if normalize else maps[0]
        h = max(t.shape[-2] for t in maps)
        w = max(t.shape[-1] for t in maps)
        parts = [
            F.normalize(
                t if t.shape[-2:] == (h, w) else F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False),
                dim=1,
            )
            for t in maps
        ]
        out = torch.cat(parts, dim=1)
        return F.normalize(out, dim=1) if normalize else out

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Dense features of a normalised batch.

        Args:
            x: ``(B, 3, H, W)`` images already resized and normalised (see :meth:`prepare`); ``H`` and ``W``
                multiples of :attr:`size_multiple`.
            normalize: L2-normalise over channels (what matching uses). ``False`` gives the backbone's raw
                features, e.g. DINOv2's ``x_norm_patchtokens`` as a map (several layers: each layer is
                L2-normalised before they are concatenated).

        Returns:
            ``(B, C, H / stride, W / stride)`` features.
        """
        self.check_input(x)
        if self.precision == "bf16" and not torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                out = self._run_features(x, normalize=False).float()
            return F.normalize(out, dim=1) if normalize else out
        return self._run_features(x, normalize)

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a model input that is not ``(B, 3, H, W)`` with ``H`` and ``W`` multiples of
        :attr:`size_multiple` (a :class:`~distilldift.errors.ShapeError` naming the shape expected)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ShapeError("model input", "(B, 3, H, W)", tuple(x.shape))
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ShapeError("model input", f"(B, 3, H, W) with H and W multiples of {m}", tuple(x.shape))

    def geometry(self, image_size: tuple[int, int], size: int | None = None, resize: str | None = None) -> GridGeometry:
        """The :class:`GridGeometry` of an image of ``image_size = (W, H)`` at this model's (or the given) settings."""
        size = self.variant.input_size if size is None else size
        resize = self.variant.resize if resize is None else resize
        w, h = input_size_for(image_size, size, resize, self.size_multiple)
        self._check_fits(w, h, size)
        return GridGeometry(image_size=image_size, input_size=(w, h), grid_size=(w // self.stride, h // self.stride))

    def memory_needed(self, width: int, height: int) -> int:
        """Rough bytes one ``width x height`` input needs in a forward pass (image copies and activations; used to
        refuse sizes that cannot fit before anything is allocated).

        Example:
            >>> from distilldift.weights import create_model
            >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
            >>> m.memory_needed(434, 434) < m.memory_needed(868, 868) == 4 * m.memory_needed(434, 434)
            True
        """
        width_of_tokens = getattr(self.timm_model, "embed_dim", None)
        per_pixel = 9 + (8 * width_of_tokens / (self.stride * self.stride) if width_of_tokens else 64)
        return int(4 * per_pixel * width * height)

    def _check_fits(self, w: int, h: int, size: int | None) -> None:
        need = self.memory_needed(w, h)
        device = next(self.parameters()).device
        if device.type == "cuda":
            limit, where = torch.cuda.get_device_properties(device).total_memory, f"the GPU {device}"
        else:
            import os

            limit, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
        if need > limit:
            fits = int((size or max(w, h)) * (limit / need) ** 0.5) // self.size_multiple * self.size_multiple
            raise InvalidInputError(
                f"size {size}: a {w}x{h} input needs about {need / 1e9:.0f} GB, more than the {limit / 1e9:.0f} GB "
                f"of {where}; the largest size that fits is about {fits}"
            )

    def prepare(
        self,
        image: torch.Tensor,
        size: int | None = None,
        resize: str | None = None,
        *,
        geometry: GridGeometry | None = None,
    ) -> tuple[torch.Tensor, GridGeometry]:
        """Image(s) in [0, 1] -> (normalised model input, its :class:`GridGeometry`).

        The one place images become model inputs (matching, video, teachers, retrieval and training all call it).

        Args:
            image: ``(3, H, W)`` or a batch ``(B, 3, H, W)`` of one size.
            size, resize: input size / resize mode (default: the variant's).
            geometry: use this geometry (e.g. the query frame's for every frame of a video) instead of computing
                one from ``size`` and ``resize``; the image must have its ``image_size``.

        Returns:
            ``(3, h, w)`` or ``(B, 3, h, w)`` float32 input (resized bilinear with antialiasing, normalised with
            the variant's mean and std) and the geometry; ``(w, h) = geometry.input_size``.

        Example:
            >>> import torch
            >>> from distilldift.weights import create_model
            >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
            >>> x, geom = m.prepare(torch.rand(2, 3, 60, 90), size=84, resize="keep_aspect")
            >>> tuple(x.shape), geom.grid_size
            ((2, 3, 56, 84), (6, 4))
        """
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ShapeError("image", "(3, H, W) or (B, 3, H, W)", tuple(image.shape))
        size_wh = (int(image.shape[-1]), int(image.shape[-2]))
        if geometry is None:
            geometry = self.geometry(size_wh, size, resize)
        elif size_wh != geometry.image_size:
            w, h = geometry.image_size
            raise ShapeError("image", f"(..., 3, {h}, {w}) as the geometry", tuple(image.shape))
        return preprocess(image, geometry.input_size, self.variant.mean, self.variant.std), geometry

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant.name!r}, stride={self.stride}, feature_dim={self.feature_dim}, "
            f"adapter={self.has_adapter}, merged={self.merged}, precision={self.precision!r}"
        )


def build_backbone(variant: Variant, pretrained_file: str | None = None) -> nn.Module:
    """The timm backbone of ``variant``; with ``pretrained_file`` its weights are loaded through timm (strict)."""
    kwargs = dict(variant.arch_kwargs)
    if pretrained_file is None:
        return timm.create_model(variant.arch, pretrained=False, **kwargs)
    return timm.create_model(variant.arch, pretrained=True, pretrained_cfg_overlay=dict(file=pretrained_file), **kwargs)
