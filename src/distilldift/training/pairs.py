"""Image pairs for distillation: retrieval neighbours (the paper), random same-category, or given pairs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..models.model import DistillDiftModel

__all__ = ["global_embeddings", "retrieval_neighbours", "PairSampler", "read_pairs_file"]


@torch.no_grad()
def global_embeddings(
    model: DistillDiftModel,
    images: Sequence[torch.Tensor] | Callable[[int], torch.Tensor],
    batch_size: int = 16,
    count: int | None = None,
) -> torch.Tensor:
    """``(N, D)`` unit global embeddings: the pooled pre-logits of the timm backbone (DINOv2: the CLS token).

    ``images``: ``(3, H, W)`` tensors in [0, 1] of any sizes, each stretched to the variant's square input; or a
    loader ``i -> image`` with ``count`` images, read ``batch_size`` at a time (memory stays flat however many).
    """
    load = images if callable(images) else images.__getitem__
    n = len(images) if count is None else count
    net = model.timm_model
    p = next(model.parameters())
    out = []
    for s in range(0, n, batch_size):
        chunk = [load(i) for i in range(s, min(n, s + batch_size))]
        x = torch.stack([model.prepare(im, resize="stretch")[0] for im in chunk]).to(p.device, p.dtype)
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
        raise InvalidInputError("retrieval needs at least 2 images")
    return sim.topk(k, dim=1).indices


class PairSampler:
    """Draw image pairs (indices into the training images).

    Modes: ``"retrieval"`` (the partner is one of the image's ``k`` retrieval neighbours, uniformly; needs
    ``neighbours``), ``"category"`` (another image of its category; needs ``categories``), ``"given"`` (only the
    listed ``pairs``, in either order; an image's partner is drawn among those it is listed with).
    ``anchors`` are the images a pair may start from: every image, or in ``"given"`` mode the listed ones.

    Example:
        >>> import numpy as np
        >>> s = PairSampler("given", pairs=[(0, 2), (2, 3)])
        >>> s.anchors, s.partner(0, np.random.default_rng(0))
        ([0, 2, 3], 2)
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
            raise InvalidInputError(f"pair mode must be retrieval, category or given, got {mode!r}")
        self.mode = mode
        self.anchors: list[int] | None = None  # None: every image
        if mode == "retrieval":
            if neighbours is None:
                raise InvalidInputError("retrieval pairs need the neighbours table (retrieval_neighbours)")
            self.neighbours = neighbours.cpu().numpy()
        elif mode == "category":
            if categories is None:
                raise InvalidInputError("category pairs need one category per image")
            self.by_category: dict[str, list[int]] = {}
            for i, c in enumerate(categories):
                self.by_category.setdefault(c, []).append(i)
            self.categories = list(categories)
        else:
            if not pairs:
                raise InvalidInputError("given pairs need a non-empty list of (i, j)")
            self.partners: dict[int, list[int]] = {}
            for i, j in pairs:
                self.partners.setdefault(int(i), []).append(int(j))
                self.partners.setdefault(int(j), []).append(int(i))
            self.anchors = sorted(self.partners)

    def partner(self, i: int, rng: np.random.Generator) -> int:
        """A partner of image ``i`` (never ``i`` itself unless it is alone in its category or paired with itself)."""
        if self.mode == "retrieval":
            return int(rng.choice(self.neighbours[i]))
        if self.mode == "category":
            pool = [j for j in self.by_category[self.categories[i]] if j != i] or [i]
            return int(rng.choice(pool))
        if i not in self.partners:
            raise InvalidInputError(f"image {i} is in no given pair")
        return int(rng.choice(self.partners[i]))


def read_pairs_file(path: str | Path, images: Sequence[Path], root: Path) -> list[tuple[int, int]]:
    """Read ``[["a.jpg", "b.jpg"], ...]`` (paths relative to ``root``) as index pairs into ``images``."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(
            f"pairs='given' needs a pairs file: {str(path)!r} not found "
            '(JSON: [["a.jpg", "b.jpg"], ...], paths relative to the data folder)'
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"pairs file {str(path)!r} is not valid JSON: {e}") from None
    index = {p.relative_to(root).as_posix(): i for i, p in enumerate(images)}
    out = []
    for n, item in enumerate(raw if isinstance(raw, list) else [raw]):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise InvalidInputError(f'pairs file {str(path)!r}, entry {n}: expected ["a.jpg", "b.jpg"], got {item!r}')
        missing = [x for x in item if x not in index]
        if missing:
            raise InvalidInputError(
                f"pairs file {str(path)!r}, entry {n}: {missing[0]!r} is not an image below {str(root)!r}"
            )
        out.append((index[item[0]], index[item[1]]))
    if not out:
        raise InvalidInputError(f"pairs file {str(path)!r} lists no pairs")
    return out
