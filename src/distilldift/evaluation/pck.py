"""PCK evaluation over a benchmark (the paper's Table 1 protocol).

A predicted point is correct when its distance to the true point is at most ``alpha * max(h, w)`` of the target
image (``img``) or of the target box (``bbox``; PF-WILLOW: the target keypoints' box). Results are averaged per
point (all points pooled), per pair (mean of each pair's PCK) and per category (each category's per-point PCK,
then the mean over categories: SPair's Table 1), side by side.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..datasets import PairDataset
from ..errors import InvalidInputError
from ..features.extract import Features, ImageCache, extract_feature_maps, resolve_model
from ..files import atomic_path, check_output
from ..images import load_image
from ..matching.points import flip_queries, match_features, use_mirror
from ..matching.settings import MatchSettings
from ..models.model import DistillDiftModel
from ..models.variants import EVAL_PROTOCOLS, PaperProtocol
from ..progress import ProgressBar
from .paper import PaperEvaluator

__all__ = ["EvalResult", "evaluate", "pck"]

KINDS = ("img", "bbox")


def pck(pred: np.ndarray, truth: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """``(N,)`` bool: is each ``(N, 2)`` prediction within ``threshold`` pixels (Euclidean) of the truth?

    Example:
        >>> import numpy as np
        >>> pck(np.array([[0, 0], [3, 4], [10, 0]]), np.zeros((3, 2)), 5.0).tolist()
        [True, True, False]
    """
    return np.linalg.norm(np.asarray(pred, float) - np.asarray(truth, float), axis=-1) <= threshold


@dataclass
class EvalResult:
    """PCK of one evaluation run.

    ``per_point[kind][alpha]``, ``per_pair[kind][alpha]``, ``per_category[kind][alpha]`` (mean over categories)
    and ``categories[name][kind][alpha]`` (per-point PCK within the category), for ``kind`` in ``img``, ``bbox``.
    """

    dataset: str
    protocol: str
    alphas: tuple[float, ...]
    settings: dict
    n_pairs: int
    n_points: int
    per_point: dict = field(default_factory=dict)
    per_pair: dict = field(default_factory=dict)
    per_category: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable results (alpha keys as strings)."""

        def conv(d):
            return {k: {str(a): v for a, v in inner.items()} for k, inner in d.items()}

        return {
            "dataset": self.dataset,
            "protocol": self.protocol
            + "; averages: per point (all points pooled), per pair (mean of pair PCKs), per category "
            "(per-point PCK within each category, then the mean over categories)",
            "settings": self.settings,
            "n_pairs": self.n_pairs,
            "n_points": self.n_points,
            "per_point": conv(self.per_point),
            "per_pair": conv(self.per_pair),
            "per_category": conv(self.per_category),
            "categories": {c: conv(v) for c, v in self.categories.items()},
        }


def _features(model: DistillDiftModel, size: int | None, resize: str | None):
    """``compute`` for an :class:`ImageCache` of features: one image (mirrored with ``flipped``) as a batch of one."""

    def compute(path: Path, flipped: bool) -> Features:
        img = load_image(path)
        image = img.flip(-1) if flipped else img
        feats, geom = extract_feature_maps(model, [image], size=size, resize=resize, batch_size=1)[0]
        return Features(feats[None], (geom,))

    return compute


def evaluate(
    dataset: PairDataset,
    model: DistillDiftModel | None = None,
    *,
    alphas: Sequence[float] = (0.1, 0.05, 0.01),
    settings: MatchSettings | None = None,
    size: int | None = None,
    resize: str | None = None,
    limit: int | None = None,
    cache_images: int = 512,
    reuse_features: bool = True,
    progress: bool = False,
    protocol: str | PaperProtocol = "default",
) -> EvalResult:
    """PCK@alpha of ``model`` on ``dataset`` (from :func:`distilldift.datasets.read_dataset`).

    Args:
        dataset: the pairs to evaluate.
        model: from :func:`load_model`; default: the default variant.
        alphas: PCK thresholds as fractions of the target image / box size.
        settings: matching, as in :func:`match_points` (:class:`MatchSettings`; its ``flip`` is pose-align:
            left/right keypoints swap where the dataset names them, SPair and CUB; no back-match is made).
        size, resize: model input size and resize mode (default: the variant's).
        limit: evaluate only the first ``limit`` pairs.
        cache_images: how many images' features to keep (each image's features are computed once while cached).
        reuse_features: ``False`` recomputes features for every pair (for benchmarks).
        progress: show a progress bar.
        protocol: ``"default"`` (distilldift's matching, the settings above) or ``"paper"``: the authors' own
            evaluation for this model (the variant's :class:`~distilldift.models.PaperProtocol`) with the program
            they used on this benchmark (``dataset.paper_program``; see :mod:`distilldift.evaluation.paper`); a
            ``PaperProtocol`` gives other settings. It sets the matching itself, so ``settings``, ``size`` and
            ``resize`` must be left unset.

    Returns:
        :class:`EvalResult`.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive number of pairs (or None for all), got {limit!r}")
    model = resolve_model(model)
    paper = _paper_protocol(protocol, model)
    if paper is not None:
        clash = [k for k, v in dict(settings=settings, size=size, resize=resize).items() if v is not None]
        if clash:
            raise InvalidInputError(
                f"protocol='paper' sets the matching itself; leave {', '.join(clash)} unset (or use protocol='default')"
            )
    ms = MatchSettings.of(settings).replace(mutual=False)
    pairs = dataset.pairs[:limit] if limit is not None else dataset.pairs
    alphas = tuple(float(a) for a in alphas)
    capacity = cache_images if reuse_features else 0
    if paper is not None:
        scorer = PaperEvaluator(dataset, model, paper, capacity)
    else:
        scorer = _DefaultScorer(dataset, ImageCache(_features(model, size, resize), capacity), ms)
    hits: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}  # per pair: (n_points, n_alphas) bool
    with ProgressBar(progress, len(pairs), f"eval {dataset.name}") as bar:
        for pair in pairs:
            for kind, h in scorer.hits(pair, alphas).items():
                hits[kind].append(h)
            bar.advance(1)
    if paper is not None:
        matching = dict(protocol="paper", program=scorer.program, **dataclasses.asdict(paper))
        matching["input_size"] = scorer.size
    else:
        size, resize = size or model.variant.input_size, resize or model.variant.resize
        fields = dict(method=ms.method, window=ms.window, temperature=ms.temperature, flip=ms.flip)
        matching = dict(protocol="default", **fields, size=size, resize=resize)
    result = EvalResult(
        dataset=dataset.name,
        protocol=dataset.protocol
        + (f"; {scorer.describe()}" if paper is not None else "")
        + (f"; the first {len(pairs)} of its {len(dataset)} pairs evaluated" if len(pairs) < len(dataset) else ""),
        alphas=alphas,
        settings=dict(model=model.variant.name, **matching, limit=limit),
        n_pairs=len(pairs),
        n_points=int(sum(len(p.source_points) for p in pairs)),
    )
    _summarise(result, hits, [p.category for p in pairs])
    result.settings["features_computed"] = scorer.computed
    return result


class _DefaultScorer:
    """distilldift's matching on one pair: the hits of its points at each alpha, per threshold kind."""

    def __init__(self, dataset: PairDataset, cache: ImageCache, settings: MatchSettings):
        self.dataset, self.cache, self.settings = dataset, cache, settings

    @property
    def computed(self) -> int:
        return self.cache.computed

    def hits(self, pair, alphas: tuple[float, ...]) -> dict[str, np.ndarray]:
        ms, cache = self.settings, self.cache
        src, dst = cache.get(pair.source), cache.get(pair.target)
        queries = torch.from_numpy(pair.source_points).float()
        if ms.flip:
            mirrored = cache.get(pair.source, flipped=True)
            if use_mirror(ms.flip, src.features[0], mirrored.features[0], dst.features[0]):
                width = src.geometry[0].image_size[0]
                queries = flip_queries(queries, width, self.dataset.flip_permutation(pair))
                src = mirrored
        m = match_features(src, dst, queries, settings=ms.replace(flip=False))
        pred, truth = m.points.numpy(), pair.target_points
        w, h = dst.geometry[0].image_size
        x1, y1, x2, y2 = pair.target_bbox
        sides = (("img", max(w, h)), ("bbox", max(x2 - x1, y2 - y1)))
        return {kind: np.stack([pck(pred, truth, a * side) for a in alphas], axis=1) for kind, side in sides}


def _summarise(result: EvalResult, hits: dict[str, list[np.ndarray]], cats: list[str]) -> None:
    """Fill ``result``'s averages (per point, per pair, per category) from each pair's hits."""
    alphas = result.alphas
    for kind in KINDS:
        per_pair = hits[kind]
        pooled = np.concatenate(per_pair) if per_pair else np.zeros((0, len(alphas)), bool)
        result.per_point[kind] = {a: float(pooled[:, i].mean()) for i, a in enumerate(alphas)}
        result.per_pair[kind] = {a: float(np.mean([h[:, i].mean() for h in per_pair])) for i, a in enumerate(alphas)}
        by_cat: dict[str, list[np.ndarray]] = {}
        for c, h in zip(cats, per_pair, strict=True):
            by_cat.setdefault(c, []).append(h)
        for c, hs in sorted(by_cat.items()):
            pooled_c = np.concatenate(hs)
            result.categories.setdefault(c, {})[kind] = {a: float(pooled_c[:, i].mean()) for i, a in enumerate(alphas)}
        result.per_category[kind] = {a: float(np.mean([result.categories[c][kind][a] for c in by_cat])) for a in alphas}


def _paper_protocol(protocol: str | PaperProtocol, model: DistillDiftModel) -> PaperProtocol | None:
    """The authors' settings for ``protocol="paper"`` (the variant's), a given record, or ``None`` for the default."""
    if isinstance(protocol, PaperProtocol):
        return protocol
    if protocol not in EVAL_PROTOCOLS:
        raise InvalidInputError(
            f"protocol must be one of {', '.join(EVAL_PROTOCOLS)} or a PaperProtocol, got {protocol!r}"
        )
    return model.variant.paper_protocol if protocol == "paper" else None


def save_result(result: EvalResult, path: str | os.PathLike) -> Path:
    """Write :meth:`EvalResult.to_dict` as JSON."""
    import json

    path = check_output(path, (".json",), "results file")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
