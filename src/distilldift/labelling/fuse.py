"""One keypoint from several references' candidates: a weighted consensus with a confidence score."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InvalidInputError

__all__ = ["Fused", "candidate_weights", "fuse_candidates"]

# a match that fails the cycle check (matching it back does not land near the query) counts this much
NOT_MUTUAL_WEIGHT = 0.5


class Fused(NamedTuple):
    """The fused keypoints of one target: ``points`` ``(K, 2)`` pixel ``(x, y)``, ``scores`` ``(K,)`` in [0, 1]
    (NaN points and score 0 where no reference voted) and ``votes`` ``(K,)`` (references that voted)."""

    points: torch.Tensor
    scores: torch.Tensor
    votes: torch.Tensor


def candidate_weights(scores: torch.Tensor, mutual: torch.Tensor) -> torch.Tensor:
    """How much a candidate counts: its cosine similarity (clamped at 0), halved when it is not mutual.

    Example:
        >>> import torch
        >>> candidate_weights(torch.tensor([0.8, 0.8, -0.2]), torch.tensor([True, False, True]))
        tensor([0.8000, 0.4000, 0.0000])
    """
    return scores.clamp(min=0) * torch.where(mutual, 1.0, NOT_MUTUAL_WEIGHT)


def fuse_candidates(points: torch.Tensor, weights: torch.Tensor, radius: float | torch.Tensor) -> Fused:
    """Fuse each keypoint's candidates from ``R`` references into one point and a score.

    Per keypoint: the candidate with the most weight within ``radius`` of it (itself included) is the consensus;
    the point is the weighted mean of the candidates within ``radius`` of it (the inliers), and the score is the
    inliers' weight over the number of references that voted - 1 when every reference agrees with full
    confidence, low when they scatter or match poorly. A single reference gives its own point and weight.

    Args:
        points: ``(R, K, 2)`` candidate pixel ``(x, y)`` of each reference for each keypoint; NaN where a reference
            does not vote (its keypoint is unlabelled, ``v = 0``).
        weights: ``(R, K)`` candidate weights in [0, 1] (:func:`candidate_weights`), ignored where ``points`` is
            NaN.
        radius: agreement radius in target pixels (a float, or ``(K,)``).

    Returns:
        :class:`Fused`.

    Example:
        >>> import torch
        >>> pts = torch.tensor([[[10.0, 10.0]], [[12.0, 10.0]], [[90.0, 50.0]]])  # 3 references, 1 keypoint
        >>> f = fuse_candidates(pts, torch.tensor([[0.9], [0.6], [0.9]]), radius=5.0)
        >>> f.points, f.scores, f.votes
        (tensor([[10.8000, 10.0000]]), tensor([0.5000]), tensor([3]))
    """
    if points.ndim != 3 or points.shape[-1] != 2 or weights.shape != points.shape[:2]:
        raise InvalidInputError(
            f"fuse_candidates expects points (R, K, 2) and weights (R, K), got {tuple(points.shape)} and "
            f"{tuple(weights.shape)}"
        )
    r, k = weights.shape
    voting = ~points.isnan().any(-1)  # (R, K)
    w = torch.where(voting, weights.clamp(0, 1), 0.0)
    p = torch.where(voting[..., None], points, 0.0)
    radius = torch.as_tensor(radius, dtype=p.dtype).expand(k)
    if r == 0 or k == 0:
        return Fused(torch.full((k, 2), float("nan")), torch.zeros(k), torch.zeros(k, dtype=torch.long))
    dist = (p[:, None] - p[None, :]).norm(dim=-1)  # (R, R, K)
    near = (dist <= radius) & voting[:, None] & voting[None, :]
    support = (near * w[None, :]).sum(1) + 1e-6 * voting  # (R, K): weight around each candidate; ties: any voter
    best = torch.where(voting, support, -1.0).argmax(0)  # (K,)
    inliers = near[best, :, torch.arange(k)].t()  # (R, K)
    iw = inliers * w
    total = iw.sum(0)
    mean = (iw[..., None] * p).sum(0) / total.clamp(min=1e-12)[:, None]
    centre = torch.where((total > 0)[:, None], mean, p[best, torch.arange(k)])
    votes = voting.sum(0)
    scores = total / votes.clamp(min=1)
    centre = torch.where((votes > 0)[:, None], centre, float("nan"))
    return Fused(centre, torch.where(votes > 0, scores, 0.0), votes)
