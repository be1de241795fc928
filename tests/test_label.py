"""`distilldift label` / label_keypoints: COCO keypoints in, fused transfers out, loadable by pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from conftest import run_here
from distilldift.errors import InvalidInputError
from distilldift.labelling import (
    LabelSettings,
    flip_permutation,
    fuse_candidates,
    label_keypoints,
    read_references,
    write_labels,
)

# points on the cat of scikit-image's chelsea (451 x 300): head, chest, back, tail side, ear
POINTS = torch.tensor([[300.0, 110.0], [250.0, 230.0], [120.0, 140.0], [60.0, 250.0], [330.0, 40.0]])
NAMES = ["left_eye", "right_eye", "back", "tail", "ear"]


def _coco(images: list[tuple[str, tuple[int, int]]], keypoints: list[torch.Tensor], names=NAMES, cats=None) -> dict:
    """A COCO keypoints dict as CVAT / Label Studio export it: keypoints [x, y, v, ...] (v = 2 unless NaN: 0)."""
    anns = []
    for i, kp in enumerate(keypoints):
        flat = []
        for x, y in kp.tolist():
            flat += [0, 0, 0] if x != x else [round(x, 2), round(y, 2), 2]
        cat = cats[i] if cats else 1
        anns.append({"id": 10 + i, "image_id": i + 1, "category_id": cat, "keypoints": flat, "num_keypoints": 5})
    ims = [{"id": i + 1, "file_name": f, "width": s[0], "height": s[1]} for i, (f, s) in enumerate(images)]
    categories = [{"id": 1, "name": "cat", "supercategory": "animal", "keypoints": names, "skeleton": [[1, 2]]}]
    if cats:
        categories.append({"id": 2, "name": "noise", "keypoints": names})
    return {"images": ims, "annotations": anns, "categories": categories}


@pytest.fixture(scope="module")
def cat_refs(tmp_path_factory, cat_pair):
    """Two references with exactly known keypoints (a crop and a shrunk copy of the cat) and the cat as target."""
    root = tmp_path_factory.mktemp("label")
    cat = cat_pair[0]
    cat.save(root / "target.png")
    cat.crop((30, 20, 430, 290)).save(root / "crop.png")
    cat.resize((361, 240), Image.BICUBIC).save(root / "small.png")
    crop_kp = POINTS - torch.tensor([30.0, 20.0])
    small_kp = (POINTS + 0.5) * torch.tensor([361 / 451, 240 / 300]) - 0.5
    small_kp[4] = float("nan")  # the ear is unlabelled (v = 0) on this reference: it does not vote
    refs = _coco([("crop.png", (400, 270)), ("small.png", (361, 240))], [crop_kp, small_kp])
    (root / "refs.json").write_text(json.dumps(refs))
    return root


def _keypoints(ann: dict) -> torch.Tensor:
    return torch.tensor(ann["keypoints"], dtype=torch.float32).reshape(-1, 3)


def test_two_references_label_the_target_and_pycocotools_loads_it(cat_refs, lite_model):
    from pycocotools.coco import COCO

    labels = label_keypoints(cat_refs / "refs.json", cat_refs / "target.png", lite_model)
    out = write_labels(labels, cat_refs / "labels.json", overwrite=True)
    coco = COCO(str(out))  # the format's reference implementation
    assert len(coco.imgs) == 3 and len(coco.anns) == 3 and coco.cats[1]["keypoints"] == NAMES
    new = [a for a in coco.anns.values() if a["labelled_by"] == "distilldift"]
    assert len(new) == 1 and coco.imgs[new[0]["image_id"]]["file_name"] == "target.png"  # relative to the output
    assert coco.imgs[new[0]["image_id"]]["width"] == 451
    kp = _keypoints(new[0])
    err = (kp[:, :2] - POINTS).norm(dim=1)
    assert (err < 12).all(), err  # lite's cells are 16 px; the references are crops / rescales of the target
    assert kp[:, 2].tolist() == [2, 2, 2, 2, 2] and new[0]["num_keypoints"] == 5
    assert all(0.5 < s <= 1 for s in new[0]["keypoint_scores"]), new[0]["keypoint_scores"]
    x, y, w, h = new[0]["bbox"]
    assert x == pytest.approx(float(kp[:, 0].min()), abs=0.01)
    assert w == pytest.approx(float(kp[:, 0].max() - kp[:, 0].min()), abs=0.02)
    assert y + h == pytest.approx(float(kp[:, 1].max()), abs=0.02)
    humans = [a for a in coco.anns.values() if a["labelled_by"] == "human"]
    refs = json.loads((cat_refs / "refs.json").read_text())
    assert [a["keypoints"] for a in humans] == [a["keypoints"] for a in refs["annotations"]]  # untouched


def test_unlabelled_keypoints_do_not_vote():
    nan = float("nan")
    pts = torch.tensor([[[10.0, 10.0], [5.0, 5.0]], [[nan, nan], [50.0, 50.0]], [[90.0, 90.0], [nan, nan]]])
    f = fuse_candidates(pts, torch.tensor([[0.8, 0.9], [0.9, 0.9], [0.4, 0.2]]), radius=5.0)
    assert f.votes.tolist() == [2, 2]
    # keypoint 0: 10,10 (0.8) vs 90,90 (0.4) -> the heavier; keypoint 1: 5,5 and 50,50 both 0.9 -> the first
    assert f.points.tolist() == [[10.0, 10.0], [5.0, 5.0]]
    assert f.scores.tolist() == pytest.approx([0.4, 0.45])
    none = fuse_candidates(torch.full((2, 1, 2), nan), torch.ones(2, 1), radius=5.0)
    assert none.votes.tolist() == [0] and none.scores.tolist() == [0.0] and none.points.isnan().all()
    empty = fuse_candidates(torch.zeros(0, 3, 2), torch.zeros(0, 3), radius=1.0)
    assert empty.points.shape == (3, 2) and empty.votes.tolist() == [0, 0, 0]


def test_a_keypoint_no_reference_labelled_is_zero(cat_refs, lite_model, tmp_path):
    refs = json.loads((cat_refs / "refs.json").read_text())
    refs["annotations"] = refs["annotations"][1:]  # only the shrunk copy, whose ear is unlabelled
    labels = label_keypoints(refs, cat_refs / "target.png", lite_model, image_root=cat_refs)
    kp = labels["annotations"][-1]
    assert kp["keypoints"][12:15] == [0.0, 0.0, 0] and kp["keypoint_scores"][4] == 0.0 and kp["num_keypoints"] == 4


def test_pose_align_swaps_left_and_right_on_a_mirrored_target(cat_refs, lite_model, tmp_path):
    """The target is the reference mirrored: its left eye is where the reference's right eye lands mirrored."""
    ImageOps.mirror(Image.open(cat_refs / "crop.png")).save(tmp_path / "mirrored.png")
    refs = json.loads((cat_refs / "refs.json").read_text())
    refs["annotations"], refs["images"] = refs["annotations"][:1], refs["images"][:1]
    src = _keypoints(refs["annotations"][0])[:, :2]
    mirrored = torch.stack([399 - src[:, 0], src[:, 1]], dim=1)
    for names, expect in ((NAMES, mirrored[[1, 0, 2, 3, 4]]), (["a", "b", "c", "d", "e"], None)):
        refs["categories"][0]["keypoints"] = names
        labels = label_keypoints(refs, tmp_path / "mirrored.png", lite_model, image_root=cat_refs)
        kp = _keypoints(labels["annotations"][-1])[:, :2]
        if expect is not None:  # left_eye <- the mirrored right eye, and the other way round
            assert (kp - expect).norm(dim=1).max() < 3, (kp, expect)
        else:  # no left/right names: no mirror, each point is matched as it is
            assert (kp[:2] - mirrored[[1, 0]]).norm(dim=1).min() > 20
    assert flip_permutation(["Left wing", "right wing", "beak"]) == [1, 0, 2]


def test_category_of_the_most_similar_references(cat_refs, lite_model, tmp_path):
    noise = torch.rand(240, 320, 3, generator=torch.Generator().manual_seed(0))
    Image.fromarray((noise * 255).byte().numpy()).save(tmp_path / "noise.png")
    refs = json.loads((cat_refs / "refs.json").read_text())
    refs["images"].append({"id": 3, "file_name": str(tmp_path / "noise.png"), "width": 320, "height": 240})
    refs["annotations"].append({"id": 30, "image_id": 3, "category_id": 2, "keypoints": [10, 10, 2] * 5})
    refs["categories"].append({"id": 2, "name": "noise", "keypoints": NAMES})
    labels = label_keypoints(refs, cat_refs / "target.png", lite_model, image_root=cat_refs)
    assert [a["category_id"] for a in labels["annotations"] if a["labelled_by"] == "distilldift"] == [1]
    forced = label_keypoints(
        refs, cat_refs / "target.png", lite_model, image_root=cat_refs, settings=LabelSettings(categories=("noise",))
    )
    assert [a["category_id"] for a in forced["annotations"] if a["labelled_by"] == "distilldift"] == [2]


def test_feature_store_gives_the_same_labels_and_resumes(cat_refs, lite_model, tmp_path):
    plain = label_keypoints(cat_refs / "refs.json", cat_refs / "target.png", lite_model)
    for _ in range(2):  # the second run reads the store
        stored = label_keypoints(cat_refs / "refs.json", cat_refs / "target.png", lite_model, features=tmp_path / "f")
        assert stored["annotations"][-1]["keypoints"] == pytest.approx(plain["annotations"][-1]["keypoints"], abs=0.05)
    assert (tmp_path / "f" / "index.json").is_file()


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda d: d["annotations"].clear(), "no annotation has a labelled keypoint"),
        (lambda d: d["annotations"][0]["keypoints"].pop(), "has 4 keypoints, its category 'cat' names 5"),
        (lambda d: d["images"][0].update(file_name="gone.png"), "image 'gone.png' not found"),
        (lambda d: d["categories"][0].pop("keypoints"), "has no 'keypoints' list of names"),
        (lambda d: d["annotations"][0].update(category_id=9), "unknown category_id 9"),
        (lambda d: d["annotations"][0].update(image_id=9), "refers to image_id 9"),
        (lambda d: d["images"].append({"id": 5}), "has no 'id' and 'file_name'"),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(0, "x"), "keypoints that are not all numbers"),
        (lambda d: d["annotations"].append([1, 2]), "is not an object"),
    ],
    ids=[
        "no-keypoints",
        "count-disagrees",
        "missing-image",
        "category-without-names",
        "bad-category",
        "bad-image",
        "image-without-file-name",
        "keypoint-not-a-number",
        "annotation-not-an-object",
    ],
)
def test_bad_references_are_one_line(cat_refs, spoil, message):
    refs = json.loads((cat_refs / "refs.json").read_text())
    spoil(refs)
    with pytest.raises(InvalidInputError, match=message):
        read_references(refs, cat_refs)


def test_cli_labels_previews_and_refuses_bad_input(cat_refs, tmp_path, monkeypatch, capsys):
    out, preview = tmp_path / "labels.json", tmp_path / "preview"
    args = ["label", cat_refs / "refs.json", cat_refs / "target.png", "--model", "lite", "--out", out]
    code, stdout, err = run_here(*args, "--preview", preview, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert "1 images labelled, 5 keypoints" in stdout
    assert [p.name for p in preview.iterdir()] == ["3_target.png"]
    drawing = Image.open(preview / "3_target.png")
    assert drawing.size == (451, 300)
    before = out.read_bytes()
    code, _, err = run_here(*args, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    code, _, err = run_here(
        *args[:2], tmp_path / "broken.png", *args[3:], "--overwrite", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "broken.png" in err and len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == before  # nothing half-written
    (tmp_path / "empty.json").write_text(json.dumps({"annotations": [], "categories": []}))
    code, _, err = run_here(
        "label",
        tmp_path / "empty.json",
        cat_refs / "target.png",
        "--model",
        "lite",
        "--out",
        tmp_path / "x.json",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2 and "no categories with keypoints" in err and not (tmp_path / "x.json").exists()


def test_top_k_matches_only_the_most_similar_references(cat_refs, lite_model):
    """The shrunk copy is the closer reference of the target by the global descriptor (checked here), so top_k=1
    labels from it alone: its unlabelled ear gives the 0, 0, 0 keypoint that two references would have filled."""
    from distilldift.features.extract import extract_feature_maps
    from distilldift.images import load_image

    maps = extract_feature_maps(lite_model, [load_image(cat_refs / n) for n in ("target.png", "crop.png", "small.png")])
    d = [torch.nn.functional.normalize(m.features.mean(dim=(1, 2)), dim=0) for m in maps]
    assert float(d[0] @ d[2]) > float(d[0] @ d[1])
    one = label_keypoints(cat_refs / "refs.json", cat_refs / "target.png", lite_model, settings=LabelSettings(top_k=1))
    ann = one["annotations"][-1]
    assert ann["references"] == 1 and ann["keypoints"][12:15] == [0.0, 0.0, 0]
    both = label_keypoints(cat_refs / "refs.json", cat_refs / "target.png", lite_model, settings=LabelSettings(top_k=2))
    assert both["annotations"][-1]["references"] == 2 and both["annotations"][-1]["keypoints"][14] == 2


def test_a_reference_image_given_as_a_target_keeps_its_human_labels(cat_refs, lite_model, tmp_path):
    """Targets that are reference images (file names relative to the references' folder) are not relabelled."""
    labels = label_keypoints(cat_refs / "refs.json", [cat_refs / "crop.png", cat_refs / "target.png"], lite_model)
    names = {im["id"]: Path(im["file_name"]).name for im in labels["images"]}
    by = sorted((names[a["image_id"]], a["labelled_by"]) for a in labels["annotations"])
    assert by == [("crop.png", "human"), ("small.png", "human"), ("target.png", "distilldift")]
    assert all(Path(im["file_name"]).is_absolute() for im in labels["images"])
