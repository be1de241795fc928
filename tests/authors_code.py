"""The authors' own evaluation code (CompVis/distilldift @ e21076e), run on CPU beside ours.

Their code is theirs (their repository states no licence) and is not part of this one: the tests that run it need a
checkout, named by ``DISTILLDIFT_AUTHORS_REPO`` (a folder holding their ``eval/`` and ``train/``), and skip, saying
so, without one. What they produced on deterministic inputs is recorded in ``tests/data/authors_protocol.json``, which
the other tests compare with everywhere.

Their evaluation imports plotting, logging and experiment-tracking packages it does not use on this path; those are
stubbed. Their code moves tensors to ``"cuda"`` in a few places: those moves keep them on the CPU here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

AUTHORS = Path(os.environ["DISTILLDIFT_AUTHORS_REPO"]) if os.environ.get("DISTILLDIFT_AUTHORS_REPO") else None
requires_authors = pytest.mark.skipif(
    AUTHORS is None or not (AUTHORS / "eval" / "eval.py").is_file(),
    reason="the authors' code is not here: set DISTILLDIFT_AUTHORS_REPO to a checkout of CompVis/distilldift "
    "(commit e21076e) to compare protocol='paper' with it (the recorded comparison runs regardless)",
)


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


class _Logger:
    def info(self, *args, **kwargs) -> None:
        pass


@contextlib.contextmanager
def _their_modules(folder: Path, stubs: dict[str, types.ModuleType]):
    """Import from ``folder`` (their ``eval/`` or ``train/``: both have a package called ``utils``) with ``stubs``."""
    saved = {k: v for k, v in sys.modules.items() if k == "utils" or k.startswith("utils.")}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    sys.path.insert(0, str(folder))
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for k in [k for k in sys.modules if k in stubs or k == "utils" or k.startswith("utils.")]:
            del sys.modules[k]
        sys.modules.update(saved)
        torch.set_num_threads(threads)  # their eval.py sets 16 threads at import


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_program() -> types.SimpleNamespace:
    """Their ``eval/eval.py`` (``compute_pck``) and the helpers it uses (``utils.utils_dataset.load_spair_data``)."""
    folder = AUTHORS / "eval"

    class _Identity(torch.nn.Module):
        def forward(self, x, pose=None):
            return x

    stubs = {
        "wandb": _stub("wandb"),
        "loguru": _stub("loguru", logger=_Logger()),
        "preprocess_map": _stub("preprocess_map", set_seed=lambda seed=0: None),
        "model_utils": _stub("model_utils"),
        "model_utils.projection_network": _stub(
            "model_utils.projection_network", AggregationNetwork=_Identity, DummyAggregationNetwork=_Identity
        ),
        "utils.utils_visualization": _stub("utils.utils_visualization"),
        "utils.logger": _stub(
            "utils.logger", **{n: None for n in ("get_logger", "log_geo_stats", "update_stats", "update_geo_stats")}
        ),
    }
    stubs["utils.logger"].log_weighted_pcks = stubs["utils.logger"].load_config = None
    with _their_modules(folder, stubs):
        program = _load(folder / "eval.py", "authors_eval")
        dataset = sys.modules["utils.utils_dataset"]
    return types.SimpleNamespace(
        compute_pck=program.compute_pck, module=program, load_spair_data=dataset.load_spair_data
    )


def train_program() -> types.SimpleNamespace:
    """Their ``train/`` evaluation pieces: the ``PFWillow`` / ``CUB`` readers and ``utils.correspondence``."""
    folder = AUTHORS / "train"
    stubs = {"h5py": _stub("h5py"), "einops": _stub("einops")}
    with _their_modules(folder, stubs):
        readers = _load(folder / "datasets" / "correspondence.py", "authors_train_datasets")
        corr = _load(folder / "utils" / "correspondence.py", "authors_train_correspondence")
    return types.SimpleNamespace(PFWillow=readers.PFWillow, CUB=readers.CUB, corr=corr)


@contextlib.contextmanager
def on_cpu():
    """Their code's ``.cuda()`` and ``.to("cuda")`` (a default argument) keep the tensor on the CPU."""
    cuda, to = torch.Tensor.cuda, torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if str(a).startswith("cuda") else a for a in args)
        return to(self, *args, **kwargs)

    torch.Tensor.cuda, torch.Tensor.to = (lambda self, *args, **kwargs: self), to_cpu
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = cuda, to


def eval_args(pose_align: bool, window: int = 5, grid: int = 60, frame: int = 840) -> argparse.Namespace:
    """``eval/configs/eval_distilldift_{us,ws}.yaml`` as their eval.py turns it into ``args`` (SPair, bbox PCK)."""
    return argparse.Namespace(
        ANNO_SIZE=frame,
        NUM_PATCHES=grid,
        SOFT_EVAL=window > 0,
        SOFT_EVAL_WINDOW=window,
        ADAPT_FLIP=pose_align,
        MUTUAL_NN=pose_align,
        ONLY_DINO=True,
        ENSEMBLE=1,
        KPT_RESULT=True,
        COMPUTE_GEOAWARE_METRICS=False,
        TOTAL_SAVE_RESULT=0,
        EVAL_DATASET="spair",
        BBOX_THRE=True,
    )
