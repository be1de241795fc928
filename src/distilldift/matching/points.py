"""Matching points between two images: ``match_points`` (images), ``match_features`` (features), pose-align."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InvalidInputError
from ..features.extract import FeatureMap, Features, extract_feature_maps, resolve_model
from ..images import ImageInput, as_points, check_points_inside, load_image
from ..models.model import DistillDiftModel
from .search import back_match, locate
from .settings import MatchSettings
from .similarity import SimilarityMap, global_similarity, sample_features, upsampled_similarity

__all__ = [
    "Matches",
    "match_points",
    "match_features",
    "match_feature_maps",
    "similarity_heatmaps",
    "match_record",
    "flip_queries",
    "use_mirror",
]

Method = Literal["nn", "soft"]  # the built-in localizers; any registered name works (list_localizers())


@dataclass(frozen=True)
class Matches:
    """Correspondences of query points of image 1 in image 2.

    Attributes:
        query: ``(N, 2)`` the query points, pixel ``(x, y)`` in image 1, as given.
        points: ``(N, 2)`` matched points, pixel ``(x, y)`` in image 2 (pixel centres at integers).
        scores: ``(N,)`` cosine similarity in [-1, 1] between the query's descriptor and the best match.
        mutual: ``(N,)`` bool: matching ``points`` back to image 1 lands within ``mutual_radius`` of the query.
        cycle_error: ``(N,)`` distance in image-1 pixels between the query and its back-match (NaN when the
            mutual check is off).
        flipped: True when the horizontally flipped image 1 was matched (``flip=True`` or chosen by ``"auto"``).
        heatmaps: ``(K, H2, W2)`` similarity maps of the first ``K`` points over image 2 when asked for
            (``match_points(..., heatmaps=K)``; :func:`similarity_heatmaps`), else ``None``.
    """

    query: torch.Tensor
    points: torch.Tensor
    scores: torch.Tensor
    mutual: torch.Tensor
    cycle_error: torch.Tensor
    flipped: bool = False
    heatmaps: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.points.shape[0]

    def to_dict(self) -> dict:
        """JSON-serialisable dict: lists of ``[x, y]``, scores, mutual flags."""
        return {
            "query": self.query.tolist(),
            "points": self.points.tolist(),
            "scores": self.scores.tolist(),
            "mutual": self.mutual.tolist(),
            "cycle_error": [None if v != v else v for v in self.cycle_error.tolist()],
            "flipped": self.flipped,
        }

    @staticmethod
    def empty(flipped: bool = False) -> Matches:
        z = torch.zeros(0, 2)
        return Matches(z, z.clone(), torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0), flipped)


def match_features(src: Features, dst: Features, points: object, *, settings: MatchSettings | None = None) -> Matches:
    """Match points between two images whose features are already computed (reuse features across pairs).

    Args:
        src, dst: single-image :class:`Features` (``extract_features(img)`` or ``feats[i]``).
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image.
        settings: how to match (:class:`MatchSettings`; default: soft, 1 cell, mutual check, every pixel searched).
            ``flip`` needs the mirrored image's features: use :func:`match_points` or :func:`match_feature_maps`.

    Returns:
        :class:`Matches` with ``points`` ``(N, 2)`` in target pixels.

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift import MatchSettings, extract_features, match_features
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> img = torch.rand(3, 140, 140)
        >>> f = extract_features(img, model, size=140)
        >>> match_features(f, f, [[70.0, 35.0]], settings=MatchSettings(method="nn")).points  # itself
        tensor([[70., 35.]])
    """
    ms = MatchSettings.of(settings)
    if ms.flip:
        raise InvalidInputError(
            "match_features matches the images as given; for flip use match_points or match_feature_maps"
        )
    if len(src) != 1 or len(dst) != 1:
        raise InvalidInputError("match_features expects single-image Features: index a batch, e.g. feats[0]")
    pts = as_points(points)
    if pts.shape[0] == 0:
        return Matches.empty()
    g1, g2 = src.geometry[0], dst.geometry[0]
    check_points_inside(pts, g1.image_size)
    return _match_maps(FeatureMap(src.features[0], g1), FeatureMap(dst.features[0], g2), pts, ms)


def _match_maps(src: FeatureMap, dst: FeatureMap, pts: torch.Tensor, ms: MatchSettings) -> Matches:
    """Forward match of ``pts`` (checked, non-empty), then the back-match when ``ms.mutual``."""
    f1, f2, g1, g2 = src.features, dst.features, src.geometry, dst.geometry
    exhaustive = ms.search_everywhere(default=True)
    queries = sample_features(f1, g1.image_to_grid(pts))
    how = dict(method=ms.method, window=ms.window, temperature=ms.temperature)
    matched, scores = locate(SimilarityMap(f2, g2.image_size), queries, g2, exhaustive=exhaustive, **how)
    if ms.mutual:
        back = SimilarityMap(f1, g1.image_size)
        cycle, is_mutual = back_match(back, g1, f2, g2, matched, pts, settings=ms, exhaustive=exhaustive)
        cycle, is_mutual = cycle.cpu(), is_mutual.cpu()
    else:
        cycle = torch.full((pts.shape[0],), float("nan"))
        is_mutual = torch.zeros(pts.shape[0], dtype=torch.bool)
    return Matches(pts, matched.cpu(), scores.float().cpu(), is_mutual, cycle)


def use_mirror(
    flip: bool | Literal["auto"], source: torch.Tensor, mirrored: torch.Tensor, target: torch.Tensor
) -> bool:
    """The pose-align decision, one for every API: match from the mirrored source image?

    ``flip`` (a :class:`MatchSettings` field, checked there) ``True``: always; ``False``: never; ``"auto"``: when the
    mirrored source explains the target better
    (higher :func:`global_similarity`). ``source``, ``mirrored``, ``target``: ``(C, h, w)`` unit feature maps.

    Example:
        >>> import torch
        >>> from distilldift.matching.points import use_mirror
        >>> f, g = (torch.nn.functional.normalize(torch.randn(16, 4, 5), dim=0) for _ in range(2))
        >>> use_mirror("auto", g, f, f), use_mirror("auto", f, g, f), use_mirror(True, f, g, f)  # target f
        (True, False, True)
    """
    if flip != "auto":
        return bool(flip)
    return global_similarity(mirrored, target) > global_similarity(source, target)


def flip_queries(points: torch.Tensor, width: int, permutation: Sequence[int] | None = None) -> torch.Tensor:
    """Query points for the mirrored source image: point ``i`` is the mirror of ``points[permutation[i]]``.

    Args:
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image of width ``width``.
        permutation: left/right partner of each point (e.g. SPair's ``left eye`` <-> ``right eye``), or ``None``.

    Returns:
        ``(N, 2)`` points in the mirrored image (``x -> width - 1 - x``).

    Example:
        >>> import torch
        >>> flip_queries(torch.tensor([[0.0, 5.0], [9.0, 1.0]]), 10, [1, 0])
        tensor([[0., 1.],
                [9., 5.]])
    """
    if permutation is not None:
        perm = torch.as_tensor(list(permutation), dtype=torch.long)
        n = points.shape[0]
        if perm.shape != (n,) or (n and (perm.min() < 0 or perm.max() >= n)):
            raise InvalidInputError(f"flip_permutation must list {n} indices in [0, {n - 1}], got {perm.tolist()}")
        points = points[perm]
    out = points.clone()
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def match_points(
    img1: ImageInput,
    img2: ImageInput,
    points: object,
    *,
    model: DistillDiftModel | None = None,
    settings: MatchSettings | None = None,
    flip_permutation: Sequence[int] | None = None,
    size: int | None = None,
    resize: str | None = None,
    heatmaps: int = 0,
) -> Matches:
    """Find the points of ``img2`` with the same meaning as ``points`` of ``img1``.

    Args:
        img1, img2: path, PIL, numpy ``HxWx{1,3,4}`` or tensor ``CxHxW`` in [0, 1]; any size and aspect ratio.
        points: ``(N, 2)`` pixel ``(x, y)`` in ``img1`` (pixel centres at integers, ``0 <= x <= W1-1``).
        model: from :func:`load_model`; default: the default variant.
        settings: how to match (:class:`MatchSettings`: localizer, window, mutual check, search, pose-align ``flip``).
        flip_permutation: for mirrored matching, query ``i`` is taken at the mirror of point
            ``flip_permutation[i]`` (swap left/right keypoints, e.g. SPair's ``left eye`` <-> ``right eye``).
        size, resize: model input size / resize mode (default: the model variant's).
        heatmaps: also return the similarity maps of the first ``heatmaps`` points (``Matches.heatmaps``).

    Returns:
        :class:`Matches`: ``points`` ``(N, 2)`` pixel ``(x, y)`` in ``img2``, ``scores`` ``(N,)``, ``mutual``
        ``(N,)``. No points -> an empty result (the model is not run).

    Raises:
        PointsOutsideImageError: a point outside ``img1`` or NaN. ImageLoadError / InvalidInputError: bad image.

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift import MatchSettings, match_points
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> img = torch.rand(3, 100, 150)
        >>> m = match_points(img, img, [[75.0, 50.0]], model=model, settings=MatchSettings(method="nn"), size=140)
        >>> m.points, bool(m.mutual[0])
        (tensor([[75., 50.]]), True)
    """
    ms = MatchSettings.of(settings)
    pts = as_points(points)
    a, b = load_image(img1), load_image(img2)
    check_points_inside(pts, (a.shape[-1], a.shape[-2]), "points")
    if pts.shape[0] == 0:
        return Matches.empty()
    model = resolve_model(model)
    images = [a, b] + ([a.flip(-1)] if ms.flip else [])
    results = extract_feature_maps(model, images, size=size, resize=resize, batch_size=len(images))
    mirrored = results[2] if ms.flip else None
    return match_feature_maps(
        results[0],
        results[1],
        pts,
        mirrored=mirrored,
        flip_permutation=flip_permutation,
        settings=ms,
        heatmaps=heatmaps,
    )


def match_feature_maps(
    src: FeatureMap,
    dst: FeatureMap,
    points: object,
    *,
    mirrored: FeatureMap | None = None,
    flip_permutation: Sequence[int] | None = None,
    settings: MatchSettings | None = None,
    heatmaps: int = 0,
) -> Matches:
    """:func:`match_points` after the features are computed: what to reuse when one image meets many clicks.

    Args:
        src, dst: :class:`FeatureMap` of the source and target image (``extract_feature_maps``).
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image.
        mirrored: the :class:`FeatureMap` of the horizontally flipped source; needed when ``settings.flip`` is set.
        flip_permutation, settings, heatmaps: as in :func:`match_points`.

    Returns:
        :class:`Matches` (``query`` = ``points``; ``flipped`` says whether the mirrored source was matched).

    Example:
        >>> import torch
        >>> from distilldift.features.extract import FeatureMap
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching.points import MatchSettings, match_feature_maps
        >>> f = FeatureMap(torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0),
        ...                GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3)))
        >>> match_feature_maps(f, f, [[22.0, 13.0]], settings=MatchSettings(method="nn")).points
        tensor([[22., 13.]])
    """
    ms = MatchSettings.of(settings)
    pts = as_points(points)
    if ms.flip and mirrored is None:
        raise InvalidInputError("flip needs the mirrored source's features: pass mirrored=")
    if heatmaps < 0:
        raise InvalidInputError(f"heatmaps must be >= 0 (how many points' maps), got {heatmaps}")
    use_flip = bool(ms.flip) and use_mirror(ms.flip, src.features, mirrored.features, dst.features)
    source, queries = src, pts
    if use_flip:
        source, queries = mirrored, flip_queries(pts, src.geometry.image_size[0], flip_permutation)
    check_points_inside(queries, source.geometry.image_size)
    if pts.shape[0] == 0:
        return Matches.empty(flipped=use_flip)
    m = _match_maps(source, dst, queries, ms)
    heats = None
    if heatmaps:
        heats = similarity_heatmaps(source, dst, pts[:heatmaps], flipped=use_flip, permutation=flip_permutation)
    return Matches(pts, m.points, m.scores, m.mutual, m.cycle_error, flipped=use_flip, heatmaps=heats)


def similarity_heatmaps(
    src: FeatureMap,
    dst: FeatureMap,
    points: object,
    *,
    flipped: bool = False,
    permutation: Sequence[int] | None = None,
) -> torch.Tensor:
    """The maps the matches are found on: cosine similarity of each source point's descriptor to every target pixel.

    Args:
        src, dst: :class:`FeatureMap` of the source and target image; with ``flipped=True``, ``src`` is the
            mirrored source (``Matches.flipped``) and ``points`` are still given in the unflipped source
            (``permutation``: the ``flip_permutation`` the points were matched with).
        points: ``(N, 2)`` pixel ``(x, y)`` in the source image.

    Returns:
        ``(N, H2, W2)`` float in [-1, 1]: entry ``[n, y, x]`` is the similarity at target pixel ``(x, y)`` (the
        bilinearly upsampled map of :func:`upsampled_similarity`; its best pixel is the ``nn`` match).

    Example:
        >>> import torch
        >>> from distilldift.features.extract import FeatureMap
        >>> from distilldift.images import GridGeometry
        >>> from distilldift.matching.points import similarity_heatmaps
        >>> f = FeatureMap(torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0),
        ...                GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3)))
        >>> h = similarity_heatmaps(f, f, [[22.0, 13.0]])
        >>> h.shape, round(float(h[0, 13, 22]), 4)  # a cell centre matched with itself
        (torch.Size([1, 27, 36]), 1.0)
    """
    pts = as_points(points)
    g1, g2 = src.geometry, dst.geometry
    check_points_inside(pts, g1.image_size)
    if flipped:
        pts = flip_queries(pts, g1.image_size[0], permutation)
    queries = sample_features(src.features, g1.image_to_grid(pts.to(src.features.device)))
    return upsampled_similarity(queries, dst.features, g2.image_size).cpu()


def match_record(
    matches: Matches, *, image1: str, image2: str, image1_size, image2_size, model: str, method: str
) -> dict:
    """The JSON record of one image pair's matches (``distilldift match --json``, the demo's download).

    ``image1_size`` / ``image2_size``: ``(W, H)``. Keys: the two images and sizes, model, method, the coordinate
    convention, then :meth:`Matches.to_dict`.

    Example:
        >>> from distilldift.matching.points import Matches, match_record
        >>> r = match_record(Matches.empty(), image1="a.jpg", image2="b.jpg", image1_size=(640, 480),
        ...                  image2_size=(320, 240), model="lite", method="soft")
        >>> r["image2_size"], r["points"]
        ([320, 240], [])
    """
    return {
        "image1": str(image1),
        "image2": str(image2),
        "image1_size": [int(v) for v in image1_size],
        "image2_size": [int(v) for v in image2_size],
        "model": model,
        "method": method,
        "coordinates": "pixel (x, y), origin at the centre of the top-left pixel",
        **matches.to_dict(),
    }
