"""The ``co3d`` objective: 3D fine-tuning on CO3D (the paper, section 3.2), labels from geometry, no annotation.

Per sequence, ``frames_per_sequence`` frames are taken evenly (the first is the source, as in the authors' code);
every foreground source pixel with a depth is moved into each other frame (``geometry.correspondences``), and the
points that are really seen there become labels. Labels are computed once, by rank 0, into ``<out>/co3d-labels/``
(one safetensors file per sequence, written atomically: an interrupted build resumes where it stopped). Each step
draws ``batch_size`` (source, target) pairs and ``points_per_pair`` of their labels as a pure function of
``(seed, step)``; the loss is ``losses.point_loss`` (softmax over the target's cells against a Gaussian at the
true match).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..datasets.base import DatasetError
from ..datasets.co3d import Co3dDataset, Co3dFrame, load_depth, load_mask, read_co3d
from ..files import atomic_path
from ..models.model import DistillDiftModel
from ..models.variants import get_variant, list_variants
from .config import TrainConfig
from .data import labelled_pair, stack_pairs
from .engine import Objective, Run
from .geometry import View, correspondences
from .losses import point_loss
from .registry import register_objective

__all__ = ["Co3dFineTuning", "build_co3d_labels", "evenly"]

LABELS = "co3d-labels"


def evenly(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``n`` frames, the first one first (all ``n`` if ``n <= k``).

    Example:
        >>> evenly(10, 4)
        [0, 2, 5, 7]
    """
    return list(range(n)) if n <= k else [int(i * n / k) for i in range(k)]


def _view(frame: Co3dFrame) -> View:
    cam = frame.camera
    return View(
        cam.intrinsics(frame.image_size),
        cam.world_to_camera(),
        load_depth(frame),
        load_mask(frame.mask, frame.image_size),
    )


def build_co3d_labels(data: Co3dDataset, folder: Path, config: TrainConfig, log=print) -> list[Path]:
    """Write (or reuse) one label file per sequence into ``folder``; return the files, in sequence order.

    A file holds, for each target frame ``j``, ``source_j`` / ``target_j`` ``(M, 2)`` float32 pixel ``(x, y)`` in
    each frame's own image (at most ``co3d.max_labels``, a seeded subset), and in its metadata the frames' image
    paths (relative to the data root). Sequences whose frames yield no label at all are skipped.
    """
    s = config.co3d
    folder.mkdir(parents=True, exist_ok=True)
    files, sequences = [], data.sequences()
    for n, ((category, sequence), frames) in enumerate(sequences.items(), start=1):
        path = folder / category / f"{sequence}.safetensors"
        if not path.exists():
            picked = [frames[i] for i in evenly(len(frames), s.frames_per_sequence)]
            if len(picked) < 2:
                continue
            source = _view(picked[0])
            tensors, targets = {}, []
            rng = np.random.default_rng([config.seed, zlib.crc32(f"{category}/{sequence}".encode())])
            for j, frame in enumerate(picked[1:]):
                src, tgt = correspondences(source, _view(frame), eps=s.eps)
                if len(src) > s.max_labels:
                    keep = torch.from_numpy(np.sort(rng.choice(len(src), s.max_labels, replace=False)))
                    src, tgt = src[keep], tgt[keep]
                tensors[f"source_{j}"] = src.float().contiguous()
                tensors[f"target_{j}"] = tgt.float().contiguous()
                targets.append(frame.image.relative_to(data.root).as_posix())
            meta = {"source": picked[0].image.relative_to(data.root).as_posix(), "targets": json.dumps(targets)}
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        files.append(path)
        if n % 100 == 0 or n == len(sequences):
            log(f"co3d labels: {n}/{len(sequences)} sequences")
    return files


@register_objective("co3d")
class Co3dFineTuning(Objective):
    """3D fine-tuning on CO3D v2 below the data folder (``--recipe co3d``)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.data: Co3dDataset | None = None
        self.pairs: list[tuple[Path, Path, Path, int]] = []  # (label file, source image, target image, j)

    def check(self, run: Run) -> None:
        categories = self.config.co3d.categories or None
        self.data = read_co3d(run.data, categories)

    def prepare(self, run: Run, student: DistillDiftModel) -> None:
        folder = run.out / LABELS
        if run.rank == 0:
            run.log(f"co3d labels: {len(self.data.sequences())} sequences into {folder} (resumable)")
            build_co3d_labels(self.data, folder, self.config, log=run.log)
        run.barrier()
        pairs = []
        for path in sorted(folder.glob("*/*.safetensors")):
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                sizes = {k: f.get_slice(k).get_shape()[0] for k in f.keys()}  # noqa: SIM118 - not iterable
            for j, target in enumerate(json.loads(meta["targets"])):
                if sizes.get(f"source_{j}", 0) > 0:
                    pairs.append((path, self.data.root / meta["source"], self.data.root / target, j))
        if not pairs:
            raise DatasetError(
                f"co3d: no sequence below {str(run.data)!r} gave a single label (no foreground pixel of a source "
                "frame is seen in another frame); check the depth maps and masks, or co3d.eps"
            )
        self.pairs = pairs

    def batch(self, run: Run, student: DistillDiftModel, step: int) -> dict[str, torch.Tensor]:
        c, s = self.config, self.config.co3d
        rng = np.random.default_rng([c.seed, step])
        chosen = rng.integers(0, len(self.pairs), size=c.batch_size)
        per_rank = c.batch_size // run.world
        items = []
        for i, index in enumerate(chosen):
            path, src_img, tgt_img, j = self.pairs[int(index)]
            with safe_open(str(path), "pt") as f:
                n = f.get_slice(f"source_{j}").get_shape()[0]
                pick = np.sort(rng.choice(n, min(n, s.points_per_pair), replace=False))
                if not run.rank * per_rank <= i < (run.rank + 1) * per_rank:
                    continue  # other processes' share: the draws above keep every rank's generator in step
                a, b = f.get_tensor(f"source_{j}")[pick], f.get_tensor(f"target_{j}")[pick]
            aug = np.random.default_rng([c.seed, step, i]) if s.augment else None
            items.append(
                labelled_pair(student, src_img, tgt_img, a, b, size=c.image_size, slots=s.points_per_pair, rng=aug)
            )
        return stack_pairs(items)

    def terms(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        c = self.config
        f = model(batch["images"])
        n = f.shape[0] // 2
        a, b, valid = batch["source_points"], batch["target_points"], batch["valid"]
        return {"point": point_loss(f[:n], f[n:], a, b, valid, c.temperature, c.co3d.kernel, c.co3d.sigma)}

    def describe(self, recipe: str) -> tuple[str, str]:
        c = self.config
        start = c.student_init if c.student_init not in ("pretrained", "random") else f"{c.student_init} {c.student}"
        description = (
            f"{start} fine-tuned on CO3D geometry (3D pseudo-labels, eps {c.co3d.eps}) by distilldift train"
            + (f" --recipe {recipe}" if recipe else "")
            + f", {c.steps} steps at {c.image_size}x{c.image_size}"
        )
        licence = get_variant(c.student_init).license if c.student_init in list_variants() else ""
        return description, licence
