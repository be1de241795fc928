"""Training recipes as small config records; named recipes ship as JSON in ``recipes/configs/``."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..datasets import DATASETS
from ..errors import InvalidInputError
from ..variants import list_variants
from .teachers import TEACHERS, DiffusionSettings

__all__ = ["TrainConfig", "Co3dSettings", "load_recipe", "list_recipes", "apply_overrides", "OBJECTIVES"]

OBJECTIVES = ("distill", "co3d", "keypoints")  # recipes/objectives.py maps each to its Objective


@dataclass
class Co3dSettings:
    """The ``co3d`` objective (3D fine-tuning, the paper's section 3.2): labels from CO3D's depth and cameras."""

    categories: list[str] = field(default_factory=list)  # CO3D categories to use; empty: every one found
    frames_per_sequence: int = 4  # frames taken evenly from each sequence; the first is the source (the authors' 4)
    eps: float = 0.01  # a projected point is seen when |z_projected - z_target| < eps (scene units; authors: 0.01)
    max_labels: int = 4096  # labels kept per (source, target) frame pair in the label cache
    points_per_pair: int = 128  # labelled points drawn per pair and step
    kernel: int = 7  # the Gaussian target's window, in feature cells (the paper: 7)
    sigma: float = 0.5  # its standard deviation, in feature cells (not in the paper; 0.5 beat 1.4: BENCHMARKS.md)
    augment: bool = False  # random crop / flip / colour per image; the labels move with the pixels


@dataclass
class KeypointSettings:
    """The ``keypoints`` objective (supervised fine-tuning on annotated keypoint pairs, e.g. SPair-71k ``trn``)."""

    dataset: str = "spair"  # a reader of distilldift.datasets (the data folder is its root)
    split: str = "trn"
    # "cross_entropy": softmax over the target's cells vs a Gaussian at the true match (as co3d; default: it gives
    # every label a gradient however wrong the match); "soft_argmax": the authors' MSE on a soft-argmax (beta)
    loss: str = "cross_entropy"
    beta: float = 1000.0  # soft_argmax: inverse temperature of the softmax (the authors' 1000)
    points_per_pair: int = 32  # labels drawn per pair and step (SPair pairs have up to ~30 keypoints)
    kernel: int = 7  # cross_entropy: the Gaussian target's window and sigma, in feature cells (as co3d)
    sigma: float = 0.5
    augment: bool = False  # random crop / flip / colour per image; the keypoints move with the pixels


@dataclass
class TrainConfig:
    """Everything a distillation run needs. Paper values: lr 1e-4, weight decay 0.05, LoRA r=8, tau 0.01, k=10."""

    objective: str = "distill"  # what is learned: "distill" (teachers, section 3.2) | "co3d" (3D fine-tuning)
    student: str = "distilldift_us"  # variant name; trained from its pretrained base unless student_init="random"
    # "pretrained" (base weights, fresh adapter) | "random" | a variant name or model folder (train its adapter on)
    student_init: str = "pretrained"
    student_overrides: dict[str, Any] = field(default_factory=dict)  # timm kwargs (tiny students)
    train: str = "lora"  # "lora" (the adapter only, q/v) | "full" (every weight)
    lora_dropout: float = 0.05
    teachers: list[str] = field(default_factory=lambda: ["dinov2_b14_reg"])  # variant names (ensembled)
    image_size: int = 434  # student (and teacher-cache) input side, stretched square
    copies: int = 1  # augmented copies of each training image (cached, so the teacher sees them too)
    augment: bool = False
    # "retrieval" | "category" | "given" (the pairs listed in pairs_file) | "dataset" (the image pairs of a benchmark's
    # split, keypoints unused: weakly supervised; pairs_dataset, pairs_split)
    pairs: str = "retrieval"
    pairs_file: str = ""  # for pairs="given": JSON [["a.jpg", "b.jpg"], ...]; default: DATA/pairs.json
    pairs_dataset: str = "spair"  # for pairs="dataset": a reader of distilldift.datasets (DATA is its root)
    pairs_split: str = "trn"
    self_pairs: float = 0.0  # probability of pairing an image with another augmented copy of itself
    k: int = 10
    retrieval_model: str = ""  # variant for the global embeddings; default: the first teacher
    temperature: float = 0.01
    distill_weight: float = 1.0  # weight of the paper's similarity loss (recipes/losses.py)
    distill_start: int = 0  # the similarity loss counts from this step on; before it, hints alone warm up the student
    hint_weight: float = 0.0  # > 0: add block-wise hints (recipes/hints.py); the student needs the teacher's arch.
    lr: float = 1e-4
    weight_decay: float = 0.05
    lr_step: int = 1000  # StepLR: multiply the learning rate by lr_gamma every lr_step steps
    lr_gamma: float = 0.5
    batch_size: int = 8  # image pairs per step, over all processes
    steps: int = 1000
    seed: int = 0
    checkpoint_every: int = 200
    cache_batch_size: int = 8
    device: str = ""  # default: cuda if available, else cpu
    mixed_precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "bf16" | "no"
    # keep BatchNorm statistics as they are (fine-tuning a pretrained CNN on small batches); false: learn them
    freeze_batchnorm: bool = False
    co3d: Co3dSettings = field(default_factory=Co3dSettings)  # objective="co3d" only
    keypoints: KeypointSettings = field(default_factory=KeypointSettings)  # objective="keypoints" only
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)  # the sdxl_turbo teacher's settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# bounds of numeric settings: (lowest, highest, lowest allowed itself)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "steps": (1, float("inf"), True),
    "batch_size": (1, float("inf"), True),
    "checkpoint_every": (1, float("inf"), True),
    "cache_batch_size": (1, float("inf"), True),
    "copies": (1, float("inf"), True),
    "k": (1, float("inf"), True),
    "image_size": (1, float("inf"), True),
    "lr_step": (1, float("inf"), True),
    "distill_start": (0, float("inf"), True),
    "lr": (0, float("inf"), False),
    "temperature": (0, float("inf"), False),
    "lr_gamma": (0, float("inf"), False),
    "weight_decay": (0, float("inf"), True),
    "distill_weight": (0, float("inf"), True),
    "hint_weight": (0, float("inf"), True),
    "lora_dropout": (0, 1, True),
    "self_pairs": (0, 1, True),
    "co3d.frames_per_sequence": (2, float("inf"), True),
    "co3d.eps": (0, float("inf"), False),
    "co3d.max_labels": (1, float("inf"), True),
    "co3d.points_per_pair": (1, float("inf"), True),
    "co3d.kernel": (1, float("inf"), True),
    "co3d.sigma": (0, float("inf"), False),
    "diffusion.size": (64, float("inf"), True),
    "keypoints.beta": (0, float("inf"), False),
    "keypoints.points_per_pair": (1, float("inf"), True),
    "keypoints.kernel": (1, float("inf"), True),
    "keypoints.sigma": (0, float("inf"), False),
}


# settings with a fixed set of values
_CHOICES: dict[str, tuple[str, ...]] = {
    "objective": OBJECTIVES,
    "train": ("lora", "full"),
    "pairs": ("retrieval", "category", "given", "dataset"),
    "keypoints.loss": ("cross_entropy", "soft_argmax"),
    "mixed_precision": ("auto", "bf16", "no"),
}


def _check_range(key: str, value: float) -> None:
    low, high, closed = _RANGES.get(key, (float("-inf"), float("inf"), True))
    if not (value >= low if closed else value > low) or value > high:
        bound = f">= {low:g}" if closed else f"> {low:g}"
        bound += f" and <= {high:g}" if high != float("inf") else ""
        raise InvalidInputError(f"{key} must be {bound}, got {value!r}")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with distilldift."""
    return sorted(
        p.name[:-5] for p in resources.files(__package__).joinpath("configs").iterdir() if p.name.endswith(".json")
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
        data = json.loads(resources.files(__package__).joinpath("configs", f"{name_or_path}.json").read_text())
    else:
        raise InvalidInputError(f"unknown recipe {name_or_path!r}; shipped: {', '.join(list_recipes())}, or a .json")
    return apply_overrides(TrainConfig(), data)


def apply_overrides(config: TrainConfig, values: dict[str, Any] | list[str]) -> TrainConfig:
    """Set fields from a dict or from ``["key=value", ...]`` (values parsed as JSON, else kept as strings).

    Nested sections take ``section.key=value`` or ``section={...}``. Every value is checked (type, choices, range)
    here, so a typo fails before any work.

    Example:
        >>> apply_overrides(TrainConfig(), ["steps=5", "teachers=[\\"lite\\"]"]).teachers
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
    out = copy.deepcopy(config)
    for key, value in values.items():
        _set(out, key.split("."), value, "")
    return out


def _set(record: Any, path: list[str], value: Any, prefix: str) -> None:
    """Check ``value`` against the field ``path`` of the dataclass ``record`` and set it."""
    known = {f.name: f for f in dataclasses.fields(record)}
    key, name = path[0], prefix + path[0]
    if key not in known:
        where = f" in {prefix[:-1]}" if prefix else ""
        raise InvalidInputError(f"unknown recipe key {name!r}; known{where}: {', '.join(sorted(known))}")
    default = getattr(type(record)(), key)
    if dataclasses.is_dataclass(default):
        if len(path) > 1:
            return _set(getattr(record, key), path[1:], value, name + ".")
        if not isinstance(value, dict):
            raise InvalidInputError(f"{name} must be a JSON object of its settings, e.g. {name}.<key>=value")
        for sub, v in value.items():
            _set(getattr(record, key), [sub], v, name + ".")
        return None
    if len(path) > 1:
        raise InvalidInputError(f"{name} has no settings inside it: write {name}=value")
    setattr(record, key, _checked(name, default, value))
    return None


def _checked(key: str, default: Any, value: Any) -> Any:
    if isinstance(default, list) and default and isinstance(default[0], int):
        if not (
            isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise InvalidInputError(f"{key} must be a JSON list of whole numbers, e.g. {key}={default}, got {value!r}")
        if key == "diffusion.timesteps" and not all(0 <= v < 1000 for v in value):
            raise InvalidInputError(f"{key} must lie in [0, 999] (the scheduler's training steps), got {value!r}")
        return list(value)
    if isinstance(default, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise InvalidInputError(f'{key} must be a JSON list of names, e.g. {key}=["lite"], got {value!r}')
    if isinstance(default, dict) and not isinstance(value, dict):
        raise InvalidInputError(f"{key} must be a JSON object, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise InvalidInputError(f"{key} must be a string, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise InvalidInputError(f"{key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key == "teachers" and not value:
        raise InvalidInputError('teachers must name at least one teacher, e.g. teachers=["lite"]')
    if key == "teachers":
        for name in value:
            if name not in TEACHERS and name not in list_variants() and not Path(name).is_dir():
                raise InvalidInputError(
                    f"unknown teacher {name!r}: use {', '.join(sorted(TEACHERS))}, a variant name "
                    f"({', '.join(list_variants())}) or a model folder"
                )
    if key in ("keypoints.dataset", "pairs_dataset") and value not in DATASETS:
        raise InvalidInputError(f"{key} must be one of {', '.join(DATASETS)}, got {value!r}")
    if key == "diffusion.size" and value % 8:
        raise InvalidInputError(f"diffusion.size must be a multiple of 8 (the VAE's stride), got {value!r}")
    if key == "diffusion.prompt":
        try:
            value.format(category="cat")
        except (KeyError, IndexError, ValueError) as e:
            raise InvalidInputError(f"diffusion.prompt may only use {{category}}, got {value!r} ({e})") from None
    if key == "student_init":
        _check_init(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise InvalidInputError(f"{key} must be true or false, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidInputError(f"{key} must be a number, got {value!r}")
        if isinstance(default, int) and value != int(value):
            raise InvalidInputError(f"{key} must be a whole number, got {value!r}")
        value = type(default)(value)
        _check_range(key, value)
    return value


def _check_init(value: str) -> None:
    if value in ("pretrained", "random") or value in list_variants() or Path(value).is_dir():
        return
    raise InvalidInputError(
        f"student_init must be pretrained, random, a variant name ({', '.join(list_variants())}) or a model "
        f"folder; got {value!r}"
    )
