"""The authors' checkpoints: exact parity with their model code (fixture in ../shared), errors, timm export."""

import shutil
import uuid

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import OFFICIAL, OFFICIAL_TINY, requires_shared
from conftest import official_max_diff as max_diff
from distilldift import load_model
from distilldift.errors import CheckpointError, InvalidInputError, WeightsNotFoundError
from distilldift.models import LoraSpec
from distilldift.models.build import build_model, folder_getter
from distilldift.weights import convert_checkpoint, push_to_hub
from distilldift.weights.convert import read_conversion

FIX = OFFICIAL
BASE = FIX / "base_dinov2_hub_format.safetensors"
TINY = OFFICIAL_TINY

pytestmark = requires_shared


@pytest.mark.parametrize(
    "checkpoint, expected",
    [
        ("official_lora_checkpoint.pt", "expected.safetensors"),
        ("official_lora_checkpoint.safetensors", "expected.safetensors"),
        ("official_lora_checkpoint_qkv_trained.pt", "expected_qkv_trained.safetensors"),
        ("official_lora_checkpoint_qkv_trained.safetensors", "expected_qkv_trained.safetensors"),
    ],
)
def test_parity_with_the_authors_code(tmp_path, checkpoint, expected):
    out = convert_checkpoint(FIX / checkpoint, tmp_path / "m", variant=TINY, base=BASE)
    assert max_diff(load_model(out, merge=False), expected) <= 1e-5
    assert max_diff(load_model(out, merge=True), expected) <= 1e-5
    if "qkv_trained" not in checkpoint:  # control: a plain LoRA checkpoint is not the qkv-trained model
        assert max_diff(load_model(out), "expected_qkv_trained.safetensors") > 1e-3


def test_parity_without_adapter(tmp_path):
    """The base weights alone, read through timm's own DINOv2 checkpoint conversion."""
    shutil.copy(BASE, tmp_path / "base.safetensors")
    model = build_model(
        TINY.replace(lora=None, weights="file:base.safetensors"),
        get=folder_getter(tmp_path),
        adapter_get=None,
        cache_dir=None,
        local_files_only=True,
    )
    assert max_diff(model, "expected_no_lora.safetensors") <= 1e-5


def test_ddp_prefix_is_stripped(tmp_path):
    sd = load_file(str(FIX / "official_lora_checkpoint.safetensors"))
    save_file({"module." + k: v for k, v in sd.items()}, str(tmp_path / "ddp.safetensors"))
    out = convert_checkpoint(tmp_path / "ddp.safetensors", tmp_path / "m", variant=TINY, base=BASE)
    assert max_diff(load_model(out), "expected.safetensors") <= 1e-5


KEEP = {  # which backbone tensors a partial checkpoint holds besides its LoRA tensors
    "none": lambda k: False,
    "qkv": lambda k: ".qkv.qkv." in k,
    "qkv+norm": lambda k: ".qkv.qkv." in k or k.startswith("model.norm."),
}


def _subset(sd: dict, keep) -> dict:
    """The LoRA tensors plus the backbone tensors for which ``keep(key)`` holds."""
    return {k: v for k, v in sd.items() if "linear_" in k or keep(k)}


QKV = "official_lora_checkpoint_qkv_trained"


@pytest.mark.parametrize(
    "checkpoint, keep, expected, prefix, dtype",
    [
        ("official_lora_checkpoint", "none", "expected", "", None),
        (QKV, "qkv", "expected_qkv_trained", "", None),
        (QKV, "qkv", "expected_qkv_trained", "module.", None),
        (QKV, "qkv+norm", "expected_qkv_trained", "", None),
        (QKV, "qkv", "expected_qkv_trained", "", torch.float16),
    ],
)
def test_partial_checkpoints_complete_from_the_base(tmp_path, checkpoint, keep, expected, prefix, dtype):
    """What the authors' released files (< 100 MB: not a whole float32 ViT-B) can hold: the tensors present replace the
    base's, the others come from the variant's base weights (as the authors' ``load_state_dict(strict=False)`` does),
    and conversion.json says which came from the file."""
    sd = _subset(load_file(str(FIX / f"{checkpoint}.safetensors")), KEEP[keep])
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    torch.save({prefix + k: v for k, v in sd.items()}, tmp_path / "partial.ckpt")
    out = convert_checkpoint(tmp_path / "partial.ckpt", tmp_path / "m", variant=TINY, base=BASE)
    r = read_conversion(out)
    taken = sorted(k.replace("model.", "", 1).replace(".qkv.qkv.", ".qkv.") for k in sd if "linear_" not in k)
    assert r["from_checkpoint"] == taken and r["lora_blocks"] == [0, 1]
    assert r["from_base"] == str(BASE) and r["from_base_count"] == len(load_file(str(BASE))) - 1 - len(
        taken
    )  # timm drops mask_token
    if dtype == torch.float16:  # the same as converting the float16 values held in float32: nothing else changes
        torch.save({k: v.float() for k, v in sd.items()}, tmp_path / "as32.ckpt")
        ref = convert_checkpoint(tmp_path / "as32.ckpt", tmp_path / "m32", variant=TINY, base=BASE)
        inputs = load_file(str(FIX / "inputs.safetensors"))["square"]
        with torch.no_grad():
            assert torch.equal(load_model(out)(inputs), load_model(ref)(inputs))
        assert max_diff(load_model(out), f"{expected}.safetensors") < 2e-2  # float16 rounding of the weights
    else:
        assert max_diff(load_model(out), f"{expected}.safetensors") <= 1e-5
    if keep == "qkv" and not prefix:  # control: the qkv tensors taken from the file matter
        assert max_diff(load_model(out), "expected.safetensors") > 1e-3


def test_partial_checkpoint_errors(tmp_path, monkeypatch):
    sd = load_file(str(FIX / "official_lora_checkpoint.safetensors"))
    save_file(_subset(sd, lambda k: k == "model.cls_token"), str(tmp_path / "cls.safetensors"))
    with pytest.raises(CheckpointError, match=r"holds \['cls_token'\] without \['pos_embed', 'register_tokens'\]"):
        convert_checkpoint(tmp_path / "cls.safetensors", tmp_path / "m", variant=TINY, base=BASE)
    save_file({**_subset(sd, lambda k: "qkv.qkv" in k), "model.bogus": torch.zeros(2)}, str(tmp_path / "u.safetensors"))
    with pytest.raises(CheckpointError, match=r"keys not understood \['bogus'\]"):  # unknown keys stay errors
        convert_checkpoint(tmp_path / "u.safetensors", tmp_path / "m", variant=TINY, base=BASE)
    save_file(_subset(sd, lambda k: "qkv.qkv" in k), str(tmp_path / "p.safetensors"))
    offline = TINY.replace(weights="hf-hub:nobody/not-a-repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="holds only part of the backbone; the rest comes from the variant"):
        convert_checkpoint(tmp_path / "p.safetensors", tmp_path / "m", variant=offline, local_files_only=True)
    assert not (tmp_path / "m").exists()


def test_adapter_only_when_base_is_public(tmp_path, hub):
    """Base weights equal to the variant's public ones: the folder holds only the adapter (+ config)."""
    repo = f"org/tiny-dinov2-{uuid.uuid4().hex[:6]}"
    (hub.root / repo).mkdir(parents=True)
    shutil.copy(BASE, hub.root / repo / "model.safetensors")  # DINOv2 hub format: timm converts it on load
    public = TINY.replace(weights=f"hf-hub:{repo}")
    out = convert_checkpoint(FIX / "official_lora_checkpoint.pt", tmp_path / "m", variant=public)
    assert not (out / "model.safetensors").exists()
    assert max_diff(load_model(out), "expected.safetensors") <= 1e-5
    with pytest.warns(UserWarning, match="base tensors differ"):
        out2 = convert_checkpoint(FIX / "official_lora_checkpoint_qkv_trained.pt", tmp_path / "m2", variant=public)
    assert (out2 / "model.safetensors").exists()
    assert max_diff(load_model(out2), "expected_qkv_trained.safetensors") <= 1e-5


def _without(sd, word, block):
    return {k: v for k, v in sd.items() if word not in k or block not in k}


@pytest.mark.parametrize(
    "change, variant, match",
    [
        (
            lambda sd: {**sd, "model.head.weight": torch.zeros(3, 64), "optimizer_step": torch.zeros(1)},
            TINY,
            r"keys not understood \['head.weight', 'optimizer_step'\]",
        ),
        (
            lambda sd: {**sd, "model.blocks.0.attn.qkv.linear_a_k.weight": torch.zeros(8, 64)},
            TINY,
            r"unknown LoRA key 'model.blocks.0.attn.qkv.linear_a_k.weight'",
        ),
        (
            lambda sd: {**sd, "model.blocks.1.attn.qkv.linear_b_v.weight": torch.zeros(64, 4)},
            TINY,
            r"block 1: linear_b_v.weight has shape \(64, 4\), expected \(64, 8\)",
        ),
        (
            lambda sd: {**sd, "model.blocks.0.mlp.fc1.weight": torch.zeros(128, 64)},
            TINY,
            r"blocks.0.mlp.fc1.weight has shape \(128, 64\), the model expects",
        ),
        (lambda sd: _without(sd, "linear_b_q", "blocks.1"), TINY, r"block 1: LoRA tensors \['b_q'\] missing"),
        (lambda sd: sd, TINY.replace(lora=LoraSpec(rank=4)), "LoRA rank 8, but variant 'official_tiny' has rank 4"),
    ],
)
def test_bad_checkpoint_contents(tmp_path, change, variant, match):
    sd = load_file(str(FIX / "official_lora_checkpoint.safetensors"))
    save_file(change(sd), str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        convert_checkpoint(tmp_path / "c.safetensors", tmp_path / "m", variant=variant, base=BASE)
    assert not (tmp_path / "m").exists()  # no failed conversion leaves a folder behind


def test_bad_checkpoint_files_and_outputs(tmp_path):
    good = (FIX / "official_lora_checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*corrupt, truncated"):
        convert_checkpoint(tmp_path / "cut.pt", tmp_path / "m", variant=TINY, base=BASE)
    assert not (tmp_path / "m").exists()
    with pytest.raises(WeightsNotFoundError, match="checkpoint not found"):
        convert_checkpoint(tmp_path / "nope.pt", tmp_path / "m", variant=TINY, base=BASE)
    sd = load_file(str(FIX / "official_lora_checkpoint.safetensors"))
    save_file(sd, str(tmp_path / "c.safetensors"))
    convert_checkpoint(tmp_path / "c.safetensors", tmp_path / "m", variant=TINY, base=BASE)
    with pytest.raises(InvalidInputError, match="exists and is not empty; pass overwrite=True"):
        convert_checkpoint(tmp_path / "c.safetensors", tmp_path / "m", variant=TINY, base=BASE)
    convert_checkpoint(tmp_path / "c.safetensors", tmp_path / "m", variant=TINY, base=BASE, overwrite=True)


def test_push_timm_format_loads_with_timm_alone(tmp_path, hub):
    import timm

    out = convert_checkpoint(FIX / "official_lora_checkpoint_qkv_trained.pt", tmp_path / "m", variant=TINY, base=BASE)
    model = load_model(out, merge=False)
    repo_id = f"pusher/timm-{uuid.uuid4().hex[:6]}"
    push_to_hub(model, repo_id, format="timm")
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in (hub.root / repo_id).iterdir()}
    plain = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()  # timm alone, through the local Hub
    x = load_file(str(FIX / "inputs.safetensors"))["nonsquare"]
    with torch.no_grad():
        ref = model(x)
        got = torch.nn.functional.normalize(
            plain.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0], dim=1
        )
    assert (got - ref).abs().max() <= 1e-5
    assert not model.merged  # exporting does not touch the model
