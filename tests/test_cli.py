"""The CLI as a user runs it: a subprocess, real images, a local model folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import OFFICIAL_TINY, PF_WILLOW, official_max_diff, requires_shared, run_here
from distilldift import extract_features, load_model
from distilldift.errors import CheckpointError
from distilldift.features import load_features
from distilldift.weights import save_pretrained

SCRIPT = Path(sys.executable).parent / "distilldift"
CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "distilldift"]


def run(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps tables at 80 columns without a terminal
    return subprocess.run(CMD + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


@pytest.fixture(scope="module")
def lite_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lite-model")
    save_pretrained(load_model("lite"), folder, save_base=True)  # a self-contained folder: config + weights
    return folder


@requires_shared
def test_match_end_to_end(lite_folder, tmp_path):
    a, b = PF_WILLOW / "car(G)" / "Cars_006a.png", PF_WILLOW / "car(G)" / "Cars_007a.png"
    r = run(
        "match",
        a,
        b,
        "--model",
        lite_folder,
        "-p",
        "47.9,98.2",
        "-p",
        "151.9,121.8 45.97,57.3",
        "--out",
        tmp_path / "m.png",
        "--json",
        tmp_path / "m.json",
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    data = json.loads((tmp_path / "m.json").read_text())
    assert np.allclose(data["query"], [[47.9, 98.2], [151.9, 121.8], [45.97, 57.3]], atol=1e-4)
    w2, h2 = Image.open(b).size
    assert len(data["points"]) == 3 and all(-0.5 <= x <= w2 - 0.5 and -0.5 <= y <= h2 - 0.5 for x, y in data["points"])
    assert data["image2_size"] == [w2, h2] and len(data["scores"]) == 3 and len(data["mutual"]) == 3
    png = Image.open(tmp_path / "m.png")
    wa, ha = Image.open(a).size
    assert png.size[1] == max(ha, h2)


@requires_shared
def test_match_without_points_uses_a_grid_and_extract(lite_folder, tmp_path, cpu_as_it_is):
    a, b = sorted((PF_WILLOW / "duck(S)").glob("*.png"))[:2]
    r = run("match", a, b, "--model", lite_folder, "--grid", "3", "--json", tmp_path / "m.json", "--method", "nn")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "m.json").read_text())["points"]) == 9
    r = run("extract", a, b, "--model", lite_folder, "--out", tmp_path / "f.safetensors")
    assert r.returncode == 0, r.stderr
    with safe_open(str(tmp_path / "f.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["distilldift"])
        assert sorted(f.keys()) == ["features.0", "features.1"]
        assert f.get_tensor("features.0").shape[0] == 432  # 112 + 320 channels
    assert meta["images"][0]["image"] == str(a)
    maps, meta = load_features(tmp_path / "f.safetensors")  # the library reads what the command wrote
    direct = extract_features(b, load_model(lite_folder))
    assert torch.equal(maps[1].features, direct.features[0]) and maps[1].geometry == direct.geometry[0]
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "f.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated|not a distilldift features file"):
        load_features(tmp_path / "bad.safetensors")


def test_help_of_every_command():
    for args in ([], ["match"], ["extract"], ["models"], ["download"]):
        r = run(*args, "--help")
        assert r.returncode == 0, (args, r.stderr)
        assert "Usage" in r.stdout
    # defaults written into the help text survive rich's markup (square brackets were swallowed as tags)
    for args, text in ((["extract"], "(default: 16 on GPU, 1 on CPU)"), (["track"], "(default: 4 on CPU, 8 on GPU)")):
        assert text in " ".join(run(*args, "--help").stdout.split()), args
    r = run("models")
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") > 2}
    assert r.returncode == 0 and "PyPI efficientnet-lite0 *" in rows["lite"]  # * = cached
    lines = r.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("│ distilldift_us "))
    assert lines[row + 1].startswith("│ (default)")  # under the default model's name
    assert "Hub distilldift/distilldift_us" in rows["distilldift_us"]
    assert "authors' GitHub release" in r.stdout and "none: nothing published" in rows["distilldift_us_3d"]
    assert "pip install distilldift[lite]" in r.stdout  # square brackets survive rich
    assert run("--version").stdout.startswith("distilldift ")


def test_user_errors_are_one_line_exit_2(tmp_path, lite_folder, monkeypatch, capsys):
    """Every user mistake: exit 2, one line on stderr with the message's key words, no traceback."""
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    foo = tmp_path / "foo.json"
    foo.write_text('{"foo": 1}')
    train = ("train", "--recipe", "tiny", "--data", tmp_path, "--out", tmp_path / "r", "--override", "steps=3")
    cases = [
        (("match", bad, good, "--model", lite_folder), "could not decode"),
        (("match", good, good, "--model", lite_folder, "-p", "60,10"), "outside the 50x40 image"),
        (("match", good, good, "--model", "no_such_model"), "is not a registered variant"),
        (("match", good, good, "--model", lite_folder, "--points-file", tmp_path / "none.json"), "points file not"),
        (("match", good, tmp_path / "missing.png", "--model", lite_folder), "not found"),
        ((*train, "stepz=3"), "unknown recipe key 'stepz'"),
        ((*train, "photos/"), "unexpected argument(s) ['photos/']: recipe settings are key=value after --override"),
        # outputs and devices are checked before any work
        (
            ("match", good, good, "--model", lite_folder, "--out", tmp_path / "nodir" / "m.png"),
            "does not exist; create",
        ),
        (("match", good, good, "--model", lite_folder, "--out", tmp_path / "m.xyz"), "unsupported file type '.xyz'"),
        (("match", good, good, "--model", lite_folder, "--json", tmp_path / "nodir" / "m.json"), "folder"),
        (("match", good, good, "--model", lite_folder, "--json", tmp_path / "m.txt"), "use one of .json"),
        (("extract", good, "--model", lite_folder, "--out", tmp_path / "nodir" / "f.safetensors"), "does not exist"),
        (("match", good, good, "--model", lite_folder, "--device", "foo"), "unknown device 'foo'; use cpu, cuda"),
        *(
            [(("match", good, good, "--device", "cuda"), "no CUDA GPU is available here")]
            if not torch.cuda.is_available()
            else []
        ),
        (("track", good, "--model", lite_folder, "--render", tmp_path / "x.gif"), "unsupported file type '.gif'"),
        (("track", good, "--model", lite_folder, "--render", tmp_path / "nodir" / "x.mp4"), "does not exist"),
        (("track", good, "--model", lite_folder, "--out", tmp_path / "v.txt"), "use one of .json, .csv"),
        (("eval", "--dataset", "cub", "--root", tmp_path, "--out", tmp_path / "r.csv"), "use one of .json"),
        # nonsense values
        (("match", good, good, "--model", lite_folder, "--size", "0"), "Invalid value for '--size'"),
        (("match", good, good, "--model", lite_folder, "--size", "-5"), "Invalid value for '--size'"),
        (("match", good, good, "--model", lite_folder, "--size", "5"), "size must be a whole number of pixels >= 64"),
        (("match", good, good, "--model", lite_folder, "--grid", "0"), "Invalid value for '--grid'"),
        (("match", good, good, "--model", lite_folder, "--grid", "-3"), "Invalid value for '--grid'"),
        (("match", good, good, "--model", lite_folder, "--points", ""), "--points was given but holds no point"),
        (("match", tiny, good, "--model", lite_folder), "is 1x1 pixels: too small to match in"),
        (("eval", "--dataset", "cub", "--root", tmp_path, "--limit", "-5"), "Invalid value for '--limit'"),
        (("eval", "--dataset", "cub", "--root", tmp_path, "--limit", "0"), "Invalid value for '--limit'"),
        ((*train, "steps=-1"), "steps must be >= 1, got -1"),
        ((*train, "steps=1.5"), "steps must be a whole number, got 1.5"),
        ((*train, "distill.teachers=[]"), "teachers must name at least one teacher"),
        ((*train, "student=5"), "student must be a string, got 5"),
        # messages keep bracketed text; a malformed option is one line
        (("match", good, good, "--model", lite_folder, "-p", "nan,nan"), "points[0] = [nan, nan] is not finite"),
        (("match", good, good, "--model", lite_folder, "--points-file", foo), "expected a JSON list of [x, y] or"),
        (("match", good, good, "--model", lite_folder, "-p", "1,2,3"), "'1,2,3' is not a point; write x,y"),
        (("match", good, good, "--method", "foo"), "--method 'foo': choose one of"),
        (("match", good, good, "-p", "1;2"), "is not a point"),
        (("nope",), "No such command 'nope'"),
        (("download", "nope"), "unknown model variant 'nope'"),
        (("download", "distilldift_us_3d"), "no pretrained weights are published for 'distilldift_us_3d'"),
        # the Hub (local test server) has no adapter repo; the release mirror (local, empty) answers 404
        (("download", "distilldift_us"), "tried (1) Hub adapter distilldift/distilldift_us: Hugging Face repo"),
        (
            ("download", "distilldift_us"),
            "/e21076e8d6f032f6ec461ce0540b496caf5a4aec/eval/checkpoints/distilled_us.ckpt: HTTP 404",
        ),
    ]
    for args, message in cases:
        code, out, err = run_here(*args, monkeypatch=monkeypatch, capsys=capsys)
        assert code == 2, (args, out, err)
        assert message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    for args, message in cases[:2] + cases[-6:-3]:  # the installed command, as a user runs it
        r = run(*args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@requires_shared
def test_convert_and_push_commands(tmp_path, hub):
    import uuid

    fix = PF_WILLOW.parents[1] / "fixtures" / "official-parity"
    r = run("convert", fix / "official_lora_checkpoint.pt", "--out", tmp_path / "m", "--variant", "distilldift_us")
    assert r.returncode == 2 and "does it belong to this variant" in r.stderr  # a tiny model, not ViT-B
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr  # found before any download
    assert not (tmp_path / "m").exists()
    r = run("convert", tmp_path / "missing.pt", "--out", tmp_path / "m")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    # an architecture that is not registered: its Variant record as a JSON file
    (tmp_path / "tiny.json").write_text(json.dumps(OFFICIAL_TINY.to_dict()))
    tiny = ("--variant", tmp_path / "tiny.json", "--base", fix / "base_dinov2_hub_format.safetensors")
    r = run("convert", fix / "official_lora_checkpoint.pt", "--out", tmp_path / "t", *tiny)
    assert r.returncode == 0, r.stderr
    assert (
        "LoRA on 2 blocks, 35 backbone tensors (blocks.0.attn.proj.bias" in r.stdout and "conversion.json" in r.stdout
    )
    assert official_max_diff(load_model(tmp_path / "t"), "expected.safetensors") <= 1e-5
    r = run("convert", fix / "official_lora_checkpoint.pt", "--out", tmp_path / "u", "--variant", fix / "x.json")
    assert r.returncode == 2 and "variant file not found" in r.stderr
    model = load_model("lite")
    save_pretrained(model, tmp_path / "lite", save_base=True)
    repo_id = f"cli/lite-{uuid.uuid4().hex[:6]}"
    r = run("push", tmp_path / "lite", repo_id)
    assert r.returncode == 0, r.stderr
    assert (hub.root / repo_id / "distilldift_config.json").exists()
    for cmd in ("convert", "push"):
        assert run(cmd, "--help").returncode == 0


def test_ctrl_c_in_training_says_how_to_continue(tmp_path, monkeypatch, capsys):
    import distilldift.training as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    code, _, err = run_here(
        "train",
        "--recipe",
        "tiny",
        "--data",
        tmp_path,
        "--out",
        tmp_path / "run",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 130 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'run' / 'checkpoint.pt'}; continue with the same command and --resume" in err
