"""The authors' released checkpoints: download from a local server, verify, convert, cache; failures; source order."""

import re
import shutil
import subprocess
import threading
import uuid

import numpy as np
import pytest

from conftest import OFFICIAL, OFFICIAL_TINY, official_max_diff, requires_shared
from distilldift import get_variant, load_model, register_variant
from distilldift.download import cache_root, download_verified, git_blob_id
from distilldift.errors import CheckpointError, DownloadError, WeightsNotFoundError
from distilldift.models import ReleaseFile
from distilldift.weights import convert_checkpoint, weight_sources
from distilldift.weights.convert import read_conversion
from distilldift.weights.release import MIRROR_ENV, fetch_release, release_folder, release_urls
from file_server import FileServer

CKPT = OFFICIAL / "official_lora_checkpoint.pt"
BASE = OFFICIAL / "base_dinov2_hub_format.safetensors"
PATH = "eval/checkpoints/distilled_us.ckpt"
URL_PATH = f"/CompVis/distilldift/{get_variant('distilldift_us').release.commit}/{PATH}"


@pytest.fixture
def server(monkeypatch):
    """The authors' checkpoint (the parity fixture) served under the pinned raw-file layout; DISTILLDIFT_MIRROR set."""
    with FileServer({URL_PATH: CKPT.read_bytes()}) as s:
        monkeypatch.setenv(MIRROR_ENV, s.url)
        yield s


def tiny_variant(hub, *, adapter: str | None = None):
    """A registered tiny variant like distilldift_us: public base weights on the (local) Hub, an adapter repo
    (absent unless given), and a release whose blob id is the fixture checkpoint's."""
    tag = uuid.uuid4().hex[:8]
    base_repo = f"org/tiny-dinov2-{tag}"
    (hub.root / base_repo).mkdir(parents=True)
    shutil.copy(BASE, hub.root / base_repo / "model.safetensors")  # DINOv2 hub format: timm converts it
    v = OFFICIAL_TINY.replace(
        name=f"tiny_release_{tag}",
        weights=f"hf-hub:{base_repo}",
        adapter=adapter or f"org/absent-{tag}",
        release=ReleaseFile(PATH, git_blob_id(CKPT)),
    )
    return register_variant(v)


def cache_files(cache) -> list:
    """Files in the distilldift cache except lock files."""
    return sorted(p for p in cache_root(cache).rglob("*") if p.is_file() and "locks" not in p.parts)


pytestmark = requires_shared


def test_release_end_to_end_then_from_cache(server, hub, tmp_path, monkeypatch):
    v = tiny_variant(hub)
    cache = tmp_path / "hf"
    assert [s.cached() for s in weight_sources(v.name, cache_dir=cache)] == [False, False]
    model = load_model(v.name, cache_dir=cache)
    assert official_max_diff(model, "expected.safetensors") <= 1e-5
    assert server.requests == [URL_PATH]
    folder = release_folder(v, cache)
    # base weights equal the public ones: the folder holds the adapter only; the .ckpt was deleted
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "conversion.json",
        "distilldift_config.json",
    ]
    record = read_conversion(folder)  # the whole backbone came from the file (and equals the public weights)
    assert record["checkpoint"] == "distilled_us.ckpt" and len(record["from_checkpoint"]) == 35
    assert record["from_base"] is None and record["lora_blocks"] == [0, 1]
    assert not list(cache_root(cache).rglob("*.ckpt")) and not list(cache_root(cache).rglob("*.part"))
    assert [(s.kind, s.cached()) for s in weight_sources(v.name, cache_dir=cache)] == [
        ("hub-adapter", False),
        ("release", True),
    ]

    server.__exit__(None, None, None)  # both servers gone: the next loads come from the caches alone
    hub.down = True
    n = len(hub.requests)
    for kwargs in ({}, {"local_files_only": True}):
        again = load_model(v.name, cache_dir=cache, **kwargs)
        assert official_max_diff(again, "expected.safetensors") <= 1e-5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert official_max_diff(load_model(v.name, cache_dir=cache), "expected.safetensors") <= 1e-5
    assert len(hub.requests) == n and server.requests == [URL_PATH]


@pytest.mark.parametrize(
    "mode, message",
    [
        ("tamper", r"git blob id is [0-9a-f]{40}, expected [0-9a-f]{40}: corrupt or tampered with; it was deleted"),
        ("truncate", r"transfer (ended after \d+ of \d+ bytes|broken after)"),
        ("missing", r"HTTP 404"),
        ("hang", r"no answer within 1 s"),
    ],
)
def test_failed_download_names_the_source_and_leaves_nothing(server, hub, tmp_path, monkeypatch, mode, message):
    monkeypatch.setenv("DISTILLDIFT_DOWNLOAD_TIMEOUT", "1")
    v = tiny_variant(hub)
    cache = tmp_path / "hf"
    server.mode = mode
    with pytest.raises(WeightsNotFoundError) as info:
        load_model(v.name, cache_dir=cache)
    text = str(info.value)
    assert f"{server.url}{URL_PATH}" in text and f"Hub adapter {v.adapter}" in text
    assert re.search(message, text), text
    assert "\n" not in text and f"distilldift convert distilled_us.ckpt --out DIR --variant {v.name}" in text
    assert cache_files(cache) == []
    server.mode = "ok"  # the next attempt with a good server succeeds
    assert official_max_diff(load_model(v.name, cache_dir=cache), "expected.safetensors") <= 1e-5


def test_hub_adapter_wins_over_the_release(server, hub, tmp_path):
    folder = convert_checkpoint(CKPT, tmp_path / "converted", variant=OFFICIAL_TINY, base=BASE)
    repo = f"org/adapter-{uuid.uuid4().hex[:8]}"
    (hub.root / repo).mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(folder / name, hub.root / repo / name)
    v = tiny_variant(hub, adapter=repo)
    cache = tmp_path / "hf"
    assert official_max_diff(load_model(v.name, cache_dir=cache), "expected.safetensors") <= 1e-5
    assert server.requests == []  # the release was never fetched
    assert [(s.kind, s.cached()) for s in weight_sources(v.name, cache_dir=cache)] == [
        ("hub-adapter", True),
        ("release", False),
    ]


def test_neither_source_lists_both(server, hub, tmp_path):
    v = tiny_variant(hub)
    server.mode = "missing"
    with pytest.raises(WeightsNotFoundError) as info:
        load_model(v.name, cache_dir=tmp_path)
    text = str(info.value)
    assert text.startswith(f"cannot get the weights of {v.name!r}; tried (1) Hub adapter {v.adapter}: ")
    assert "not found (or private" in text and f"(2) authors' release: {server.url}{URL_PATH}: HTTP 404" in text
    assert f"set {MIRROR_ENV}" in text
    with pytest.raises(WeightsNotFoundError, match="not in the local cache and offline mode is on"):
        load_model(v.name, cache_dir=tmp_path / "empty", local_files_only=True)
    assert len(server.requests) == 1  # offline: no request


def test_concurrent_loads_download_once(server, hub, tmp_path):
    v = tiny_variant(hub)
    cache = tmp_path / "hf"
    folders = []
    threads = [threading.Thread(target=lambda: folders.append(fetch_release(v, cache_dir=cache))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert folders == [release_folder(v, cache)] * 3 and server.requests == [URL_PATH]


def test_a_verified_file_that_does_not_convert_is_a_checkpoint_error(server, hub, tmp_path):
    """Bytes that verify but are not a checkpoint: a clear error, nothing cached (the blob id is the bad file's)."""
    bad = b"not a checkpoint" * 100
    server.files[URL_PATH] = bad
    v = register_variant(
        tiny_variant(hub).replace(name=f"tiny_bad_{uuid.uuid4().hex[:6]}", release=ReleaseFile(PATH, git_blob_id(bad)))
    )
    with pytest.raises(CheckpointError, match="verified .* but does not convert"):
        load_model(v.name, cache_dir=tmp_path)
    assert cache_files(tmp_path) == []


def test_mirror_setting_and_pinned_urls(monkeypatch):
    release = get_variant("distilldift_us").release
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert release_urls(release) == [
        "https://raw.githubusercontent.com/CompVis/distilldift/e21076e8d6f032f6ec461ce0540b496caf5a4aec/"
        "eval/checkpoints/distilled_us.ckpt",
        "https://ommer-lab.com/files/distilldift/distilldift_us.ckpt",
    ]
    monkeypatch.setenv(MIRROR_ENV, "http://a.example/files/, http://b.example")
    assert release_urls(release) == [
        f"http://a.example/files/CompVis/distilldift/{release.commit}/{PATH}",
        f"http://b.example/CompVis/distilldift/{release.commit}/{PATH}",
    ]
    assert [get_variant(n).release.blob_id for n in ("distilldift_us", "distilldift_ws", "distilldift_s")] == [
        "43d0aec53448859fd86fbc4b3474b42861af9293",
        "7a9e50c9f09af2d912d2ab743d3b3e702691a877",
        "1dfef101c69eb40ccc01a1d8e16e07fbcf47097b",
    ]
    assert get_variant("distilldift_us_3d").release is None
    with pytest.raises(ValueError, match="blob_id must be 40 lowercase hex digits"):
        ReleaseFile(PATH, "abc")


def test_variant_without_published_weights(tmp_path):
    assert [(s.kind, s.cached()) for s in weight_sources("distilldift_us_3d")] == [("none", False)]
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights are published for 'distilldift_us_3d'"):
        load_model("distilldift_us_3d", cache_dir=tmp_path)


def test_blob_id_agrees_with_git(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "empty": b"",
        "text": b"distilldift\n",
        "binary": rng.integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / n for n in files] + [CKPT]
    out = subprocess.run(["git", "hash-object", *map(str, paths)], capture_output=True, text=True, check=True)
    expected = out.stdout.split()
    assert [git_blob_id(p) for p in paths] == expected
    assert [git_blob_id(d) for d in files.values()] == expected[:3]
    assert expected[0] == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's well-known empty blob


def test_download_verified_direct(tmp_path):
    data = b"x" * 5000
    with FileServer({"/f.bin": data}) as s:
        out = download_verified(f"{s.url}/f.bin", tmp_path / "d" / "f.bin", blob_id=git_blob_id(data), progress=False)
        assert out.read_bytes() == data
        with pytest.raises(DownloadError, match="git blob id"):
            download_verified(f"{s.url}/f.bin", tmp_path / "g.bin", blob_id="0" * 40, progress=False)
    assert not (tmp_path / "g.bin").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(DownloadError, match="cannot connect"):
        download_verified(s.url + "/f.bin", tmp_path / "h.bin", blob_id="0" * 40, timeout=2, progress=False)
