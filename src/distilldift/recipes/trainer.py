"""``train``: multi-teacher distillation (the paper, section 3.2), on one process or many under ``torchrun``.

Reads top to bottom: set up processes -> data -> student -> teacher cache (teachers run once) -> pairs ->
optimiser -> resume -> loop (sample pairs, student features, loss vs cached teacher features, step, checkpoint)
-> save a model folder that ``load_model`` reads. The pairs of step ``s`` are a pure function of
``(seed, s)``, and checkpoints hold the trainable weights, buffers (BatchNorm statistics), optimiser, scheduler,
step, RNG and config, so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InvalidInputError
from ..factory import build_model
from ..files import atomic_path
from ..loading import load_model
from ..variants import get_variant, list_variants
from .cache import TeacherCache, build_teacher_cache
from .config import TrainConfig
from .data import TrainImages
from .hints import HintTeacher, backbone_stages, hint_loss
from .losses import distillation_loss
from .pairs import PairSampler, global_embeddings, read_pairs_file, retrieval_neighbours
from .teachers import DiffusionTeacher, EnsembleTeacher, ModelTeacher

__all__ = ["train", "draw_pairs"]

CHECKPOINT = "checkpoint.pt"


def _teacher(name: str, device: torch.device):
    if name == "sdxl_turbo":  # the paper's diffusion teacher (diffusers; downloads SDXL-Turbo)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        return DiffusionTeacher.from_pretrained("stabilityai/sdxl-turbo", device=device, dtype=dtype)
    return ModelTeacher(load_model(name))


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


RUN_FILES = (CHECKPOINT, "log.jsonl", "model")  # what a run leaves in its out folder (besides the teacher cache)


def _check_run_folder(out: Path, config: TrainConfig, *, resume: bool, overwrite: bool, remove: bool) -> dict | None:
    """Refuse to overwrite a run by accident; read and check the checkpoint to resume from (before any work)."""
    if resume and overwrite:
        raise InvalidInputError("--resume and --overwrite exclude each other: continue the run, or start it again")
    ckpt_path = out / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise InvalidInputError(f"--resume: no checkpoint at {str(ckpt_path)!r}; start the run without --resume")
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated or foreign files
            raise InvalidInputError(
                f"--resume: cannot read {str(ckpt_path)!r} ({e}); start again with --overwrite"
            ) from None
        saved, now = dict(ckpt["config"]), config.to_dict()
        changed = sorted(k for k, v in now.items() if saved.get(k) != v and k != "steps")
        if changed:
            raise InvalidInputError(f"--resume: the checkpoint was written with other settings: {changed}")
        if config.steps <= ckpt["step"]:
            raise InvalidInputError(
                f"--resume: the run already reached step {ckpt['step']} and steps={config.steps}; to extend it, "
                f"pass a larger steps (--override steps=N)"
            )
        return ckpt
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not overwrite:
        raise InvalidInputError(
            f"{str(out)!r} already holds a training run ({', '.join(held)}); pass --resume to continue it, "
            "--overwrite to start again, or choose another --out"
        )
    if held and remove:
        for name in held:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    return None


def _trained_variant(variant, config: TrainConfig, recipe: str, out: Path):
    """The student's variant relabelled as what it now is: name, description, licence, training input size."""
    teachers = ", ".join(config.teachers)
    notes = []
    for name in config.teachers:
        if name == "sdxl_turbo":
            notes.append("SDXL-Turbo: Stability AI non-commercial research community licence")
        elif name in list_variants() and get_variant(name).license:
            notes.append(f"{name}: {get_variant(name).license}")
    init = {"random": "random-init", "pretrained": "pretrained"}.get(config.student_init, config.student_init)
    description = (
        f"{variant.arch} ({init} {config.student}) distilled from {teachers} by distilldift train"
        + (f" --recipe {recipe}" if recipe else "")
        + f", {config.steps} steps at {config.image_size}x{config.image_size}"
    )
    return variant.replace(
        name=out.resolve().name,
        description=description,
        license="Learned from its teachers; their terms apply: " + "; ".join(notes) if notes else "",
        input_size=config.image_size,
        resize="stretch",
    )


def draw_pairs(sampler: PairSampler, n_images: int, copies: int, config: TrainConfig, step: int):
    """The training entries ``(first, second)`` of ``step``: ``config.batch_size`` each, a pure function of the seed.

    Entry ``e`` is copy ``e % copies`` of image ``e // copies``. With probability ``config.self_pairs`` an image is
    paired with another augmented copy of itself, otherwise with ``sampler.partner``.
    """
    rng = np.random.default_rng([config.seed, step])
    if sampler.anchors is None:
        first = rng.integers(0, n_images * copies, size=config.batch_size)
    else:  # given pairs: start from a listed image, any of its copies
        starts = np.asarray(sampler.anchors)[rng.integers(0, len(sampler.anchors), size=config.batch_size)]
        first = starts * copies + rng.integers(0, copies, size=config.batch_size)
    second = []
    for e in first:
        base = int(e) // copies
        if rng.random() >= config.self_pairs:
            base = sampler.partner(base, rng)
        second.append(base * copies + int(rng.integers(copies)))
    return [int(e) for e in first], second


def train(
    config: TrainConfig,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    recipe: str = "",
    log=print,
) -> Path:
    """Distil the teachers of ``config`` into its student on the images below ``data``; write results to ``out``.

    ``out`` receives ``teacher-cache/``, ``checkpoint.pt`` (every ``checkpoint_every`` steps), ``log.jsonl``
    (one line per step: the total ``loss``, each unweighted term - ``distill``, the paper's similarity loss, and
    ``hint`` when ``hint_weight > 0`` - and ``lr``) and ``model/`` (the trained model, for ``load_model``).
    With ``resume=True`` training continues from ``checkpoint.pt`` (``log.jsonl`` is cut back to its step); the
    checkpoint is checked before any cache work, and ``steps`` may be larger than the run's (extending it: the
    schedule is per step, so an extended run equals one started with the larger ``steps``). An ``out`` that holds
    a run is refused unless ``resume`` or ``overwrite`` (which deletes the run's checkpoint, log and model).
    ``recipe`` (its name) is recorded in the model folder's description.
    Under ``torchrun`` every process takes its share of each step's pairs and gradients are averaged (torch DDP),
    which equals one process taking them all.

    Returns:
        The ``model/`` folder.
    """
    # 1. processes and devices
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    ckpt = _check_run_folder(out, config, resume=resume, overwrite=overwrite, remove=rank == 0)
    out.mkdir(parents=True, exist_ok=True)
    if config.batch_size % world:
        raise InvalidInputError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(config.seed)

    # 2. data and student
    images = TrainImages(data, size=config.image_size, copies=config.copies, augment=config.augment, seed=config.seed)
    if config.pairs not in ("retrieval", "category", "given"):
        raise InvalidInputError(f"pairs must be 'retrieval', 'category' or 'given', got {config.pairs!r}")
    given = None  # checked before the (long) teacher cache is built
    if config.pairs == "given":
        given = read_pairs_file(config.pairs_file or images.root / "pairs.json", images.base, images.root)
    # the base weights (or random init) with a fresh adapter: never a published, already distilled one
    variant = get_variant(config.student)
    variant = variant.replace(arch_kwargs={**variant.arch_kwargs, **config.student_overrides}, adapter=None)
    if config.train == "full":
        variant = variant.replace(lora=None)
    elif variant.lora is not None:
        variant = variant.replace(lora=dataclasses.replace(variant.lora, dropout=config.lora_dropout))
    if config.student_init == "random":
        variant = variant.replace(weights=None)
    elif config.student_init != "pretrained":
        raise InvalidInputError(f"student_init must be 'pretrained' or 'random', got {config.student_init!r}")
    student = build_model(variant, get=None, adapter_get=None, cache_dir=None, local_files_only=False)
    student.to(device).train()
    if config.train == "full":
        student.requires_grad_(True)
    elif config.train == "lora":
        if not student.has_adapter:
            raise InvalidInputError(f"student {config.student!r} has no LoRA adapter; use train=full")
        for name, p in student.named_parameters():
            p.requires_grad_("lora_" in name)
        student.enable_qv_only_training()
    else:
        raise InvalidInputError(f"train must be 'lora' or 'full', got {config.train!r}")
    grid = student.geometry((config.image_size, config.image_size), config.image_size).grid_size
    if world > 1 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        if device.type == "cuda":  # batch statistics over all processes' images, as one process would see them
            student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
        elif rank == 0:
            log(
                "warning: the student has BatchNorm and torch syncs it only on GPUs: on CPU each process normalises "
                "with its own share of the batch, so results differ slightly from a single-process run"
            )

    if config.mixed_precision not in ("auto", "bf16", "no"):
        raise InvalidInputError(f"mixed_precision must be 'auto', 'bf16' or 'no', got {config.mixed_precision!r}")
    amp = config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and device.type == "cuda")
    if config.distill_weight < 0 or config.hint_weight < 0:
        raise InvalidInputError("distill_weight and hint_weight must be >= 0")
    if config.hint_weight == 0 and (config.distill_weight == 0 or config.distill_start > 0):
        raise InvalidInputError(
            "nothing to learn: the similarity loss is off (distill_weight=0 or distill_start>0) and so are hints; "
            "set distill_weight>0 and distill_start=0, or hint_weight>0"
        )
    hints = stages = None  # block-wise hints (checked before the long cache build): targets computed on the fly
    if config.hint_weight > 0:
        hints = HintTeacher(load_model(config.teachers[0]).backbone, student.backbone).to(device)
        stages = backbone_stages(student.backbone)

    # 3. teacher cache: teachers run once (rank 0), training reads only the cache (and hints their cheap teacher)
    cache_dir = out / "teacher-cache"
    if rank == 0:
        log(f"teacher cache: {', '.join(config.teachers)} over {len(images)} images into {cache_dir} (resumable)")
        teacher = EnsembleTeacher([_teacher(t, device) for t in config.teachers]).to(device)
        categories = [images.categories[e // images.copies] for e in range(len(images))]
        build_teacher_cache(
            teacher,
            images.ids(),
            cache_dir,
            grid=grid,
            image_size=(config.image_size, config.image_size),
            categories=categories,
            batch_size=config.cache_batch_size,
            loader=images.load_id,
            progress=True,
        )
        del teacher
    if dist.is_initialized():
        dist.barrier()
    cache = TeacherCache(cache_dir)

    # 4. pairs: among the original images (copies of one photo are never each other's partner)
    if config.pairs == "retrieval":
        pairs_file = out / "neighbours.json"
        if rank == 0 and not pairs_file.exists():
            embedder = load_model(config.retrieval_model or config.teachers[0])
            base = [images._make(p, 0) for p in images.base]
            nn = retrieval_neighbours(global_embeddings(embedder, base), k=config.k)
            pairs_file.write_text(json.dumps(nn.tolist()))
        if dist.is_initialized():
            dist.barrier()
        sampler = PairSampler("retrieval", neighbours=torch.tensor(json.loads(pairs_file.read_text())))
    elif config.pairs == "category":
        sampler = PairSampler("category", categories=images.categories)
    else:
        sampler = PairSampler("given", pairs=given)

    # 5. optimiser, schedule, resume
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(trainable.values(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_gamma)
    start = 0
    if ckpt is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(ckpt["trainable"][n])
            for n, b in student.named_buffers():  # BatchNorm running statistics move during training too
                b.copy_(ckpt["buffers"][n])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        start = ckpt["step"]
        log_path = out / "log.jsonl"
        if rank == 0 and log_path.exists():  # steps logged after the checkpoint were lost with the kill: redone below
            kept = [
                line
                for line in log_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= start
            ]
            with atomic_path(log_path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        log(f"resumed from step {start}")
    model = torch.nn.parallel.DistributedDataParallel(student) if dist.is_initialized() else student

    # 6. the loop
    per_rank = config.batch_size // world
    log_file = open(out / "log.jsonl", "a", encoding="utf-8") if rank == 0 else None  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        first, second = draw_pairs(sampler, len(images.base), images.copies, config, step)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        a, b = first[mine], second[mine]
        x = torch.stack([student.prepare(images.load(e), config.image_size, "stretch")[0] for e in a + b])
        x = x.to(device)
        t = torch.stack([cache[e] for e in a + b]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):  # mixed precision (default: on GPU)
            s = model(x)
            terms = {
                "distill": distillation_loss(s[:per_rank], s[per_rank:], t[:per_rank], t[per_rank:], config.temperature)
            }
            if hints is not None:
                terms["hint"] = hint_loss(stages, hints(x))
            weight = config.distill_weight if step >= config.distill_start else 0.0
            loss = weight * terms["distill"] + config.hint_weight * terms.get("hint", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_file is not None:
            record = {"step": step + 1, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
            log_file.write(json.dumps({**record, "lr": sched.get_last_lr()[0]}) + "\n")
            log_file.flush()
            if (step + 1) % max(1, config.steps // 10) == 0:
                parts = ", ".join(f"{k} {record[k]:.4f}" for k in terms)
                elapsed = time.perf_counter() - t0
                log(f"step {step + 1}/{config.steps}  loss {record['loss']:.4f} ({parts})  {elapsed:.0f}s")
        if rank == 0 and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            _save_checkpoint(
                ckpt_path,
                {
                    "step": step + 1,
                    "config": config.to_dict(),
                    "rng": torch.get_rng_state(),
                    "trainable": {n: p.detach().cpu() for n, p in trainable.items()},
                    "buffers": {n: b.detach().cpu() for n, b in student.named_buffers()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                },
            )
    if log_file is not None:
        log_file.close()

    # 7. the result: a model folder that says what it is
    folder = out / "model"
    if rank == 0:
        student.eval().requires_grad_(False)
        student.variant = _trained_variant(student.variant, config, recipe, out)
        student.save_pretrained(folder, save_base=config.student_init == "random" or config.train == "full")
    if dist.is_initialized():
        dist.barrier()
    return folder
