import json
import shutil
import time
import uuid
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, randomise_adapter
from distilldift import Variant, extract_features, get_variant, list_variants, load_model, register_variant
from distilldift.errors import CheckpointError, InvalidInputError, UnknownVariantError, WeightsNotFoundError
from distilldift.models import LoraSpec
from distilldift.weights import create_model, push_to_hub, save_pretrained
from distilldift.weights.publish import base_state_dict


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (90, 50, 3), dtype=np.uint8)]


def feats(model, images):
    return extract_features(images, model, size=84).features


def test_registry():
    names = list_variants()
    assert {"distilldift_us", "distilldift_us_3d", "distilldift_ws", "distilldift_s", "lite"} <= set(names)
    v = get_variant("distilldift_us")
    assert v.arch == "vit_base_patch14_reg4_dinov2" and v.input_size == 434 and v.lora == LoraSpec(rank=8)
    assert v.lora.peft_kwargs()["r"] == 16 and v.lora.peft_kwargs()["lora_alpha"] == 16
    with pytest.raises(UnknownVariantError, match="unknown model variant 'nope'; registered variants: .*lite"):
        get_variant("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_variant(v)
    assert Variant.from_dict(v.to_dict()) == v
    with pytest.raises(ValueError, match=r"unknown variant fields \['bogus'\]"):
        Variant.from_dict({**v.to_dict(), "bogus": 1})


def test_create_model_makes_no_download(hub):
    m = create_model("distilldift_us", **TINY)
    assert hub.requests == []
    assert m.stride == 14 and m.feature_dim == 64 and m.has_adapter and not m.merged
    assert m.variant.weights is None and m.variant.adapter is None
    with pytest.raises(InvalidInputError, match="use pretrained=False"):
        create_model("distilldift_us", pretrained=True, **TINY)


def test_new_adapter_is_identity(images):
    torch.manual_seed(0)
    with_lora = create_model("distilldift_us", **TINY)
    torch.manual_seed(0)
    plain = create_model("dinov2_b14_reg", **TINY)
    assert torch.allclose(feats(with_lora, images), feats(plain, images), atol=1e-6)


def test_adapter_is_qv_only(tiny_model, tmp_path):
    save_pretrained(tiny_model, tmp_path)
    sd = load_file(tmp_path / "adapter_model.safetensors")
    b = sd["base_model.model.blocks.0.attn.qkv.lora_B.weight"]
    assert b.shape == (192, 16)
    assert b[:64, :8].abs().min() > 0 and b[128:, 8:].abs().min() > 0  # q rows <- A_q, v rows <- A_v
    assert b[64:128].abs().max() == 0 and b[:64, 8:].abs().max() == 0 and b[128:, :8].abs().max() == 0
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 16 and cfg["target_modules"] == ["qkv"]


def test_save_load_round_trip(tiny_model, images, tmp_path):
    before = feats(tiny_model, images)
    save_pretrained(tiny_model, tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "distilldift_config.json",
        "model.safetensors",
    ]
    unmerged = load_model(tmp_path / "m", merge=False)
    assert torch.equal(feats(unmerged, images), before)
    merged = load_model(tmp_path / "m")
    assert merged.merged
    assert (feats(merged, images) - before).abs().max() < 1e-5
    # a merged model saves the same adapter and base weights
    save_pretrained(merged, tmp_path / "again")
    assert torch.equal(feats(load_model(tmp_path / "again", merge=False), images), before)
    # the base weights are plain timm keys: timm loads them directly
    import timm

    base = timm.create_model("vit_base_patch14_reg4_dinov2", **TINY, dynamic_img_size=True, num_classes=0)
    base.load_state_dict(load_file(tmp_path / "m" / "model.safetensors"), strict=True)


def test_merge_is_exactly_undone_and_saving_never_touches_the_model(tmp_path):
    torch.manual_seed(1)
    model = create_model("distilldift_us", **TINY)
    randomise_adapter(model)
    exact = {k: v.clone() for k, v in model.state_dict().items()}
    model.merge_adapter()
    merged = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(merged[k], exact[k]) for k in exact)  # merging changed the qkv weights
    save_pretrained(model, tmp_path / "m", save_base=True)
    assert model.merged and all(torch.equal(v, merged[k]) for k, v in model.state_dict().items())
    saved = load_file(tmp_path / "m" / "model.safetensors")
    qkv = exact["backbone.base_model.model.blocks.0.attn.qkv.base_layer.weight"]
    assert torch.equal(saved["blocks.0.attn.qkv.weight"], qkv)  # the exact pre-merge weights, bit for bit
    model.unmerge_adapter()
    assert all(torch.equal(v, exact[k]) for k, v in model.state_dict().items())


def _repo(hub, prefix):
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return f"someone/{name}", hub.root / "someone" / name


def test_round_trip_through_hub_server_and_cache(tiny_model, images, hub):
    before = feats(tiny_model, images)
    repo_id, folder = _repo(hub, "tiny")
    save_pretrained(tiny_model, folder)
    model = load_model(repo_id, merge=False)  # HF_HOME is a temporary folder (conftest)
    assert torch.equal(feats(model, images), before)
    assert ("GET", f"/{repo_id}/resolve/main/adapter_model.safetensors") in hub.requests
    hub.down = True  # the Hub is unreachable now: the second load must come from the cache
    n = len(hub.requests)
    again = load_model(repo_id, local_files_only=True, merge=False)
    assert torch.equal(feats(again, images), before)
    assert len(hub.requests) == n
    shutil.rmtree(folder)  # gone from the server too: still served from the cache
    assert torch.equal(feats(load_model(repo_id, local_files_only=True, merge=False), images), before)


def test_registered_variant_downloads_base_and_adapter(tiny_model, images, hub, tmp_path):
    """The registry path: base weights from one repo (timm format), the peft adapter from another."""
    save_file(base_state_dict(tiny_model), str(tmp_path / "model.safetensors"))
    (hub.root / "org" / "tiny-base").mkdir(parents=True)
    shutil.copy(tmp_path / "model.safetensors", hub.root / "org" / "tiny-base" / "model.safetensors")
    tiny_model.backbone.save_pretrained(str(hub.root / "org" / "tiny-adapter"))
    v = get_variant("distilldift_us").replace(
        name="tiny_hub",
        arch_kwargs={**get_variant("distilldift_us").arch_kwargs, **TINY},
        weights="hf-hub:org/tiny-base",
        adapter="org/tiny-adapter",
    )
    register_variant(v, overwrite=True)
    model = load_model("tiny_hub", cache_dir=tmp_path / "cache", merge=False)
    assert torch.equal(feats(model, images), feats(tiny_model, images))
    register_variant(v.replace(name="tiny_missing", adapter="org/not-there"), overwrite=True)
    with pytest.raises(
        WeightsNotFoundError, match="distilldift convert distilled_us.ckpt --out DIR --variant tiny_missing"
    ):
        load_model("tiny_missing", cache_dir=tmp_path / "cache")


def test_download_errors_say_what_to_do(hub, tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"repo 'nobody/nothing' not found .*local folder"):
        load_model("nobody/nothing", cache_dir=tmp_path)
    with pytest.raises(WeightsNotFoundError, match="not in the local Hugging Face cache and offline mode is on"):
        load_model("nobody/nothing", cache_dir=tmp_path, local_files_only=True)
    (hub.root / "someone" / "empty").mkdir(parents=True)
    (hub.root / "someone" / "empty" / "README.md").write_text("hi")
    with pytest.raises(WeightsNotFoundError, match="has no distilldift_config.json: not a distilldift model folder"):
        load_model("someone/empty", cache_dir=tmp_path)


def test_unreachable_hub(hub, monkeypatch, tmp_path):
    monkeypatch.setattr(time, "sleep", lambda s: None)  # skip huggingface_hub's retry back-off
    hub.down = True
    with pytest.raises(WeightsNotFoundError, match="could not be reached"):
        load_model("someone/model", cache_dir=tmp_path)


def _a_text_file(folder, model):
    (folder / "f.txt").write_text("x")
    return folder / "f.txt"


def _a_folder_without_weights(folder, model):
    save_pretrained(model, folder / "m")
    (folder / "m" / "model.safetensors").unlink()
    return folder / "m"


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda folder, model: "no such thing", UnknownVariantError, "not a registered variant"),
        (
            lambda folder, model: "./missing/folder/x",
            UnknownVariantError,
            "'./missing/folder/x' is not a .*an existing folder",
        ),
        (_a_text_file, InvalidInputError, "is a file"),
        (_a_folder_without_weights, WeightsNotFoundError, "missing file 'model.safetensors' in model folder"),
    ],
    ids=["unknown name", "missing folder", "a file", "folder without weights"],
)
def test_bad_names_and_folders(tmp_path, tiny_model, make, error, message):
    with pytest.raises(error, match=message):
        load_model(make(tmp_path, tiny_model))


def _truncate_adapter(m):
    p = m / "adapter_model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _edit_weights(m, change):
    sd = load_file(str(m / "model.safetensors"))
    change(sd)
    save_file(sd, str(m / "model.safetensors"))


def _edit_adapter(m):
    adapter = load_file(str(m / "adapter_model.safetensors"))
    adapter["base_model.model.blocks.7.attn.qkv.lora_A.weight"] = torch.zeros(16, 64)
    save_file(adapter, str(m / "adapter_model.safetensors"))


def _edit_json(name, change):
    def edit(m):
        (m / name).write_text(change((m / name).read_text()))

    return edit


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_truncate_adapter, "corrupt or truncated"),
        (lambda m: _edit_weights(m, lambda sd: sd.update({"extra.weight": torch.zeros(1)})), "extra.weight"),
        (
            lambda m: _edit_weights(m, lambda sd: sd.update({"blocks.0.attn.proj.weight": torch.zeros(3, 3)})),
            "size mismatch",
        ),
        (_edit_adapter, "unexpected keys"),
        (
            _edit_json("adapter_config.json", lambda text: json.dumps({**json.loads(text), "r": 4})),
            "r=4 but variant 'distilldift_us' expects 16",
        ),
        (_edit_json("distilldift_config.json", lambda text: "{not json"), "invalid distilldift_config.json"),
    ],
)
def test_corrupt_and_mismatched_files(tiny_model, tmp_path, corrupt, match):
    save_pretrained(tiny_model, tmp_path / "m")
    corrupt(tmp_path / "m")
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "m")


def test_save_is_atomic_and_overwrites(tiny_model, tmp_path):
    save_pretrained(tiny_model, tmp_path)
    save_pretrained(tiny_model, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_register_variant_any_timm_backbone(images):
    """Any timm backbone with forward_intermediates plugs in: a CNN with two stages."""
    v = register_variant(
        Variant(name="resnet_test", arch="resnet18", layers=(2, 3), final_norm=False, input_size=128),
        overwrite=True,
    )
    m = create_model(v.name)
    f = extract_features(images, m)
    assert m.stride == 8 and m.size_multiple == 16 and m.feature_dim == 128 + 256
    assert f.features.shape == (2, 384, 16, 16)


def test_push_to_hub_then_load(tiny_model, images, hub):
    repo_id = f"pusher/tiny-{uuid.uuid4().hex[:8]}"
    url = push_to_hub(tiny_model, repo_id)
    assert repo_id in url
    assert sorted(p.name for p in (hub.root / repo_id).iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "distilldift_config.json",
        "model.safetensors",
    ]
    assert "SDXL-Turbo" in (hub.root / repo_id / "README.md").read_text()  # the licence note travels
    assert torch.equal(feats(load_model(repo_id, merge=False), images), feats(tiny_model, images))


def test_registered_variant_without_hub_says_how_to_convert(hub, tmp_path):
    with pytest.raises(
        WeightsNotFoundError, match=r"`distilldift convert distilled_ws.ckpt --out DIR --variant distilldift_ws`"
    ):
        load_model("distilldift_ws", cache_dir=tmp_path)


def test_a_folder_wins_over_a_variant_of_the_same_name(tiny_model, images, tmp_path, monkeypatch):
    """`distilldift convert ... --out distilldift_us` then `--model distilldift_us` loads the converted folder."""
    save_pretrained(tiny_model, tmp_path / "distilldift_us")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="loading the folder 'distilldift_us', not the registered variant"):
        model = load_model("distilldift_us", merge=False)
    assert torch.equal(feats(model, images), feats(tiny_model, images))


@pytest.mark.parametrize("bad", [None, 5, ["lite"]])
def test_load_model_rejects_non_names(bad):
    with pytest.raises(InvalidInputError, match="expects a variant name, a model folder or a repo id, got"):
        load_model(bad)


def test_explicit_sources(tiny_model, images, hub, tmp_path, monkeypatch):
    """`local-dir:` and `hf-hub:` say what a string is: no guessing between a folder, a variant and a repo."""
    save_pretrained(tiny_model, tmp_path / "lite")  # a folder named like a variant
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # explicit: no ambiguity warning
        assert torch.equal(feats(load_model("local-dir:lite", merge=False), images), feats(tiny_model, images))
    with pytest.raises(WeightsNotFoundError, match="local-dir: 'nothing' is not a folder"):
        load_model("local-dir:nothing")
    repo_id, folder = _repo(hub, "explicit")
    save_pretrained(tiny_model, folder)
    assert torch.equal(feats(load_model(f"hf-hub:{repo_id}", merge=False), images), feats(tiny_model, images))
    with pytest.raises(UnknownVariantError, match="hf-hub: 'lite' is not a Hugging Face repo id"):
        load_model("hf-hub:lite")
