"""Teachers behind one interface: images in, L2-normalised dense features on the student's grid out.

``ModelTeacher`` wraps any distilldift model (so any timm backbone: DINOv2-B/14 at 434 px, the offline
EfficientNet-Lite0, ...); ``EnsembleTeacher`` concatenates several teachers' per-location-normalised maps (the
paper's DINOv2 + SDXL-Turbo, 768 + 1280 channels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError, MissingDependencyError
from ..models.model import DistillDiftModel
from ..models.variants import get_variant, list_variants
from ..weights.loading import load_model
from .registry import TEACHERS, register_teacher
from .settings import Section, setting

__all__ = [
    "Teacher",
    "ModelTeacher",
    "EnsembleTeacher",
    "DiffusionTeacher",
    "DiffusionSettings",
    "TEACHERS",
    "build_teacher",
    "teacher_license",
    "to_grid",
]


def _scheduler_steps(key: str, value: list[int]) -> None:
    if not all(0 <= v < 1000 for v in value):
        raise InvalidInputError(f"{key} must lie in [0, 999] (the scheduler's training steps), got {value!r}")


def _prompt(key: str, value: str) -> None:
    try:
        value.format(category="cat")
    except (KeyError, IndexError, ValueError) as e:
        raise InvalidInputError(f"{key} may only use {{category}}, got {value!r} ({e})") from None


@dataclass
class DiffusionSettings(Section):
    """The diffusion teacher of a recipe (``distill.diffusion.*`` keys): the paper's SDXL-Turbo setting by default."""

    name: ClassVar[str] = "distill.diffusion"
    repo: str = "stabilityai/sdxl-turbo"  # a diffusers StableDiffusionXLPipeline on the Hugging Face Hub
    size: int = setting(980, low=64)  # input side (the paper: 980, giving 31 x 31 maps)
    # averaged maps (DDIM add_noise)
    timesteps: list[int] = setting(factory=lambda: [51, 101, 151, 201], check=_scheduler_steps)
    prompt: str = setting("a photo of a {category}", check=_prompt)


def to_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample ``(B, C, h, w)`` to ``grid = (gw, gh)`` (bilinear, cell centres aligned) and L2-normalise."""
    gw, gh = grid
    if features.shape[-2:] != (gh, gw):
        features = F.interpolate(features, size=(gh, gw), mode="bilinear", align_corners=False)
    return F.normalize(features.float(), dim=1)


class Teacher(nn.Module):
    """Interface: ``teacher(images, grid, categories)`` -> ``(B, C, gh, gw)`` unit-norm features.

    ``images``: ``(B, 3, H, W)`` in [0, 1], all one size; ``grid = (gw, gh)``: the student's feature grid for these
    images; ``categories``: one name per image (prompts of text-conditioned teachers) or ``None``.
    """

    name: str = "teacher"
    channels: int = 0

    def forward(self, images: torch.Tensor, grid: tuple[int, int], categories: Sequence[str] | None = None):
        raise NotImplementedError


class ModelTeacher(Teacher):
    """A distilldift model as a teacher, at its own input size (e.g. DINOv2-B/14 at 434 px)."""

    def __init__(self, model: DistillDiftModel, size: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = size
        self.name = f"{model.variant.name}@{size or model.variant.input_size}"
        self.channels = model.feature_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid: tuple[int, int], categories: Sequence[str] | None = None):
        p = next(self.model.parameters())
        x, _ = self.model.prepare(images.float(), self.size)
        return to_grid(self.model(x.to(p.device, p.dtype)), grid)


class EnsembleTeacher(Teacher):
    """Several teachers, each map normalised per location, concatenated along channels."""

    def __init__(self, teachers: Sequence[Teacher]):
        super().__init__()
        if not teachers:
            raise InvalidInputError("an ensemble needs at least one teacher: list one or more in the recipe's teachers")
        self.teachers = nn.ModuleList(teachers)
        self.name = "+".join(t.name for t in teachers)
        self.channels = sum(t.channels for t in teachers)

    def forward(self, images: torch.Tensor, grid: tuple[int, int], categories: Sequence[str] | None = None):
        return torch.cat([t(images, grid, categories) for t in self.teachers], dim=1)


class _Stop(Exception):
    """Raised by the feature hook: the rest of the UNet is not needed."""


class DiffusionTeacher(Teacher):
    """SDXL(-Turbo) features through diffusers: the paper's second teacher.

    Per image: resize to ``size`` (980), encode with the VAE (latent mean x scaling factor), add DDIM noise at each
    of ``timesteps`` ({51, 101, 151, 201}; fixed seed), run the UNet with the prompt "a photo of a {category}" and
    take the output of the first ResNet + Transformer pair of ``up_blocks[0]`` (1280 channels, 31 x 31 for
    SDXL at 980 px) through a forward hook that stops the UNet there; the maps are averaged over the timesteps,
    resampled to the student grid and L2-normalised.

    Args:
        pipe: a ``diffusers.StableDiffusionXLPipeline`` (``from_pretrained`` loads SDXL-Turbo).
    """

    def __init__(
        self,
        pipe,
        *,
        size: int = 980,
        timesteps: Sequence[int] = (51, 101, 151, 201),
        prompt: str = "a photo of a {category}",
        default_category: str = "object",
        seed: int = 0,
    ):
        super().__init__()
        from diffusers import DDIMScheduler

        self.pipe = pipe
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # add_noise as in DDIM training
        self.size, self.timesteps, self.prompt = size, tuple(int(t) for t in timesteps), prompt
        self.default_category, self.seed = default_category, seed
        self.block = pipe.unet.up_blocks[0].attentions[0]
        self.channels = int(pipe.unet.config.block_out_channels[-1])
        self.name = f"{type(pipe.unet).__name__}@{size}:t{'-'.join(map(str, self.timesteps))}"
        for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            m.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, repo: str = "stabilityai/sdxl-turbo", *, device=None, dtype=None, **kwargs):
        """Load the pipeline from the Hugging Face Hub (``pip install 'distilldift[train]'``)."""
        try:
            from diffusers import StableDiffusionXLPipeline
        except ImportError:
            raise MissingDependencyError(
                "the diffusion teacher needs diffusers: pip install 'distilldift[train]'"
            ) from None
        pipe = StableDiffusionXLPipeline.from_pretrained(repo, torch_dtype=dtype)
        return cls(pipe.to(device) if device is not None else pipe, **kwargs)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid: tuple[int, int], categories: Sequence[str] | None = None):
        pipe, unet = self.pipe, self.pipe.unet
        device, dtype = unet.device, unet.dtype
        b = images.shape[0]
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        x = (x * 2 - 1).to(device, pipe.vae.dtype)
        latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        names = list(categories) if categories is not None else [None] * b
        prompts = [self.prompt.format(category=c or self.default_category) for c in names]
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        # SDXL micro-conditioning: (original size, crop top-left, target size)
        time_ids = torch.tensor([[self.size, self.size, 0, 0, self.size, self.size]], device=device, dtype=dtype)
        cond = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.repeat(b, 1)}
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output.sample)
            raise _Stop

        handle = self.block.register_forward_hook(hook)
        total = None
        try:
            for t in self.timesteps:
                g = torch.Generator(device="cpu").manual_seed(self.seed + t)
                noise = torch.randn(latents.shape, generator=g, dtype=torch.float32).to(device, latents.dtype)
                step = torch.tensor([t], device=device)
                noisy = self.scheduler.add_noise(latents, noise, step).to(dtype)
                with contextlib.suppress(_Stop):
                    unet(noisy, step, encoder_hidden_states=embeds.to(dtype), added_cond_kwargs=cond)
                f = captured.pop().float()
                total = f if total is None else total + f
        finally:
            handle.remove()
        return to_grid(total / len(self.timesteps), grid)


@register_teacher("sdxl_turbo", "SDXL-Turbo: Stability AI non-commercial research community licence")
def _sdxl_turbo(settings: DiffusionSettings, device: torch.device) -> Teacher:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    kw = dict(size=settings.size, timesteps=settings.timesteps, prompt=settings.prompt)
    return DiffusionTeacher.from_pretrained(settings.repo, device=device, dtype=dtype, **kw)


def build_teacher(name: str, diffusion: DiffusionSettings, device: torch.device) -> Teacher:
    """A registered teacher (``TEACHERS``, e.g. ``sdxl_turbo`` with the recipe's ``diffusion`` settings), else
    the distilldift model ``name`` (a variant or a model folder) as a :class:`ModelTeacher`."""
    if name in TEACHERS:
        return TEACHERS[name][0](diffusion, device)
    return ModelTeacher(load_model(name, precision="fp32"))  # the engine sets autocast


def teacher_license(name: str) -> str:
    """The licence note a model trained on teacher ``name`` inherits (``""`` if none is known)."""
    if name in TEACHERS:
        return TEACHERS[name][1]
    return f"{name}: {get_variant(name).license}" if name in list_variants() and get_variant(name).license else ""
