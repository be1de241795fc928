from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/oracle.py, tests/hf_server.py

from file_server import FileServer  # noqa: E402
from hf_server import HubServer  # noqa: E402

# huggingface_hub reads HF_ENDPOINT / HF_HOME once, at import: start the local Hub and point it there first.
_HUB_ROOT = Path(tempfile.mkdtemp(prefix="distilldift-test-hub-"))
HUB = HubServer(_HUB_ROOT / "repos").__enter__()
(_HUB_ROOT / "repos").mkdir()
os.environ["HF_ENDPOINT"] = HUB.url
os.environ["HF_HOME"] = str(_HUB_ROOT / "hf-home")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ["DISTILLDIFT_CACHE"] = str(_HUB_ROOT / "distilldift-cache")
# the authors' release files are fetched from this empty local server only: no test reaches a public host
RELEASES = FileServer().__enter__()
os.environ["DISTILLDIFT_MIRROR"] = RELEASES.url
atexit.register(shutil.rmtree, _HUB_ROOT, True)
atexit.register(HUB.__exit__, None, None, None)
atexit.register(RELEASES.__exit__, None, None, None)

from distilldift import Variant, load_model  # noqa: E402
from distilldift.models import LoraSpec  # noqa: E402
from distilldift.weights import create_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
PF_WILLOW = SHARED / "data" / "pf-willow"
requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is not present")

TINY = dict(embed_dim=64, depth=2, num_heads=2)
# a training run in seconds: a 1-block ViT student on 112 px images, the recipe's lite teacher
TRAIN_MICRO = [
    'student="dinov2_b14_reg"',
    'student_overrides={"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 112}',
    "image_size=112",
    "distill.copies=2",
    "distill.k=2",
    "batch_size=4",
    "steps=6",
    "checkpoint_every=3",
    "distill.cache_batch_size=4",
    "distill.hint_weight=0",  # hints need an EfficientNet student; this ViT trains on the paper's loss from step 0
    "distill.start=0",
]
OFFICIAL = SHARED / "fixtures" / "official-parity"
# the authors' parity fixture's tiny DINOv2-with-registers: hub dinov2_vitb14_reg with small sizes (fixture README)
OFFICIAL_TINY_KW = dict(
    embed_dim=64, depth=2, num_heads=2, img_size=518, init_values=1.0, dynamic_img_size=True, num_classes=0
)
OFFICIAL_TINY = Variant(
    name="official_tiny",
    arch="vit_small_patch14_reg4_dinov2",
    arch_kwargs=OFFICIAL_TINY_KW,
    layers=(-1,),
    lora=LoraSpec(rank=8),
)


def official_max_diff(model, expected_file: str) -> float:
    """Largest difference between ``model``'s features and the authors' code's on the fixture's inputs."""
    from safetensors.torch import load_file

    inputs, expected = load_file(str(OFFICIAL / "inputs.safetensors")), load_file(str(OFFICIAL / expected_file))
    with torch.no_grad():
        return max(
            (model(inputs[k], normalize=False) - expected[k]).abs().max().item() for k in ("square", "nonsquare")
        )


def randomise_adapter(model, seed: int = 0) -> None:
    """Give a fresh (identity) LoRA adapter non-zero, q/v-structured weights so round trips are meaningful."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.timm_model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.enable_qv_only_training()  # zero the k rows / cross blocks: a q/v-only adapter, as the paper's
    model.requires_grad_(False)


@pytest.fixture
def hub():
    """The local Hugging Face-compatible server (HF_ENDPOINT points at it); request log cleared per test."""
    HUB.requests.clear()
    HUB.down = False
    yield HUB
    HUB.down = False


def make_tiny_model():
    """The paper's architecture at a tiny size (random init, seed 0) with a non-zero q/v LoRA adapter."""
    torch.manual_seed(0)
    model = create_model("distilldift_us", **TINY)
    randomise_adapter(model)
    return model


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def lite_model(tmp_path_factory):
    return load_model("lite", precision="fp32", cache_dir=tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="session")
def cat_image():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()  # (300, 451, 3) uint8


def run_here(*args, monkeypatch, capsys):
    """The CLI's entry point in this process (no interpreter start): ``(exit code, stdout, stderr)``."""
    from distilldift.cli import main as cli

    monkeypatch.setattr(sys, "argv", ["distilldift", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _auto_precision_is_fp32(monkeypatch):
    """In-process tests compare exact numbers: ``precision="auto"`` resolves as on a CPU without native bf16 (fp32),
    whatever CPU runs them. test_precision.py fakes both CPUs to test the decision itself."""
    from distilldift.models import precision
    from distilldift.models.precision import CpuFeatures

    monkeypatch.setattr(precision, "cpu_features", lambda: CpuFeatures(avx512_bf16=False, amx=False, vnni=False))


@pytest.fixture
def cpu_as_it_is(monkeypatch):
    """Undo ``_auto_precision_is_fp32``: for tests that compare a command (a subprocess, which resolves "auto" on the
    real CPU) with the same model loaded here."""
    from distilldift.models import precision

    monkeypatch.setattr(precision, "cpu_features", _REAL_CPU_FEATURES)


from distilldift.models.precision import cpu_features as _REAL_CPU_FEATURES  # noqa: E402


@pytest.fixture(scope="module")
def cat_pair():
    """The sample cat photo and its moved copy (scikit-image's chelsea): two PIL images."""
    pytest.importorskip("skimage")
    from distilldift.samples import sample_photos

    p = sample_photos()
    return p["cat.png"], p["cat_moved.png"]
