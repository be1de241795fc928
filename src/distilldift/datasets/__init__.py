"""Benchmark readers: SPair-71k, PF-WILLOW, PF-PASCAL, CUB-200-2011, TAP-Vid (see each module for its layout)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..lazy import lazy_exports
from .base import DatasetError, Pair, PairDataset

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

_READERS = {
    "read_spair": "spair",
    "read_pf_willow": "pf",
    "read_pf_pascal": "pf",
    "read_cub": "cub",
    "read_tapvid": "tapvid",
    "SPAIR_LEFT_RIGHT": "spair",
    "TapVidVideo": "tapvid",
}
__getattr__, __dir__ = lazy_exports(__name__, _READERS)  # readers import on first use: `--help` stays light


def _reader(name: str):
    """The reader ``name``, imported when first called."""

    def read(*args, **kwargs):
        return getattr(importlib.import_module(f"{__name__}.{_READERS[name]}"), name)(*args, **kwargs)

    read.__name__ = read.__qualname__ = name
    return read


DATASETS = {
    "spair": _reader("read_spair"),
    "pf-willow": _reader("read_pf_willow"),
    "pf-pascal": _reader("read_pf_pascal"),
    "cub": _reader("read_cub"),
}  # image pairs with keypoints
TRACKING_DATASETS = {"tapvid": _reader("read_tapvid")}  # videos with point tracks (a TAP-Vid pickle or clips)


def read_dataset(name: str, root: str | Path, split: str = "test") -> PairDataset:
    """Read benchmark ``name`` (a key of :data:`DATASETS`: ``"spair"``, ``"pf-willow"``, ``"pf-pascal"``, ``"cub"``)
    from ``root``, the folder its download unpacks to (or the folder above it for the PF sets)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join([*DATASETS, *TRACKING_DATASETS])}")
    return DATASETS[name](root, split)
