"""Image pairs for distillation: retrieval neighbours (the paper), random same-category, or given pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..images import preprocess
from ..model import DistillDiftModel

__all__ = ["global_embeddings", "retrieval_neighbours", "PairSampler"]


@torch.no_grad()
def global_embeddings(model: DistillDiftModel, images: Sequence[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
    """``(N, D)`` unit global embeddings: the pooled pre-logits of the timm backbone (DINOv2: the CLS token).

    ``images``: ``(3, H, W)`` tensors in [0, 1] of any sizes, each stretched to the variant's square input.
    """
    net, v = model.timm_model, model.variant
    p = next(model.parameters())
    size = model.geometry((v.input_size, v.input_size), resize="stretch").input_size
    out = []
    for s in range(0, len(images), batch_size):
        chunk = images[s : s + batch_size]
        x = torch.stack([preprocess(im, size, v.mean, v.std) for im in chunk]).to(p.device, p.dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        out.append(net.forward_head(net.forward_features(x), pre_logits=True).float().cpu())
    return F.normalize(torch.cat(out), dim=1)


def retrieval_neighbours(embeddings: torch.Tensor, k: int = 10) -> torch.Tensor:
    """``(N, k)`` indices of each embedding's ``k`` most cosine-similar others (never itself), best first.

    Example:
        >>> import torch
        >>> e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> retrieval_neighbours(e, k=1).flatten().tolist()
        [1, 0, 3, 2]
    """
    e = F.normalize(embeddings.float(), dim=1)
    sim = e @ e.t()
    sim.fill_diagonal_(float("-inf"))
    k = min(k, e.shape[0] - 1)
    if k < 1:
        raise ValueError("retrieval needs at least 2 images")
    return sim.topk(k, dim=1).indices


class PairSampler:
    """Draw the partner of image ``i``.

    Modes: ``"retrieval"`` (one of its ``k`` retrieval neighbours, uniformly; needs ``neighbours``),
    ``"category"`` (another image of its category; needs ``categories``), ``"given"`` (fixed ``pairs``).
    """

    def __init__(
        self,
        mode: str,
        *,
        neighbours: torch.Tensor | None = None,
        categories: Sequence[str] | None = None,
        pairs: Sequence[tuple[int, int]] | None = None,
    ):
        if mode not in ("retrieval", "category", "given"):
            raise ValueError(f"pair mode must be retrieval, category or given, got {mode!r}")
        self.mode = mode
        if mode == "retrieval":
            if neighbours is None:
                raise ValueError("retrieval pairs need the neighbours table (retrieval_neighbours)")
            self.neighbours = neighbours.cpu().numpy()
        elif mode == "category":
            if categories is None:
                raise ValueError("category pairs need one category per image")
            self.by_category: dict[str, list[int]] = {}
            for i, c in enumerate(categories):
                self.by_category.setdefault(c, []).append(i)
            self.categories = list(categories)
        else:
            if not pairs:
                raise ValueError("given pairs need a non-empty list of (i, j)")
            self.pairs = [tuple(p) for p in pairs]

    def partner(self, i: int, rng: np.random.Generator) -> int:
        """A partner of image ``i`` (never ``i`` itself unless it is alone in its category)."""
        if self.mode == "retrieval":
            return int(rng.choice(self.neighbours[i]))
        if self.mode == "category":
            pool = [j for j in self.by_category[self.categories[i]] if j != i] or [i]
            return int(rng.choice(pool))
        return int(self.pairs[i % len(self.pairs)][1])
