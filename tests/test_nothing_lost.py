"""Nothing lost, nothing silent: the cases a new user hits, each one line (exit 2) before any work, or the stated
behaviour; no input is ever overwritten."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import distilldift.training as trainer_module
from conftest import OFFICIAL, OFFICIAL_TINY, TRAIN_MICRO, requires_shared, run_here
from distilldift import load_model
from distilldift.errors import CheckpointError, InvalidInputError, TrainingDivergedError
from distilldift.training import distill as distill_module
from distilldift.training.config import apply_overrides, load_recipe
from distilldift.weights import save_pretrained

EXE = str(Path(sys.executable).parent / "distilldift")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
    return tmp_path / "a.png", tmp_path / "b.png"


@pytest.fixture(scope="module")
def lite_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lite")
    save_pretrained(load_model("lite"), folder, save_base=True)
    return folder


def _one_line(code, err, message):
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_no_output_may_be_an_input(images, tmp_path, lite_folder, monkeypatch, capsys):
    """The output is an input (also through a symlink, `..`, a hard link), holds one, or is another output: refused
    before any work, and the input is untouched."""
    a, b = images
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.png").symlink_to(b)
    os.link(b, tmp_path / "hard.png")
    before = _digest(b)
    m = ("--model", lite_folder, "-p", "10,10")
    ckpt = tmp_path / "ckpt" / "distilled_us.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((OFFICIAL / "official_lora_checkpoint.pt").read_bytes() if OFFICIAL.is_dir() else b"x")
    cases = [
        (("match", a, b, *m, "--out", b), "--out '" + str(b) + "' is IMAGE2"),
        (("match", a, b, *m, "--out", tmp_path / "sub" / ".." / "b.png"), "is IMAGE2"),
        (("match", a, tmp_path / "link.png", *m, "--out", b), "is IMAGE2"),
        (("match", a, b, *m, "--json", tmp_path / "m.json", "--out", tmp_path / "hard.png"), "is IMAGE2"),
        (("match", a, b, *m, "--out", tmp_path / "m.png", "--heatmap", tmp_path / "m.png"), "are both"),
        (("extract", tmp_path, "--out", tmp_path, "--model", lite_folder), "is the source"),
        (("convert", ckpt, "--out", ckpt.parent, "--overwrite"), "holds CHECKPOINT"),
        (("train", "--recipe", "tiny", "--data", tmp_path, "--out", tmp_path, "--overwrite"), "is --data"),
        (("train", "--recipe", "tiny", "--data", tmp_path / "sub", "--out", tmp_path, "--overwrite"), "holds --data"),
        (("eval", "--dataset", "cub", "--root", tmp_path / "r.json", "--out", tmp_path / "r.json"), "is --root"),
    ]
    (tmp_path / "r.json").write_text("{}")
    for args, message in cases:
        code, _, err = run_here(*args, monkeypatch=monkeypatch, capsys=capsys)
        _one_line(code, err, message)
    assert _digest(b) == before and ckpt.exists()
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video")
    code, _, err = run_here("track", video, *m, "--render", video, monkeypatch=monkeypatch, capsys=capsys)
    _one_line(code, err, "--render '" + str(video) + "' is VIDEO")
    assert video.read_bytes() == b"not really a video"
    from distilldift.viz import draw_matches

    with pytest.raises(InvalidInputError, match="is img2"):  # the library refuses too
        draw_matches(a, str(tmp_path / "link.png"), [[1, 1]], [[2, 2]], out=b)


def test_small_mistakes_are_one_line(images, tmp_path, lite_folder, monkeypatch, capsys):
    a, b = images
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "broken.json").write_text("{broken")
    (tmp_path / "evil.ckpt").write_bytes(b"")
    cut = tmp_path / "cut.ckpt"
    if OFFICIAL.is_dir():
        cut.write_bytes((OFFICIAL / "official_lora_checkpoint.pt").read_bytes()[:3000])
    else:
        cut.write_bytes(b"PK\x03\x04" + b"\0" * 100)

    class Evil:
        def __reduce__(self):
            return os.system, ("true",)

    torch.save({"a": Evil()}, tmp_path / "evil.ckpt")
    cases = [
        (("match", a, b, "--model", lite_folder, "--points-file", tmp_path / "empty.json"), "holds no point"),
        (
            ("train", "--recipe", tmp_path / "broken.json", "--data", tmp_path, "--out", tmp_path / "r"),
            "recipe file '" + str(tmp_path / "broken.json") + "' is not valid JSON",
        ),
        (("models", "--cache-dir", a), "is a file; give a folder"),
        (("convert", cut, "--out", tmp_path / "m"), "PytorchStreamReader failed reading zip archive"),
        (("convert", tmp_path / "evil.ckpt", "--out", tmp_path / "m"), "asks for the Python object posix.system"),
        (("match", a, b, "--model", lite_folder, "--size", "100000"), "the largest size that fits is about"),
    ]
    for args, message in cases:
        code, _, err = run_here(*args, monkeypatch=monkeypatch, capsys=capsys)
        _one_line(code, err, message)
        assert "Please file" not in err and "weights_only=False" not in err and "internal" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


def test_help_keeps_square_brackets():
    out = subprocess.run([EXE, "match", "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert "a list of [x, y], or {'points': [...]}" in " ".join(out.stdout.split())
    out = subprocess.run([EXE, "demo", "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert "(needs [demo])" in " ".join(out.stdout.split())


def test_a_full_disk_or_read_only_folder_is_one_line(images, tmp_path, lite_folder, monkeypatch, capsys):
    """Every atomic write that fails (here a full disk, simulated at the rename) names the path and the system's
    reason, and leaves nothing; a folder that cannot be made names it too (here: one whose parent is a file)."""
    a, b = images
    import distilldift.files as files

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    for args, path in (
        (("match", a, b, "--model", lite_folder, "-p", "5,5", "--out", tmp_path / "m.png"), tmp_path / "m.png"),
        (("extract", a, b, "--model", lite_folder, "--out", tmp_path / "f.safetensors"), tmp_path / "f.safetensors"),
    ):
        code, _, err = run_here(*args, monkeypatch=monkeypatch, capsys=capsys)
        _one_line(code, err, f"cannot write '{path}': No space left on device")
        assert not path.exists() and not list(tmp_path.glob(".*tmp*"))
    monkeypatch.undo()


@requires_shared
@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_a_real_full_disk_and_an_immutable_folder(images, tmp_path, lite_folder):
    """The real thing where the machine allows it: a 1 MB tmpfs filled up, and a folder made immutable."""
    a, b = images
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        (disk / "fill").write_bytes(b"\0" * 1_044_000)  # a few kB left
        for args in (
            ("match", a, b, "--model", lite_folder, "-p", "5,5", "--out", disk / "m.png"),
            ("export", "--out", disk / "m.onnx", "--model", "lite"),
            ("extract", a, b, "--model", lite_folder, "--out", disk / "feats"),
        ):
            r = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True)
            assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr and f"cannot write '{disk}" in r.stderr
        assert {p.name for p in disk.iterdir()} <= {"fill", "feats"} and not list(disk.glob("**/*.tmp*"))
    finally:
        subprocess.run(["umount", str(disk)])
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "tiny.json").write_text(json.dumps(OFFICIAL_TINY.to_dict()))
    tiny = ("--variant", tmp_path / "tiny.json", "--base", OFFICIAL / "base_dinov2_hub_format.safetensors")
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
        pytest.skip("chattr +i is not permitted here")
    try:
        for args in (
            ("extract", tmp_path, "--model", lite_folder, "--out", locked / "feats"),
            ("train", "--recipe", "tiny", "--data", tmp_path, "--out", locked / "run"),
            ("convert", OFFICIAL / "official_lora_checkpoint.pt", "--out", locked / "m", *tiny),
        ):
            r = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True)
            assert r.returncode == 2 and "Operation not permitted" in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        subprocess.run(["chattr", "-i", str(locked)])


def test_ctrl_c_says_how_to_resume(tmp_path, lite_folder):
    rng = np.random.default_rng(1)
    for i in range(120):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i:03d}.png")
    out = tmp_path / "feats"
    p = subprocess.Popen(
        [EXE, "extract", str(tmp_path), "--out", str(out), "--model", str(lite_folder), "--shard-size", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not list(out.glob("features-*.safetensors")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1].endswith("are kept; rerun the same command to resume"), err


def test_offline_fails_over_in_seconds(monkeypatch):
    """No Hub to reach: the default model's error comes in seconds (the Hub client would retry for ~25 s) and says
    how to work offline."""
    import huggingface_hub.constants as hf

    from distilldift.errors import WeightsNotFoundError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setattr(hf, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as e:
        load_model("distilldift_us", cache_dir=None)
    assert time.perf_counter() - start < 10
    assert "cannot be reached" in str(e.value) and "HF_HUB_OFFLINE=1" in str(e.value)
    assert "distilldift download distilldift_us" in str(e.value)


def test_demo_checks_before_serving(monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_here("demo", "--model", "lite", "--port", port, monkeypatch=monkeypatch, capsys=capsys)
        _one_line(code, err, f"port {port} on 127.0.0.1 is in use; choose another with --port")
    code, _, err = run_here("demo", "--host", "bogus.invalid", monkeypatch=monkeypatch, capsys=capsys)
    _one_line(code, err, "--host 'bogus.invalid': not an address here")
    code, _, err = run_here("demo", "--model", "nosuch", monkeypatch=monkeypatch, capsys=capsys)
    _one_line(code, err, "'nosuch' is not a registered variant")


def test_a_truncated_video_says_how_many_frames_were_decoded(tmp_path, lite_folder):
    av = pytest.importorskip("av")
    path = tmp_path / "whole.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:  # the index (moov) at the front
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(40):
            frame = av.VideoFrame.from_ndarray((rng.random((64, 96, 3)) * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    r = subprocess.run(
        [
            EXE,
            "track",
            str(tmp_path / "cut.mp4"),
            "-p",
            "20,20",
            "--model",
            str(lite_folder),
            "--out",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["frames_declared"] == 40 and 0 < record["frames"] < 40
    assert f"decoded {record['frames']} of the 40 frames the file declares" in r.stderr
    assert f"through {record['frames']} frames (of the 40 the file declares)" in " ".join(r.stdout.split())


MICRO = [*TRAIN_MICRO, "checkpoint_every=2"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8)).save(root / f"{i}.png")
    return root


def test_a_diverging_run_stops_keeps_its_checkpoint_and_resumes(photos, tmp_path, monkeypatch):
    """A NaN loss at step 5: one error naming the step and the term, the step-4 checkpoint kept, no model folder,
    nothing non-finite logged; ``--resume`` (here with a lower learning rate) continues from it to the end."""
    config = apply_overrides(load_recipe("tiny"), MICRO)
    real_loss, calls = distill_module.distillation_loss, {"n": 0}

    def exploding(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(distill_module, "distillation_loss", exploding)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 5: the loss term distill = nan is not finite"):
        trainer_module.train(config, photos, tmp_path / "run", log=lambda *_: None)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "run" / "model").exists()
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in logged)
    monkeypatch.setattr(distill_module, "distillation_loss", real_loss)
    gentler = apply_overrides(config, ["lr=1e-5"])
    said = []
    folder = trainer_module.train(gentler, photos, tmp_path / "run", resume=True, log=said.append)
    assert (folder / "distilldift_config.json").exists() and any(
        line.startswith("learning rate ") and line.endswith(" -> 1e-05 from step 4") for line in said
    )


def test_the_cli_stops_a_real_blow_up_and_a_nan_model_folder_does_not_load(photos, tmp_path, lite_folder):
    args = ["train", "--recipe", "tiny", "--data", str(photos), "--out", str(tmp_path / "nan"), "--override"]
    r = subprocess.run([EXE, *args, *MICRO, "lr=1e12"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "training diverged at step" in r.stderr and "Lower the learning rate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "nan" / "model").exists()
    broken = tmp_path / "broken"
    model = load_model(lite_folder)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_pretrained(model, broken, save_base=True)
    with pytest.raises(CheckpointError, match="its weights hold NaN or inf .*train again with a lower learning rate"):
        load_model(broken)


@requires_shared
def test_convert_of_a_partial_checkpoint_into_a_read_only_folder_names_it(tmp_path):
    """(convert writes into a temporary folder beside the output: the message names the output.)"""
    from distilldift.errors import OutputError
    from distilldift.weights import convert_checkpoint

    parent = tmp_path / "file"
    parent.write_text("not a folder")
    with pytest.raises((OutputError, InvalidInputError), match=f"'{parent / 'm'}'"):
        convert_checkpoint(
            OFFICIAL / "official_lora_checkpoint.pt",
            parent / "m",
            variant=OFFICIAL_TINY,
            base=OFFICIAL / "base_dinov2_hub_format.safetensors",
        )
