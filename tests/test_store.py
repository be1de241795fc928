"""Dataset-scale extraction (`distilldift extract DIR --out FOLDER`): what the store holds, resume after a kill,
torchrun processes sharing the work, bad inputs, and the reader by name."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_model
from distilldift import extract_features
from distilldift.errors import ImageLoadError, InvalidInputError, UnknownImageError
from distilldift.features import ExtractSettings, FeatureStore, extract_to_folder, load_features
from distilldift.features.folder import list_images
from distilldift.weights import save_pretrained

SCRIPT = Path(sys.executable).parent / "distilldift"
CMD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "distilldift"]


def run(*args, env=None):
    return subprocess.run(
        CMD + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """23 photos of different sizes and aspect ratios: 15 at the top, 8 in a subfolder (real content: crops)."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = Image.fromarray(skimage_data.astronaut())
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for i in range(23):
        w, h = (int(v) for v in rng.integers(60, 200, 2))
        x, y = (int(v) for v in rng.integers(0, 300, 2))
        crop = photo.crop((x, y, x + 2 * w, y + 2 * h)).resize((w, h))
        crop.save(root / ("sub" if i >= 15 else "") / f"img{i:02d}.{'png' if i % 3 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


@pytest.fixture(scope="module")
def model_folder(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    save_pretrained(model, folder, save_base=True)
    return folder


def test_store_holds_what_extract_features_gives(images, model, tmp_path):
    r = extract_to_folder(
        images,
        tmp_path / "f",
        model,
        size=112,
        resize="keep_aspect",
        settings=ExtractSettings(shard_size=5, batch_size=3),
    )
    assert (r.images, r.shards, r.written, r.done_before, r.unreadable) == (23, 5, 5, 0, {})
    store = FeatureStore(tmp_path / "f")
    names = [name for name, _ in list_images(images)]
    assert list(store) == names and len(store) == 23 and names[-1] == "sub/img22.png" and "sub/img22.png" in store
    assert store.run["model"] == "distilldift_us" and store.run["size"] == 112 and store.run["dtype"] == "float32"
    for name in ("img00.jpg", "img07.png", "sub/img15.jpg", "sub/img22.png"):
        expect = extract_features(images / name, model, size=112, resize="keep_aspect")
        got = store[name]
        assert got.geometry == expect.geometry[0]
        assert got.features.dtype == torch.float32 and got.features.shape == expect.features.shape[1:]
        assert (got.features - expect.features[0]).abs().max() < 1e-5
    grids = {store[n].geometry.grid_size for n in names}
    assert len(grids) > 3  # keep_aspect: every aspect ratio its own grid, each image at its own size
    with pytest.raises(UnknownImageError, match="'nope.jpg' is not in .*no such image"):
        store["nope.jpg"]
    assert store.get("nope.jpg") is None and "nope.jpg" not in store
    # a shard is a save_features file: load_features reads it too
    maps, meta = load_features(tmp_path / "f" / "features-00001-of-00005.safetensors")
    assert [e["image"] for e in meta["images"]] == names[5:10] and meta["shard"] == 1
    assert torch.equal(maps[0].features, store[names[5]].features)


def test_interrupted_run_resumes_to_the_same_files(images, model, tmp_path):
    kw = dict(size=84, settings=ExtractSettings(shard_size=4, batch_size=2, decoders=0))
    extract_to_folder(images, tmp_path / "whole", model, **kw)

    def stop_after_9(done, total):
        if done >= 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_to_folder(images, tmp_path / "cut", model, callback=stop_after_9, **kw)
    written = sorted(p.name for p in (tmp_path / "cut").glob("features-*"))
    assert written == ["features-00000-of-00006.safetensors", "features-00001-of-00006.safetensors"]
    with pytest.raises(InvalidInputError, match=r"unfinished extraction \(2 shards written.*rerun the same"):
        FeatureStore(tmp_path / "cut")
    r = extract_to_folder(images, tmp_path / "cut", model, **kw)
    assert (r.written, r.done_before) == (4, 2)
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")
    again = extract_to_folder(images, tmp_path / "cut", model, **kw)  # all done: nothing to compute
    assert (again.written, again.done_before) == (0, 6) and _files(tmp_path / "cut") == _files(tmp_path / "whole")


def test_killed_cli_run_and_rerun_equal_one_uninterrupted_run(images, model_folder, tmp_path):
    args = [images, "--model", model_folder, "--size", "224", "--shard-size", "2", "--batch-size", "1"]
    whole = run("extract", *args, "--out", tmp_path / "whole", "--decoders", "0")
    assert whole.returncode == 0, whole.stderr
    assert "23 images in 12 shards (12 written now)" in whole.stdout
    proc = subprocess.Popen(CMD + [str(a) for a in (["extract", *args, "--out", tmp_path / "cut"])])
    deadline = time.time() + 120
    while not list((tmp_path / "cut").glob("features-00002-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no clean-up: whatever it was writing stays half-written
    proc.wait()
    shards = list((tmp_path / "cut").glob("features-*"))
    assert 3 <= len(shards) < 12 and not (tmp_path / "cut" / "index.json").exists()
    again = run("extract", *args, "--out", tmp_path / "cut")
    assert again.returncode == 0, again.stderr
    assert f"({12 - len(shards)} written now; {len(shards)} were done before)" in again.stdout
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")  # byte for byte, no temporary file left


def test_torchrun_processes_share_the_shards(images, model_folder, tmp_path):
    args = [images, "--model", model_folder, "--size", "84", "--shard-size", "3", "--decoders", "1"]
    env = {"OMP_NUM_THREADS": "1"}  # torchrun's default per process; the same arithmetic in both runs
    one = run("extract", *args, "--out", tmp_path / "one", env=env)
    assert one.returncode == 0, one.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "distilldift"]
    two = subprocess.run(
        cmd + ["extract", *map(str, args), "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", **env},
    )
    assert two.returncode == 0, two.stderr + two.stdout
    assert "process 0 of 2: 4 shards written" in two.stdout and "process 1 of 2: 4 shards written" in two.stdout
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


def test_bad_images_keep_finished_shards_and_are_skipped_on_request(images, model, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(images, src)
    (src / "img03.jpg").write_bytes(b"not an image")
    (src / "sub" / "img99.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"img03\.jpg.*finished shards are kept.*--skip-bad"):
        extract_to_folder(src, tmp_path / "f", model, size=56, settings=ExtractSettings(shard_size=2, decoders=0))
    assert sorted(p.name for p in (tmp_path / "f").glob("features-*")) == ["features-00000-of-00012.safetensors"]
    r = extract_to_folder(
        src, tmp_path / "f", model, size=56, settings=ExtractSettings(shard_size=2, decoders=2, skip_bad=True)
    )
    assert sorted(r.unreadable) == ["img03.jpg", "sub/img99.png"] and (r.done_before, r.written) == (1, 11)
    store = FeatureStore(tmp_path / "f")
    assert len(store) == 22 and sorted(store.unreadable) == ["img03.jpg", "sub/img99.png"]
    with pytest.raises(UnknownImageError, match="'img03.jpg' is not in .*could not be read: could not decode"):
        store["img03.jpg"]


def _one_more_image(src, images):
    (src / "extra.png").write_bytes((images / "img01.png").read_bytes())
    return 56


_OTHER_RUNS = {  # case -> (change the inputs, return the size to ask for; message)
    "another size": (lambda src, images: 70, r"holds features of another run \(size: 56, this run: 70\)"),
    "another image list": (_one_more_image, r"another run \(images: 23, this run: 24\)"),
}


@pytest.mark.parametrize("case", list(_OTHER_RUNS))
def test_a_rerun_with_other_inputs_is_refused(images, model, tmp_path, case):
    change, message = _OTHER_RUNS[case]
    src = tmp_path / "src"
    shutil.copytree(images, src)
    extract_to_folder(src, tmp_path / "f", model, size=56, settings=ExtractSettings(shard_size=2, decoders=0))
    before = _files(tmp_path / "f")
    size = change(src, images)
    with pytest.raises(InvalidInputError, match=message):
        extract_to_folder(src, tmp_path / "f", model, size=size, settings=ExtractSettings(shard_size=2, decoders=0))
    assert _files(tmp_path / "f") == before


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda folder, images, model: extract_to_folder(images, folder, model), "is not empty and holds no distil"),
        (lambda folder, images, model: FeatureStore(folder), "not a features folder"),
    ],
    ids=["extract into it", "read it"],
)
def test_a_folder_of_other_files_is_never_touched(images, model, tmp_path, call, message):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match=message):
        call(tmp_path / "other", images, model)
    assert _files(tmp_path / "other") == {"notes.txt": b"mine"}


def test_list_files_names_and_empty_inputs(images, model, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two photos\n{images / 'img01.png'}\n\nrel/b.png\n")
    (tmp_path / "rel").mkdir()
    shutil.copy(images / "sub" / "img16.png", tmp_path / "rel" / "b.png")
    assert [n for n, _ in list_images(lst)] == sorted(["rel/b.png", str(images / "img01.png")])
    r = extract_to_folder(lst, tmp_path / "f", model, size=56, settings=ExtractSettings(dtype="float16"))
    store = FeatureStore(tmp_path / "f")
    assert (r.images, r.shards) == (2, 1) and store.run["dtype"] == "float16"
    exact = extract_features(images / "img01.png", model, size=56).features[0]
    half = store[str(images / "img01.png")].features
    assert half.dtype == torch.float32 and 0 < (half - exact).abs().max() < 2e-3  # stored as float16
    (tmp_path / "elsewhere" / "rel").mkdir(parents=True)
    shutil.copy(images / "img02.png", tmp_path / "elsewhere" / "rel" / "b.png")
    (tmp_path / "elsewhere" / "list.txt").write_text("rel/b.png\n")
    with pytest.raises(InvalidInputError, match="two images are both named 'rel/b.png'"):
        list_images([lst, tmp_path / "elsewhere" / "list.txt"])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    r = extract_to_folder(empty, tmp_path / "none", model)
    assert (r.images, r.shards) == (0, 0) and len(FeatureStore(tmp_path / "none")) == 0
    with pytest.raises(InvalidInputError, match="'missing' not found: give image files, folders or .txt lists"):
        list_images("missing")


def test_cli_single_file_and_errors(images, model_folder, tmp_path):
    r = run(
        "extract", images / "sub", images / "img00.jpg", "--model", model_folder, "--out", tmp_path / "f.safetensors"
    )
    assert r.returncode == 0, r.stderr
    maps, meta = load_features(tmp_path / "f.safetensors")
    assert [e["image"] for e in meta["images"]] == [
        f"img{i}.png" if i % 3 else f"img{i}.jpg" for i in range(15, 23)
    ] + [str(images / "img00.jpg")]
    bad = run("extract", images, "--model", model_folder, "--out", tmp_path / "f.safetensors" / "x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    r = run("extract", images, "--model", model_folder, "--out", tmp_path / "feats.npz")
    assert r.returncode == 2 and "give a folder (features in shards + index.json) or a .safetensors file" in r.stderr
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "keep.txt").write_text("x")
    r = run("extract", images, "--model", model_folder, "--out", tmp_path / "run2")
    assert r.returncode == 2 and "is not empty and holds no distilldift features" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    assert json.loads(json.dumps(sorted(os.listdir(tmp_path / "run2")))) == ["keep.txt"]


def test_readme_dataset_example_runs(tmp_path, monkeypatch, cpu_as_it_is):
    """The README's dataset commands as written (the CLI line, then the Python snippet) on the sample photos."""
    import re

    from distilldift import load_model, match_points
    from distilldift.samples import write_sample_photos

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Features of a whole dataset") :]
    command = re.search(r"```bash\n(distilldift extract [^\n#]*?)\s*#", section)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    monkeypatch.chdir(tmp_path)
    write_sample_photos(tmp_path / "photos" / "cats")
    for old, new in (("cat.png", "001.jpg"), ("cat_moved.png", "002.jpg")):
        Image.open(tmp_path / "photos" / "cats" / old).convert("RGB").save(tmp_path / "photos" / "cats" / new)
        (tmp_path / "photos" / "cats" / old).unlink()
    r = run(*command.split()[1:])
    assert r.returncode == 0, r.stderr
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    cats = tmp_path / "photos" / "cats"
    here = load_model("lite")  # as the command loaded it: precision "auto" on this CPU
    expect = match_points(cats / "001.jpg", cats / "002.jpg", [[171, 121], [314, 133]], model=here)
    assert (scope["m"].points - expect.points).abs().max() < 1e-3 and len(scope["store"]) == 2
