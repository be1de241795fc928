"""ONNX export with any input size: the exact position-embedding resampling, and parity in ONNX Runtime."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distilldift.errors import InvalidInputError
from distilldift.export.onnx import aa_bicubic_weights, check_onnx, export_onnx, resample_pos_embed
from distilldift.weights import create_model, save_pretrained

pytest.importorskip("onnxscript", reason="ONNX export needs onnx + onnxscript: pip install 'distilldift[export]'")
ort = pytest.importorskip("onnxruntime", reason="the parity checks need onnxruntime: pip install 'distilldift[export]'")


@pytest.mark.parametrize("out_size", [1, 3, 16, 31, 37, 50, 74])
def test_aa_bicubic_weights_equal_torch_interpolate(out_size):
    torch.manual_seed(out_size)
    x = torch.randn(1, 5, 37, 16)
    ref = F.interpolate(x, size=(out_size, 16), mode="bicubic", antialias=True, align_corners=False)
    mine = torch.einsum("yi,bcix->bcyx", aa_bicubic_weights(out_size, 37), x)
    # float32 rounding only: measured <= 1.4e-5 on unit-variance inputs (the weights are summed in another order)
    assert (mine - ref).abs().max() < 3e-5
    assert torch.allclose(aa_bicubic_weights(out_size, 37).sum(1), torch.ones(out_size))


def test_resample_pos_embed_equals_timm():
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    posemb = torch.randn(1, 1 + 37 * 37, 24) * 0.1  # a class token and DINOv2's 37 x 37 grid
    for new in ([31, 31], [28, 37], [40, 9], [37, 37]):
        ref = resample_abs_pos_embed(posemb, new, [37, 37], num_prefix_tokens=1)
        mine = resample_pos_embed(posemb, new, [37, 37], num_prefix_tokens=1)
        assert mine.shape == ref.shape == (1, 1 + new[0] * new[1], 24)
        assert (mine - ref).abs().max() < 2e-6
    assert torch.equal(resample_pos_embed(posemb, [37, 37], [37, 37], 1), posemb)  # same size: unchanged


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("dinov2_b14_reg", embed_dim=48, depth=2, num_heads=2)
    with torch.no_grad():  # break the symmetry of a fresh init: position embeddings matter
        model.timm_model.pos_embed.normal_(0, 0.5)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", size=(98, 126))
    return model, path


def test_tiny_vit_any_size(tiny_vit):
    model, path = tiny_vit
    # the export size, non-square ones, smaller and larger grids than the 37 x 37 trained one, batch 2
    diffs = check_onnx(path, model, [(98, 126), (70, 154), (154, 56), (532, 518)], batch=2)
    assert max(diffs.values()) <= 1e-4, diffs
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": torch.zeros(1, 3, 70, 154).numpy()})
    assert out.shape == (1, 48, 5, 11)


def test_lite_any_size(lite_model, tmp_path):
    path = export_onnx(lite_model, tmp_path / "lite.onnx")  # a CNN: the tracing exporter
    diffs = check_onnx(path, lite_model, [(320, 320), (160, 288), (352, 128)])
    assert max(diffs.values()) <= 1e-4, diffs


def test_static_export_and_bad_input(tmp_path):
    model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
    path = export_onnx(model, tmp_path / "static.onnx", size=(56, 70), dynamic=False)
    assert check_onnx(path, model, [(56, 70)])[(56, 70)] <= 1e-4
    with pytest.raises(Exception, match="(?i)dimension|shape|index"):  # onnxruntime refuses other sizes
        check_onnx(path, model, [(70, 56)])
    with pytest.raises(InvalidInputError, match="multiples of 14"):
        export_onnx(model, tmp_path / "x.onnx", size=(50, 70))
    with pytest.raises(InvalidInputError, match=r"\.onnx"):
        export_onnx(model, tmp_path / "x.pt")


def test_paper_architecture_any_size(tmp_path):
    """The paper's student (ViT-B/14 with registers and the q/v LoRA, random init: nothing downloaded)."""
    torch.manual_seed(0)
    model = create_model("distilldift_us")
    path = export_onnx(model, tmp_path / "vitb.onnx", size=(434, 434))
    assert not model.merged  # the adapter was merged for the export only
    diffs = check_onnx(path, model, [(434, 434), (518, 392)])
    assert max(diffs.values()) <= 1e-4, diffs  # measured 1.9e-7


def test_cli_export(tmp_path, tiny_folder):
    from typer.testing import CliRunner

    from distilldift.cli.main import app

    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(app, ["export", "--out", str(out), "--model", str(tiny_folder), "--size", "56", "70"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "ONNX Runtime vs PyTorch" in res.output and "56x70" in res.output
    res = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "m.bin"), "--model", str(tiny_folder)])
    assert res.exit_code == 2 and ".onnx" in res.output
    res = CliRunner().invoke(app, ["export", "--out", str(out), "--format", "tflite"])
    assert res.exit_code == 2 and "onnx" in res.output


@pytest.fixture
def tiny_folder(tmp_path):
    model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
    folder = tmp_path / "tiny"
    save_pretrained(model, folder, save_base=True)
    return folder


def test_readme_onnx_example_runs(lite_model, tmp_path, monkeypatch):
    """The README's ONNX Runtime snippet, as written, on a lite export: its features equal the model's."""
    import re
    from pathlib import Path

    from distilldift.samples import write_sample_photos

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"To run it without distilldift:\n\n```python\n(.*?)```", readme, re.S)[1]
    monkeypatch.chdir(tmp_path)
    write_sample_photos(tmp_path)
    export_onnx(lite_model, tmp_path / "distilldift.onnx")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    x = scope["x"][None]
    with torch.no_grad():
        ref = lite_model(x)
    assert (
        scope["features"].shape == tuple(ref.shape) and (torch.from_numpy(scope["features"]) - ref).abs().max() < 1e-4
    )
