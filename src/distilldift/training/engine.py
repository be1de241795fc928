"""The training engine: it owns everything a run needs except the task, which an :class:`Objective` supplies.

The engine sets up processes (one, or many under ``torchrun``: torch DDP), the device and mixed precision, builds
the student, runs the objective's one-off preparation, then the loop: the objective gives step ``s``'s batch (a
pure function of ``(seed, s)``) and its named, unweighted loss terms; the engine weights them, steps AdamW and the
StepLR schedule, logs every step, writes atomic checkpoints (trainable weights, buffers, optimiser, schedule, RNG,
config, step) so that a resumed run ends bit-identical to an uninterrupted one, and finally saves the model folder
that ``load_model`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import InvalidInputError, TrainingDivergedError, torch_load_reason
from ..files import atomic_path
from ..models.build import build_model
from ..models.model import DistillDiftModel
from ..models.variants import get_variant
from ..weights.loading import load_model
from ..weights.publish import save_pretrained
from .config import TrainConfig
from .settings import Section

__all__ = ["Objective", "Run", "run_training", "build_student", "CHECKPOINT", "RUN_FILES"]

CHECKPOINT = "checkpoint.pt"
RUN_FILES = (CHECKPOINT, "log.jsonl", "model")  # what a run leaves in its out folder (besides objective caches)


@dataclass
class Run:
    """What an objective may know about the run: its config, folders, process and device."""

    config: TrainConfig
    data: Path
    out: Path
    rank: int
    world: int
    device: torch.device
    log: object  # callable(str)

    def barrier(self) -> None:
        """Wait for every process (no-op on one process): after rank 0 has written something all ranks read."""
        if dist.is_initialized():
            dist.barrier()


class Objective:
    """One training task. The engine calls, in order:

    - :meth:`check` (cheap; before the student is built): read and validate the data, fail early;
    - :meth:`prepare` once the student exists: expensive one-off work (teacher caches, pseudo-labels, pairs),
      done by rank 0 and shared through files (call ``run.barrier()`` before other ranks read them);
    - per step :meth:`batch` (this process's share, a pure function of ``(seed, step)``) and :meth:`terms` (named,
      unweighted loss terms) weighted by :meth:`weights`.
    """

    def check(self, run: Run) -> None:
        """Validate the data and settings before anything expensive."""

    def prepare(self, run: Run, student: DistillDiftModel) -> None:
        """One-off work before the loop."""

    def batch(self, run: Run, student: DistillDiftModel, step: int) -> dict[str, torch.Tensor]:
        """This process's share of step ``step``'s batch (tensors on any device; the engine moves them)."""
        raise NotImplementedError

    def terms(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Named, unweighted loss terms of ``batch`` (``model`` may be DDP-wrapped: call it, do not inspect it)."""
        raise NotImplementedError

    def weights(self, step: int) -> dict[str, float]:
        """The weight of each term at ``step`` (terms without a weight count 1)."""
        return {}

    def describe(self, recipe: str) -> tuple[str, str]:
        """``(description, licence)`` of the trained model, for its folder."""
        return "", ""


def _flat(settings: dict, section: type = TrainConfig, prefix: str = "") -> dict:
    """``{"distill": {"k": 3}}`` -> ``{"distill.k": 3}``: a recipe's settings by their override keys (nested
    sections are those of the config's own structure; dict-valued settings stay whole)."""
    defaults, out = section.defaults(), {}
    for key, value in settings.items():
        sub = defaults.get(key)
        if isinstance(sub, Section) and isinstance(value, dict):
            out.update(_flat(value, type(sub), f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


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
                f"--resume: cannot read {str(ckpt_path)!r} ({torch_load_reason(e)}); start again with --overwrite"
            ) from None
        saved, now = _flat(ckpt["config"]), _flat(config.to_dict())
        # may change on resume: steps and checkpoint_every change no step; lr, to continue a diverged run more gently
        free = ("steps", "checkpoint_every", "lr")
        changed = sorted(k for k, v in now.items() if saved.get(k) != v and k not in free)
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


def build_student(config: TrainConfig) -> DistillDiftModel:
    """The student of ``config``, with the parameters to train requiring gradients.

    ``student_init``: ``"pretrained"`` (the variant's base weights, a fresh adapter), ``"random"``, or a variant name
    / model folder whose weights, adapter included, training continues from (e.g. ``co3d`` from
    ``distilldift_us``). ``train="lora"`` trains the (q/v) LoRA weights only, ``"full"`` every weight.
    """
    if config.student_init in ("pretrained", "random"):
        variant = get_variant(config.student)
        variant = variant.replace(arch_kwargs={**variant.arch_kwargs, **config.student_overrides}, adapter=None)
        if config.train == "full":
            variant = variant.replace(lora=None)
        elif variant.lora is not None:
            variant = variant.replace(lora=dataclasses.replace(variant.lora, dropout=config.lora_dropout))
        if config.student_init == "random":
            variant = variant.replace(weights=None)
        student = build_model(variant, get=None, adapter_get=None, cache_dir=None, local_files_only=False)
    else:  # continue a trained model
        student = load_model(config.student_init, merge=False, precision="fp32")  # the engine sets autocast
    if config.train == "full":
        student.requires_grad_(True)
    else:
        if not student.has_adapter:
            source = config.student if config.student_init in ("pretrained", "random") else config.student_init
            raise InvalidInputError(
                f"student {source!r} has no LoRA adapter; use train=full, or student_init=pretrained for a fresh one"
            )
        for name, p in student.named_parameters():
            p.requires_grad_("lora_" in name)
        student.enable_qv_only_training()
    return student


def _trim_log(path: Path, step: int) -> None:
    """Drop the log lines after ``step`` (logged after the checkpoint, lost with the kill, redone on resume)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _check_finite(step: int, terms: dict, trainable: dict, when: str, ckpt_path: Path) -> None:
    """Stop at the first non-finite loss term or gradient (``when="before"`` the update) or weight (``"after"``),
    the same decision in every process; the checkpoint file (the last good state) is left as it is."""
    if when == "before":
        bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        grads = [p.grad for p in trainable.values() if p.grad is not None]
        ok = not bad and all(torch.isfinite(g).all() for g in grads)
    else:
        bad, ok = [], all(torch.isfinite(p.detach()).all() for p in trainable.values())
    flag = torch.tensor([1.0 if ok else 0.0], device=next(iter(trainable.values())).device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if flag.item() == 1.0:
        return
    if bad:
        what = ("the loss term " if len(bad) == 1 else "the loss terms ") + ", ".join(
            f"{k} = {terms[k].item()}" for k in bad
        )
    elif when == "before":
        what = "a gradient (the loss was finite)"
    else:
        what = "the weights after the update"
    what += " is not finite" if len(bad) <= 1 else " are not finite"
    kept = f"the last checkpoint, {str(ckpt_path)!r}, is kept" if ckpt_path.exists() else "no checkpoint was written"
    raise TrainingDivergedError(
        f"training diverged at step {step + 1}: {what}; {kept} and no model folder was written. Lower the learning "
        "rate and continue: --resume --override lr=...; if it diverges again (the checkpoint may already hold the "
        "blow-up), start again with --overwrite and a lower lr"
    )


def run_training(
    config: TrainConfig,
    objective: Objective,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    recipe: str = "",
    log=print,
) -> Path:
    """Train ``config``'s student on ``objective``; write checkpoints, ``log.jsonl`` and ``model/`` into ``out``.

    See :func:`distilldift.training.train` for the files and the resume / overwrite rules. Returns the ``model/``
    folder.
    """
    # 1. processes and devices
    world, rank, device = _processes(config)
    out = Path(out)
    ckpt = _check_run_folder(out, config, resume=resume, overwrite=overwrite, remove=rank == 0)
    out.mkdir(parents=True, exist_ok=True)
    if config.batch_size % world:
        raise InvalidInputError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(config.seed)
    run = Run(config, Path(data), out, rank, world, device, log)
    # 2. the objective's data, then the student, then the objective's one-off work
    objective.check(run)
    student = _student_on(run)
    objective.prepare(run, student)
    # 3. optimiser, schedule, resume
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(trainable.values(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_gamma)
    start = 0 if ckpt is None else _resume(run, ckpt, student, trainable, opt, sched)
    # 4. the loop
    _loop(run, objective, student, trainable, opt, sched, start)
    # 5. the result: a model folder that says what it is
    folder = out / "model"
    if rank == 0:
        _write_model(run, student, objective, recipe, folder)
    run.barrier()
    return folder


def _processes(config: TrainConfig) -> tuple[int, int, torch.device]:
    """``(world, rank, device)``: the process group under torchrun (initialised here), this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return world, rank, device


def _student_on(run: Run) -> DistillDiftModel:
    """The student in training mode on the run's device (BatchNorm frozen or synced across processes)."""
    config = run.config
    student = build_student(config)
    student.to(run.device).train()
    if config.freeze_batchnorm:  # eval mode: normalise with the pretrained statistics and never update them
        for m in student.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in student.modules())
    if run.world > 1 and has_bn and not config.freeze_batchnorm:
        if run.device.type == "cuda":  # batch statistics over all processes' images, as one process would see them
            student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
        elif run.rank == 0:
            run.log(
                "warning: the student has BatchNorm and torch syncs it only on GPUs: on CPU each process normalises "
                "with its own share of the batch, so results differ slightly from a single-process run"
            )
    return student


def _resume(run: Run, ckpt: dict, student, trainable: dict, opt, sched) -> int:
    """Restore the checkpoint's weights, optimiser, schedule (rescaled to a changed lr) and RNG; its step."""
    config, log = run.config, run.log
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(ckpt["trainable"][n])
        for n, b in student.named_buffers():  # BatchNorm running statistics move during training too
            b.copy_(ckpt["buffers"][n])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    factor = config.lr / ckpt["config"]["lr"]
    if factor != 1.0:  # continued with another learning rate (e.g. after a diverged step): rescale the schedule
        for group in opt.param_groups:
            group["lr"] *= factor
            group["initial_lr"] *= factor
        sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        log(f"learning rate {ckpt['config']['lr']:g} -> {config.lr:g} from step {ckpt['step']}")
    torch.set_rng_state(ckpt["rng"])
    if run.rank == 0:
        _trim_log(run.out / "log.jsonl", ckpt["step"])
    log(f"resumed from step {ckpt['step']}")
    return ckpt["step"]


def _loop(run: Run, objective: Objective, student, trainable: dict, opt, sched, start: int) -> None:
    """Steps ``start`` to ``config.steps``: batch (prefetched), loss terms, checks, update, log, checkpoint."""
    config, device, ckpt_path = run.config, run.device, run.out / CHECKPOINT
    amp = config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and device.type == "cuda")
    model = torch.nn.parallel.DistributedDataParallel(student) if dist.is_initialized() else student
    log_file = open(run.out / "log.jsonl", "a", encoding="utf-8") if run.rank == 0 else None  # noqa: SIM115
    t0 = time.perf_counter()
    # the next step's batch is read and decoded in a background thread while this step computes (a batch is a pure
    # function of its step, so prefetching changes nothing in the result)
    pool = ThreadPoolExecutor(1, thread_name_prefix="distilldift-prefetch")
    pending = pool.submit(objective.batch, run, student, start) if start < config.steps else None
    try:
        for step in range(start, config.steps):
            ready = pending.result()
            if step + 1 < config.steps:
                pending = pool.submit(objective.batch, run, student, step + 1)
            batch = {k: v.to(device) for k, v in ready.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):  # mixed precision (default: GPU)
                terms = objective.terms(model, batch, step)
                weights = objective.weights(step)
                loss = sum(weights.get(k, 1.0) * v for k, v in terms.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _check_finite(step, terms, trainable, "before", ckpt_path)
            opt.step()
            _check_finite(step, terms, trainable, "after", ckpt_path)
            sched.step()
            if log_file is not None:
                record = {"step": step + 1, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
                log_file.write(json.dumps({**record, "lr": sched.get_last_lr()[0]}) + "\n")
                log_file.flush()
                if (step + 1) % max(1, config.steps // 10) == 0:
                    parts = ", ".join(f"{k} {record[k]:.4f}" for k in terms)
                    elapsed = time.perf_counter() - t0
                    run.log(f"step {step + 1}/{config.steps}  loss {record['loss']:.4f} ({parts})  {elapsed:.0f}s")
            if run.rank == 0 and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                _save_checkpoint(ckpt_path, step + 1, config, student, trainable, opt, sched)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if log_file is not None:
            log_file.close()


def _save_checkpoint(path: Path, step: int, config: TrainConfig, student, trainable: dict, opt, sched) -> None:
    state = {
        "step": step,
        "config": config.to_dict(),
        "rng": torch.get_rng_state(),
        "trainable": {n: p.detach().cpu() for n, p in trainable.items()},
        "buffers": {n: b.detach().cpu() for n, b in student.named_buffers()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _write_model(run: Run, student, objective: Objective, recipe: str, folder: Path) -> None:
    """The trained model as a folder that says what it is (``load_model(folder)``)."""
    config = run.config
    student.eval().requires_grad_(False)
    description, licence = objective.describe(recipe)
    student.variant = student.variant.replace(
        name=run.out.resolve().name,
        description=description or student.variant.description,
        license=licence,
        input_size=config.image_size,
        resize="stretch",
        recipe=recipe or student.variant.recipe,
    )
    # base weights: saved when trained (full) or not public (random init, a folder's own file), else referenced
    save_pretrained(student, folder, save_base=True if config.train == "full" else None)
