"""Supervised (``--recipe spair``) and weakly supervised (``--recipe spair_ws``) training on an SPair-format fixture
made from real photos with known transforms."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from distilldift import load_model
from distilldift.datasets import read_spair
from distilldift.errors import InvalidInputError
from distilldift.training import train
from distilldift.training.config import apply_overrides, load_recipe
from spair_fixture import write_spair_fixture

MICRO = [
    'student_overrides={"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 56}',
    'student_init="random"',
    "image_size=56",
    "batch_size=2",
    "steps=3",
    "checkpoint_every=3",
    "keypoints.points_per_pair=8",
]


@pytest.fixture(scope="module")
def spair_root(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data")
    photos = tmp_path_factory.mktemp("photos")
    paths = []
    for cls, names in {"animal": ("chelsea", "astronaut"), "thing": ("coffee", "rocket")}.items():
        (photos / cls).mkdir()
        for name in names:
            Image.fromarray(getattr(skimage_data, name)()).resize((160, 120)).save(photos / cls / f"{name}.png")
            paths.append(photos / cls / f"{name}.png")
    root = tmp_path_factory.mktemp("spair")
    write_spair_fixture(root, paths[:3], "trn", pairs_per_photo=2)
    write_spair_fixture(root, paths[3:], "test")
    return root


def test_fixture_keypoints_follow_the_known_transform(spair_root):
    data = read_spair(spair_root, "trn")
    assert len(data) == 6 and {p.category for p in data.pairs} == {"animal", "thing"}
    pair = data.pairs[0]
    src = np.asarray(Image.open(pair.source), np.float32)
    trg = np.asarray(Image.open(pair.target), np.float32)
    # the colour change is affine per image: after standardising, pixels at matching keypoints agree
    a = src[tuple(np.round(pair.source_points[:, ::-1]).astype(int).T)]
    b = trg[tuple(np.round(pair.target_points[:, ::-1]).astype(int).T)]
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr > 0.8, corr


def test_spair_recipes_and_their_checks():
    cfg = load_recipe("spair")
    assert cfg.objective == "keypoints" and cfg.image_size == 336 and cfg.student_init == "distilldift_us"
    assert cfg.keypoints.loss == "cross_entropy" and cfg.keypoints.beta == 1000.0 and cfg.keypoints.split == "trn"
    ws = load_recipe("spair_ws")
    assert ws.objective == "distill" and ws.distill.pairs == "dataset" and ws.distill.pairs_dataset == "spair"
    for bad, message in [
        ("keypoints.loss=mse", "keypoints.loss must be one of cross_entropy, soft_argmax"),
        ("keypoints.dataset=coco", "keypoints.dataset must be one of spair, pf-willow, pf-pascal, cub"),
        ("distill.pairs=spair", "pairs must be one of retrieval, category, given, dataset"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            apply_overrides(cfg, [bad])


@pytest.mark.parametrize("loss", ["cross_entropy", "soft_argmax"])
def test_supervised_training_runs_and_resumes_exactly(spair_root, tmp_path, loss):
    cfg = apply_overrides(load_recipe("spair"), [*MICRO, f'keypoints.loss="{loss}"'])
    quiet = dict(log=lambda *_: None)
    folder = train(cfg, spair_root, tmp_path / "a", recipe="spair", **quiet)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    term = "point" if loss == "cross_entropy" else "soft_argmax"
    assert [r["step"] for r in log] == [1, 2, 3] and all(r[term] > 0 for r in log)
    model = load_model(folder)
    assert "spair trn keypoints" in model.variant.description and model.variant.recipe == "spair"
    two = apply_overrides(cfg, ["steps=2", "checkpoint_every=1"])
    train(two, spair_root, tmp_path / "b", **quiet)
    resumed = train(cfg, spair_root, tmp_path / "b", resume=True, **quiet)
    a, b = load_model(folder).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weakly_supervised_distils_on_the_split_s_image_pairs_only(spair_root, tmp_path):
    cfg = apply_overrides(
        load_recipe("spair_ws"),
        [
            'student="lite"',
            'student_init="random"',
            'train="full"',
            'distill.teachers=["lite"]',
            "image_size=64",
            "steps=2",
            "batch_size=2",
            "checkpoint_every=2",
            "distill.cache_batch_size=4",
        ],
    )
    train(cfg, spair_root, tmp_path / "ws", log=lambda *_: None)
    index = json.loads((tmp_path / "ws" / "teacher-cache" / "index.json").read_text())
    cached = {k.rpartition("#")[0] for k in index["images"]}
    trn = read_spair(spair_root, "trn")
    expected = {str(p.resolve()) for pair in trn.pairs for p in (pair.source, pair.target)}
    assert cached == expected  # the trn pairs' images, not the test split's


def test_augmentations_move_the_labels_with_the_pixels():
    from distilldift.training.data import random_augment

    rng = np.random.default_rng(0)
    img = torch.zeros(3, 90, 120)
    points = torch.tensor(rng.uniform([3, 3], [116, 86], (12, 2)))
    for x, y in points.round().long().tolist():
        img[:, y - 1 : y + 2, x - 1 : x + 2] = 1.0  # white 3x3 dots on black
    flips = moved_out = 0
    for seed in range(40):
        out, t = random_augment(img, np.random.default_rng(seed))
        assert out.shape[1:] == (t.size[1], t.size[0])
        pts, inside = t.apply(points)
        flips += t.flip
        moved_out += int((~inside).sum())
        for x, y in pts[inside].round().long().tolist():
            assert out[:, y, x].min() > 0.45, (seed, x, y)  # still on its dot
    assert 5 < flips < 35 and moved_out > 0  # both flips and crops that cut labels off happened


def test_augmented_supervised_training_runs(spair_root, tmp_path):
    cfg = apply_overrides(load_recipe("spair"), [*MICRO, "keypoints.augment=true", "steps=2"])
    train(cfg, spair_root, tmp_path / "aug", log=lambda *_: None)
    log = [json.loads(line) for line in (tmp_path / "aug" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(r["point"]) for r in log)
