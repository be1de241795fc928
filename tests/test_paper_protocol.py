"""``protocol="paper"`` against the authors' own evaluation code, on the same features and the same pairs.

With a checkout of CompVis/distilldift (``DISTILLDIFT_AUTHORS_REPO``; see tests/authors_code.py) the tests run their
``eval/eval.py`` (SPair-71k's program) on an SPair-format split and their ``train/`` evaluation (PF-WILLOW's program)
on PF-WILLOW as downloaded, with the real ``lite`` model's features, and compare every number. Their results on
deterministic synthetic features are recorded in tests/data/authors_protocol.json (``DISTILLDIFT_RECORD=1`` rewrites
it from their code); the recorded comparison runs everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from authors_code import AUTHORS, eval_args, eval_program, on_cpu, requires_authors, train_program
from benchmark_layouts import pf_willow_download, spair_layout
from conftest import requires_shared
from distilldift import MatchSettings
from distilldift.datasets import read_pf_willow, read_spair
from distilldift.evaluation.paper import TRAIN_PROGRAM, PaperEvaluator
from distilldift.evaluation.pck import evaluate
from distilldift.images import load_image
from distilldift.models.variants import PaperProtocol
from distilldift.weights import save_pretrained

RECORD = Path(__file__).parent / "data" / "authors_protocol.json"
ALPHAS = (0.1, 0.05, 0.01)


def synthetic_features(model, image, protocol, program, flipped=False) -> torch.Tensor:
    """Deterministic stand-in features (the same on every machine): 16 channels on a 31 x 31 grid, drawn from the
    image's pixels' checksum (PCG64), so that an image and its mirror differ."""
    pixels = (image.flip(-1) if flipped else image).mul(255).round().to(torch.uint8).numpy().tobytes()
    rng = np.random.default_rng(zlib.crc32(pixels))
    return torch.from_numpy(rng.standard_normal((16, 31, 31), dtype=np.float32))


def _write_for_them(data, evaluator: PaperEvaluator, pose_align: bool) -> None:
    """Their eval.py reads features from ``<image path with JPEGImages -> features, .jpg -> ''>_dino[_flip].pt``."""
    for path in sorted({p.source for p in data.pairs} | {p.target for p in data.pairs}):
        for flipped in (False, True) if pose_align else (False,):
            out = Path(str(path).replace("JPEGImages", "features").replace(".jpg", "") + f"_dino{'_flip' * flipped}.pt")
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(evaluator.features(path, flipped)[0][None], out)


def their_spair(root: Path, categories, protocol: PaperProtocol) -> dict:
    """Their eval.py's ``compute_pck`` per category: ``{category: {"pck": [@0.1, @0.05, @0.01], "pred": {...}}}``."""
    program = eval_program()
    args = eval_args(protocol.pose_align, protocol.window, protocol.grid, protocol.frame)
    program.module.args, program.module.device = args, "cpu"  # globals their feature loader reads
    out = {}
    for cat in sorted(categories):
        files, kps, thresholds, used = program.load_spair_data(str(root), args.ANNO_SIZE, cat, "test", None, False)
        with on_cpu():
            correct, _, results, _ = program.compute_pck(
                args, str(root / "results"), lambda x: x, files, kps, cat, used, thresholds
            )
        out[cat] = {
            "pck": correct[:3],
            "pred": {
                Path(r["src_fn"]).stem + ">" + Path(r["trg_fn"]).stem: r["src_kpts_pred"].tolist() for r in results
            },
        }
    return out


def our_spair(data, model, protocol: PaperProtocol) -> dict:
    ev = PaperEvaluator(data, model, protocol)
    r = evaluate(data, model, protocol=protocol, alphas=ALPHAS, progress=False)
    pred = {}
    for pair in data.pairs:
        full = np.zeros((30, 2), np.float32)
        full[list(pair.keypoint_ids)] = ev.predict(pair).numpy()
        pred[f"{pair.source.stem}>{pair.target.stem}"] = full.tolist()
    cats = {c: {"pck": [v["bbox"][a] for a in ALPHAS]} for c, v in r.categories.items()}
    return {"result": r, "categories": cats, "pred": pred, "evaluator": ev}


def _compare_spair(ours: dict, theirs: dict, data) -> None:
    for cat, t in theirs.items():
        # theirs is a float32 ratio: 1e-6 tells counts apart (1 point of <= 1,000 is 1e-3)
        np.testing.assert_allclose(ours["categories"][cat]["pck"], t["pck"], rtol=0, atol=1e-6, err_msg=cat)
        for key, predicted in t["pred"].items():
            ids = list(next(p.keypoint_ids for p in data.pairs if f"{p.source.stem}>{p.target.stem}" == key))
            theirs = [predicted[str(i)] for i in ids] if isinstance(predicted, dict) else np.asarray(predicted)[ids]
            np.testing.assert_allclose(np.asarray(ours["pred"][key])[ids], theirs, atol=1e-3, err_msg=key)


@requires_shared
@requires_authors
@pytest.mark.parametrize("pose_align", [False, True], ids=["us", "ws"])
def test_eval_program_equals_the_authors_on_spair(tmp_path, lite_model, pose_align):
    """SPair-71k's program (eval/eval.py with eval_distilldift_us / _ws settings) on the real lite features."""
    root = spair_layout(tmp_path / "SPair-71k")
    data = read_spair(root)
    protocol = PaperProtocol(pose_align=pose_align)
    ours = our_spair(data, lite_model, protocol)
    _write_for_them(data, ours["evaluator"], pose_align)
    theirs = their_spair(root, {p.category for p in data.pairs}, protocol)
    _compare_spair(ours, theirs, data)
    pooled = ours["result"].per_point["bbox"][0.1]
    counts = {c: sum(len(p.keypoint_ids) for p in data.pairs if p.category == c) for c in theirs}
    their_pooled = sum(theirs[c]["pck"][0] * n for c, n in counts.items()) / sum(counts.values())
    assert pooled == pytest.approx(their_pooled, abs=1e-6) and 0.2 < pooled < 1  # real features: a real score


def their_pf_willow(folder: Path, features: dict, limit_every: int = 1) -> dict:
    """Their train/ evaluation of PF-WILLOW: their reader, their Preprocessor's (y, x) flip, compute_correspondence and
    the two PCK counters, summed over points as their eval.py does."""
    program = train_program()
    corr = program.corr
    dataset = program.PFWillow({"path": str(folder)})
    hits = {"img": np.zeros(len(ALPHAS)), "bbox": np.zeros(len(ALPHAS))}
    n = 0
    for i in range(0, len(dataset), limit_every):
        s = dataset[i]
        src_yx, trg_yx = corr.flip_points(s["source_points"]), corr.flip_points(s["target_points"])
        box = corr.flip_bbox(s["target_bbox"])
        src, dst = features[s["source_image_path"]], features[s["target_image_path"]]
        pred = corr.compute_correspondence(src, dst, src_yx, s["source_size"], s["target_size"], batch_mode=False)
        for k, a in enumerate(ALPHAS):
            hits["img"][k] += corr.compute_pck_img(pred, trg_yx, s["target_size"], a)
            hits["bbox"][k] += corr.compute_pck_bbox(pred, trg_yx, box, a)
        n += len(trg_yx)
    return {kind: (h / n).tolist() for kind, h in hits.items()} | {"points": n}


@requires_shared
@requires_authors
def test_train_program_equals_the_authors_on_pf_willow(tmp_path, lite_model):
    """PF-WILLOW's program (train/eval.py) on PF-WILLOW as the authors' download script leaves it; every 9th pair."""
    folder = pf_willow_download(tmp_path, renamed=True)
    data = read_pf_willow(folder)
    data = dataclasses.replace(data, pairs=data.pairs[::9])
    protocol = lite_model.variant.paper_protocol
    ev = PaperEvaluator(data, lite_model, protocol)
    r = evaluate(data, lite_model, protocol="paper", alphas=ALPHAS, progress=False)
    features = {str(p): ev.features(p)[0] for p in {q.source for q in data.pairs} | {q.target for q in data.pairs}}
    theirs = their_pf_willow(folder, features, limit_every=9)
    assert theirs["points"] == r.n_points == 1000
    for kind in ("img", "bbox"):
        assert [r.per_point[kind][a] for a in ALPHAS] == pytest.approx(theirs[kind], abs=1e-12), kind
    assert 0.3 < r.per_point["bbox"][0.1] < 1


def _synthetic_run(tmp_path, monkeypatch) -> tuple[dict, dict]:
    """Ours on the SPair split (us and ws settings) and on PF-WILLOW (every 9th pair), on synthetic features."""
    import distilldift.evaluation.paper as paper

    monkeypatch.setattr(paper, "paper_features", synthetic_features)
    from distilldift.weights import create_model

    model = create_model("dinov2_b14_reg", embed_dim=16, depth=1, num_heads=2)  # only its input size is used
    root = spair_layout(tmp_path / "SPair-71k")
    spair = read_spair(root)
    folder = pf_willow_download(tmp_path / "pf", renamed=True)
    willow = read_pf_willow(folder)
    willow = dataclasses.replace(willow, pairs=willow.pairs[::9])
    ours: dict = {"spair": {}, "pf-willow": {}}
    for name, pose_align in (("us", False), ("ws", True)):
        run = our_spair(spair, model, PaperProtocol(pose_align=pose_align))
        ours["spair"][name] = {"categories": run["categories"], "pred": run["pred"], "evaluator": run["evaluator"]}
    r = evaluate(willow, model, protocol=PaperProtocol(raw_input=True), alphas=ALPHAS, progress=False)
    ours["pf-willow"] = {kind: [r.per_point[kind][a] for a in ALPHAS] for kind in ("img", "bbox")}
    ours["pf-willow"]["points"] = r.n_points
    return ours, {"spair_root": root, "spair": spair, "willow_folder": folder, "willow": willow}


@requires_shared
def test_paper_protocol_equals_the_authors_recorded_results(tmp_path, monkeypatch):
    """The authors' code's numbers on deterministic features (recorded from their code; rewritten from it with
    DISTILLDIFT_RECORD=1 and a checkout), compared with ours: PCK to 1e-12 and every prediction to 1e-3 px."""
    ours, made = _synthetic_run(tmp_path, monkeypatch)
    if os.environ.get("DISTILLDIFT_RECORD"):
        _record(ours, made)
    recorded = json.loads(RECORD.read_text())
    for name in ("us", "ws"):
        _compare_spair(ours["spair"][name], recorded["spair"][name], made["spair"])
    for kind in ("img", "bbox"):
        assert ours["pf-willow"][kind] == pytest.approx(recorded["pf-willow"][kind], abs=1e-12), kind
    assert ours["pf-willow"]["points"] == recorded["pf-willow"]["points"]
    us, ws = (np.mean([v["pck"][0] for v in recorded["spair"][n].values()]) for n in ("us", "ws"))
    assert ws != us  # pose-align changed predictions: the flip branch was exercised


def _record(ours: dict, made: dict) -> None:
    """Rewrite tests/data/authors_protocol.json from the authors' code on the same synthetic features."""
    assert AUTHORS is not None, "DISTILLDIFT_RECORD needs the authors' code: set DISTILLDIFT_AUTHORS_REPO"
    record: dict = {
        "source": "CompVis/distilldift e21076e: eval/eval.py compute_pck; train/ PFWillow, PCK",
        "spair": {},
    }
    for name, pose_align in (("us", False), ("ws", True)):
        _write_for_them(made["spair"], ours["spair"][name]["evaluator"], pose_align)
        cats = {p.category for p in made["spair"].pairs}
        record["spair"][name] = their_spair(made["spair_root"], cats, PaperProtocol(pose_align=pose_align))
    features = {}
    for p in {q.source for q in made["willow"].pairs} | {q.target for q in made["willow"].pairs}:
        features[str(p)] = synthetic_features(None, load_image(p), None, TRAIN_PROGRAM)
    record["pf-willow"] = their_pf_willow(made["willow_folder"], features, limit_every=9)
    for run in record["spair"].values():  # keep the annotated keypoints' predictions, to 1e-4 px
        for cat in run.values():
            for key, pred in cat["pred"].items():
                ids = next(p.keypoint_ids for p in made["spair"].pairs if f"{p.source.stem}>{p.target.stem}" == key)
                cat["pred"][key] = {str(i): [round(v, 4) for v in pred[i]] for i in ids}
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(record, separators=(",", ":")) + "\n")


def test_grid_soft_argmax_by_hand():
    """A query whose similarity is one on two cells 2 apart (inside the window of 5) and ~0 elsewhere lands halfway
    between them; outside the window the second cell is ignored; a cell c maps to frame pixel 14 c + 7."""
    from distilldift.evaluation.paper import grid_predictions

    g = 60
    target = torch.zeros(g * g, 2)
    target[:, 1] = 1.0  # every cell orthogonal to the query ...
    for x, y in ((10, 20), (12, 20), (30, 20)):
        target[y * g + x] = torch.tensor([1.0, 0.0])  # ... but three
    source = torch.zeros(g * g, 2)
    source[0] = torch.tensor([1.0, 0.0])
    pred = grid_predictions(source, target, torch.tensor([0]), PaperProtocol())
    # argmax: the first of the equal cells, (10, 20); its window (5 cells) holds (12, 20) but not (30, 20)
    assert pred.tolist() == [[pytest.approx(11 * 14 + 7, abs=1e-3), pytest.approx(20 * 14 + 7, abs=1e-3)]]
    nn = grid_predictions(source, target, torch.tensor([0]), PaperProtocol(window=0))
    assert nn.tolist() == [[10 * 14 + 7, 20 * 14 + 7]]


def test_flip_plan_swaps_partners_and_keeps_orphans():
    """Mirrored queries: a keypoint with an annotated partner is queried at the partner's mirror; one without a
    left/right partner at its own; one whose partner is not annotated in the pair keeps its unmirrored prediction."""
    from distilldift.datasets import Pair, PairDataset
    from distilldift.evaluation.paper import _flip_plan

    pts = np.zeros((4, 2))
    pair = Pair("cat", Path("a"), Path("b"), pts, pts, (0, 0, 1, 1), (0, 1, 8, 2))  # 2's partner 3 is absent
    order, replace = _flip_plan(PairDataset("spair", Path("."), [pair], {"cat": [(0, 1), (2, 3)]}), pair)
    assert order == [1, 0, 2, 3] and replace.tolist() == [True, True, True, False]


def _one_pair(folder):
    from PIL import Image

    from distilldift.datasets import Pair, PairDataset

    pts = np.array([[10.0, 12.0]])
    img = folder / "a.png"
    Image.new("RGB", (40, 30), (90, 20, 200)).save(img)
    return PairDataset("spair", folder, [Pair("cat", img, img, pts, pts, (0, 0, 20, 20), (0,))])


_SETS_ITSELF = "protocol='paper' sets the matching itself; leave {} unset"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(settings=MatchSettings(method="nn")), _SETS_ITSELF.format("settings")),
        (dict(settings=MatchSettings(flip="auto")), _SETS_ITSELF.format("settings")),
        (dict(size=56), _SETS_ITSELF.format("size")),
        (dict(protocol="authors"), "protocol must be one of default, paper or a PaperProtocol"),
        (dict(protocol=PaperProtocol(input_size=50)), "input size 50 is not a multiple of 14"),
    ],
    ids=["method", "flip", "size", "unknown protocol", "input size"],
)
def test_paper_protocol_refusals(tmp_path, tiny_model, kwargs, message):
    from distilldift.errors import InvalidInputError

    kwargs = {"protocol": "paper", **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        evaluate(_one_pair(tmp_path), tiny_model, progress=False, **kwargs)


def test_paper_protocol_checks_its_fields():
    from distilldift.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="PaperProtocol.window must be a whole number >= 0"):
        PaperProtocol(window=-1)


def test_paper_protocol_records(tmp_path, tiny_model):
    from distilldift import Variant, load_model
    from distilldift.weights import create_model

    data = _one_pair(tmp_path)
    r = evaluate(data, tiny_model, protocol=PaperProtocol(input_size=56, pose_align=True), progress=False)
    assert r.settings["protocol"] == "paper" and r.settings["program"] == "eval/eval.py" and r.n_points == 1
    assert r.per_point["img"][0.1] == 1.0 and "the authors' protocol (eval/eval.py): 56x56 input" in r.protocol
    # the settings travel with the variant: a saved folder keeps them
    model = create_model("distilldift_ws", embed_dim=32, depth=1, num_heads=2)
    save_pretrained(model, tmp_path / "m", save_base=True)
    loaded = load_model(tmp_path / "m")
    assert loaded.variant.paper_protocol == PaperProtocol(pose_align=True, raw_input=True)
    assert Variant.from_dict({**model.variant.to_dict(), "paper_protocol": {"window": 3}}).paper_protocol.window == 3
