"""The authors' evaluation, reproduced: ``evaluate(..., protocol="paper")`` / ``distilldift eval --protocol paper``.

CompVis/distilldift @ e21076e evaluates with two programs, and the paper's Table 1 comes from both (their README):

- ``eval/eval.py``, GeoAware-SC's code, for SPair-71k (and PF-PASCAL), configured per model by
  ``eval/configs/eval_distilldift_{us,ws,s}.yaml``: each image is stretched to 434 x 434 by PIL (8-bit, bilinear) and
  normalised; the raw patch tokens (31 x 31) are bilinearly upsampled to a 60 x 60 grid and L2-normalised.
  Keypoints live in an 840 x 840 stretched copy of each image (the annotation's values times 840 / W and 840 / H, in
  float32). A keypoint's query is the grid cell that holds it; its similarities to the target's 3,600 cells are
  soft-argmaxed (temperature 0.02) over the cells within 5 of the best one, every other cell counting with similarity
  0; the expected cell ``c`` is frame pixel ``14 c + 7``. A prediction is correct when its error is below alpha times
  the target box's longer side times the target's vertical scale 840 / H (their code's choice), or alpha * 840
  (``img``). ``ws`` / ``s`` add pose-align: the mirrored source's features are used when their mean
  mutual-nearest-neighbour distance to the target's is smaller; a mirrored keypoint is queried at its left/right
  partner's mirror (``x -> 840 - x``), and a keypoint whose partner is not annotated in the pair keeps its
  unmirrored prediction.
- ``train/eval.py`` for PF-WILLOW and CUB-200-2011: each image is stretched to 434 x 434 by torch (antialiased
  bilinear) and fed in [0, 1] without normalisation; the raw tokens are bilinearly upsampled to the image's own size
  and L2-normalised; the query is the feature at the keypoint rounded to a pixel, the prediction the most similar
  target pixel. Coordinates are the annotation's own values (PF-WILLOW's 1-based ones) held in float16, as are the
  boxes (PF-WILLOW: the target keypoints' extent); correct when the float16 error is at most alpha times the box's
  longer side or the image's.

Both pool every keypoint of every pair (the paper's PCK "per keypoint"). Known differences from the authors' code,
none of which changes a number on their data: a keypoint on the last pixel row or column is clamped to the last grid
cell (their index would run into the next row); where their code renumbers a category's flip table because some
keypoint never occurs in the split, it pairs keypoints by their position in the table, here by keypoint id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..datasets import Pair, PairDataset
from ..errors import InvalidInputError
from ..features.extract import ImageCache
from ..images import GridGeometry, load_image, preprocess
from ..matching.similarity import sample_features, upsampled_similarity
from ..models.model import DistillDiftModel
from ..models.variants import PaperProtocol

__all__ = [
    "EVAL_PROGRAM",
    "TRAIN_PROGRAM",
    "PaperEvaluator",
    "grid_descriptors",
    "grid_predictions",
    "mutual_nn_distance",
    "paper_features",
    "pixel_predictions",
]

EVAL_PROGRAM, TRAIN_PROGRAM = "eval/eval.py", "train/eval.py"
PROGRAMS = (EVAL_PROGRAM, TRAIN_PROGRAM)


def input_size(model: DistillDiftModel, protocol: PaperProtocol) -> int:
    """The side of the square input: the protocol's, else the variant's; a multiple of the model's stride."""
    size = protocol.input_size or model.variant.input_size
    if size % model.size_multiple:
        raise InvalidInputError(
            f"the paper protocol's input size {size} is not a multiple of {model.size_multiple} for "
            f"{model.variant.name!r}; set PaperProtocol(input_size=...)"
        )
    return size


@torch.inference_mode()
def paper_features(
    model: DistillDiftModel, image: torch.Tensor, protocol: PaperProtocol, program: str, flipped: bool = False
) -> torch.Tensor:
    """The raw features the authors' ``program`` computes for one image (mirrored first with ``flipped``).

    Args:
        image: ``(3, H, W)`` in [0, 1] (:func:`distilldift.load_image`).
        program: ``"eval/eval.py"`` (PIL 8-bit bilinear stretch, the variant's normalisation) or ``"train/eval.py"``
            (torch antialiased bilinear stretch; no normalisation when ``protocol.raw_input``).

    Returns:
        ``(C, s, s)`` float32 features, not L2-normalised (DINOv2's ``x_norm_patchtokens`` as a map).

    Example:
        >>> import torch
        >>> from distilldift.weights import create_model
        >>> from distilldift.models.variants import PaperProtocol
        >>> m = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
        >>> paper_features(m, torch.rand(3, 50, 70), PaperProtocol(input_size=56), "eval/eval.py").shape
        torch.Size([32, 4, 4])
    """
    if program not in PROGRAMS:
        raise InvalidInputError(f"program must be one of {', '.join(PROGRAMS)}, got {program!r}")
    size = input_size(model, protocol)
    img = image.flip(-1) if flipped else image
    v = model.variant
    if program == EVAL_PROGRAM:  # PIL on 8-bit RGB, as their preprocess_map.py
        rgb = (img.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        small = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
        img = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).float() / 255
        mean, std = v.mean, v.std
    else:
        mean, std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if protocol.raw_input else (v.mean, v.std)
    x = preprocess(img, (size, size), mean, std)
    p = next(model.parameters())
    return model(x[None].to(device=p.device, dtype=p.dtype), normalize=False)[0].float().cpu()


# ----------------------------------------------------------------------------------------- eval/eval.py
def grid_descriptors(features: torch.Tensor, grid: int) -> torch.Tensor:
    """``(C, h, w)`` raw features -> ``(grid * grid, C)`` unit descriptors of the ``grid x grid`` bilinear upsampling
    (``align_corners=False``), row-major; normalised as their code does (norm + 1e-10)."""
    up = F.interpolate(features[None].float(), size=(grid, grid), mode="bilinear", align_corners=False)[0]
    flat = up.reshape(up.shape[0], -1).t()
    return flat / (torch.linalg.norm(flat, dim=-1, keepdim=True) + 1e-10)


def _frame(points: np.ndarray, image_size: tuple[int, int], frame: int) -> torch.Tensor:
    """Annotation values -> the ``frame x frame`` stretched copy, in float32 as their code computes it."""
    w, h = image_size
    p = torch.as_tensor(np.asarray(points, dtype=np.float64), dtype=torch.float32)
    return p * torch.tensor([frame / w, frame / h], dtype=torch.float32)


def _cells(frame_points: torch.Tensor, protocol: PaperProtocol) -> torch.Tensor:
    """``(N, 2)`` frame points -> ``(N,)`` row-major index of the grid cell holding each (float32, truncated)."""
    g = (frame_points * torch.tensor(protocol.grid / protocol.frame, dtype=torch.float32)).to(torch.int32).long()
    g = g.clamp(0, protocol.grid - 1)
    return g[:, 1] * protocol.grid + g[:, 0]


def grid_predictions(
    source: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, protocol: PaperProtocol
) -> torch.Tensor:
    """``eval/eval.py``'s localisation: query cells of ``source`` located on ``target``.

    Args:
        source, target: ``(G * G, C)`` from :func:`grid_descriptors` (``G = protocol.grid``).
        cells: ``(N,)`` row-major source cell indices.

    Returns:
        ``(N, 2)`` float32 ``(x, y)`` in the ``frame x frame`` copy of the target (cell ``c`` -> ``c * s + s // 2``,
        ``s = frame / G``).

    Example:
        >>> import torch
        >>> from distilldift.models.variants import PaperProtocol
        >>> d = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)  # a 4 x 4 grid
        >>> grid_predictions(d, d, torch.tensor([5]), PaperProtocol(grid=4, frame=40, window=0))  # cell (1, 1)
        tensor([[15., 15.]])
    """
    g = protocol.grid
    sim = source[cells] @ target.t()  # (N, G * G)
    best = sim.argmax(dim=1)
    if protocol.window == 0:
        cx, cy = (best % g).float(), (best // g).float()
    else:
        r = torch.arange(g)
        near_x = (r[None] - (best % g)[:, None]).abs() <= protocol.window  # (N, G)
        near_y = (r[None] - (best // g)[:, None]).abs() <= protocol.window
        masked = sim * (near_y[:, :, None] & near_x[:, None, :]).reshape(len(sim), -1)  # other cells: 0
        p = torch.exp((masked - masked.max(dim=1, keepdim=True).values) / protocol.temperature)
        p = (p / p.sum(dim=1, keepdim=True)).view(-1, g, g)
        axis = torch.linspace(-1, 1, g)
        cx = (((p.sum(1) * axis).sum(1) + 1) * (g - 1) / 2).clamp(0, g - 1)
        cy = (((p.sum(2) * axis).sum(1) + 1) * (g - 1) / 2).clamp(0, g - 1)
    stride = protocol.frame / g
    return torch.stack([cx * stride + stride // 2, cy * stride + stride // 2], dim=1)


def mutual_nn_distance(source: torch.Tensor, target: torch.Tensor) -> float:
    """Pose-align's score (``MUTUAL_NN``): the mean Euclidean distance from each source descriptor to its nearest
    target descriptor, over the mutual nearest neighbours. ``source``, ``target``: ``(M, C)`` unit descriptors.

    Example:
        >>> import torch
        >>> d = torch.nn.functional.normalize(torch.randn(9, 4), dim=1)
        >>> mutual_nn_distance(d, d), mutual_nn_distance(d, -d) > 0
        (0.0, True)
    """
    dist = torch.cdist(source[None], target[None])[0]
    forward, backward = dist.argmin(dim=1), dist.argmin(dim=0)
    mutual = backward[forward] == torch.arange(len(source))
    return float(dist.min(dim=1).values[mutual].mean())


def _flip_plan(dataset: PairDataset, pair: Pair) -> tuple[list[int], torch.Tensor]:
    """For the mirrored source: which point's mirror each keypoint queries, and which predictions it replaces."""
    partner: dict[int, int] = {}
    for a, b in dataset.left_right.get(pair.category, []):
        partner[a], partner[b] = b, a
    index = {k: i for i, k in enumerate(pair.keypoint_ids)}
    n = len(pair.source_points)
    if not pair.keypoint_ids:
        return list(range(n)), torch.ones(n, dtype=torch.bool)
    order, replace = [], []
    for i, k in enumerate(pair.keypoint_ids):
        mate = partner.get(k)
        order.append(index.get(mate, i) if mate is not None else i)
        replace.append(mate is None or mate in index)  # a partner that is not annotated: keep the unmirrored one
    return order, torch.tensor(replace)


# ---------------------------------------------------------------------------------------- train/eval.py
def pixel_predictions(
    source: torch.Tensor,
    target: torch.Tensor,
    source_size: tuple[int, int],
    target_size: tuple[int, int],
    points: torch.Tensor,
) -> torch.Tensor:
    """``train/eval.py``'s localisation: the most similar target pixel to each source keypoint.

    Args:
        source, target: raw ``(C, h, w)`` feature maps, upsampled (exactly, without building them) to
            ``source_size`` / ``target_size`` ``(W, H)`` and L2-normalised per pixel.
        points: ``(N, 2)`` ``(x, y)`` annotation values, rounded to the nearest pixel (clamped to the image).

    Returns:
        ``(N, 2)`` long ``(x, y)`` target pixels.

    Example:
        >>> import torch
        >>> f = torch.randn(8, 3, 4)
        >>> pixel_predictions(f, f, (40, 30), (40, 30), torch.tensor([[15.2, 14.7]]))  # the same image: itself
        tensor([[15, 15]])
    """
    (ws, hs), wt = source_size, target_size[0]
    px = torch.stack([points[:, 0].float().clamp(0, ws - 1), points[:, 1].float().clamp(0, hs - 1)], 1).round()
    c, gh, gw = source.shape
    grid = GridGeometry(source_size, source_size, (gw, gh)).image_to_grid(px.double())
    sim = upsampled_similarity(sample_features(source, grid), target, target_size)  # (N, H, W)
    best = sim.reshape(len(px), -1).argmax(dim=1)
    return torch.stack([best % wt, best // wt], dim=1)


# --------------------------------------------------------------------------------------------- evaluator
class PaperEvaluator:
    """Per-pair hits of the authors' protocol for ``model`` on ``dataset`` (its ``paper_program``); each image's
    features computed once while cached (LRU of ``capacity`` images)."""

    def __init__(
        self, dataset: PairDataset, model: DistillDiftModel, protocol: PaperProtocol, capacity: int = 512
    ) -> None:
        self.dataset, self.model, self.protocol, self.capacity = dataset, model, protocol, capacity
        self.program = dataset.paper_program
        if self.program not in PROGRAMS:
            raise InvalidInputError(f"{dataset.name}: unknown paper_program {self.program!r}; use one of {PROGRAMS}")
        self.size = input_size(model, protocol)
        self.cache = ImageCache(self._compute, capacity)

    def _compute(self, path: Path, flipped: bool) -> tuple[torch.Tensor, tuple[int, int]]:
        image = load_image(path)
        features = paper_features(self.model, image, self.protocol, self.program, flipped)
        return features, (int(image.shape[-1]), int(image.shape[-2]))

    @property
    def computed(self) -> int:
        """How many images' features were computed."""
        return self.cache.computed

    def features(self, path: Path, flipped: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(raw features, (W, H) of the image)``."""
        return self.cache.get(path, flipped)

    def describe(self) -> str:
        """One line: the program and its settings for this model."""
        p = self.protocol
        if self.program == EVAL_PROGRAM:
            return (
                f"the authors' protocol ({EVAL_PROGRAM}): {self.size}x{self.size} input, features at {p.grid}x{p.grid}"
                f", soft-argmax window {p.window} (temperature {p.temperature:g}), {p.frame}x{p.frame} frame, "
                f"pose-align {'on (mutual nearest neighbours)' if p.pose_align else 'off'}; correct: error < threshold"
            )
        return (
            f"the authors' protocol ({TRAIN_PROGRAM}): {self.size}x{self.size} input "
            f"{'in [0, 1] unnormalised' if p.raw_input else 'normalised'}, features upsampled to each image, "
            "best pixel, float16 coordinates; correct: error <= threshold"
        )

    def predict(self, pair: Pair) -> torch.Tensor:
        """``(N, 2)`` predicted ``(x, y)`` of the pair's keypoints in the program's coordinates: ``eval/eval.py``
        the target's ``frame x frame`` copy (float32), ``train/eval.py`` the target's pixels (long)."""
        p = self.protocol
        raw_source = pair.source_points + self.dataset.index_base
        src, src_size = self.features(pair.source)
        dst, dst_size = self.features(pair.target)
        if self.program == TRAIN_PROGRAM:
            source16 = torch.from_numpy(np.asarray(raw_source)).to(torch.float16)
            return pixel_predictions(src, dst, src_size, dst_size, source16)
        source, target = grid_descriptors(src, p.grid), grid_descriptors(dst, p.grid)
        queries = _frame(raw_source, src_size, p.frame)
        pred = grid_predictions(source, target, _cells(queries, p), p)
        if p.pose_align:
            mirrored = grid_descriptors(self.features(pair.source, flipped=True)[0], p.grid)
            if mutual_nn_distance(mirrored, target) < mutual_nn_distance(source, target):
                order, replace = _flip_plan(self.dataset, pair)
                flipped = queries[order].clone()
                flipped[:, 0] = p.frame - flipped[:, 0]
                pred[replace] = grid_predictions(mirrored, target, _cells(flipped, p), p)[replace]
        return pred

    def hits(self, pair: Pair, alphas: Sequence[float]) -> dict[str, np.ndarray]:
        """``{"img": (N, A), "bbox": (N, A)}`` bool: is each keypoint correct at each alpha."""
        p = self.protocol
        pred = self.predict(pair)
        wt, ht = self.features(pair.target)[1]
        raw_target = pair.target_points + self.dataset.index_base
        if self.program == TRAIN_PROGRAM:
            target16 = torch.from_numpy(np.asarray(raw_target)).to(torch.float16)
            dist = torch.linalg.norm(pred - target16, dim=-1)  # float16, as their code computes it
            side = _box_side16(pair, target16)
            return {
                "img": np.stack([(dist <= a * max(wt, ht)).numpy() for a in alphas], 1),
                "bbox": np.stack([(dist <= a * side).numpy() for a in alphas], 1),
            }
        err = torch.linalg.norm(pred - _frame(raw_target, (wt, ht), p.frame), dim=-1)
        x1, y1, x2, y2 = pair.target_bbox
        a = torch.tensor(list(alphas), dtype=torch.float32)
        box = torch.tensor(max(x2 - x1, y2 - y1) * (p.frame / ht), dtype=torch.float32)  # the vertical scale
        return {"img": (err[:, None] < a * p.frame).numpy(), "bbox": (err[:, None] < a * box).numpy()}


def _box_side16(pair: Pair, target16: torch.Tensor) -> torch.Tensor:
    """The box's longer side as ``train/eval.py`` has it in float16: from the float16 keypoints when the box is their
    extent (PF-WILLOW), else from the box's width and height."""
    x1, y1, x2, y2 = pair.target_bbox
    t = pair.target_points
    if len(t) and (x1, y1, x2, y2) == (t[:, 0].min(), t[:, 1].min(), t[:, 0].max(), t[:, 1].max()):
        w = target16[:, 0].max() - target16[:, 0].min()
        h = target16[:, 1].max() - target16[:, 1].min()
    else:
        w, h = torch.tensor(x2 - x1, dtype=torch.float16), torch.tensor(y2 - y1, dtype=torch.float16)
    return max(h, w)
