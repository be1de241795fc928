"""CPU speed paths: precision="auto" decided per device and model kind (the CPU's bf16 faked both ways), int8 weights
(torchao), and ONNX Runtime as a backend behind load_model / extract_features / match_points / track_video / evaluate.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PF_WILLOW, TINY
from distilldift import MatchSettings, extract_features, load_model, match_points
from distilldift.errors import CheckpointError, InvalidInputError, MissingDependencyError
from distilldift.models import precision as precision_module
from distilldift.models.precision import CpuFeatures, choose_precision
from distilldift.weights import create_model, save_pretrained

pytest.importorskip("onnxruntime")
SCRIPT = Path(sys.executable).parent / "distilldift"
CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "distilldift"]


WITH_BF16 = CpuFeatures(avx512_bf16=True, amx=False, vnni=True)
WITHOUT_BF16 = CpuFeatures(avx512_bf16=False, amx=False, vnni=False)


@pytest.fixture
def cpu(monkeypatch):
    """Fake the CPU torch reports: ``cpu(features)``."""

    def fake(features: CpuFeatures) -> None:
        monkeypatch.setattr(precision_module, "cpu_features", lambda: features)

    return fake


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_auto_uses_bf16_only_on_a_cpu_with_native_bf16(cpu, kind):
    cpu(WITH_BF16)
    with_bf16 = choose_precision("auto", device="cpu", kind=kind)
    assert with_bf16.precision == "bf16" and "native bf16 (AVX512-BF16, VNNI)" in with_bf16.reason
    assert f"x fp32 for a {kind}" in with_bf16.reason
    cpu(WITHOUT_BF16)
    without = choose_precision("auto", device="cpu", kind=kind)
    assert without.precision == "fp32" and "no native bf16" in without.reason and "emulated" in without.reason
    cpu(CpuFeatures(avx512_bf16=False, amx=True, vnni=False))
    assert choose_precision("auto", device="cpu", kind=kind).precision == "bf16"  # AMX does bf16 natively too


def test_auto_keeps_fp32_where_bf16_was_not_measured_faster(cpu, monkeypatch):
    cpu(WITH_BF16)
    monkeypatch.setitem(precision_module.BF16_SPEEDUP_ON_CPU, "cnn", 0.8)
    assert choose_precision("auto", kind="cnn").precision == "fp32"
    assert choose_precision("auto", kind="mystery").precision == "fp32"  # never measured: fp32
    assert choose_precision("auto", kind="vit").precision == "bf16"
    assert choose_precision("auto", kind="vit", dtype=torch.float16).precision == "fp32"  # no autocast on fp16


@pytest.mark.parametrize(
    "requested, device, message",
    [
        ("fp16", "cpu", "precision 'fp16': choose one of auto, fp32, bf16, int8"),
        ("int8", "cuda", "precision 'int8' runs on CPU only .*on a GPU use precision='auto'"),
        ("int8", "mps", "precision 'int8' runs on CPU only"),
    ],
)
def test_bad_precisions_say_what_to_use(requested, device, message):
    with pytest.raises(InvalidInputError, match=message):
        choose_precision(requested, device=device)


def test_load_model_and_set_precision_follow_the_cpu(cpu, lite_model):
    cpu(WITH_BF16)
    fast = load_model("lite")
    assert fast.precision == "bf16" and "1.32x fp32 for a cnn" in fast.precision_reason
    cpu(WITHOUT_BF16)
    assert load_model("lite").precision == "fp32"
    assert fast.set_precision("auto").precision == "fp32"  # set_precision takes what load_model takes
    tiny = create_model("dinov2_b14_reg", **TINY)
    cpu(WITH_BF16)
    assert tiny.set_precision("auto").precision == "bf16" and "for a vit" in tiny.precision_reason


def test_int8_quantises_the_linear_layers_and_keeps_the_features():
    pytest.importorskip("torchao")
    torch.manual_seed(0)
    model = create_model("distilldift_us", embed_dim=64, depth=2, num_heads=2)
    x = torch.randn(2, 3, 56, 70)
    ref = model(x)
    model.set_precision("int8")
    qkv = model.timm_model.blocks[0].attn.qkv.weight
    assert type(qkv) is not torch.nn.Parameter and type(qkv).__module__.startswith("torchao")  # really int8
    assert model.merged  # the adapter went into the weights before quantising
    out = model(x)
    assert out.dtype == torch.float32 and torch.allclose(out.norm(dim=1), torch.ones(()), atol=1e-5)
    cos = (out * ref).sum(1)
    assert cos.min() > 0.98 and not torch.equal(out, ref)  # measured: min 0.997
    with pytest.raises(InvalidInputError, match="the weights are int8 now; load the model again for precision 'fp32'"):
        model.set_precision("fp32")
    with pytest.raises(InvalidInputError, match="an int8 model cannot be saved"):
        save_pretrained(model, Path("/nonexistent/never-written"))


def test_int8_without_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'distilldift\[cpu\]'"):
        create_model("dinov2_b14_reg", **TINY).set_precision("int8")


@pytest.fixture(scope="module")
def lite_onnx(tmp_path_factory, lite_model):
    from distilldift.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(lite_model, folder / "lite.onnx"), export_onnx(lite_model, folder / "q.onnx", quantize="int8")


def test_onnx_file_runs_behind_the_same_api(lite_model, lite_onnx, cat_pair):
    fp32_file, int8_file = lite_onnx
    fast = load_model(fp32_file)
    assert (fast.variant, fast.stride, fast.feature_dim) == (lite_model.variant, 16, lite_model.feature_dim)
    a = extract_features(cat_pair[0], lite_model).features
    b = extract_features(cat_pair[0], fast).features
    assert a.shape == b.shape and (a - b).abs().max() < 1e-4
    pts = torch.tensor([[100.0, 80.0], [200.0, 150.0], [300.0, 60.0]])
    ref = match_points(*cat_pair, pts, model=lite_model, settings=MatchSettings(method="nn"))
    got = match_points(*cat_pair, pts, model=fast, settings=MatchSettings(method="nn"))
    assert torch.allclose(ref.points, got.points, atol=0.5) and torch.allclose(ref.scores, got.scores, atol=1e-3)
    q = load_model(int8_file)
    assert q.precision == "int8" and q.precision_reason == "exported as int8"
    c = extract_features(cat_pair[0], q).features
    assert torch.allclose(c.norm(dim=1), torch.ones(()), atol=1e-5) and (a * c).sum(1).mean() > 0.999


def test_backend_onnxruntime_exports_once_into_the_cache(tmp_path):
    torch.manual_seed(0)
    save_pretrained(create_model("distilldift_us", **TINY), tmp_path / "m", save_base=True)
    eager = load_model(tmp_path / "m", precision="fp32")
    fast = load_model(tmp_path / "m", backend="onnxruntime", cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache" / "distilldift" / "onnx").glob("*.onnx")
    assert fast.path == cached and cached.name.startswith("distilldift_us-") and cached.name.endswith("-fp32.onnx")
    stamp = cached.stat().st_mtime_ns
    again = load_model(tmp_path / "m", backend="onnxruntime", cache_dir=tmp_path / "cache")
    assert again.path == cached and cached.stat().st_mtime_ns == stamp  # reused, not exported again
    x = torch.randn(1, 3, 56, 84)
    assert (fast(x) - eager(x)).abs().max() < 1e-4
    q = load_model(tmp_path / "m", backend="onnxruntime", precision="int8", cache_dir=tmp_path / "cache")
    assert q.path.name.endswith("-int8.onnx") and len(list(cached.parent.glob("*.onnx"))) == 2


def test_track_and_evaluate_run_on_onnx_runtime(lite_model, lite_onnx):
    from distilldift import evaluate, track_video
    from distilldift.datasets import read_pf_willow

    fast = load_model(lite_onnx[0])
    frames = torch.rand(1, 3, 96, 128).expand(4, -1, -1, -1).contiguous()  # a still clip: points stay
    tracks = track_video(frames, torch.tensor([[40.0, 30.0], [90.0, 60.0]]), model=fast)
    assert torch.allclose(tracks.points, torch.tensor([[40.0, 30.0], [90.0, 60.0]]).expand(4, -1, -1), atol=1.0)
    if not PF_WILLOW.exists():
        return
    data = read_pf_willow(PF_WILLOW)
    ours = evaluate(data, fast, limit=20)
    theirs = evaluate(data, lite_model, limit=20)
    assert ours.n_points == theirs.n_points == 200
    assert abs(ours.per_point["bbox"][0.1] - theirs.per_point["bbox"][0.1]) <= 0.01


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX file built with onnx's own helpers (Identity on the images) - not a distilldift export."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["features"])], "foreign", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize(
    "make, error, message",
    [
        (_foreign_onnx, CheckpointError, "is not a distilldift ONNX export .*distilldift export --format onnx"),
        (lambda p: p.write_bytes(b"not onnx") and p, CheckpointError, "ONNX Runtime cannot read it"),
        (lambda p: p, Exception, "no ONNX file .*distilldift export"),
    ],
    ids=["not ours", "corrupt", "missing"],
)
def test_bad_onnx_files_say_what_to_do(tmp_path, make, error, message):
    path = tmp_path / "model.onnx"
    make(path)
    with pytest.raises(error, match=message):
        load_model(path)


def test_onnx_runtime_refusals(lite_onnx, monkeypatch):
    with pytest.raises(InvalidInputError, match="was exported as fp32; for 'int8' export it again --quantize int8"):
        load_model(lite_onnx[0], precision="int8")
    with pytest.raises(InvalidInputError, match="the ONNX Runtime backend runs on CPU; on a GPU load the PyTorch"):
        load_model(lite_onnx[0]).to("meta")  # any device but the CPU is refused the same way
    with pytest.raises(InvalidInputError, match="backend 'tensorrt': choose one of torch, onnxruntime"):
        load_model("lite", backend="tensorrt")
    with pytest.raises(InvalidInputError, match="L2-normalised features only"):
        load_model(lite_onnx[0])(torch.zeros(1, 3, 64, 64), normalize=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'distilldift\[cpu\]'"):
        load_model(lite_onnx[0])


def test_cli_backend_precision_and_quantized_export(tmp_path, cat_pair):
    for name, img in zip(("a.png", "b.png"), cat_pair, strict=True):
        img.save(tmp_path / name)
    env = {**os.environ, "COLUMNS": "200", "DISTILLDIFT_CACHE": str(tmp_path / "cache")}

    def run(*args):
        return subprocess.run(CMD + [str(a) for a in args], capture_output=True, text=True, timeout=300, env=env)

    r = run("export", "--out", tmp_path / "q.onnx", "--model", "lite", "--quantize", "int8")
    assert r.returncode == 0, r.stderr
    for args, says in [
        (("--model", tmp_path / "q.onnx"), "ONNX Runtime (q.onnx), precision int8 (exported as int8)"),
        (("--model", "lite", "--backend", "onnxruntime"), "ONNX Runtime (lite-"),
        (("--model", "lite", "--precision", "int8"), "model lite: PyTorch, precision int8 (asked for)"),
        (("--model", "lite", "--precision", "fp32"), "model lite: PyTorch, precision fp32 (asked for)"),
    ]:
        r = run(
            "match", tmp_path / "a.png", tmp_path / "b.png", "--grid", "3", "-v", "--json", tmp_path / "m.json", *args
        )
        assert r.returncode == 0 and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line; no third-party notices
        assert np.array(json.loads((tmp_path / "m.json").read_text())["points"]).shape == (9, 2)
        (tmp_path / "m.json").unlink()
    r = run("models")
    assert "precision='auto' on this machine:" in r.stdout and "cpu, vit:" in r.stdout


@pytest.mark.parametrize("source", ["lite", "model.onnx"])
def test_compile_with_onnxruntime_is_refused_before_any_work(source, tmp_path):
    """ONNX Runtime optimises its own graph: compile=True there says so instead of being ignored."""
    from distilldift import load_model
    from distilldift.errors import InvalidInputError

    backend = "onnxruntime" if source == "lite" else "torch"
    with pytest.raises(InvalidInputError, match="compile applies to the PyTorch backend"):
        load_model(str(tmp_path / source) if source.endswith(".onnx") else source, backend=backend, compile=True)


def test_the_demo_runs_an_onnx_file(lite_model, lite_onnx, cat_pair, tmp_path):
    """The demo's model box takes what load_model takes: an export runs the page's clicks in ONNX Runtime."""
    from distilldift.demo.session import DemoSession, DemoSettings
    from distilldift.images import load_image

    a, b = load_image(cat_pair[0]), load_image(cat_pair[1])
    pts = [[100.0, 80.0], [300.0, 60.0]]
    eager = DemoSession(loader=lambda name: lite_model, workdir=tmp_path / "e")
    fast = DemoSession(workdir=tmp_path / "f")
    ref = eager.click(a, [b], pts, DemoSettings(model="lite", method="nn"))[0].matches
    got = fast.click(a, [b], pts, DemoSettings(model=str(lite_onnx[0]), method="nn"))[0].matches
    assert type(fast.model(str(lite_onnx[0]))).__name__ == "OnnxRuntimeModel"
    assert torch.allclose(ref.points, got.points, atol=0.5) and torch.allclose(ref.scores, got.scores, atol=1e-3)
