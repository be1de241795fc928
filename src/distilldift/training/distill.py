"""The distillation objective (the paper, section 3.2): the student learns the teachers' similarity structure.

Teachers run once, over every training image, into a teacher cache; pairs of images (retrieval neighbours, same
category, or given) are drawn per step as a pure function of ``(seed, step)``; the loss compares the student's and
the cached teachers' similarity distributions (``losses.distillation_loss``), optionally with block-wise hints.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ..datasets import read_dataset
from ..datasets.base import DatasetError
from ..errors import InvalidInputError
from ..models.model import DistillDiftModel
from ..models.variants import get_variant
from ..weights.loading import load_model
from .cache import TeacherCache, build_teacher_cache
from .config import TrainConfig
from .data import TrainImages
from .engine import Objective, Run
from .hints import HintTeacher, backbone_stages, hint_loss
from .losses import distillation_loss
from .pairs import PairSampler, global_embeddings, read_pairs_file, retrieval_neighbours
from .registry import register_objective
from .teachers import EnsembleTeacher, build_teacher, teacher_license

__all__ = ["Distillation", "draw_pairs"]


def draw_pairs(sampler: PairSampler, n_images: int, copies: int, config: TrainConfig, step: int):
    """The training entries ``(first, second)`` of ``step``: ``config.batch_size`` each, a pure function of the seed.

    Entry ``e`` is copy ``e % copies`` of image ``e // copies``. With probability ``config.distill.self_pairs`` an
    image is paired with another augmented copy of itself, otherwise with ``sampler.partner``.
    """
    rng = np.random.default_rng([config.seed, step])
    if sampler.anchors is None:
        first = rng.integers(0, n_images * copies, size=config.batch_size)
    else:  # given pairs: start from a listed image, any of its copies
        starts = np.asarray(sampler.anchors)[rng.integers(0, len(sampler.anchors), size=config.batch_size)]
        first = starts * copies + rng.integers(0, copies, size=config.batch_size)
    second = []
    for e in first:
        base = int(e) // copies
        if rng.random() >= config.distill.self_pairs:
            base = sampler.partner(base, rng)
        second.append(base * copies + int(rng.integers(copies)))
    return [int(e) for e in first], second


@register_objective("distill")
class Distillation(Objective):
    """Multi-teacher distillation on the images below the data folder (the ``coco`` and ``tiny`` recipes)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.images: TrainImages | None = None
        self.given = None
        self.hints = self.stages = None
        self.cache: TeacherCache | None = None
        self.sampler: PairSampler | None = None

    def check(self, run: Run) -> None:
        c, d = self.config, self.config.distill
        if d.hint_weight == 0 and (d.weight == 0 or d.start > 0):
            raise InvalidInputError(
                "nothing to learn: the similarity loss is off (distill.weight=0 or distill.start>0) and so are "
                "hints; set distill.weight>0 and distill.start=0, or distill.hint_weight>0"
            )
        files = categories = None
        if d.pairs == "dataset":  # a benchmark's image pairs, keypoints unused (weakly supervised)
            data = read_dataset(d.pairs_dataset, run.data, d.pairs_split)
            if not data.pairs:
                raise DatasetError(f"{d.pairs_dataset} {d.pairs_split!r} below {str(run.data)!r} has no pairs")
            category = {}
            for p in data.pairs:
                category[p.source.resolve()], category[p.target.resolve()] = p.category, p.category
            files = sorted(category)
            categories = [category[f] for f in files]
            index = {f: i for i, f in enumerate(files)}
            self.given = [(index[p.source.resolve()], index[p.target.resolve()]) for p in data.pairs]
        self.images = TrainImages(
            run.data,
            size=c.image_size,
            copies=d.copies,
            augment=d.augment,
            seed=c.seed,
            files=files,
            categories=categories,
        )
        if d.pairs == "given":  # checked before the (long) teacher cache is built
            pairs_file = d.pairs_file or self.images.root / "pairs.json"
            self.given = read_pairs_file(pairs_file, self.images.base, self.images.root)

    def prepare(self, run: Run, student: DistillDiftModel) -> None:
        c, d, images = self.config, self.config.distill, self.images
        grid = student.geometry((c.image_size, c.image_size), c.image_size).grid_size
        if d.hint_weight > 0:  # block-wise hints (checked before the long cache build): targets computed on the fly
            self.hints = HintTeacher(load_model(d.teachers[0], precision="fp32").backbone, student.backbone).to(
                run.device
            )
            self.stages = backbone_stages(student.backbone)

        # teacher cache: teachers run once (rank 0), training reads only the cache (and hints their cheap teacher)
        cache_dir = run.out / "teacher-cache"
        if run.rank == 0:
            run.log(f"teacher cache: {', '.join(d.teachers)} over {len(images)} images into {cache_dir} (resumable)")
            teacher = EnsembleTeacher([build_teacher(t, d.diffusion, run.device) for t in d.teachers]).to(run.device)
            categories = [images.categories[e // images.copies] for e in range(len(images))]
            build_teacher_cache(
                teacher,
                images.ids(),
                cache_dir,
                grid=grid,
                image_size=(c.image_size, c.image_size),
                categories=categories,
                batch_size=d.cache_batch_size,
                loader=images.load_id,
                progress=True,
            )
            del teacher
        run.barrier()
        self.cache = TeacherCache(cache_dir)

        # pairs: among the original images (copies of one photo are never each other's partner)
        if d.pairs == "retrieval":
            pairs_file = run.out / "neighbours.json"
            if run.rank == 0 and not pairs_file.exists():
                embedder = load_model(d.retrieval_model or d.teachers[0], precision="fp32")

                def original(i: int) -> torch.Tensor:
                    return images.load_original(images.base[i])

                embeddings = global_embeddings(embedder, original, count=len(images.base))  # streamed in batches
                nn = retrieval_neighbours(embeddings, k=d.k)
                pairs_file.write_text(json.dumps(nn.tolist()))
            run.barrier()
            self.sampler = PairSampler("retrieval", neighbours=torch.tensor(json.loads(pairs_file.read_text())))
        elif d.pairs == "category":
            self.sampler = PairSampler("category", categories=images.categories)
        else:  # given, dataset
            self.sampler = PairSampler("given", pairs=self.given)

    def batch(self, run: Run, student: DistillDiftModel, step: int) -> dict[str, torch.Tensor]:
        c, images = self.config, self.images
        first, second = draw_pairs(self.sampler, len(images.base), images.copies, c, step)
        per_rank = c.batch_size // run.world
        mine = slice(run.rank * per_rank, (run.rank + 1) * per_rank)
        entries = first[mine] + second[mine]  # sources, then their partners
        x = torch.stack([student.prepare(images.load(e), c.image_size, "stretch")[0] for e in entries])
        return {"images": x, "teacher": torch.stack([self.cache[e] for e in entries])}

    def terms(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, t = batch["images"], batch["teacher"]
        n = x.shape[0] // 2
        s = model(x)
        terms = {"distill": distillation_loss(s[:n], s[n:], t[:n], t[n:], self.config.temperature)}
        if self.hints is not None:
            terms["hint"] = hint_loss(self.stages, self.hints(x))
        return terms

    def weights(self, step: int) -> dict[str, float]:
        d = self.config.distill
        return {"distill": d.weight if step >= d.start else 0.0, "hint": d.hint_weight}

    def describe(self, recipe: str) -> tuple[str, str]:
        c, d = self.config, self.config.distill
        notes = [note for note in (teacher_license(t) for t in d.teachers) if note]
        init = {"random": "random-init", "pretrained": "pretrained"}.get(c.student_init, c.student_init)
        description = (
            f"{get_variant(c.student).arch} ({init} {c.student}) distilled from {', '.join(d.teachers)} by "
            "distilldift train"
            + (f" --recipe {recipe}" if recipe else "")
            + f", {c.steps} steps at {c.image_size}x{c.image_size}"
        )
        licence = "Learned from its teachers; their terms apply: " + "; ".join(notes) if notes else ""
        return description, licence
