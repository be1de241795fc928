"""Training recipes as settings records that check themselves; named recipes ship as JSON in
``training/recipes/``. A recipe is a :class:`TrainConfig`: the student, the optimiser and the loop at the top level,
and one nested section per objective (``distill``, ``co3d``, ``keypoints``: the section named by ``objective`` is the
one used)."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from ..datasets import DATASETS
from ..errors import InvalidInputError
from ..models.variants import list_variants
from .registry import TEACHERS
from .settings import Section, setting
from .teachers import DiffusionSettings

__all__ = [
    "TrainConfig",
    "DistillSettings",
    "Co3dSettings",
    "KeypointSettings",
    "load_recipe",
    "list_recipes",
    "apply_overrides",
    "objective_names",
]


def _teachers(key: str, value: list[str]) -> None:
    if not value:
        raise InvalidInputError(f'{key} must name at least one teacher, e.g. {key}=["lite"]')
    for name in value:
        if name not in TEACHERS and name not in list_variants() and not Path(name).is_dir():
            raise InvalidInputError(
                f"unknown teacher {name!r}: use {', '.join(sorted(TEACHERS))}, a variant name "
                f"({', '.join(list_variants())}) or a model folder"
            )


def _student_init(key: str, value: str) -> None:
    if value in ("pretrained", "random") or value in list_variants() or Path(value).is_dir():
        return
    raise InvalidInputError(
        f"{key} must be pretrained, random, a variant name ({', '.join(list_variants())}) or a model "
        f"folder; got {value!r}"
    )


def _datasets() -> list[str]:
    return list(DATASETS)


class ObjectiveSettings(Section):
    """A section holding one objective's settings (its ``name`` is the objective's)."""


@dataclass
class DistillSettings(ObjectiveSettings):
    """The ``distill`` objective (the paper's section 3.2): teachers, their cache, the image pairs, the loss terms."""

    name: ClassVar[str] = "distill"
    teachers: list[str] = setting(factory=lambda: ["dinov2_b14_reg"], check=_teachers)  # variant names (ensembled)
    copies: int = setting(1, low=1)  # augmented copies of each training image (cached: the teacher sees them too)
    augment: bool = False
    # "retrieval" | "category" | "given" (the pairs listed in pairs_file) | "dataset" (the image pairs of a benchmark's
    # split, keypoints unused: weakly supervised; pairs_dataset, pairs_split)
    pairs: str = setting("retrieval", choices=("retrieval", "category", "given", "dataset"))
    pairs_file: str = ""  # for pairs="given": JSON [["a.jpg", "b.jpg"], ...]; default: DATA/pairs.json
    pairs_dataset: str = setting("spair", choices=_datasets)  # for pairs="dataset": a benchmark reader (DATA: root)
    pairs_split: str = "trn"
    self_pairs: float = setting(0.0, low=0, high=1)  # probability of pairing an image with a copy of itself
    k: int = setting(10, low=1)  # retrieval neighbours
    retrieval_model: str = ""  # variant for the global embeddings; default: the first teacher
    weight: float = setting(1.0, low=0)  # weight of the paper's similarity loss (losses.py)
    start: int = setting(0, low=0)  # the similarity loss counts from this step on; before it, hints alone
    hint_weight: float = setting(0.0, low=0)  # > 0: add block-wise hints (hints.py); needs the teacher's arch.
    cache_batch_size: int = setting(8, low=1)
    diffusion: DiffusionSettings = setting(factory=DiffusionSettings)  # the sdxl_turbo teacher's settings


@dataclass
class Co3dSettings(ObjectiveSettings):
    """The ``co3d`` objective (3D fine-tuning, the paper's section 3.2): labels from CO3D's depth and cameras."""

    name: ClassVar[str] = "co3d"
    categories: list[str] = setting(factory=list)  # CO3D categories to use; empty: every one found
    frames_per_sequence: int = setting(4, low=2)  # frames taken evenly per sequence; the first is the source
    eps: float = setting(0.01, low=0, above=True)  # seen when |z_projected - z_target| < eps (authors: 0.01)
    max_labels: int = setting(4096, low=1)  # labels kept per (source, target) frame pair in the label cache
    points_per_pair: int = setting(128, low=1)  # labelled points drawn per pair and step
    kernel: int = setting(7, low=1)  # the Gaussian target's window, in feature cells (the paper: 7)
    sigma: float = setting(0.5, low=0, above=True)  # its standard deviation in cells (0.5 beat 1.4: BENCHMARKS.md)
    augment: bool = False  # random crop / flip / colour per image; the labels move with the pixels


@dataclass
class KeypointSettings(ObjectiveSettings):
    """The ``keypoints`` objective (supervised fine-tuning on annotated keypoint pairs, e.g. SPair-71k ``trn``)."""

    name: ClassVar[str] = "keypoints"
    dataset: str = setting("spair", choices=_datasets)  # a reader of distilldift.datasets (the data folder: root)
    split: str = "trn"
    # "cross_entropy": softmax over the target's cells vs a Gaussian at the true match (as co3d; default: it gives
    # every label a gradient however wrong the match); "soft_argmax": the authors' MSE on a soft-argmax (beta)
    loss: str = setting("cross_entropy", choices=("cross_entropy", "soft_argmax"))
    beta: float = setting(1000.0, low=0, above=True)  # soft_argmax: inverse temperature (the authors' 1000)
    points_per_pair: int = setting(32, low=1)  # labels drawn per pair and step (SPair pairs: up to ~30 keypoints)
    kernel: int = setting(7, low=1)  # cross_entropy: the Gaussian target's window and sigma, in cells (as co3d)
    sigma: float = setting(0.5, low=0, above=True)
    augment: bool = False  # random crop / flip / colour per image; the keypoints move with the pixels


def objective_names() -> tuple[str, ...]:
    """The objectives a recipe can name: the objective sections of :class:`TrainConfig`."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name in _OBJECTIVE_SECTIONS)


@dataclass
class TrainConfig(Section):
    """Everything a training run needs. Paper values: lr 1e-4, weight decay 0.05, LoRA r=8, tau 0.01, k=10.

    Example:
        >>> TrainConfig(steps=5).distill.teachers
        ['dinov2_b14_reg']
        >>> TrainConfig(objective="dance")
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: objective must be one of distill, co3d, keypoints, got 'dance'
    """

    objective: str = setting("distill", choices=objective_names)  # its section below holds its settings
    student: str = "distilldift_us"  # variant name; trained from its pretrained base unless student_init="random"
    # "pretrained" (base weights, fresh adapter) | "random" | a variant name or model folder (train its adapter on)
    student_init: str = setting("pretrained", check=_student_init)
    student_overrides: dict[str, Any] = setting(factory=dict)  # timm kwargs (tiny students)
    train: str = setting("lora", choices=("lora", "full"))  # the adapter only (q/v) | every weight
    lora_dropout: float = setting(0.05, low=0, high=1)
    image_size: int = setting(434, low=1)  # student (and teacher-cache) input side, stretched square
    temperature: float = setting(0.01, low=0, above=True)  # of every objective's softmax over the target's cells
    lr: float = setting(1e-4, low=0, above=True)
    weight_decay: float = setting(0.05, low=0)
    lr_step: int = setting(1000, low=1)  # StepLR: multiply the learning rate by lr_gamma every lr_step steps
    lr_gamma: float = setting(0.5, low=0, above=True)
    batch_size: int = setting(8, low=1)  # image pairs per step, over all processes
    steps: int = setting(1000, low=1)
    seed: int = 0
    checkpoint_every: int = setting(200, low=1)
    device: str = ""  # default: cuda if available, else cpu
    mixed_precision: str = setting("auto", choices=("auto", "bf16", "no"))  # auto: bf16 autocast on CUDA
    # keep BatchNorm statistics as they are (fine-tuning a pretrained CNN on small batches); false: learn them
    freeze_batchnorm: bool = False
    distill: DistillSettings = setting(factory=DistillSettings)
    co3d: Co3dSettings = setting(factory=Co3dSettings)
    keypoints: KeypointSettings = setting(factory=KeypointSettings)

    @property
    def section(self) -> ObjectiveSettings:
        """The settings of the objective this recipe trains."""
        return getattr(self, self.objective)


_OBJECTIVE_SECTIONS = ("distill", "co3d", "keypoints")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with distilldift."""
    return sorted(
        p.name[:-5] for p in resources.files(__package__).joinpath("recipes").iterdir() if p.name.endswith(".json")
    )


def load_recipe(name_or_path: str) -> TrainConfig:
    """A shipped recipe by name (``coco``, ``tiny``) or a JSON file; unknown keys are an error."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"recipe file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise InvalidInputError(
                f"recipe file {str(path)!r} must hold a JSON object of settings, got {type(data).__name__}"
            )
    elif name_or_path in list_recipes():
        data = json.loads(resources.files(__package__).joinpath("recipes", f"{name_or_path}.json").read_text())
    else:
        raise InvalidInputError(f"unknown recipe {name_or_path!r}; shipped: {', '.join(list_recipes())}, or a .json")
    return apply_overrides(TrainConfig(), data)


def apply_overrides(config: TrainConfig, values: dict[str, Any] | list[str]) -> TrainConfig:
    """Set fields from a dict or from ``["key=value", ...]`` (values parsed as JSON, else kept as strings).

    Nested sections take ``section.key=value`` or ``section={...}``. The result is built anew, so every value is
    checked (type, choices, range) here and a typo fails before any work.

    Example:
        >>> apply_overrides(TrainConfig(), ["steps=5", "distill.teachers=[\\"lite\\"]"]).distill.teachers
        ['lite']
        >>> apply_overrides(TrainConfig(), ["co3d.eps=0.02"]).co3d.eps
        0.02
    """
    if isinstance(values, list):
        parsed = {}
        for item in values:
            key, sep, raw = item.partition("=")
            if not sep:
                raise InvalidInputError(f"override {item!r}: write key=value, e.g. steps=100")
            try:
                parsed[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                parsed[key.strip()] = raw
        values = parsed
    data = copy.deepcopy(config.to_dict())
    for key, value in values.items():
        _merge(type(config), data, key.split("."), value, "")
    return _build(type(config), data)


def _merge(cls: type, data: dict, path: list[str], value: Any, prefix: str) -> None:
    """Put ``value`` at ``path`` of the section ``cls``'s dict ``data``; unknown keys are errors naming the known."""
    defaults = cls.defaults()
    key, name = path[0], prefix + path[0]
    if key not in defaults:
        where = f" in {prefix[:-1]}" if prefix else ""
        raise InvalidInputError(f"unknown recipe key {name!r}; known{where}: {', '.join(sorted(defaults))}")
    sub = defaults[key]
    if isinstance(sub, Section):
        if len(path) > 1:
            return _merge(type(sub), data[key], path[1:], value, name + ".")
        if not isinstance(value, dict):
            raise InvalidInputError(f"{name} must be a JSON object of its settings, e.g. {name}.<key>=value")
        for inner, v in value.items():
            _merge(type(sub), data[key], [inner], v, name + ".")
        return None
    if len(path) > 1:
        raise InvalidInputError(f"{name} has no settings inside it: write {name}=value")
    data[key] = value
    return None


def _build(cls: type, data: dict) -> Any:
    """The section ``cls`` from its dict (nested sections first): each checks itself."""
    defaults = cls.defaults()
    values = {k: _build(type(defaults[k]), v) if isinstance(defaults[k], Section) else v for k, v in data.items()}
    return cls(**values)
