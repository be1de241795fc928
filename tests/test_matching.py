import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distilldift import Matches, MatchSettings, TrackSettings, extract_features, match_features, match_points
from distilldift.errors import InvalidInputError, PointsOutsideImageError
from distilldift.matching import global_similarity, sample_features, upsampled_similarity
from oracle import BASE, VIEWS, oracle_model, transfer


def test_upsampled_similarity_equals_brute_force():
    torch.manual_seed(0)
    f = F.normalize(torch.randn(16, 7, 9), dim=0)
    q = F.normalize(torch.randn(5, 16), dim=1)
    for size in [(37, 23), (9, 7), (100, 61), (5, 3)]:  # (W, H): up, equal and down
        up = F.interpolate(f[None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]
        brute = torch.einsum("nc,chw->nhw", q, F.normalize(up, dim=0))
        fast = upsampled_similarity(q, f, size)
        assert fast.shape == (5, size[1], size[0])
        assert (fast - brute).abs().max() < 1e-5, size


def test_sample_features_matches_interpolation_at_pixel_centres():
    torch.manual_seed(1)
    f = F.normalize(torch.randn(8, 6, 10), dim=0)
    w, h = 50, 30
    up = F.normalize(F.interpolate(f[None], size=(h, w), mode="bilinear", align_corners=False)[0], dim=0)
    from distilldift.images import GridGeometry

    g = GridGeometry((w, h), (140, 84), (10, 6))
    pts = torch.tensor([[0.0, 0.0], [49.0, 29.0], [17.0, 11.0], [3.0, 25.0]])
    got = sample_features(f, g.image_to_grid(pts))
    want = torch.stack([up[:, int(y), int(x)] for x, y in pts.tolist()])
    assert (got - want).abs().max() < 1e-5


def _targets(view, rng, n=20, margin=12):
    tgt = np.stack([rng.integers(margin, view.w - margin, n), rng.integers(margin, view.h - margin, n)], 1).astype(
        np.float64
    )
    q = transfer(view, BASE, tgt)
    keep = (q[:, 0] > 10) & (q[:, 0] < BASE.w - 10) & (q[:, 1] > 10) & (q[:, 1] < BASE.h - 10)
    return q[keep], tgt[keep]


@pytest.mark.parametrize("resize", ["stretch", "keep_aspect"])
@pytest.mark.parametrize("view", list(VIEWS))
def test_match_points_recovers_true_points(resize, view):
    """Resized / cropped / mirrored / non-square copies: the true points are found within 0.5 px."""
    rng = np.random.default_rng(hash(view) % 1000)
    model = oracle_model(resize)
    v = VIEWS[view]
    q, tgt = _targets(v, rng)
    assert len(q) >= 10
    for settings in (MatchSettings(method="nn"), MatchSettings(method="soft", temperature=1e-5)):
        m = match_points(BASE.image(), v.image(), q, model=model, settings=settings)
        err = np.linalg.norm(m.points.numpy() - tgt, axis=1)
        assert err.max() < 0.5, (settings.method, err.max())
        # nn back-matches land on integer pixels of image 1, the (fractional) queries within sqrt(0.5) px
        assert m.mutual.all() and m.cycle_error.max() < (0.71 if settings.method == "nn" else 0.5)
        assert m.scores.min() > 0.999
    # sub-pixel targets: only the soft-argmax can be within 0.5 px of these
    tgt2 = tgt + rng.uniform(-0.5, 0.5, tgt.shape)
    m = match_points(
        BASE.image(),
        v.image(),
        transfer(v, BASE, tgt2),
        model=model,
        settings=MatchSettings(method="soft", temperature=1e-5),
    )
    assert np.linalg.norm(m.points.numpy() - tgt2, axis=1).max() < 0.5


def test_wrong_convention_would_be_caught():
    """Guard for the test itself: a half-pixel slip in the ground truth is detected."""
    rng = np.random.default_rng(3)
    v = VIEWS["resized"]
    q, tgt = _targets(v, rng)
    m = match_points(BASE.image(), v.image(), q, model=oracle_model(), settings=MatchSettings(method="nn"))
    assert np.linalg.norm(m.points.numpy() - (tgt + 0.5), axis=1).min() > 0.5


def test_flip_auto_and_permutation():
    model = oracle_model(orientation=1.0)
    mirrored = VIEWS["flipped"]
    # A mirrored target is explained better by the mirrored source (pose-align picks it).
    f_src = extract_features(BASE.image(), model).features[0]
    f_dst = extract_features(mirrored.image(), model).features[0]
    f_flip = extract_features(BASE.image()[:, ::-1].copy(), model).features[0]
    assert global_similarity(f_flip, f_dst) > global_similarity(f_src, f_dst) + 0.1
    pts = np.array([[60.0, 50.0], [180.0, 120.0]])
    m = match_points(BASE.image(), mirrored.image(), pts, model=model, settings=MatchSettings(flip="auto", method="nn"))
    assert m.flipped
    # The query is mirrored with the image, so it shows the same content: found where that content is.
    assert np.abs(m.points.numpy() - transfer(BASE, mirrored, pts)).max() < 0.5
    assert m.scores.min() > 0.999  # orientation agrees only with the mirrored source
    m2 = match_points(
        BASE.image(),
        mirrored.image(),
        pts,
        model=model,
        flip_permutation=[1, 0],
        settings=MatchSettings(flip=True, method="nn"),
    )
    assert np.abs(m2.points.numpy() - m.points.numpy()[[1, 0]]).max() < 0.5
    m3 = match_points(BASE.image(), BASE.image(), pts, model=model, settings=MatchSettings(flip="auto", method="nn"))
    assert not m3.flipped and np.abs(m3.points.numpy() - pts).max() < 0.5
    with pytest.raises(InvalidInputError, match="flip_permutation"):
        match_points(
            BASE.image(), BASE.image(), pts, model=model, flip_permutation=[0, 5], settings=MatchSettings(flip=True)
        )


def test_mutual_flag_marks_non_corresponding_points():
    """Points of image 1 outside the crop shown in image 2 have no true match: their cycle error is large."""
    model = oracle_model()
    crop = VIEWS["cropped"]  # scene [80, 305] x [60, 240]; BASE shows [20, 378.5] x [15, 283.5]
    inside = transfer(crop, BASE, np.array([[75.0, 60.0]]))
    outside = np.array([[5.0, 5.0]])  # scene (27.5, 22.5): not in the crop
    m = match_points(
        BASE.image(), crop.image(), np.concatenate([inside, outside]), model=model, settings=MatchSettings(method="nn")
    )
    assert m.mutual.tolist() == [True, False]
    assert m.cycle_error[1] > 20


def test_empty_points(tiny_model):
    img = np.zeros((40, 60, 3), np.uint8)
    m = match_points(img, img, [], model=tiny_model)
    assert isinstance(m, Matches) and len(m) == 0 and m.points.shape == (0, 2) and m.scores.shape == (0,)


_IMG = np.zeros((40, 60, 3), np.uint8)


@pytest.mark.parametrize(
    "points, kw, error, match",
    [
        ([[1, 1], [60, 3]], {}, PointsOutsideImageError, r"points\[1\] = \(60, 3\) is outside the 60x40 image"),
        ([[np.nan, 1]], {}, PointsOutsideImageError, "not finite"),
        ([[1, 1]], dict(settings="nn"), InvalidInputError, "settings must be a MatchSettings"),
        ([[1, 1]], dict(model="lite"), InvalidInputError, "DistillDiftModel"),
    ],
)
def test_match_points_errors(tiny_model, points, kw, error, match):
    with pytest.raises(error, match=match):
        match_points(_IMG, _IMG, points, **{"model": tiny_model, **kw})


def test_match_settings_and_features_errors(tiny_model):
    with pytest.raises(InvalidInputError, match="unknown method .best.; registered localizers: .*nn, soft"):
        MatchSettings(method="best")
    f = extract_features([_IMG, _IMG], tiny_model, size=56)
    with pytest.raises(InvalidInputError, match="single-image"):
        match_features(f, f[0], [[1, 1]])


def test_extract_features_shapes_and_batching(tiny_model):
    imgs = [np.random.default_rng(i).integers(0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8) for i in range(3)]
    f = extract_features(imgs, tiny_model, size=98, batch_size=2)
    assert f.features.shape == (3, 64, 7, 7)
    assert torch.allclose(f.features.norm(dim=1), torch.ones(3, 7, 7), atol=1e-5)
    assert [g.image_size for g in f.geometry] == [(70, 50), (70, 60), (70, 70)]
    one = extract_features(imgs[1], tiny_model, size=98)
    assert torch.allclose(one.features[0], f.features[1], atol=1e-5)  # batching does not change results
    with pytest.raises(Exception, match="one grid size"):
        extract_features([np.zeros((50, 100, 3)), np.zeros((100, 50, 3))], tiny_model, size=98, resize="keep_aspect")


def test_bfloat16_model_gives_close_features(tiny_model):
    img = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    f32 = extract_features(img, tiny_model, size=98).features
    tiny_model.to(torch.bfloat16)
    f16 = extract_features(img, tiny_model, size=98).features
    assert f16.dtype == torch.float32  # features come back as float32 whatever the model's dtype
    assert (f32 * f16).sum(1).min() > 0.98  # cosine similarity per location


@pytest.mark.parametrize("size", [0, -5, 27, 1.5, True, "434"])
def test_size_is_checked_in_the_library(size):
    """Python users get the CLI's errors: a size below two feature cells (2 x 14 px here) is refused."""
    from conftest import TINY
    from distilldift import extract_features, match_points
    from distilldift.errors import InvalidInputError
    from distilldift.weights import create_model

    model = create_model("dinov2_b14_reg", **TINY)
    img = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(InvalidInputError, match=r"size must be a whole number of pixels >= 28 \(two feature cells"):
        match_points(img, img, [[10, 10]], model=model, size=size)
    with pytest.raises(InvalidInputError, match="size must be"):
        extract_features(img, model, size=size)
    assert extract_features(img, model, size=28).features.shape[-2:] == (2, 2)


def test_a_registered_localizer_works_everywhere(lite_model, cat_image, tmp_path, monkeypatch, capsys):
    """One function + one registry line: the toy localizer runs in match_points, track_video, evaluate and the CLI."""
    import json

    from PIL import Image

    from conftest import PF_WILLOW, run_here
    from distilldift import evaluate, match_points, track_video
    from distilldift.datasets import read_dataset
    from distilldift.matching import register_localizer

    calls = {"n": 0}

    def quarter_right(sample, best, score, window):  # the best pixel moved a quarter pixel right
        calls["n"] += 1
        return best.float() + torch.tensor([0.25, 0.0], device=best.device)

    register_localizer("test_quarter_right", quarter_right, overwrite=True)
    a, b = cat_image, np.ascontiguousarray(cat_image[10:, 15:])
    pts = [[171.0, 121.0], [314.0, 133.0], [250.0, 200.0]]
    nn = match_points(a, b, pts, model=lite_model, settings=MatchSettings(method="nn", mutual=False))
    toy = match_points(a, b, pts, model=lite_model, settings=MatchSettings(method="test_quarter_right", mutual=False))
    assert torch.equal(toy.points, nn.points + torch.tensor([0.25, 0.0]))

    frames = torch.from_numpy(np.stack([a[:280, :440], a[5:285, 3:443]])).permute(0, 3, 1, 2).float() / 255
    for exhaustive in (False, True):  # the coarse-to-fine search and the exact map both end in the localizer
        t_nn = track_video(
            frames,
            pts,
            model=lite_model,
            progress=False,
            settings=TrackSettings(match=MatchSettings(method="nn", exhaustive=exhaustive)),
        )
        t_toy = track_video(
            frames,
            pts,
            model=lite_model,
            progress=False,
            settings=TrackSettings(match=MatchSettings(method="test_quarter_right", exhaustive=exhaustive)),
        )
        assert torch.equal(t_toy.points, t_nn.points + torch.tensor([0.25, 0.0]))

    if PF_WILLOW.is_dir():
        before = calls["n"]
        r = evaluate(
            read_dataset("pf-willow", PF_WILLOW),
            lite_model,
            limit=2,
            settings=MatchSettings(method="test_quarter_right"),
        )
        assert r.n_pairs == 2 and r.settings["method"] == "test_quarter_right" and calls["n"] > before

    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    args = ["match", tmp_path / "a.png", tmp_path / "b.png", "--model", "lite", "--method", "test_quarter_right"]
    args += [arg for p in pts for arg in ("-p", f"{p[0]},{p[1]}")] + ["--json", tmp_path / "m.json"]
    code, _, err = run_here(*args, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["method"] == "test_quarter_right"
    assert np.allclose(data["points"], toy.points.numpy(), atol=1e-4)


def test_match_settings_are_one_record_for_every_api(tiny_model):
    """MatchSettings is accepted by match_points, match_features, track_video and evaluate; keywords override it."""
    from distilldift import MatchSettings, extract_features, match_features, track_video

    img = torch.rand(3, 70, 98)
    pts = [[30.0, 20.0], [60.0, 40.0]]
    nn = match_points(img, img, pts, model=tiny_model, size=98, settings=MatchSettings(method="nn"))
    by_settings = match_points(img, img, pts, model=tiny_model, settings=MatchSettings(method="nn"), size=98)
    assert torch.equal(nn.points, by_settings.points)
    soft = match_points(img, img, pts, model=tiny_model, size=98)  # the default record: soft
    overridden = match_points(
        img, img, pts, model=tiny_model, settings=MatchSettings(method="nn").replace(method="soft"), size=98
    )
    assert torch.equal(soft.points, overridden.points) and not torch.equal(soft.points, nn.points)
    f = extract_features(img, tiny_model, size=98)
    assert torch.equal(match_features(f, f, pts, settings=MatchSettings(method="nn")).points, nn.points)
    frames = img[None].expand(3, -1, -1, -1)
    t = track_video(
        frames, pts, model=tiny_model, size=98, progress=False, settings=TrackSettings(match=MatchSettings(method="nn"))
    )
    assert torch.equal(t.points[0], nn.points)
    from conftest import PF_WILLOW
    from distilldift import evaluate
    from distilldift.datasets import read_dataset

    if PF_WILLOW.is_dir():
        r = evaluate(
            read_dataset("pf-willow", PF_WILLOW),
            tiny_model,
            settings=MatchSettings(method="nn"),
            limit=1,
            progress=False,
        )
        assert r.settings["method"] == "nn" and r.n_pairs == 1
    with pytest.raises(InvalidInputError, match="settings must be a MatchSettings, got dict"):
        match_points(img, img, pts, model=tiny_model, settings={"method": "nn"})
    with pytest.raises(InvalidInputError, match="temperature must be > 0"):
        MatchSettings(temperature=0)


def test_soft_argmax_on_an_image_matched_to_itself_is_unbiased(lite_model, cat_image):
    """An image matched to itself: the window soft-argmax lands on the query. Without removing its own drift it
    was pulled toward the nearest feature-cell centre (bilinear features turn slowly near centres: each peak is
    flatter on that side), 1.6 px median and a clear dependence on where the point lies in its cell; ``nn`` is
    limited to whole pixels (0.4 px median)."""
    h, w = cat_image.shape[:2]
    g = torch.Generator().manual_seed(0)
    # a window (1 cell, ~22 px) from every edge: nearer, the cut window dominates and the point is left as found
    inner = torch.rand(300, 2, generator=g) * torch.tensor([w - 51.0, h - 51.0]) + 25
    err = {}
    for exhaustive in (True, False):
        m = match_points(cat_image, cat_image, inner, model=lite_model, settings=MatchSettings(exhaustive=exhaustive))
        err[exhaustive] = (m.points - inner).norm(dim=1)
        assert err[exhaustive].median() < 0.1 and err[exhaustive].max() < 1.5, err[exhaustive].max()
        assert (m.points - inner).mean(0).abs().max() < 0.05  # no drift in either direction
    geom = lite_model.geometry((w, h))
    phase = geom.image_to_grid(inner) - geom.image_to_grid(inner).round()  # where in its cell, -0.5 .. 0.5
    offset = match_points(cat_image, cat_image, inner, model=lite_model).points - inner
    for axis in (0, 1):  # the drift toward cell centres is gone: offset and phase are unrelated
        assert abs(float(torch.corrcoef(torch.stack([phase[:, axis], offset[:, axis]]))[0, 1])) < 0.3
    nn = match_points(cat_image, cat_image, inner, model=lite_model, settings=MatchSettings(method="nn"))
    assert err[True].median() < (nn.points - inner).norm(dim=1).median()
