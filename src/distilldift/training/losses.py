"""Training losses. Distillation: align the student's dense similarity distributions with the teachers'.

For an image pair, every location of image 1 has a distribution over the locations of image 2:
``P = softmax(F_1 F_2^T / tau)`` row-wise, with ``F`` L2-normalised per location. The loss is the cross-entropy
of the student's distribution against the teacher's, ``-sum_j P_teacher[i, j] log P_student[i, j]``, averaged over
the rows ``i`` (the paper's Eq. 4, in the direction of the authors' release).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

__all__ = ["similarity_logits", "distillation_loss", "gaussian_targets", "point_loss", "soft_argmax_loss"]


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
        Gradients flow to the student's features only (the teacher's are the target).

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
    with torch.no_grad():  # the teacher is the target: it learns nothing here, whatever its tensors ask for
        target = torch.softmax(similarity_logits(teacher_1, teacher_2, temperature).float(), dim=-1)
    log_p = torch.log_softmax(similarity_logits(student_1, student_2, temperature).float(), dim=-1)
    return -(target * log_p).sum(-1).mean()


def gaussian_targets(points: torch.Tensor, grid_size: tuple[int, int], kernel: int = 7, sigma: float = 0.5):
    """Target distributions over grid cells: a one-hot at each point blurred by a Gaussian.

    Args:
        points: ``(..., 2)`` grid ``(x, y)`` (cell centres at integers, see ``GridGeometry``).
        grid_size: ``(gw, gh)``.
        kernel, sigma: the Gaussian's window (cells; the paper: 7) and standard deviation (cells), centred on the
            exact point and cut to the ``kernel x kernel`` cells around its nearest cell.

    Returns:
        ``(..., gh * gw)`` distributions (each sums to 1), row-major cells.

    Example:
        >>> t = gaussian_targets(torch.tensor([[1.0, 0.0]]), (3, 2), kernel=1)
        >>> t.tolist()  # kernel 1: a one-hot at cell (1, 0)
        [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    """
    gw, gh = grid_size
    xs = torch.arange(gw, device=points.device, dtype=torch.float32)
    ys = torch.arange(gh, device=points.device, dtype=torch.float32)
    px, py = points[..., :1].float(), points[..., 1:].float()
    dx, dy = xs - px, ys - py  # (..., gw), (..., gh)
    half = kernel // 2
    cx, cy = px.round().clamp(0, gw - 1), py.round().clamp(0, gh - 1)  # the nearest cell
    wx = torch.exp(-(dx**2) / (2 * sigma**2)) * ((xs - cx).abs() <= half)
    wy = torch.exp(-(dy**2) / (2 * sigma**2)) * ((ys - cy).abs() <= half)
    t = (wy.unsqueeze(-1) * wx.unsqueeze(-2)).flatten(-2)  # (..., gh * gw)
    return t / t.sum(-1, keepdim=True).clamp_min(1e-12)


def _descriptors(source: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` features bilinear at ``(B, P, 2)`` grid ``(x, y)`` -> ``(B, C, P)`` unit descriptors."""
    _, _, h, w = source.shape
    grid = torch.stack([(points[..., 0] + 0.5) / w * 2 - 1, (points[..., 1] + 0.5) / h * 2 - 1], -1)
    desc = F.grid_sample(source.float(), grid[:, :, None].float(), mode="bilinear", align_corners=False)[..., 0]
    return F.normalize(desc, dim=1)


def point_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    source_points: torch.Tensor,
    target_points: torch.Tensor,
    valid: torch.Tensor,
    temperature: float = 0.01,
    kernel: int = 7,
    sigma: float = 0.5,
) -> torch.Tensor:
    """Cross-entropy of each labelled point's similarity distribution against a Gaussian at its true match.

    For source point ``i`` with descriptor ``f_i`` (bilinear on the source grid), the prediction is
    ``softmax_j(<f_i, g_j> / temperature)`` over the target's cells ``j`` and the target is
    :func:`gaussian_targets` at the true match (the paper's 3D fine-tuning loss).

    Args:
        source, target: ``(B, C, h, w)`` features of the source and target images.
        source_points, target_points: ``(B, P, 2)`` grid ``(x, y)`` of the labelled pairs.
        valid: ``(B, P)`` bool, which labels count (pairs with fewer labels are padded).

    Returns:
        Scalar: the mean over valid labels (0 if there is none).

    Example:
        >>> f = torch.nn.functional.normalize(torch.randn(1, 16, 4, 4), dim=1)
        >>> p = torch.tensor([[[1.0, 2.0]]])
        >>> right = point_loss(f, f, p, p, torch.ones(1, 1, dtype=torch.bool), 0.05, kernel=1)
        >>> wrong = point_loss(f, f, p, p + 1, torch.ones(1, 1, dtype=torch.bool), 0.05, kernel=1)
        >>> bool(right < wrong)
        True
    """
    desc = _descriptors(source, source_points)  # (B, C, P)
    tgt = F.normalize(target.float().flatten(2), dim=1)  # (B, C, h*w)
    log_p = torch.log_softmax(torch.einsum("bcp,bcj->bpj", desc, tgt) / temperature, dim=-1)
    goal = gaussian_targets(target_points, (target.shape[-1], target.shape[-2]), kernel, sigma)
    ce = -(goal * log_p).sum(-1)  # (B, P)
    mask = valid.to(ce.dtype)
    return (ce * mask).sum() / mask.sum().clamp_min(1.0)


def soft_argmax_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    source_points: torch.Tensor,
    target_points: torch.Tensor,
    valid: torch.Tensor,
    beta: float = 1000.0,
) -> torch.Tensor:
    """The authors' supervised loss: the soft-argmax of ``softmax_j(beta * <f_i, g_j>)`` over the target's cells,
    squared distance to the true match (grid coordinates divided by the grid's longer side), mean over valid labels.

    Args: as :func:`point_loss`; ``beta``: the softmax's inverse temperature (the authors: 1000).

    Example:
        >>> f = torch.nn.functional.normalize(torch.randn(1, 16, 4, 4), dim=1)
        >>> p = torch.tensor([[[1.0, 2.0]]])
        >>> ok = torch.ones(1, 1, dtype=torch.bool)
        >>> bool(soft_argmax_loss(f, f, p, p, ok) < soft_argmax_loss(f, f, p, p + 1, ok))
        True
    """
    desc = _descriptors(source, source_points)
    gh, gw = target.shape[-2:]
    tgt = F.normalize(target.float().flatten(2), dim=1)
    p = torch.softmax(beta * torch.einsum("bcp,bcj->bpj", desc, tgt), dim=-1)  # (B, P, h*w)
    ys, xs = torch.meshgrid(torch.arange(gh, device=p.device), torch.arange(gw, device=p.device), indexing="ij")
    cells = torch.stack([xs.flatten(), ys.flatten()], -1).float()  # (h*w, 2) grid (x, y)
    located = p @ cells  # (B, P, 2)
    err = ((located - target_points.float()) / max(gh, gw)).pow(2).sum(-1)
    mask = valid.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)
