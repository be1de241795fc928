"""``label_keypoints``: keypoints a person annotated on a few images, transferred to many (COCO in, COCO out)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..features.extract import FeatureMap, extract_feature_maps, resolve_model
from ..features.folder import ExtractSettings, extract_to_folder, list_images
from ..features.store import FeatureStore
from ..files import check_output, write_json
from ..images import load_image
from ..matching.points import match_feature_maps
from ..matching.settings import MatchSettings
from ..models.model import DistillDiftModel
from ..progress import ProgressBar
from .coco import Category, Reference, References, flip_permutation, read_references
from .fuse import candidate_weights, fuse_candidates

__all__ = ["LabelSettings", "label_keypoints", "write_labels", "check_labels_output"]


@dataclass(frozen=True)
class LabelSettings:
    """How :func:`label_keypoints` labels, in one validated record.

    Attributes:
        top_k: references matched per target: the most similar by a global descriptor (the mean of the unit
            feature map); ``None``: every reference of the target's category.
        min_score: a keypoint whose fused score is at least this gets ``v = 2``, else ``v = 1`` (kept, never
            dropped). On PF-WILLOW with ``lite`` the top-scored half of the points is right ~2x as often as the
            rest (``BENCHMARKS.md``).
        radius: candidates within ``radius`` x the target's longer side agree (the consensus; measured best at 0.08
            of 0.03-0.12 on PF-WILLOW).
        pose_align: match from the mirrored reference when it fits the target better, swapping ``left_*`` /
            ``right_*`` keypoints; ``"auto"``: where the category's names pair left and right.
        categories: label these category names on every target; ``None``: the category of the most similar
            references.
        match: how each reference is matched (:class:`MatchSettings`; its ``flip`` is set from ``pose_align``).
        size, resize: model input size / resize mode (default: the variant's).
        batch_size: images per forward pass.
    """

    top_k: int | None = None
    min_score: float = 0.3
    radius: float = 0.08
    pose_align: bool | Literal["auto"] = "auto"
    categories: tuple[str, ...] | None = None
    match: MatchSettings = field(default_factory=MatchSettings)
    size: int | None = None
    resize: str | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise InvalidInputError(f"top_k must be >= 1 (references per target), got {self.top_k}")
        if not 0 <= self.min_score <= 1:
            raise InvalidInputError(f"min_score must be in [0, 1], got {self.min_score}")
        if not 0 < self.radius <= 1:
            raise InvalidInputError(
                f"radius must be in (0, 1] (a fraction of the image's longer side), got {self.radius}"
            )
        if self.pose_align not in (True, False, "auto"):
            raise InvalidInputError(f"pose_align must be True, False or 'auto', got {self.pose_align!r}")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class _Refs:
    """The references with their features: maps, mirrored maps, and one global descriptor per reference."""

    refs: References
    maps: list[FeatureMap]
    mirrored: list[FeatureMap | None]
    descriptors: torch.Tensor  # (R, C)


def _descriptor(fm: FeatureMap) -> torch.Tensor:
    return F.normalize(fm.features.float().mean(dim=(1, 2)), dim=0)


def _reference_features(refs: References, model: DistillDiftModel, ls: LabelSettings) -> _Refs:
    paths = sorted({r.path for r in refs.references})
    images = [load_image(p) for p in paths]
    mirror = any(_flip_for(ls, c) for c in refs.categories.values())
    batch = images + ([im.flip(-1) for im in images] if mirror else [])
    maps = extract_feature_maps(model, batch, size=ls.size, resize=ls.resize, batch_size=ls.batch_size)
    at = {p: i for i, p in enumerate(paths)}
    idx = [at[r.path] for r in refs.references]
    mirrored = [maps[len(paths) + i] if mirror else None for i in idx]
    per_ref = [maps[i] for i in idx]
    return _Refs(refs, per_ref, mirrored, torch.stack([_descriptor(m) for m in per_ref]))


def _flip_for(ls: LabelSettings, cat: Category) -> bool:
    return ls.pose_align is True or (ls.pose_align == "auto" and flip_permutation(cat.names) is not None)


def _categories_for(sims: torch.Tensor, rf: _Refs, ls: LabelSettings) -> list[int]:
    """The categories to label on a target whose similarities to the references are ``sims`` ``(R,)``: the forced
    ones, or the one of its most similar references."""
    if ls.categories is not None:
        by_name = {c.name: c.id for c in rf.refs.categories.values()}
        return [by_name[n] for n in ls.categories]
    top = sims.argsort(descending=True)[: min(ls.top_k or 3, 3)]
    mass: dict[int, float] = {}
    for i in top.tolist():
        c = rf.refs.references[i].category
        mass[c] = mass.get(c, 0.0) + float(sims[i])
    return [max(mass, key=mass.get)]


def _candidates(ref: Reference, src: FeatureMap, mirrored, dst: FeatureMap, cat: Category, ls: LabelSettings):
    """One reference's candidate for every keypoint of ``cat`` on the target: ``(K, 2)`` points (NaN: no vote) and
    ``(K,)`` weights."""
    w, h = src.geometry.image_size
    kp = ref.keypoints
    labelled = kp[:, 2] > 0
    queries = kp[:, :2].clone()
    queries[~labelled] = torch.tensor([(w - 1) / 2, (h - 1) / 2])  # a placeholder inside the image; it does not vote
    queries[:, 0] = queries[:, 0].clamp(0, w - 1)
    queries[:, 1] = queries[:, 1].clamp(0, h - 1)
    flip = _flip_for(ls, cat)
    perm = flip_permutation(cat.names) if flip else None
    ms = replace(ls.match, flip="auto" if flip else False)
    m = match_feature_maps(src, dst, queries, mirrored=mirrored if flip else None, flip_permutation=perm, settings=ms)
    votes = labelled[torch.as_tensor(perm)] if m.flipped and perm is not None else labelled
    points = torch.where(votes[:, None], m.points, float("nan"))
    return points, candidate_weights(m.scores, m.mutual)


def _label_one(dst: FeatureMap, rf: _Refs, ls: LabelSettings) -> list[dict]:
    """The annotations of one target: one per category labelled."""
    sims = rf.descriptors @ _descriptor(dst)
    w, h = dst.geometry.image_size
    out = []
    for cid in _categories_for(sims, rf, ls):
        cat = rf.refs.categories[cid]
        pool = [i for i, r in enumerate(rf.refs.references) if r.category == cid]
        pool.sort(key=lambda i: -float(sims[i]))
        chosen = pool[: ls.top_k] if ls.top_k else pool
        if not chosen:
            raise InvalidInputError(f"category {cat.name!r} has no reference with a labelled keypoint")
        cands = [_candidates(rf.refs.references[i], rf.maps[i], rf.mirrored[i], dst, cat, ls) for i in chosen]
        points = torch.stack([c[0] for c in cands])
        weights = torch.stack([c[1] for c in cands])
        fused = fuse_candidates(points, weights, ls.radius * max(w, h))
        out.append(_annotation(cat, fused, ls.min_score, len(chosen)))
    return out


def _annotation(cat: Category, fused, min_score: float, n_refs: int) -> dict:
    kps, scores = [], []
    for (x, y), s, n in zip(fused.points.tolist(), fused.scores.tolist(), fused.votes.tolist(), strict=True):
        if n == 0:  # no reference labelled this keypoint: nothing to transfer
            kps += [0.0, 0.0, 0]
            scores.append(0.0)
            continue
        kps += [round(x, 2), round(y, 2), 2 if s >= min_score else 1]
        scores.append(round(s, 4))
    xy = [(kps[i], kps[i + 1]) for i in range(0, len(kps), 3) if kps[i + 2] > 0]
    x0, y0 = (min(p[0] for p in xy), min(p[1] for p in xy)) if xy else (0.0, 0.0)
    x1, y1 = (max(p[0] for p in xy), max(p[1] for p in xy)) if xy else (0.0, 0.0)
    bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
    return {
        "category_id": cat.id,
        "keypoints": kps,
        "num_keypoints": len(xy),
        "bbox": bbox,
        "area": round(bbox[2] * bbox[3], 2),
        "iscrowd": 0,
        "score": round(sum(scores) / len(scores), 4) if scores else 0.0,
        "keypoint_scores": scores,
        "labelled_by": "distilldift",
        "references": n_refs,
    }


def _target_maps(
    items: Sequence[tuple[str, Path]], model, ls: LabelSettings, features
) -> Iterator[tuple[str, Path, FeatureMap]]:
    """Each target's features: from the feature store ``features`` (filled beforehand), else batch by batch."""
    if features is not None:
        store = FeatureStore(features)
        for name, path in items:
            yield name, path, store[str(path)]
        return
    for i in range(0, len(items), ls.batch_size):
        chunk = items[i : i + ls.batch_size]
        maps = extract_feature_maps(
            model, [load_image(p) for _, p in chunk], size=ls.size, resize=ls.resize, batch_size=ls.batch_size
        )
        for (name, path), fm in zip(chunk, maps, strict=True):
            yield name, path, fm


def label_keypoints(
    references: str | os.PathLike | dict,
    targets: str | os.PathLike | Sequence[str | os.PathLike],
    model: DistillDiftModel | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    settings: LabelSettings | None = None,
    features: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """Keypoints on every target image, transferred from a few annotated references and fused.

    Each target is matched from each reference of its category (or the ``top_k`` most similar) with
    :func:`match_feature_maps` (cycle-checked; pose-aligned through ``left_*`` / ``right_*`` names), and each
    keypoint's candidates are fused by a weighted consensus (:func:`~distilldift.labelling.fuse.fuse_candidates`):
    more references give better points (PF-WILLOW, ``lite``: PCK_bbox@0.1 0.53 from one, 0.69 from five).

    Args:
        references: a COCO keypoints file (or its dict): ``images``, ``annotations`` with ``keypoints``
            ``[x, y, v, ...]`` (``v = 0``: unlabelled, does not vote), ``categories`` with keypoint names.
        targets: images, folders (recursively) or ``.txt`` lists of images (as ``distilldift extract``).
        model: from :func:`load_model`; default: the default variant.
        image_root: the folder the references' ``file_name`` are relative to (default: the file's folder).
        settings: :class:`LabelSettings`.
        features: a folder for the targets' features (a :class:`FeatureStore`; a rerun after an interruption
            computes only the rest); default: computed batch by batch, kept nowhere.
        progress: show a progress bar.

    Returns:
        A COCO keypoints dict: the references' images and annotations untouched (annotations marked
        ``"labelled_by": "human"``) and every other target image (``file_name`` its absolute path, ``width``,
        ``height``) with one annotation per category labelled: ``keypoints`` ``[x, y, v, ...]`` in pixels (``v`` 2
        when the keypoint's score reaches ``min_score``, else 1; ``0, 0, 0`` only where no reference labelled that
        keypoint), ``num_keypoints``, ``bbox`` ``[x, y, w, h]`` around them, ``score``, ``keypoint_scores`` in
        [0, 1]. Write it with :func:`write_labels`.

    Raises:
        InvalidInputError: a bad references file, an unknown category, missing targets (one line each).
        ImageLoadError: an unreadable image (nothing is written; with ``features`` the finished shards are kept).

    Example:
        >>> import torch
        >>> from PIL import Image
        >>> import numpy as np, tempfile, pathlib
        >>> from distilldift import MatchSettings
        >>> from distilldift.weights import create_model
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), np.uint8)).save(root / "a.png")
        >>> refs = {"images": [{"id": 1, "file_name": str(root / "a.png"), "width": 56, "height": 56}],
        ...         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [20, 30, 2]}],
        ...         "categories": [{"id": 1, "name": "thing", "keypoints": ["tip"]}]}
        >>> _ = (root / "b.png").write_bytes((root / "a.png").read_bytes())
        >>> model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> how = LabelSettings(size=56, match=MatchSettings(method="nn"))
        >>> out = label_keypoints(refs, root / "b.png", model, settings=how)
        >>> out["annotations"][-1]["keypoints"], out["annotations"][-1]["keypoint_scores"]  # the same image
        ([20.0, 30.0, 2], [1.0])
    """
    ls = settings or LabelSettings()
    refs = read_references(references, image_root)
    if ls.categories is not None:
        known = {c.name for c in refs.categories.values()}
        unknown = [n for n in ls.categories if n not in known]
        if unknown:
            raise InvalidInputError(f"categories {unknown} are not in the references ({', '.join(sorted(known))})")
    items = list_images(targets)
    ref_paths = {refs.image_path(im).resolve() for im in refs.data.get("images") or []}
    todo = [(n, p) for n, p in items if p.resolve() not in ref_paths]
    model = resolve_model(model)
    rf = _reference_features(refs, model, ls)
    out = _reference_part(refs)
    next_image = max((im["id"] for im in out["images"] if isinstance(im.get("id"), int)), default=0) + 1
    next_ann = max((a["id"] for a in out["annotations"] if isinstance(a.get("id"), int)), default=0) + 1
    if features is not None and todo:  # resumable: finished shards are kept, a rerun computes the rest
        how = ExtractSettings(batch_size=ls.batch_size)
        paths = [p for _, p in todo]
        extract_to_folder(paths, features, model, size=ls.size, resize=ls.resize, settings=how, progress=progress)
    with ProgressBar(progress, len(todo), "labelling", "images") as bar:
        for _, path, fm in _target_maps(todo, model, ls, features):
            w, h = fm.geometry.image_size
            out["images"].append({"id": next_image, "file_name": str(path.resolve()), "width": w, "height": h})
            for ann in _label_one(fm, rf, ls):
                out["annotations"].append({"id": next_ann, "image_id": next_image, **ann})
                next_ann += 1
            next_image += 1
            bar.advance(1)
    return out


def _reference_part(refs: References) -> dict:
    """The references' images (absolute ``file_name``) and annotations (marked human), and the categories."""
    images = [{**im, "file_name": str(refs.image_path(im).resolve())} for im in refs.data.get("images") or []]
    anns = [{**a, "labelled_by": "human"} for a in refs.data["annotations"]]
    cats = [c.record for c in refs.categories.values()]
    return {
        "info": {"description": "keypoints labelled by distilldift"},
        "images": images,
        "annotations": anns,
        "categories": cats,
    }


def _check_coco(labels: dict) -> None:
    """Index ``labels`` with pycocotools, the format's reference implementation, as ``COCO(path)`` will."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = labels
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "creating index..."
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise InvalidInputError(f"the labels are not a COCO file pycocotools can index ({e!r}); nothing written") from e


def check_labels_output(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Check, before any work, that the labels can be written to ``out``: a ``.json`` path in an existing folder
    that does not exist yet (or ``overwrite``).

    Example:
        >>> check_labels_output("labels.txt")
        Traceback (most recent call last):
        ...
        distilldift.errors.InvalidInputError: labels file 'labels.txt': unsupported file type '.txt'; use one of .json
    """
    path = check_output(out, (".json",), "labels file")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"labels file {str(path)!r} exists; pass --overwrite (overwrite=True) to replace it")
    return path


def write_labels(labels: dict, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write :func:`label_keypoints`' result to ``out`` atomically (complete or not at all), image ``file_name``
    relative to ``out``'s folder where the image lies below it (else absolute).

    Raises:
        InvalidInputError: ``out`` exists (without ``overwrite``), is not a ``.json`` path, or its folder is missing.

    Example:
        >>> import json, tempfile
        >>> root = tempfile.mkdtemp()
        >>> labels = {"images": [{"id": 1, "file_name": root + "/a.png"}], "annotations": [], "categories": []}
        >>> json.loads(write_labels(labels, root + "/labels.json").read_text())["images"][0]["file_name"]
        'a.png'
    """
    path = check_labels_output(out, overwrite=overwrite)
    _check_coco(labels)
    base = path.resolve().parent
    images = []
    for im in labels["images"]:
        name = Path(str(im.get("file_name", "")))
        if name.is_absolute() and name.is_relative_to(base):
            im = {**im, "file_name": name.relative_to(base).as_posix()}
        images.append(im)
    write_json(path, {**labels, "images": images})
    return path
