"""The fast paths: bf16 autocast (precision=), torch.compile (compile=), coarse-to-fine search for many points."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from distilldift import MatchSettings, extract_features, load_model, match_points
from distilldift.errors import InvalidInputError
from distilldift.weights import create_model, save_pretrained

SCRIPT = Path(sys.executable).parent / "distilldift"
CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "distilldift"]


def test_bf16_precision_is_applied_and_close(cat_pair):
    fp32 = load_model("lite", precision="fp32")
    bf16 = load_model("lite", precision="bf16")
    assert bf16.precision == "bf16" and "precision='bf16'" in repr(bf16)
    a = extract_features(cat_pair[0], fp32).features
    b = extract_features(cat_pair[0], bf16).features
    assert b.dtype == torch.float32 and torch.allclose(b.norm(dim=1), torch.ones(()), atol=1e-5)
    cos = (a * b).sum(1)
    assert cos.mean() > 0.999 and cos.min() > 0.99  # measured: mean 0.9995
    assert (a - b).abs().max() > 1e-3  # bf16 arithmetic really ran
    pts = torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([400.0, 250.0])
    m32 = match_points(*cat_pair, pts, model=fp32, settings=MatchSettings(method="nn"))
    m16 = match_points(*cat_pair, pts, model=bf16, settings=MatchSettings(method="nn"))
    assert ((m32.points - m16.points).norm(dim=1) <= 2).float().mean() >= 0.9
    with pytest.raises(InvalidInputError, match="precision 'fp16': choose one of auto, fp32, bf16, int8"):
        load_model("lite", precision="fp16")
    with pytest.raises(InvalidInputError, match="choose one of auto, fp32, bf16, int8"):
        fp32.set_precision("half")


def test_compile_option_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    save_pretrained(create_model("distilldift_us", **TINY), tmp_path, save_base=True)
    eager = load_model(tmp_path)
    compiled = load_model(tmp_path, compile=True)
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    for h, w in ((112, 112), (84, 140)):
        x = torch.randn(2, 3, h, w)
        with torch.inference_mode():
            assert (compiled(x) - eager(x)).abs().max() < 1e-5
    assert counters["stats"]["unique_graphs"] > before  # the forward really went through torch.compile


def test_compiled_weights_are_frozen_for_this_model_only():
    """compile_for_inference freezes the weights into the graph (a change after compiling is not seen, unlike the
    eager model's) while the process-wide inductor setting stays off, and outside inference mode the weights stay
    live (training is never frozen)."""
    from torch._inductor import config as inductor_config

    torch.manual_seed(0)
    model = create_model("distilldift_us", **TINY).eval()
    model.merge_adapter()
    x = torch.randn(1, 3, 56, 56)
    eager_model = copy.deepcopy(model)
    compiled = model.compile_for_inference()
    with torch.inference_mode():
        before = compiled(x)
    assert inductor_config.freezing is False
    with torch.no_grad():
        for m in (model, eager_model):
            m.timm_model.patch_embed.proj.weight.mul_(-1.0)
    with torch.inference_mode():
        frozen = compiled(x)
        eager = eager_model(x)
    assert torch.equal(frozen, before)  # constants in the graph
    assert (eager - before).abs().max() > 0.1  # the weights did change
    live = compiled(x)  # autograd on: another graph, weights as inputs
    assert (live - eager).abs().max() < 1e-5


def test_coarse_to_fine_finds_the_exhaustive_matches(cat_pair):
    model = load_model("lite")
    w, h = cat_pair[0].size
    pts = torch.rand(1500, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([w - 1.0, h - 1.0])  # 2 chunks
    for method in ("nn", "soft"):
        full = match_points(*cat_pair, pts, model=model, settings=MatchSettings(method=method))
        fast = match_points(*cat_pair, pts, model=model, settings=MatchSettings(method=method, exhaustive=False))
        d = (full.points - fast.points).norm(dim=1)
        # measured (2000 points): 97.5 % (nn) / 97.8 % (soft) within 1 px; the rest are near-ties between
        # distant cells: the exhaustive search's pixel is better by at most 0.04 cosine
        assert (d <= 1.0).float().mean() >= 0.95, method
        assert (full.scores[d > 1] - fast.scores[d > 1]).min() >= -1e-4
        assert (full.scores - fast.scores).abs().max() < 0.06
        assert (full.mutual == fast.mutual).float().mean() >= 0.95


def test_cli_fast_options(cat_pair, tmp_path):
    for name, img in zip(("a.png", "b.png"), cat_pair, strict=True):
        img.save(tmp_path / name)
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        CMD
        + ["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", "lite", "--grid", "10"]
        + ["--coarse-to-fine", "--precision", "bf16", "--json", str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.json").stat().st_size > 0
    r = subprocess.run(
        CMD + ["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--precision", "fp16"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 2 and "'fp16' is not one of" in r.stderr and "auto" in r.stderr


def test_locate_without_queries_gives_no_matches():
    from distilldift.images import GridGeometry
    from distilldift.matching.search import locate
    from distilldift.matching.similarity import SimilarityMap

    f = torch.nn.functional.normalize(torch.randn(8, 3, 4), dim=0)
    g = GridGeometry(image_size=(36, 27), input_size=(56, 42), grid_size=(4, 3))
    for exhaustive in (True, False):
        pts, scores = locate(SimilarityMap(f, (36, 27)), torch.zeros(0, 8), g, exhaustive=exhaustive)
        assert pts.shape == (0, 2) and scores.shape == (0,)
