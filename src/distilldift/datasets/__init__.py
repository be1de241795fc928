"""Benchmark readers: SPair-71k, PF-WILLOW, PF-PASCAL, CUB-200-2011, TAP-Vid (see each module for its layout)."""

from __future__ import annotations

from pathlib import Path

from .base import DatasetError, Pair, PairDataset
from .cub import read_cub
from .pf import read_pf_pascal, read_pf_willow
from .spair import SPAIR_LEFT_RIGHT, read_spair
from .tapvid import TapVidVideo, read_tapvid

__all__ = [
    "DATASETS",
    "DatasetError",
    "Pair",
    "PairDataset",
    "SPAIR_LEFT_RIGHT",
    "read_cub",
    "read_dataset",
    "read_pf_pascal",
    "read_pf_willow",
    "read_spair",
    "read_tapvid",
    "TapVidVideo",
    "TRACKING_DATASETS",
]

DATASETS = {
    "spair": read_spair,
    "pf-willow": read_pf_willow,
    "pf-pascal": read_pf_pascal,
    "cub": read_cub,
}  # image pairs with keypoints
TRACKING_DATASETS = {"tapvid": read_tapvid}  # videos with point tracks (a TAP-Vid pickle or a folder of clips)


def read_dataset(name: str, root: str | Path, split: str = "test") -> PairDataset:
    """Read benchmark ``name`` (a key of :data:`DATASETS`: ``"spair"``, ``"pf-willow"``, ``"pf-pascal"``, ``"cub"``)
    from ``root``, the folder its download unpacks to (or the folder above it for the PF sets)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join([*DATASETS, *TRACKING_DATASETS])}")
    return DATASETS[name](root, split)
