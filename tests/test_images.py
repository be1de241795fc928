import numpy as np
import pytest
import torch
from PIL import Image

from distilldift import load_image
from distilldift.errors import ImageLoadError, InvalidInputError, PointsOutsideImageError, ShapeError
from distilldift.images import GridGeometry, as_points, check_points_inside, input_size_for, load_images


def test_all_input_types_give_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    expected = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for inp in (
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        Image.fromarray(arr),
        arr,
        arr.astype(np.float32) / 255,
        expected,
        expected[None],
        torch.from_numpy(arr).permute(2, 0, 1),
    ):
        t = load_image(inp)
        assert t.shape == (3, 20, 30) and t.dtype == torch.float32
        assert torch.allclose(t, expected, atol=1e-6), type(inp)


def test_gray_rgba_and_16bit_are_converted(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    t = load_image(gray)
    assert t.shape == (3, 3, 4) and torch.equal(t[0], t[2]) and t[0, 2, 3] == pytest.approx(220 / 255)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 7
    assert torch.equal(load_image(rgba)[1], torch.ones(3, 4))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png")[1].min() == 1.0
    sixteen = np.full((5, 6), 65535, np.uint16)
    sixteen[0, 0] = 0
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    t16 = load_image(tmp_path / "g16.png")
    assert t16.shape == (3, 5, 6) and t16[0, 0, 0] == 0 and t16[0, 1, 1] == 1.0
    assert load_image(sixteen)[2, 4, 5] == 1.0


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (3, 20, 10)


def test_batches_and_lists():
    assert len(load_images(torch.rand(4, 3, 8, 9))) == 4
    assert [t.shape[-1] for t in load_images([np.zeros((5, 6)), np.zeros((5, 7))])] == [6, 7]


def _half_a_jpeg(path):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), r"empty \(0 bytes\)"),
        (lambda p: p.write_bytes(b"this is not an image"), "could not decode"),
        (_half_a_jpeg, "could not decode"),  # a real JPEG cut short
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "folder"),
    ],
    ids=["empty", "not an image", "truncated", "missing", "a folder"],
)
def test_bad_files(tmp_path, make, message):
    p = tmp_path / "bad.jpg"
    make(p)
    with pytest.raises(ImageLoadError, match=message):
        load_image(p)


@pytest.mark.parametrize(
    "bad, err, message",
    [
        (np.zeros((4, 5, 2)), ShapeError, r"expected shape HxW or HxWx\{1,3,4\}, got \(4, 5, 2\)"),
        (np.zeros((2, 4, 5, 3, 1)), ShapeError, "got"),
        (np.zeros((0, 5, 3)), ShapeError, "non-empty"),
        (np.full((4, 5, 3), 255.0), InvalidInputError, r"float images must be in \[0, 1\]"),
        (np.full((4, 5, 3), np.nan), InvalidInputError, "NaN"),
        (torch.zeros(5, 4, 4), ShapeError, r"CxHxW"),
        (np.zeros((4, 5), dtype=np.complex64), InvalidInputError, "unsupported dtype"),
        ([[1, 2], [3, 4]], InvalidInputError, "unsupported image type list"),
        (42, InvalidInputError, "unsupported image type int"),
    ],
)
def test_bad_arrays(bad, err, message):
    with pytest.raises(err, match=message):
        load_images(bad) if isinstance(bad, list) else load_image(bad)


def test_input_size_rounding():
    assert input_size_for((640, 480), 434, "stretch", 14) == (434, 434)
    assert input_size_for((640, 480), 434, "keep_aspect", 14) == (434, 322)  # 325.5 -> 23 patches
    assert input_size_for((480, 640), 434, "keep_aspect", 14) == (322, 434)
    assert input_size_for((4000, 10), 320, "keep_aspect", 32) == (320, 32)  # never below one multiple
    assert input_size_for((100, 100), 440, "stretch", 14) == (434, 434)


@pytest.mark.parametrize("image_size", [(640, 480), (480, 640), (300, 300), (1001, 97)])
@pytest.mark.parametrize("mode", ["stretch", "keep_aspect"])
def test_geometry_round_trip_is_exact(image_size, mode):
    w, h = input_size_for(image_size, 434, mode, 14)
    g = GridGeometry(image_size, (w, h), (w // 14, h // 14))
    pts = torch.rand(100, 2, dtype=torch.float64) * torch.tensor(image_size) - 0.5
    back = g.grid_to_image(g.image_to_grid(pts))
    assert (back - pts).abs().max() < 1e-9
    # the image's corners map to the grid's corners (cell centres are integers)
    corners = g.image_to_grid(torch.tensor([[-0.5, -0.5], [image_size[0] - 0.5, image_size[1] - 0.5]]))
    assert torch.allclose(corners, torch.tensor([[-0.5, -0.5], [w // 14 - 0.5, h // 14 - 0.5]]))


def test_points_conversion():
    assert as_points([]).shape == (0, 2) and as_points(None).shape == (0, 2)
    assert as_points(np.array([[1, 2]])).dtype == torch.float32
    check_points_inside(torch.tensor([[-0.5, -0.5], [9.5, 4.5]]), (10, 5))  # the outer pixel edges are inside


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: as_points(np.zeros((3, 4))),
            ShapeError,
            r"points: expected shape \(N, 2\) with columns \(x, y\), got \(3, 4\)",
        ),
        (lambda: as_points([3, 4]), ShapeError, r"for one point pass \[\[x, y\]\]"),
        (
            lambda: as_points([[1, 2], [float("nan"), 2]]),
            PointsOutsideImageError,
            r"points\[1\] = \[nan, 2.0\] is not finite",
        ),
        (lambda: as_points([["a", "b"]]), InvalidInputError, "points"),
        (
            lambda: check_points_inside(torch.tensor([[10.0, 2.0], [0.0, -3.0]]), (10, 5)),
            PointsOutsideImageError,
            r"points\[0\] = \(10, 2\) is outside the 10x5 image",
        ),
    ],
)
def test_points_validation(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "package",
    [
        "distilldift",
        *(
            f"distilldift.{p}"
            for p in ("models", "weights", "features", "matching", "tracking", "evaluation", "export")
        ),
    ],
)
def test_public_api_resolves(package):
    """Every exported name is the library's own object, defined in the package it is exported from."""
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        if name == "__version__":
            assert module.__version__[0].isdigit()
            continue
        value = getattr(module, name)
        defined_in = getattr(value, "__module__", None) or package  # constants (DEFAULT_VARIANT) have none
        assert defined_in.startswith(package), (name, defined_in)
        assert name in dir(module)
    with pytest.raises(AttributeError, match="has no attribute 'not_a_thing'"):
        module.not_a_thing  # noqa: B018
