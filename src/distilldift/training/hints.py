"""Block-wise hints: each stage of the student learns to map the teacher's input of that stage to its output.

With a few dozen training images the paper's loss (one similarity distribution per location) is too little signal
for a random-init student to learn features that carry over to other objects (BENCHMARKS.md, "Distillation").
When the student has the teacher's architecture, every stage can instead be fitted to the teacher's stage on the
teacher's own input ("teacher forcing"): each stage is a small regression problem in which every spatial position
is a sample, so a few dozen photos suffice. The trainer adds this term to the paper's loss with weight
``distill.hint_weight`` (0 in the shipped recipes; BENCHMARKS.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError

__all__ = ["backbone_stages", "hint_loss", "HintTeacher"]


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The stages of a timm EfficientNet / MobileNet backbone: stem (conv + norm), then each of ``blocks``.

    Raises:
        InvalidInputError: for other architectures (block-wise hints need a stem + stages layout).
    """
    if not (hasattr(backbone, "conv_stem") and hasattr(backbone, "bn1") and hasattr(backbone, "blocks")):
        raise InvalidInputError(
            f"block-wise hints need a timm EfficientNet/MobileNet-style backbone (conv_stem, bn1, blocks); "
            f"got {type(backbone).__name__}. Use distill.hint_weight=0"
        )
    return [nn.Sequential(backbone.conv_stem, backbone.bn1), *backbone.blocks]


def hint_loss(stages: Sequence[nn.Module], teacher_states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over stages of ``MSE(stage_i(teacher_states[i]), teacher_states[i + 1]) / var(teacher_states[i + 1])``.

    Args:
        stages: the student's ``n`` stages (:func:`backbone_stages`).
        teacher_states: ``n + 1`` tensors: the input image ``(B, 3, H, W)``, then the teacher's output of each
            stage ``(B, C_i, H_i, W_i)``.

    Returns:
        Scalar: 0 when every stage reproduces the teacher's; about 1 for a stage that outputs the target's mean.

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(3, 4, 1).requires_grad_(False)
        >>> x = torch.randn(2, 3, 5, 5)
        >>> float(hint_loss([conv], [x, conv(x).detach()]))
        0.0
    """
    if len(teacher_states) != len(stages) + 1:
        raise InvalidInputError(
            f"{len(stages)} stages need {len(stages) + 1} teacher states, got {len(teacher_states)}"
        )
    terms = []
    for stage, inp, target in zip(stages, teacher_states[:-1], teacher_states[1:], strict=True):
        out = stage(inp).float()
        target = target.float()
        terms.append(F.mse_loss(out, target) / target.var().clamp_min(1e-12))
    return torch.stack(terms).mean()


class HintTeacher(nn.Module):
    """A frozen teacher backbone that returns its input and each stage's output (the targets of :func:`hint_loss`).

    Args:
        teacher: the teacher's backbone; must have the student's architecture (same stages, same shapes).
        student: the student's backbone, checked against the teacher.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        t_stages, s_stages = backbone_stages(teacher), backbone_stages(student)
        t_shapes = [[tuple(p.shape) for p in s.parameters()] for s in t_stages]
        s_shapes = [[tuple(p.shape) for p in s.parameters()] for s in s_stages]
        if t_shapes != s_shapes:
            raise InvalidInputError(
                f"block-wise hints need the student to have the teacher's architecture: stage parameter shapes "
                f"differ ({type(student).__name__} vs {type(teacher).__name__}). Use distill.hint_weight=0"
            )
        self.stages = nn.ModuleList(t_stages).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> HintTeacher:  # always in eval mode (frozen BatchNorm statistics)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` preprocessed images -> ``[x, stage_0(x), stage_1(stage_0(x)), ...]``."""
        states = [x]
        for stage in self.stages:
            states.append(stage(states[-1]))
        return states
