"""Training building blocks: teachers, the resumable teacher cache, retrieval pairs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from distilldift.errors import InvalidInputError
from distilldift.training.cache import TeacherCache, build_teacher_cache
from distilldift.training.pairs import PairSampler, global_embeddings, retrieval_neighbours
from distilldift.training.teachers import EnsembleTeacher, ModelTeacher
from distilldift.weights import create_model


@pytest.fixture
def tiny_teacher():
    torch.manual_seed(0)
    return ModelTeacher(create_model("dinov2_b14_reg", **TINY), size=56)


def test_teachers_give_unit_features_on_the_student_grid(lite_model, tiny_teacher):
    images = torch.rand(2, 3, 120, 160)
    lite = ModelTeacher(lite_model)
    f = lite(images, grid=(10, 8))
    assert f.shape == (2, 432, 8, 10) and torch.allclose(f.norm(dim=1), torch.ones(2, 8, 10), atol=1e-5)
    both = EnsembleTeacher([lite, tiny_teacher])
    g = both(images, grid=(10, 8))
    assert both.channels == 432 + 64 and g.shape == (2, 496, 8, 10)
    assert torch.allclose(g[:, :432], f, atol=1e-6)  # each teacher's part stays its own normalised map
    assert torch.allclose(g[:, 432:].norm(dim=1), torch.ones(2, 8, 10), atol=1e-5)


class Flaky(torch.nn.Module):
    """Counts calls; raises on call number `fail_at` (an interrupted run)."""

    def __init__(self, teacher, fail_at=None):
        super().__init__()
        self.teacher, self.fail_at, self.calls = teacher, fail_at, 0
        self.name, self.channels = teacher.name, teacher.channels

    def forward(self, images, grid, categories=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed")
        return self.teacher(images, grid, categories)


def test_cache_resumes_after_an_interruption(tmp_path, tiny_teacher):
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (50 + i, 60, 3), dtype=np.uint8)).save(paths[-1])
    kw = dict(grid=(4, 4), image_size=(56, 56), batch_size=2, shard_size=3)
    full = build_teacher_cache(Flaky(tiny_teacher), paths, tmp_path / "full", **kw)
    flaky = Flaky(tiny_teacher, fail_at=3)  # shard 0 takes calls 1-2; call 3 (shard 1) dies
    with pytest.raises(RuntimeError, match="killed"):
        build_teacher_cache(flaky, paths, tmp_path / "resumed", **kw)
    index = json.loads((tmp_path / "resumed" / "index.json").read_text())
    assert [s["start"] for s in index["shards"]] == [0]
    assert not list((tmp_path / "resumed").glob("*.tmp"))
    with pytest.raises(InvalidInputError, match=r"incomplete \(3/7 images\)"):
        TeacherCache(tmp_path / "resumed")
    again = Flaky(tiny_teacher)
    build_teacher_cache(again, paths, tmp_path / "resumed", **kw)
    assert again.calls == 3  # shards 1 and 2 only: 2 + 1 batches
    a, b = TeacherCache(full), TeacherCache(tmp_path / "resumed")
    assert len(a) == len(b) == 7
    for i in range(7):
        assert a[i].shape == (64, 4, 4) and torch.equal(a[i], b[i])
    with pytest.raises(InvalidInputError, match=r"other settings \(\['grid'\]\)"):
        build_teacher_cache(again, paths, tmp_path / "resumed", **{**kw, "grid": (5, 5)})


def test_retrieval_pairs(lite_model, cat_image):
    skimage_data = pytest.importorskip("skimage.data")
    cat = torch.from_numpy(cat_image).permute(2, 0, 1).float() / 255
    others = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.rocket()]
    images = [cat, cat.flip(-1), (cat * 0.8).clamp(0, 1)] + [torch.from_numpy(o).permute(2, 0, 1) / 255 for o in others]
    emb = global_embeddings(lite_model, images)
    nn = retrieval_neighbours(emb, k=2)
    assert set(nn[0].tolist()) == {1, 2} and set(nn[1].tolist()) == {0, 2}  # the cats find each other
    assert all(i not in nn[i].tolist() for i in range(len(images)))
    rng = np.random.default_rng(0)
    sampler = PairSampler("retrieval", neighbours=nn)
    assert {sampler.partner(0, rng) for _ in range(50)} == {1, 2}
    cats = PairSampler("category", categories=["cat", "cat", "dog"])
    assert {cats.partner(0, rng) for _ in range(20)} == {1} and cats.partner(2, rng) == 2
    assert PairSampler("given", pairs=[(0, 2), (1, 0)]).partner(1, rng) == 0
    with pytest.raises(ValueError, match="neighbours table"):
        PairSampler("retrieval")


def test_global_embeddings_take_mixed_aspect_ratios(lite_model):
    emb = global_embeddings(lite_model, [torch.rand(3, 60, 200), torch.rand(3, 200, 60), torch.rand(3, 90, 90)])
    assert emb.shape == (3, 1280) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_augmented_copies_depend_on_the_seed_not_the_folder(tmp_path):
    from distilldift.training.data import TrainImages

    for folder in ("a", "b/c"):  # the same two photos in two folders
        rng = np.random.default_rng(0)
        (tmp_path / folder / "sub").mkdir(parents=True)
        for name in ("x.png", "sub/y.png"):
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / folder / name)
    a = TrainImages(tmp_path / "a", size=32, copies=3, augment=True)
    b = TrainImages(tmp_path / "b/c", size=32, copies=3, augment=True)
    other_seed = TrainImages(tmp_path / "a", size=32, copies=3, augment=True, seed=1)
    assert len(a) == 6 and a.load(0).shape == (3, 32, 32)
    assert all(torch.equal(a.load(e), b.load(e)) for e in range(6))  # same copies wherever the photos are
    assert torch.equal(a.load(0), other_seed.load(0))  # copy 0 is the photo itself
    assert not torch.equal(a.load(1), a.load(2)) and not torch.equal(a.load(1), other_seed.load(1))
