"""(Test helper) how closely a student follows its teacher: nearest-neighbour agreement of their dense
correspondences."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distilldift.errors import InvalidInputError

__all__ = ["nn_agreement"]


def nn_agreement(
    student_1: torch.Tensor,
    student_2: torch.Tensor,
    teacher_1: torch.Tensor,
    teacher_2: torch.Tensor,
    tolerance: int = 1,
) -> torch.Tensor:
    """Fraction of image-1 cells whose best match in image 2 is the same cell for the student and the teacher.

    For every cell ``i`` of image 1 the nearest neighbour (cosine similarity) in image 2 is taken with the student's
    features and with the teacher's; they agree when the two cells are at most ``tolerance`` cells apart in x and
    in y. This is what the distillation loss trains (the teacher's correspondences), measured as an accuracy.

    Args:
        student_1, student_2: ``(B, Cs, h1, w1)``, ``(B, Cs, h2, w2)`` student features of each pair.
        teacher_1, teacher_2: ``(B, Ct, h1, w1)``, ``(B, Ct, h2, w2)`` teacher features on the same grids.
        tolerance: allowed distance in cells (Chebyshev).

    Returns:
        ``(B,)`` agreement per pair, in [0, 1].

    Example:
        >>> import torch
        >>> t1, t2 = torch.randn(1, 8, 4, 5), torch.randn(1, 8, 3, 6)
        >>> nn_agreement(t1, t2, t1, t2).tolist()  # a student equal to its teacher agrees everywhere
        [1.0]
    """
    if student_1.shape[-2:] != teacher_1.shape[-2:] or student_2.shape[-2:] != teacher_2.shape[-2:]:
        raise InvalidInputError("student and teacher grids must agree")
    w2 = student_2.shape[-1]

    def best(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(f1.flatten(2).float(), dim=1), F.normalize(f2.flatten(2).float(), dim=1)
        j = torch.einsum("bci,bcj->bij", a, b).argmax(-1)  # (B, h1*w1)
        return torch.stack([j % w2, j // w2], -1)

    gap = (best(student_1, student_2) - best(teacher_1, teacher_2)).abs().amax(-1)
    return (gap <= tolerance).float().mean(-1)
