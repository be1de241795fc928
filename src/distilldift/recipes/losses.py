"""Distillation loss: align the student's dense similarity distributions with the teachers'.

For an image pair, every location of image 1 has a distribution over the locations of image 2:
``P = softmax(F_1 F_2^T / tau)`` row-wise, with ``F`` L2-normalised per location. The loss is the cross-entropy
of the student's distribution against the teacher's, ``-sum_j P_teacher[i, j] log P_student[i, j]``, averaged over
the rows ``i`` (the paper's Eq. 4, in the direction of the authors' release).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

__all__ = ["similarity_logits", "distillation_loss"]


def similarity_logits(f1: torch.Tensor, f2: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(B, C, h1, w1)``, ``(B, C, h2, w2)`` -> ``(B, h1*w1, h2*w2)`` cosine similarities divided by ``temperature``.

    Features are L2-normalised per location here (normalising twice changes nothing).
    """
    a = F.normalize(f1.flatten(2), dim=1)  # (B, C, n1)
    b = F.normalize(f2.flatten(2), dim=1)
    return torch.einsum("bci,bcj->bij", a, b) / temperature


def distillation_loss(
    student_1: torch.Tensor,
    student_2: torch.Tensor,
    teacher_1: torch.Tensor,
    teacher_2: torch.Tensor,
    temperature: float = 0.01,
) -> torch.Tensor:
    """Cross-entropy between teacher and student similarity distributions of an image pair.

    Args:
        student_1, student_2: ``(B, Cs, h, w)`` student features of image 1 and image 2.
        teacher_1, teacher_2: ``(B, Ct, h, w)`` teacher features on the same grid (channels may differ).
        temperature: softmax temperature ``tau`` (paper: 0.01).

    Returns:
        Scalar loss: ``mean_i -sum_j P_t[i, j] log P_s[i, j]`` over the batch and the locations ``i`` of image 1.

    Example:
        >>> import torch
        >>> f = torch.randn(1, 8, 3, 3)
        >>> same = distillation_loss(f, f, f, f, temperature=1.0)
        >>> bool(same <= distillation_loss(torch.randn(1, 8, 3, 3), f, f, f, temperature=1.0))
        True
    """
    if student_1.shape[-2:] != teacher_1.shape[-2:] or student_2.shape[-2:] != teacher_2.shape[-2:]:
        raise InvalidInputError(
            f"student grids {tuple(student_1.shape[-2:])}/{tuple(student_2.shape[-2:])} and teacher grids "
            f"{tuple(teacher_1.shape[-2:])}/{tuple(teacher_2.shape[-2:])} must agree"
        )
    target = torch.softmax(similarity_logits(teacher_1, teacher_2, temperature).float(), dim=-1)
    log_p = torch.log_softmax(similarity_logits(student_1, student_2, temperature).float(), dim=-1)
    return -(target * log_p).sum(-1).mean()
