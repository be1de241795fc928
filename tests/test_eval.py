"""Benchmark readers and PCK arithmetic on hand-made annotation sets in each dataset's real format."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark_layouts import pf_willow_download
from conftest import PF_WILLOW, requires_shared
from distilldift import MatchSettings
from distilldift.datasets import DatasetError, PairDataset, read_cub, read_dataset, read_pf_willow, read_spair
from distilldift.evaluation.pck import evaluate
from distilldift.weights import create_model
from oracle import BASE, VIEWS, View, oracle_model, transfer


def save_view(view: View, path: Path) -> None:
    """An oracle view as the dataset's image file, plus a lossless float twin (.npy) that the evaluation reads:
    8-bit pixels would quantise the colour ramps that encode position."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = view.image()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path, format="PNG")
    np.save(path.with_suffix(".npy"), rgb)


@pytest.fixture(autouse=True)
def _load_npy(monkeypatch):
    """Let the evaluation read each dataset image from its lossless .npy twin (float ramps for the oracle)."""
    import distilldift.evaluation.pck as ev

    real = ev.load_image

    def load(path):
        npy = Path(path).with_suffix(".npy")
        return real(np.load(npy)) if npy.exists() else real(path)

    monkeypatch.setattr(ev, "load_image", load)


def _spair(root: Path, pairs: list[dict]) -> Path:
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    for i, p in enumerate(pairs):
        (root / "PairAnnotation" / "test" / f"{i:06d}.json").write_text(json.dumps(p))
    return root


def _pair(cat, src, trg, src_kps, trg_kps, ids, box):
    kps = dict(src_kps=np.asarray(src_kps).tolist(), trg_kps=np.asarray(trg_kps).tolist(), kps_ids=list(ids))
    return dict(category=cat, src_imname=src, trg_imname=trg, trg_bndbox=list(box), src_bndbox=list(box), **kps)


def test_pck_averages_are_exact(tmp_path):
    """3 pairs, 2 categories; targets offset by 0 (correct) or 30 px (wrong at bbox threshold 10 px)."""
    resized = VIEWS["resized"]
    for name, view in (("a", BASE), ("b", resized)):
        for cat in ("cat", "dog"):
            save_view(view, tmp_path / "JPEGImages" / cat / f"{name}.jpg")
    q = np.array([[60.0, 50.0], [120.0, 90.0], [180.0, 60.0], [100.0, 130.0]])
    t = transfer(BASE, resized, q)
    box = (0, 0, 100, 80)  # bbox threshold at alpha 0.1: 10 px; img threshold: 0.1 * 300 = 30 px
    off = np.array([[0, 0], [0, 0], [0, 0], [25, 0]])  # wrong for bbox@0.1, right for img@0.1
    far = np.array([[40, 0], [40, 0]])  # wrong for both
    _spair(tmp_path, [
        _pair("cat", "a.jpg", "b.jpg", q, t + off, [0, 1, 2, 3], box),
        _pair("cat", "a.jpg", "b.jpg", q[:2], t[:2] + np.array([[0, 0], [40, 0]]), [0, 1], box),
        _pair("dog", "a.jpg", "b.jpg", q[2:], t[2:] + far, [0, 1], box),
    ])  # fmt: skip
    data = read_spair(tmp_path)
    assert len(data) == 3 and data.pairs[0].target_bbox == box
    r = evaluate(data, oracle_model(), progress=False, settings=MatchSettings(method="nn"))
    assert r.n_pairs == 3 and r.n_points == 8
    bbox, img = r.per_point["bbox"], r.per_point["img"]
    assert bbox[0.1] == pytest.approx(4 / 8)  # cat: 3 + 1 correct of 6; dog: 0 of 2
    assert r.per_pair["bbox"][0.1] == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert r.categories["cat"]["bbox"][0.1] == pytest.approx(4 / 6) and r.categories["dog"]["bbox"][0.1] == 0
    assert r.per_category["bbox"][0.1] == pytest.approx((4 / 6 + 0) / 2)
    assert img[0.1] == pytest.approx(5 / 8)  # the 25 px offset is within 30 px; the 40 px ones are not
    assert bbox[0.01] == pytest.approx(4 / 8)  # exact predictions stay correct at 1 px
    assert r.settings["features_computed"] == 4  # a.jpg and b.jpg per category (paths differ), each once


def test_pose_align_uses_the_left_right_permutation(tmp_path):
    """A mirrored target: matching the mirrored source with swapped left/right ids gets every point."""
    mirrored = VIEWS["flipped"]
    save_view(BASE, tmp_path / "JPEGImages" / "cat" / "a.jpg")
    save_view(mirrored, tmp_path / "JPEGImages" / "cat" / "m.jpg")
    q = np.array([[60.0, 50.0], [180.0, 50.0], [120.0, 120.0]])  # ids 0, 1 (a left/right pair for cats), 8
    # SPair semantics: in a mirrored image the "left eye" (id 0) is the source's right eye (id 1) seen in the mirror
    truth = transfer(BASE, mirrored, q[[1, 0, 2]])
    _spair(tmp_path, [_pair("cat", "a.jpg", "m.jpg", q, truth, [0, 1, 8], (0, 0, 100, 100))])
    data = read_spair(tmp_path)
    assert data.flip_permutation(data.pairs[0]) == [1, 0, 2]
    model = oracle_model(orientation=1.0)
    aligned = evaluate(data, model, progress=False, settings=MatchSettings(method="nn", flip="auto"))
    plain = evaluate(data, model, progress=False, settings=MatchSettings(method="nn", flip=False))
    assert aligned.per_point["bbox"][0.05] == 1.0
    assert plain.per_point["bbox"][0.05] == pytest.approx(1 / 3)  # only the unswapped id 8 is right


def test_pf_willow_format(tmp_path):
    for name, view in (("c1/x.png", BASE), ("c1/y.png", VIEWS["resized"])):
        save_view(view, tmp_path / name)
    q = np.array([[60.0 + 10 * i, 50.0 + 5 * i] for i in range(10)])
    t = transfer(BASE, VIEWS["resized"], q)
    t[0] += [12.0, 0.0]  # box of the target keypoints: ~110 x 56 px -> threshold 11 px at 0.1
    header = ["imageA", "imageB"] + [f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(1, 11)]
    row = ["c1/x.png", "c1/y.png"] + [f"{v:.6f}" for v in (*q[:, 0] + 1, *q[:, 1] + 1, *t[:, 0] + 1, *t[:, 1] + 1)]
    (tmp_path / "pairs.csv").write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    data = read_pf_willow(tmp_path)
    assert np.allclose(data.pairs[0].source_points, q)  # 1-based MATLAB pixels -> pixel centres
    x1, y1, x2, y2 = data.pairs[0].target_bbox
    assert (x1, x2) == pytest.approx((t[:, 0].min(), t[:, 0].max()))
    r = evaluate(data, oracle_model(), progress=False, settings=MatchSettings(method="nn"))
    assert r.per_point["bbox"][0.1] == pytest.approx(9 / 10) and r.categories["c1"]["bbox"][0.1] == pytest.approx(0.9)


@requires_shared
def test_pf_willow_as_downloaded_reads_the_same_pairs_and_pck(tmp_path, lite_model):
    today = read_pf_willow(PF_WILLOW)
    official = pf_willow_download(tmp_path / "a", renamed=False)
    authors = pf_willow_download(tmp_path / "b", renamed=True)
    for root in (tmp_path / "a", official.parent, authors, authors.parent):  # the folder, or the folder above it
        data = read_pf_willow(root)
        assert len(data) == 900 and data.index_base == 1
        for p, q in zip(data.pairs, today.pairs, strict=True):
            assert p.category == q.category and p.source.name == q.source.name and p.target.name == q.target.name
            assert p.source.resolve() == q.source.resolve() and p.target_bbox == q.target_bbox
            np.testing.assert_array_equal(p.source_points, q.source_points)
            np.testing.assert_array_equal(p.target_points, q.target_points)
    subset = [PairDataset(d.name, d.root, d.pairs[::45]) for d in (read_pf_willow(authors), today)]
    a, b = (evaluate(d, lite_model, progress=False) for d in subset)
    assert a.per_point == b.per_point and a.categories == b.categories and a.n_points == 200


def test_pf_pascal_format(tmp_path):
    """PF-PASCAL as the authors' prepare_pfpascal.sh leaves it: PF-dataset-PASCAL/JPEGImages + CNNGeometric's
    test_pairs_pf_pascal.csv (header; image A, image B relative to the folder above; class 1-20; then x of A, y of A,
    x of B, y of B as ';'-separated 1-based pixels)."""
    top = tmp_path / "data"
    folder = top / "PF-dataset-PASCAL"
    for name, view in (("2008_000008.jpg", BASE), ("2008_000123.jpg", VIEWS["resized"])):
        save_view(view, folder / "JPEGImages" / name)
    q = np.array([[60.0, 50.0], [120.0, 90.0], [180.0, 60.0]])
    t = transfer(BASE, VIEWS["resized"], q)
    t[2] += [40.0, 0.0]  # wrong at PCK_img@0.1 (target image 300 x 225 px: threshold 30 px)

    def col(v):
        return ";".join(f"{x + 1:.4f}" for x in v)

    row = ["PF-dataset-PASCAL/JPEGImages/2008_000008.jpg", "PF-dataset-PASCAL/JPEGImages/2008_000123.jpg", "12"]
    row += [col(q[:, 0]), col(q[:, 1]), col(t[:, 0]), col(t[:, 1])]
    (folder / "test_pairs_pf_pascal.csv").write_text("source_image,target_image,class,XA,YA,XB,YB\n" + ",".join(row))
    for root in (top, folder):
        data = read_dataset("pf-pascal", root)
        (p,) = data.pairs
        assert p.category == "dog" and np.allclose(p.source_points, q) and np.allclose(p.target_points, t)
        w, h = VIEWS["resized"].w, VIEWS["resized"].h
        assert p.target_bbox == (-0.5, -0.5, w - 0.5, h - 0.5) and data.index_base == 1
    r = evaluate(data, oracle_model(), progress=False, settings=MatchSettings(method="nn"))
    assert r.per_point["img"][0.1] == pytest.approx(2 / 3) and r.per_point["bbox"] == r.per_point["img"]


def _cub(root: Path, n_images: int = 6) -> Path:
    (root / "parts").mkdir(parents=True)
    names = ["back", "beak", "left eye", "right eye", "tail"]
    (root / "parts" / "parts.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    lines, locs, boxes, split = [], [], [], []
    rng = np.random.default_rng(0)
    for i in range(1, n_images + 1):
        lines.append(f"{i} 001.Bird/img_{i}.jpg\n")
        (root / "images" / "001.Bird").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "images" / "001.Bird" / f"img_{i}.jpg")
        split.append(f"{i} {i % 2}\n")  # odd ids train, even ids test
        boxes.append(f"{i} 5.0 6.0 30.0 20.0\n")
        for p in range(1, 6):
            vis = int(not (i == 2 and p == 5))  # image 2 hides its tail
            locs.append(f"{i} {p} {rng.uniform(0, 49):.1f} {rng.uniform(0, 39):.1f} {vis}\n")
    labels = [f"{i} 1\n" for i in range(1, n_images + 1)]
    for name, content in (
        ("images.txt", lines),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
        ("image_class_labels.txt", labels),
        ("classes.txt", ["1 001.Bird\n"]),
    ):
        (root / name).write_text("".join(content))
    (root / "parts" / "part_locs.txt").write_text("".join(locs))
    return root


def test_cub_format(tmp_path):
    root = _cub(tmp_path)
    a, b = read_cub(root, n_pairs=20, seed=1), read_cub(root, n_pairs=20, seed=1)
    assert [(p.source, p.target) for p in a.pairs] == [(p.source, p.target) for p in b.pairs]  # reproducible
    assert {p.source.name for p in a.pairs} <= {"img_2.jpg", "img_4.jpg", "img_6.jpg"}  # test split only
    assert len(a) == 3 and "3 of the 3 same-species image pairs, drawn with seed 1" in a.protocol  # unordered pairs
    for p in a.pairs:
        assert p.source != p.target and p.target_bbox == (5.0, 6.0, 35.0, 26.0) and p.category == "Bird"
        if "img_2" in (p.source.name + p.target.name):
            assert 5 not in p.keypoint_ids and len(p.source_points) == 4  # mutually visible parts only
    assert a.left_right == {"Bird": [(3, 4)]}
    p = next(p for p in a.pairs if 3 in p.keypoint_ids and 4 in p.keypoint_ids)
    perm = a.flip_permutation(p)
    assert [p.keypoint_ids[j] for j in perm] == [{3: 4, 4: 3}.get(k, k) for k in p.keypoint_ids]
    assert [(q.source, q.target) for q in read_cub(root, n_pairs=20, seed=2).pairs] != [
        (q.source, q.target) for q in a.pairs
    ]


def _cub_species(root: Path, species: int = 4, per_species: int = 5, part_names=("left_eye", "right_eye", "beak")):
    """The official layout with several species: ids in images.txt order, species 1.. in blocks, half test."""
    (root / "parts").mkdir(parents=True)
    (root / "parts" / "parts.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(part_names)))
    rows = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    i = 0
    for c in range(1, species + 1):
        for k in range(per_species):
            i += 1
            folder = f"{c:03d}.Species_{c}"
            rows["images"].append(f"{i} {folder}/s{c}_{k}.jpg\n")
            rows["labels"].append(f"{i} {c}\n")
            rows["split"].append(f"{i} {k % 2}\n")
            rows["boxes"].append(f"{i} 1 2 30 20\n")
            rows["locs"] += [f"{i} {p + 1} {5 + p} {6 + p} {int(not (c == 2 and p > 0))}\n" for p in range(3)]
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30)).save(root / "images" / folder / f"s{c}_{k}.jpg")
    for name, key in (("images", "images"), ("image_class_labels", "labels"), ("train_test_split", "split")):
        (root / f"{name}.txt").write_text("".join(rows[key]))
    (root / "bounding_boxes.txt").write_text("".join(rows["boxes"]))
    (root / "parts" / "part_locs.txt").write_text("".join(rows["locs"]))
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Species_{c}\n" for c in range(1, species + 1)))
    return root


def test_cub_pairs_are_the_authors_within_species_sample(tmp_path):
    """The authors (CompVis/distilldift train/): every unordered pair of same-species test images, species by species,
    in images.txt order; ``torch.manual_seed(42); torch.randperm(n)`` orders them and the first 1,000 are kept."""
    import itertools

    import torch

    root = _cub_species(tmp_path / "CUB_200_2011")
    ids = [[c * 5 + k + 1 for k in range(5) if k % 2 == 0] for c in range(4)]  # test: k = 0, 2, 4 (split 0)
    candidates = [pair for group in ids for pair in itertools.combinations(group, 2)]
    torch.manual_seed(42)
    expected = [candidates[k] for k in torch.randperm(len(candidates))[:10].tolist()]
    data = read_cub(root, n_pairs=10, seed=42)
    name = {i: f"s{(i - 1) // 5 + 1}_{(i - 1) % 5}.jpg" for i in range(1, 21)}
    want = [(name[a], name[b]) for a, b in expected if (a - 1) // 5 != 1]  # species 2 sees only part 1 ...
    assert [(p.source.name, p.target.name) for p in data.pairs if p.category != "Species_2"] == want
    assert all(p.source.parent == p.target.parent for p in data.pairs)  # never across species
    assert data.left_right["Species_3"] == [(1, 2)]  # parts spelt left_eye / right_eye still swap
    short = read_cub(root, n_pairs=10, seed=42, min_points=2)  # ... so with 2 parts needed its pairs are left out
    skipped = sum((a - 1) // 5 == 1 for a, _ in expected)
    assert skipped and [(p.source.name, p.target.name) for p in short.pairs] == want
    assert f"10 of the 12 same-species image pairs, drawn with seed 42, less {skipped} with fewer" in short.protocol
    # the flat images/<class>_<name>.jpg of the authors' prepare_cub.sh
    for f in list((root / "images").rglob("*.jpg")):
        f.rename(root / "images" / f"{f.parent.name}_{f.name}")
    flat = read_cub(root, n_pairs=10, seed=42)
    assert [p.source.name for p in flat.pairs] == [f"{p.source.parent.name}_{p.source.name}" for p in data.pairs]
    r = evaluate(flat, create_model("lite"), limit=2, progress=False, settings=MatchSettings(method="nn"))
    assert r.n_pairs == 2 and r.protocol.endswith(f"the first 2 of its {len(flat)} pairs evaluated")


def _spair_with(root, annotation: str | None):
    """An SPair layout with no pairs, or one pair annotation file holding ``annotation``."""
    _spair(root / "s", [])
    (root / "s" / "JPEGImages").mkdir()
    if annotation is not None:
        (root / "s" / "PairAnnotation" / "test" / "000.json").write_text(annotation)
    return read_spair(root / "s")


def _pf_willow_with(root, rows: str | None):
    if rows is not None:
        (root / "pairs.csv").write_text(rows)
    return read_pf_willow(root)


def _pf_pascal_with(root, split: str):
    (root / "PF-dataset-PASCAL").mkdir()
    (root / "PF-dataset-PASCAL" / "test_pairs_pf_pascal.csv").write_text("a,b,class,XA,YA,XB,YB\nx,y,21,1,1,1,1\n")
    return read_dataset("pf-pascal", root, split)


@pytest.mark.parametrize(
    "read, match",
    [
        (lambda r: read_spair(r / "nope"), "SPair-71k: missing dataset root"),
        (lambda r: read_spair(r), r"SPair-71k: missing split folder .*PairAnnotation/test"),
        (lambda r: _spair_with(r, None), "no pair annotations"),
        (lambda r: _spair_with(r, "{broken"), "corrupt annotation file .*000.json"),
        (lambda r: _spair_with(r, '{"category": "cat"}'), "lacks or mangles a field"),
        (lambda r: _pf_willow_with(r, None), "PF-WILLOW: no pair list test_pairs_pf.csv / pairs.csv in"),
        (lambda r: _pf_willow_with(r, "imageA,imageB,XA1\n"), r"pairs.csv' has no pairs"),
        (lambda r: _pf_willow_with(r, "imageA,imageB,XA1\nx.png,y.png,1\n"), r"line 2: 3 columns, expected 42"),
        (lambda r: _pf_willow_with(r, "x.png,y.png," + ",".join(["1"] * 40) + "\n"), "line 1: image 'x.png' not found"),
        (lambda r: _pf_pascal_with(r, "test"), "PF-PASCAL: .* line 2: class '21' is not 1-20"),
        (lambda r: _pf_pascal_with(r, "val"), "PF-PASCAL: no pair list val_pairs_pf_pascal.csv"),
        (lambda r: read_cub(r), "CUB-200-2011: missing file .*images.txt"),
        (lambda r: read_dataset("coco", r), "unknown dataset 'coco'"),
    ],
)
def test_bad_roots(tmp_path, read, match):
    with pytest.raises(DatasetError, match=match):
        read(tmp_path)


@requires_shared
def test_real_pf_willow_pretrained_far_above_random(lite_model):
    import torch

    from distilldift.weights import create_model

    data = read_pf_willow(PF_WILLOW)
    assert len(data) == 900 and len({p.category for p in data.pairs}) == 10
    subset = PairDataset(data.name, data.root, data.pairs[::18], protocol=data.protocol)  # 50 pairs, 5 per class
    pretrained = evaluate(subset, lite_model, progress=False).per_point["bbox"][0.1]
    torch.manual_seed(0)
    random_init = evaluate(subset, create_model("lite"), progress=False).per_point["bbox"][0.1]
    assert pretrained > 0.45 and random_init < 0.35 and pretrained - random_init > 0.2  # full run: 0.535 vs 0.228


@requires_shared
def test_real_pf_willow_full_benchmark_is_unchanged(lite_model):
    """All 900 pairs, as recorded in BENCHMARKS.md (bbox@0.1 0.531, img@0.1 0.656 with ``soft``; 0.535 / 0.657
    before ``soft`` removed its own drift toward cell centres)."""
    r = evaluate(read_pf_willow(PF_WILLOW), lite_model, progress=False)
    assert r.per_point["bbox"][0.1] == pytest.approx(0.531, abs=0.004)
    assert r.per_point["img"][0.1] == pytest.approx(0.656, abs=0.004)


@requires_shared
def test_eval_cli(tmp_path):
    exe = str(Path(sys.executable).parent / "distilldift")
    cmd = [exe, "eval", "--dataset", "pf-willow", "--root", str(PF_WILLOW), "--model", "lite", "--limit", "20"]
    env = {**os.environ, "COLUMNS": "80"}  # a common terminal: the table must stay readable
    r = subprocess.run(cmd + ["--out", str(tmp_path / "r.json")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "car(G)" in r.stdout and "mean over categories" in r.stdout and "…" not in r.stdout
    assert all(h in r.stdout for h in ("img", "bbox", "@0.1", "@0.05", "@0.01"))
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["n_pairs"] == 20 and 0 <= data["per_point"]["bbox"]["0.1"] <= 1 and "protocol" in data
    r = subprocess.run(
        [exe, "eval", "--dataset", "spair", "--root", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "SPair-71k: missing dataset root" in r.stderr
    r = subprocess.run(cmd + ["--protocol", "paper"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "the authors' protocol (train/eval.py): 320x320 input normalised" in " ".join(r.stdout.split())
    r = subprocess.run(cmd + ["--protocol", "paper", "--method", "nn"], capture_output=True, text=True)
    assert r.returncode == 2 and "--protocol paper sets the matching itself; drop --method" in r.stderr


def test_cub_pck_is_exact(tmp_path):
    """Two test images (ids 2, 4): parts 1-4 correspond exactly, part 5 is 25 px off (threshold 10 px)."""
    root = tmp_path / "CUB_200_2011"
    (root / "parts").mkdir(parents=True)
    (root / "parts" / "parts.txt").write_text("1 back\n2 beak\n3 left eye\n4 right eye\n5 tail\n")
    q = np.array([[60.0, 50.0], [120.0, 90.0], [180.0, 60.0], [100.0, 130.0], [150.0, 110.0]])
    t = transfer(BASE, VIEWS["resized"], q) + np.array([[0, 0]] * 4 + [[25, 0]])
    views = {1: BASE, 2: BASE, 3: BASE, 4: VIEWS["resized"]}
    locs = {1: q, 2: q, 3: q, 4: t}
    for i, view in views.items():
        save_view(view, root / "images" / "001.Bird" / f"b_{i}.jpg")
    (root / "images.txt").write_text("".join(f"{i} 001.Bird/b_{i}.jpg\n" for i in views))
    (root / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in views))  # test: ids 2 and 4
    (root / "bounding_boxes.txt").write_text("".join(f"{i} 0 0 100 80\n" for i in views))
    (root / "image_class_labels.txt").write_text("".join(f"{i} 1\n" for i in views))
    (root / "classes.txt").write_text("1 001.Bird\n")
    (root / "parts" / "part_locs.txt").write_text(
        "".join(f"{i} {k + 1} {x} {y} 1\n" for i, pts in locs.items() for k, (x, y) in enumerate(pts))
    )
    data = read_cub(root, n_pairs=4, seed=0)
    assert [(p.source.name, p.target.name) for p in data.pairs] == [("b_2.jpg", "b_4.jpg")]  # the one test pair
    r = evaluate(data, oracle_model(), progress=False, settings=MatchSettings(method="nn"))
    # 2 -> 4: part 5 predicted 25 px from its label: > 10 px (bbox), < 30 px (img)
    assert r.per_point["bbox"][0.1] == pytest.approx(4 / 5) and r.per_pair["bbox"][0.1] == pytest.approx(4 / 5)
    assert r.categories == {"Bird": r.categories["Bird"]} and r.per_point["img"][0.1] == 1.0
