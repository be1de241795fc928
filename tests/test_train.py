"""Distillation training: recipes, resume after a kill, torchrun (2 processes) == 1 process, learning is real."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import distilldift.training as trainer_module
from conftest import SHARED, TRAIN_MICRO, requires_shared
from distilldift.errors import InvalidInputError
from distilldift.training import distill as distill_module
from distilldift.training.config import apply_overrides, list_recipes, load_recipe

MICRO = TRAIN_MICRO


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-images")
    skimage_data = pytest.importorskip("skimage.data")
    for name in ("astronaut", "chelsea", "coffee", "rocket", "horse", "camera"):
        arr = getattr(skimage_data, name)()
        arr = (arr.astype(float) / arr.max() * 255).astype(np.uint8) if arr.dtype != np.uint8 else arr
        Image.fromarray(arr).save(root / f"{name}.png")
    return root


def test_recipes():
    assert {"coco", "tiny"} <= set(list_recipes())
    coco = load_recipe("coco")
    assert coco.distill.teachers == ["dinov2_b14_reg", "sdxl_turbo"] and coco.lr == 1e-4 and coco.temperature == 0.01
    assert coco.weight_decay == 0.05 and coco.train == "lora" and coco.distill.k == 10
    tiny = apply_overrides(load_recipe("tiny"), ["steps=7", 'distill.teachers=["lite"]', "distill.augment=false"])
    assert tiny.steps == 7 and tiny.distill.teachers == ["lite"] and tiny.distill.augment is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("stepz=7", "unknown recipe key 'stepz'"),
        ("steps=many", "steps must be a number"),
        ("steps", "write key=value"),
        ("distill.stepz=1", "unknown recipe key 'distill.stepz'"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(InvalidInputError, match=message):
        apply_overrides(load_recipe("tiny"), [override])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="unknown recipe 'imagenet'.*coco"):
        load_recipe("imagenet")


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


# the recipe's own student: EfficientNet-Lite0 with BatchNorm, whose running statistics must survive a resume too
MICRO_LITE = [
    'student="lite"',
    "image_size=64",
    "distill.copies=2",
    "distill.k=2",
    "batch_size=4",
    "steps=6",
    "checkpoint_every=3",
]


@pytest.mark.parametrize("micro", [MICRO, MICRO_LITE], ids=["vit", "lite-batchnorm"])
def test_resume_after_a_kill_gives_the_same_weights(data, tmp_path, monkeypatch, micro):
    config = apply_overrides(load_recipe("tiny"), micro)
    straight = trainer_module.train(config, data, tmp_path / "a", log=lambda *_: None)
    real_loss, calls = distill_module.distillation_loss, {"n": 0}

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the step-3 checkpoint, during step 5
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(distill_module, "distillation_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train(config, data, tmp_path / "b", log=lambda *_: None)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(distill_module, "distillation_loss", real_loss)
    resumed = trainer_module.train(config, data, tmp_path / "b", resume=True, log=lambda *_: None)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 4 was logged, then lost with the kill: its line goes, it is redone
    changed = apply_overrides(config, ["distill.k=3"])  # (lr may change: to continue a diverged run more gently)
    with pytest.raises(InvalidInputError, match=r"other settings: \['distill.k'\]"):
        trainer_module.train(changed, data, tmp_path / "b", resume=True, log=lambda *_: None)


def test_torchrun_two_processes_equal_one(data, tmp_path):
    config = apply_overrides(load_recipe("tiny"), MICRO)
    single = trainer_module.train(config, data, tmp_path / "one", log=lambda *_: None)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "distilldift",
        "train",
        "--recipe",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "two"),
    ]
    cmd += ["--override", MICRO[0], "--override", *MICRO[1:]]  # both forms: repeated, and several after one
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    a, b = _weights(single), _weights(tmp_path / "two" / "model")
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Gradients differ only by float summation order; AdamW divides each by its running RMS, so weights with
    # near-zero gradients can move by up to ~lr per step (6 steps x 1e-3) on such noise: bound the worst case
    # well below that, and the typical difference at float precision.
    assert diff.mean() < 1e-6 and diff.max() < 1e-3, (diff.mean().item(), diff.max().item())


def test_lora_student_starts_from_a_fresh_adapter(data, tmp_path):
    """train=lora: the paper's setup (a new q/v adapter, its dropout from the recipe), never a published one."""
    config = apply_overrides(
        load_recipe("tiny"), MICRO + ['student="distilldift_us"', 'train="lora"', "lora_dropout=0.05", "steps=2"]
    )
    folder = trainer_module.train(config, data, tmp_path / "run", log=lambda *_: None)
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_dropout"] == 0.05
    b = load_file(str(folder / "adapter_model.safetensors"))["base_model.model.blocks.0.attn.qkv.lora_B.weight"]
    assert b.abs().max() > 0 and b[32:64].abs().max() == 0  # trained, and still q/v-only (k rows untouched)


def test_given_pairs(data, tmp_path):
    """distill.pairs="given" draws only the pairs of the pairs file (either order); a bad file fails before any work."""
    from distilldift.training.distill import draw_pairs
    from distilldift.training.pairs import PairSampler, read_pairs_file

    images = sorted(data.glob("*.png"))  # astronaut, camera, chelsea, coffee, horse, rocket
    (tmp_path / "pairs.json").write_text(json.dumps([["chelsea.png", "horse.png"], ["coffee.png", "chelsea.png"]]))
    pairs = read_pairs_file(tmp_path / "pairs.json", images, data)
    assert pairs == [(2, 4), (3, 2)]
    sampler = PairSampler("given", pairs=pairs)
    config = apply_overrides(load_recipe("tiny"), ["batch_size=64", "distill.self_pairs=0"])
    seen = set()
    for step in range(5):
        first, second = draw_pairs(sampler, len(images), 3, config, step)
        seen |= {(a // 3, b // 3) for a, b in zip(first, second, strict=True)}
    assert seen == {(2, 4), (4, 2), (3, 2), (2, 3)}
    (tmp_path / "bad.json").write_text(json.dumps([["chelsea.png", "dog.png"]]))
    with pytest.raises(InvalidInputError, match="'dog.png' is not an image below"):
        read_pairs_file(tmp_path / "bad.json", images, data)
    overrides = [
        *MICRO,
        'distill.teachers=["lite"]',
        "distill.pairs=given",
        f"distill.pairs_file={tmp_path / 'missing.json'}",
    ]
    with pytest.raises(InvalidInputError, match="needs a pairs file"):
        trainer_module.train(apply_overrides(load_recipe("tiny"), overrides), data, tmp_path / "run")
    assert not (tmp_path / "run" / "teacher-cache").exists()
    cfg = apply_overrides(
        load_recipe("tiny"),
        [
            *MICRO,
            'distill.teachers=["lite"]',
            "distill.pairs=given",
            "steps=2",
            f"distill.pairs_file={tmp_path / 'pairs.json'}",
        ],
    )
    assert (trainer_module.train(cfg, data, tmp_path / "run", log=lambda *_: None) / "model.safetensors").exists()


@requires_shared
def test_learning_is_real(tmp_path):
    """Each term of the ``tiny`` recipe learns, on a small run: 100 steps, 4 augmented copies of 10 frames of
    apple.mp4 (every 4th of frames 0-36), the random-init EfficientNet-Lite0 student and the pretrained ``lite``
    teacher. The full recipe (2000 steps on 36 photos, ~35 min on 2 cores) raises PF-WILLOW PCK@0.1 from 0.235 to ~0.38
    (teacher 0.483): BENCHMARKS.md, "Learning is real".

    1. The similarity loss alone (``hint_weight=0 distill_start=0``, the recipe's second phase without hints): the
       paper's loss on frames it never saw (2, 6, ..., 46; pairs 16 frames apart) falls below a random init's, and
       on pairs of its training frames its nearest neighbours agree with the teacher's more often.
    2. Hints alone (``distill_weight=0``, the recipe's first 1000 steps): the hint loss on the unseen frames falls
       to well under half a random init's.

    Measured against a random init of the same architecture, in eval mode. CPU training is not bit-reproducible
    across runs (threaded gradient sums): the margins are from the ranges in BENCHMARKS.md.
    """
    from distilldift import extract_features, load_model
    from distilldift.images import load_images, preprocess
    from distilldift.tracking.track import iter_frames
    from distilldift.training.hints import HintTeacher, backbone_stages, hint_loss
    from distilldift.training.losses import distillation_loss
    from distilldift.weights import create_model
    from train_metrics import nn_agreement

    frames = [
        Image.fromarray((f.permute(1, 2, 0) * 255).byte().numpy()).resize((324, 180))
        for f in iter_frames(SHARED / "data" / "videos" / "apple.mp4")
    ]
    (tmp_path / "frames").mkdir()
    for i in range(0, 40, 4):
        frames[i].save(tmp_path / "frames" / f"f{i:02d}.png")
    held = [frames[i] for i in range(2, 50, 4)]
    held_pairs = [(held[i], held[i + 4]) for i in range(len(held) - 4)]
    train_pairs = [(frames[i], frames[i + 16]) for i in range(0, 24, 4)]
    short = ["steps=100", "distill.copies=4", "checkpoint_every=1000"]
    teacher = load_model("lite")
    torch.manual_seed(0)
    init = create_model("lite")  # random weights, same architecture

    def run(name, overrides):
        config = apply_overrides(load_recipe("tiny"), short + overrides)
        folder = trainer_module.train(config, tmp_path / "frames", tmp_path / name, log=lambda *_: None)
        log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        return config, load_model(folder), log

    def drop(log, term):  # mean of the last 20 steps / mean of the first 20
        return np.mean([r[term] for r in log[-20:]]) / np.mean([r[term] for r in log[:20]])

    # 1. the similarity loss alone
    config, student, log = run("similarity", ["distill.hint_weight=0", "distill.start=0"])

    def feats(model, image):
        return extract_features(image, model, size=config.image_size, resize="stretch").features

    def measure(model, pairs):
        loss, agree = [], []
        for a, b in pairs:
            s1, s2, t1, t2 = feats(model, a), feats(model, b), feats(teacher, a), feats(teacher, b)
            loss.append(distillation_loss(s1, s2, t1, t2, config.temperature).item())
            agree.append(nn_agreement(s1, s2, t1, t2, tolerance=0).item())
        return np.mean(loss), np.mean(agree)

    (init_loss, _), (loss, _) = measure(init, held_pairs), measure(student, held_pairs)
    (_, init_agree), (_, agree) = measure(init, train_pairs), measure(student, train_pairs)
    print(
        f"MEASURED similarity: training loss x{drop(log, 'distill'):.3f}, unseen loss {init_loss:.3f}->{loss:.3f}, "
        f"training-pair agreement {init_agree:.3f}->{agree:.3f}"
    )
    assert "hint" not in log[0]
    assert drop(log, "distill") < 0.85  # measured 0.71-0.74
    assert loss < init_loss - 0.15  # measured 3.44 -> 2.99-3.10
    assert agree > init_agree + 0.02  # measured 0.333 -> 0.378-0.478

    # 2. hints alone
    _, student, log = run("hints", ["distill.weight=0"])

    def unseen_hint_loss(model):
        v = model.variant
        x = torch.stack([preprocess(im, (config.image_size,) * 2, v.mean, v.std) for im in load_images(held)])
        hints = HintTeacher(teacher.backbone, model.backbone).eval()
        with torch.no_grad():
            return hint_loss(backbone_stages(model.eval().backbone), hints(x)).item()

    init_hint, hint = unseen_hint_loss(init), unseen_hint_loss(student)
    print(f"MEASURED hints: training loss x{drop(log, 'hint'):.3f}, unseen hint loss {init_hint:.3f}->{hint:.3f}")
    assert all(r["loss"] == pytest.approx(r["hint"]) for r in log)  # the similarity term is logged, not trained
    assert drop(log, "hint") < 0.9  # measured 0.75
    assert hint < 0.5 * init_hint  # measured 2.91 -> 0.74-0.76


def test_hints_add_their_term_and_need_the_teachers_architecture(data, tmp_path):
    with_hints = apply_overrides(
        load_recipe("tiny"), [*MICRO_LITE, "steps=2", "distill.hint_weight=2.0", "distill.start=0"]
    )
    trainer_module.train(with_hints, data, tmp_path / "h", log=lambda *_: None)
    trainer_module.train(
        apply_overrides(with_hints, ["distill.hint_weight=0"]), data, tmp_path / "p", log=lambda *_: None
    )
    first = [json.loads((tmp_path / run / "log.jsonl").read_text().splitlines()[0])["loss"] for run in ("h", "p")]
    # same seed, same pairs, same initial weights at step 1: the difference is 2 x the random student's hint loss,
    # about 1 per stage (a normalised MSE) for a random init
    assert 2 * 0.5 < first[0] - first[1] < 2 * 3, first
    vit = apply_overrides(load_recipe("tiny"), [*MICRO, "distill.hint_weight=1.0"])
    with pytest.raises(InvalidInputError, match="distill.hint_weight=0"):
        trainer_module.train(vit, data, tmp_path / "v", log=lambda *_: None)
    assert not (tmp_path / "v" / "teacher-cache").exists()  # refused before the teacher cache was built


def test_hint_warm_up_then_the_similarity_loss(data, tmp_path):
    """``distill_start``: steps before it train on hints alone; the log keeps each unweighted term."""
    config = apply_overrides(
        load_recipe("tiny"),
        [*MICRO_LITE, "steps=4", "distill.hint_weight=3.0", "distill.weight=0.5", "distill.start=2"],
    )
    trainer_module.train(config, data, tmp_path / "w", log=lambda *_: None)
    log = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["distill"] > 1 and r["hint"] > 0.1 for r in log)
    for r in log:
        weight = 0.0 if r["step"] <= 2 else 0.5
        assert r["loss"] == pytest.approx(weight * r["distill"] + 3.0 * r["hint"], rel=1e-5)
    for nothing in (
        ["distill.hint_weight=0", "distill.weight=0"],
        ["distill.hint_weight=0", "distill.start=5"],
        ["distill.hint_weight=-1"],
    ):
        with pytest.raises(InvalidInputError, match="nothing to learn|must be >= 0"):
            trainer_module.train(apply_overrides(config, nothing), data, tmp_path / "n", log=lambda *_: None)
        assert not (tmp_path / "n" / "teacher-cache").exists()


def test_mixed_precision_computes_the_same_losses(data, tmp_path):
    """``mixed_precision="bf16"`` (the GPU default, forced here on CPU) runs both loss terms under bf16 autocast:
    same first-step losses as fp32 to bf16's precision, finite throughout; unknown settings are refused."""
    micro = MICRO_LITE + ["steps=3", "distill.start=0"]
    logs = {}
    for mode in ("no", "bf16"):
        config = apply_overrides(load_recipe("tiny"), micro + [f'mixed_precision="{mode}"'])
        trainer_module.train(config, data, tmp_path / mode, log=lambda *_: None)
        logs[mode] = [json.loads(line) for line in (tmp_path / mode / "log.jsonl").read_text().splitlines()]
    fp32, bf16 = logs["no"][0], logs["bf16"][0]
    assert bf16["distill"] == pytest.approx(fp32["distill"], rel=0.05)  # measured 0.1-2.4 % (tau 0.05 amplifies)
    assert bf16["hint"] == pytest.approx(fp32["hint"], rel=0.01)  # measured < 0.02 %
    assert bf16["distill"] != fp32["distill"]  # autocast really ran in bf16
    assert all(np.isfinite(r["loss"]) for r in logs["bf16"])
    with pytest.raises(InvalidInputError, match="mixed_precision must be one of auto, bf16, no, got 'fp8'"):
        trainer_module.train(apply_overrides(config, ['mixed_precision="fp8"']), data, tmp_path / "x")


def test_runs_are_never_overwritten_and_resume_by_content(data, tmp_path, monkeypatch):
    quiet = {"log": lambda *_: None}
    config = apply_overrides(load_recipe("tiny"), [*MICRO, "steps=3"])
    run = tmp_path / "run"
    folder = trainer_module.train(config, data, run, recipe="tiny", **quiet)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(
        InvalidInputError,
        match=r"already holds a training run \(checkpoint.pt, log.jsonl, model\); "
        r"pass --resume to continue it, --overwrite to start again",
    ):
        trainer_module.train(config, data, run, **quiet)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing touched
    with pytest.raises(InvalidInputError, match="already reached step 3 and steps=3; to extend it, pass a larger"):
        trainer_module.train(config, data, run, resume=True, **quiet)
    with pytest.raises(InvalidInputError, match="no checkpoint at"):
        trainer_module.train(config, data, tmp_path / "fresh", resume=True, **quiet)

    # extend the run to 6 steps, with the data folder spelled differently (relative): same as 6 steps straight
    six = apply_overrides(config, ["steps=6"])
    monkeypatch.chdir(data.parent)
    extended = trainer_module.train(six, Path(data.name), run, resume=True, recipe="tiny", **quiet)
    straight = trainer_module.train(six, data, tmp_path / "six", **quiet)
    a, b = _weights(straight), _weights(extended)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]

    # the trained folder says what it is, at the size it was trained at, readable by others
    saved = json.loads((extended / "distilldift_config.json").read_text())["variant"]
    assert saved["name"] == "run" and saved["input_size"] == 112 and saved["resize"] == "stretch"
    assert "distilled from lite by distilldift train --recipe tiny, 6 steps at 112x112" in saved["description"]
    assert saved["license"].startswith("Learned from its teachers; their terms apply: lite: Apache-2.0")
    mask = os.umask(0)
    os.umask(mask)
    for p in [*extended.iterdir(), run / "checkpoint.pt"]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p

    fresh = trainer_module.train(config, data, run, overwrite=True, **quiet)  # --overwrite starts again
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert all(torch.equal(v, _weights(folder)[k]) for k, v in _weights(fresh).items())
