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

from .datasets import PairDataset
from .errors import InvalidInputError
from .features import Features, ImageCache, extract_feature_maps, resolve_model
from .files import atomic_path, check_output
from .images import load_image
from .matching import MatchSettings, flip_queries, match_features, use_mirror
from .model import DistillDiftModel
from .paper import PaperEvaluator
from .variants import EVAL_PROTOCOLS, PaperProtocol

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
    method: str | None = None,
    window: float | None = None,
    temperature: float | None = None,
    flip: bool | str = False,
    size: int | None = None,
    resize: str | None = None,
    limit: int | None = None,
    cache_images: int = 512,
    reuse_features: bool = True,
    progress: bool = True,
    settings: MatchSettings | None = None,
    protocol: str | PaperProtocol = "default",
) -> EvalResult:
    """PCK@alpha of ``model`` on ``dataset`` (from :func:`distilldift.datasets.read_dataset`).

    Args:
        dataset: the pairs to evaluate.
        model: from :func:`load_model`; default: the default variant.
        alphas: PCK thresholds as fractions of the target image / box size.
        method, window, temperature, settings: matching, as in :func:`match_points` (a :class:`MatchSettings`;
            the keywords override it).
        flip: ``False``; ``True`` (always match the mirrored source); ``"auto"`` (pose-align: mirror when that
            explains the target better). Left/right keypoints swap where the dataset names them (SPair, CUB).
        size, resize: model input size and resize mode (default: the variant's).
        limit: evaluate only the first ``limit`` pairs.
        cache_images: how many images' features to keep (each image's features are computed once while cached).
        reuse_features: ``False`` recomputes features for every pair (for benchmarks).
        progress: show a progress bar.
        protocol: ``"default"`` (distilldift's matching, the settings above) or ``"paper"``: the authors' own
            evaluation for this model (the variant's :class:`~distilldift.variants.PaperProtocol`) with the program
            they used on this benchmark (``dataset.paper_program``; see :mod:`distilldift.paper`); a
            ``PaperProtocol`` gives other settings. It sets the matching itself, so ``method``, ``window``,
            ``temperature``, ``flip``, ``size``, ``resize`` and ``settings`` must be left unset.

    Returns:
        :class:`EvalResult`.
    """
    if flip not in (True, False, "auto"):
        raise InvalidInputError(f"flip must be True, False or 'auto', got {flip!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive number of pairs (or None for all), got {limit!r}")
    model = resolve_model(model)
    paper = _paper_protocol(protocol, model)
    if paper is not None:
        given = dict(method=method, window=window, temperature=temperature, size=size, resize=resize, settings=settings)
        clash = [k for k, v in given.items() if v is not None] + (["flip"] if flip is not False else [])
        if clash:
            raise InvalidInputError(
                f"protocol='paper' sets the matching itself; leave {', '.join(clash)} unset (or use protocol='default')"
            )
    ms = MatchSettings.resolve(settings, method=method, window=window, temperature=temperature)
    pairs = dataset.pairs[:limit] if limit is not None else dataset.pairs
    alphas = tuple(float(a) for a in alphas)
    capacity = cache_images if reuse_features else 0
    authors = PaperEvaluator(dataset, model, paper, capacity) if paper is not None else None
    cache = ImageCache(_features(model, size, resize), capacity)
    hits: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}  # per pair: (n_points, n_alphas) bool
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn(f"eval {dataset.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        task = bar.add_task("pairs", total=len(pairs))
        bar.start()
    try:
        for pair in pairs:
            if authors is not None:
                for kind, h in authors.hits(pair, alphas).items():
                    hits[kind].append(h)
                if bar is not None:
                    bar.update(task, advance=1)
                continue
            src, dst = cache.get(pair.source), cache.get(pair.target)
            queries = torch.from_numpy(pair.source_points).float()
            if flip:
                mirrored = cache.get(pair.source, flipped=True)
                if use_mirror(flip, src.features[0], mirrored.features[0], dst.features[0]):
                    width = src.geometry[0].image_size[0]
                    queries = flip_queries(queries, width, dataset.flip_permutation(pair))
                    src = mirrored
            m = match_features(src, dst, queries, settings=ms, mutual=False)
            pred, truth = m.points.numpy(), pair.target_points
            w, h = dst.geometry[0].image_size
            x1, y1, x2, y2 = pair.target_bbox
            for kind, side in (("img", max(w, h)), ("bbox", max(x2 - x1, y2 - y1))):
                hits[kind].append(np.stack([pck(pred, truth, a * side) for a in alphas], axis=1))
            if bar is not None:
                bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()
    cats = [p.category for p in pairs]
    if authors is not None:
        matching = dict(protocol="paper", program=authors.program, **dataclasses.asdict(paper))
        matching["input_size"] = authors.size
    else:
        matching = dict(
            protocol="default",
            method=ms.method,
            window=ms.window,
            temperature=ms.temperature,
            flip=flip,
            size=size or model.variant.input_size,
            resize=resize or model.variant.resize,
        )
    result = EvalResult(
        dataset=dataset.name,
        protocol=dataset.protocol
        + (f"; {authors.describe()}" if authors is not None else "")
        + (f"; the first {len(pairs)} of its {len(dataset)} pairs evaluated" if len(pairs) < len(dataset) else ""),
        alphas=alphas,
        settings=dict(model=model.variant.name, **matching, limit=limit),
        n_pairs=len(pairs),
        n_points=int(sum(len(p.source_points) for p in pairs)),
    )
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
    result.settings["features_computed"] = cache.computed + (authors.computed if authors is not None else 0)
    return result


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
