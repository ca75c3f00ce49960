"""Train the pix2pixHD student on a pair folder: one visible loop, data parallel, exact resume.

    toonify-fast distill train --pairs pairs/ --preset lite --res 256 --steps 20000 -o runs/
    torchrun --nproc_per_node 2 -m distill train --pairs pairs/ ...   # DDP: NCCL on GPUs, gloo on CPU

A run lives in a numbered folder (runs/00003-lite-256/, its files kept by distill.runs): config.json,
log.txt, stats.jsonl, tensorboard/, samples/step-000500.png (rows: input | student (EMA) | teacher),
the training state checkpoints/latest.pt, and apart from it the weights that export and eval load
with load_student: student-ema.pt (the EMA generator, the one to export) and student.pt (the raw one).
The data a step sees is a pure function of (seed, position in the sample stream), so a run
resumed with --resume ends with the same weights as one never stopped (bit for bit on the same
device and thread count); Ctrl-C (or SIGTERM) finishes the current step, saves the state and exits.
"""
from __future__ import annotations

import copy
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.data import PairedDataset, PairFolderError
from distill.device import device_setting, resolve_device
from distill.losses import GAN_MODES, PerceptualLoss, discriminator_loss, generator_loss, vgg_features
from distill.runs import (RunFolder, StudentInfo, check_resumable, load_training_state, private_temp_folder,
                          rng_state, run_config, runs_setting, set_rng_state)
from distill.translator import PRESETS, MultiscaleDiscriminator, build_generator, condition_planes
from runtime.common import (Interrupted, ToonifyError, UsageError, check_writable, console, from_jsonable, jsonable,
                            progress, read_json)
from runtime.options import resumable_fields, setting

SAMPLES = 8   # held-out pairs shown in every sample grid


class TrainError(ToonifyError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    pairs: Path | None = setting(None, "Pair folder from `distill pairs` (its val/ split feeds the sample grids). "
                                       "Needed unless --resume.")
    output: Path = runs_setting()
    preset: str = setting("lite", "Student architecture: lite or full (pix2pixHD's default).")
    res: int = setting(256, "Training resolution; pairs are resized to it.")
    steps: int = setting(20000, "Training steps (one global batch each).")
    batch_size: int = setting(1, "Images per step per process (the global batch is this times the processes).")
    lr: float = setting(2e-4, "Adam learning rate of both networks.")
    betas: tuple[float, float] = setting((0.5, 0.999), cli=False)     # Adam's, pix2pixHD's
    decay_start: float = setting(0.5, "Fraction of the steps at constant LR before the linear decay to 0.")
    gan: bool = setting(True, "Adversarial and feature-matching terms (pix2pixHD).")
    gan_mode: str = setting("lsgan", "lsgan or hinge.")
    feat_weight: float = setting(40.0, "Feature-matching weight on the mean over layers and scales (40 = pix2pixHD's "
                                       "10 on its 4x-weighted sum, losses.feature_matching_loss).")
    vgg: bool = setting(True, "VGG19 perceptual term (needs real weights).")
    vgg_weights: Path | None = setting(None, "torchvision's vgg19 state dict (vgg19-dcbe5ed2.pth); default: the "
                                             "torch hub cache.")
    vgg_weight: float = setting(10.0, "Weight of the perceptual term.")
    l1_weight: float = setting(0.0, "Weight of an L1 term to the toon (0 = pix2pixHD's objective; handy without GAN).",
                               flags=("--l1",))
    ndf: int = setting(64, "Discriminator width.")
    num_d: int = setting(2, "Discriminator scales.")
    ema_decay: float = setting(0.999, "Per-step decay of the exported moving-average student (ramped up from 0.9 "
                                      "over the first steps).")
    grad_clip: float | None = setting(None, "Clip each network's gradient norm to this (default: no clipping).")
    augment: bool = setting(True, "Flips, jitter, photo degradations (distill.data).")
    amp: bool = setting(True, "float16 mixed precision with loss scaling (CUDA only).")
    seed: int = setting(0, "Seed of the weights and of the data order.")
    # Settings that change nothing a run computes: a resumed run may give other values for these.
    workers: int = setting(2, "Data-loading processes per training process.", resumable=True)
    device: str = setting("auto", "auto (cuda:LOCAL_RANK when present), cpu, cuda, ...", resumable=True)
    log_every: int = setting(50, "Steps between lines of stats.jsonl.", resumable=True)
    sample_every: int = setting(500, "Steps between sample grids.", resumable=True)
    checkpoint_every: int = setting(1000, "Steps between checkpoints (and student files).", resumable=True)

    def __post_init__(self):
        multiple = PRESETS[self.preset].size_multiple if self.preset in PRESETS else 1
        checks = [(self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}"),
                  (self.res >= multiple and self.res % multiple == 0,
                   f"res must be a positive multiple of {multiple} for the {self.preset} student, got {self.res}"),
                  (self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be at least 1"),
                  (0.0 <= self.decay_start <= 1.0, f"decay_start is a fraction of the steps, got {self.decay_start}"),
                  (self.gan_mode in GAN_MODES, f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}"),
                  (self.gan or self.vgg or self.l1_weight > 0,
                   "every loss term is off (no GAN, no VGG, no L1): nothing to learn from"),
                  (0.0 <= self.ema_decay < 1.0, f"ema_decay must lie in [0, 1), got {self.ema_decay}"),
                  (min(self.log_every, self.sample_every, self.checkpoint_every) >= 1, "intervals must be >= 1")]
        for ok, reason in checks:
            if not ok:
                raise TrainError(reason, hint="see `toonify-fast distill train --help`")

    def to_json(self) -> dict:
        return jsonable(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        return from_jsonable(cls, data)


RESUMABLE = resumable_fields(TrainConfig)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path | None    # None on ranks other than 0, which write nothing
    step: int               # steps completed
    G: nn.Module            # the trained generator of this process
    G_ema: nn.Module        # its moving average (the one exported)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """cfg.lr up to decay_start * steps, then linear to 0 at cfg.steps (pix2pixHD's niter + niter_decay)."""
    start = int(cfg.decay_start * cfg.steps)
    return cfg.lr if step < start else cfg.lr * (cfg.steps - step) / (cfg.steps - start)


class StepBatches(torch.utils.data.Sampler):
    """One rank's batches of (epoch, index) keys for `count` steps from stream position `first`.

    The sample stream visits the pairs epoch after epoch, each epoch in the order of a permutation
    seeded by (seed, epoch). A step takes the next batch_size * world positions and rank r the
    r-th of every `world`, so data depend only on positions: not on workers, stops or resumes,
    and a global batch is the same for 2 ranks x 1 image as for 1 rank x 2.
    """

    def __init__(self, n: int, seed: int, batch_size: int, rank: int, world: int, first: int, count: int):
        self.n, self.seed, self.batch_size, self.rank, self.world = n, seed, batch_size, rank, world
        self.first, self.count = first, count
        self._perm: tuple[int, np.ndarray] | None = None

    def key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return epoch, int(self._perm[1][offset])

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        per_step = self.batch_size * self.world
        for s in range(self.count):
            start = self.first + s * per_step + self.rank
            yield [self.key(p) for p in range(start, start + per_step, self.world)]


@dataclass(frozen=True)
class LoadFailure:
    """A pair that failed to load (in a DataLoader worker): the error's parts, handed to the loop
    as the batch instead of torch's re-raised worker traceback."""
    reason: str
    path: str | None
    hint: str | None


class EpochItems(torch.utils.data.Dataset):
    """PairedDataset indexed by (epoch, index), so every item's augmentation follows from its key."""

    def __init__(self, dataset: PairedDataset):
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]):
        self.dataset.set_epoch(key[0])
        try:
            return self.dataset[key[1]]
        except ToonifyError as e:
            return LoadFailure(e.reason, e.path, e.hint)


def collate(items: list):
    """torch's default_collate, or the first LoadFailure among the items."""
    failed = [item for item in items if isinstance(item, LoadFailure)]
    return failed[0] if failed else torch.utils.data.default_collate(items)


def agreed_failure(failure: LoadFailure | None, device: torch.device) -> LoadFailure | None:
    """This rank's failure to load its batch, or under torchrun the first rank's that failed, on
    every rank: all of them then save the same step and stop together, where one rank leaving
    alone would leave the others waiting for it in their step."""
    if not dist.is_initialized():
        return failure
    flag = torch.tensor([float(failure is not None)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    failures = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    return next(f for f in failures if f is not None)


def _generator_objective(cfg: TrainConfig, D: nn.Module | None, perceptual: PerceptualLoss | None,
                         real: torch.Tensor, fake: torch.Tensor, toon: torch.Tensor):
    """The student's loss and its parts (detached): pix2pixHD's terms that are on, plus L1."""
    if D is not None:
        total, parts = generator_loss(D, real, fake, toon, perceptual, cfg.gan_mode, cfg.feat_weight, cfg.vgg_weight)
    else:
        total, parts = fake.new_zeros(()), {}
        if perceptual is not None:
            parts["g_vgg"] = perceptual(fake, toon)
            total = total + cfg.vgg_weight * parts["g_vgg"]
            parts["g_vgg"] = parts["g_vgg"].detach()
    if cfg.l1_weight > 0:
        l1 = F.l1_loss(fake, toon)
        total, parts["g_l1"] = total + cfg.l1_weight * l1, l1.detach()
    parts["g_total"] = total.detach()
    return total, parts


def _optimizer_step(opt: torch.optim.Optimizer, model: nn.Module, scaler: torch.amp.GradScaler,
                    clip: float | None) -> None:
    if clip is not None:
        scaler.unscale_(opt)   # clip true gradients, not loss-scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(opt)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class StopRequest:
    """SIGINT / SIGTERM ask the loop to stop after the current step; a second signal stops at once.

    Handlers are installed only in the main thread (Python's rule) and restored on close().
    """

    def __init__(self):
        self.asked, self._old = False, {}
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        console.print("stopping after this step and saving a checkpoint (signal again to stop at once)")

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop: all ranks leave the loop after the same step."""
        if not dist.is_initialized():
            return self.asked
        flag = torch.tensor([float(self.asked)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig a run folder was started with (its config.json; `out` in earlier versions' is `output`)."""
    return run_config(TrainConfig, run_dir, legacy={"out": "output"})


def _teachers(pairs: Path) -> dict:
    """The teachers' hashes from the pair set's pairs.json ('' when the folder was not made by `distill pairs`)."""
    path = pairs / "pairs.json"
    meta = read_json(path, "pairs.json is damaged: write the set again with `distill pairs`, or remove pairs.json "
                           "(the pairs train without it)", PairFolderError) if path.is_file() else {}
    if not isinstance(meta, dict):
        raise PairFolderError("damaged: not the JSON object `distill pairs` writes", path,
                              hint="write the set again with `distill pairs`, or remove pairs.json")
    return {"teacher_base_sha256": meta.get("base_sha256", ""),
            "teacher_blended_sha256": meta.get("blended_sha256", "")}


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None, stop_at: int | None = None) -> TrainResult:
    """Train a student on cfg.pairs, or continue the run folder `resume` exactly where it stopped.

    Under torchrun (WORLD_SIZE > 1) every process trains on its share of each global batch with
    DDP and only rank 0 writes. `stop_at` ends this session after that step with a checkpoint
    (continue with `resume`). Raises MissingWeightsError before any work when the VGG term is on
    and no weights are found, Interrupted (exit code 130) after a stop by signal, state saved, and
    TrainError naming the file when a pair fails to load (the state saved first).
    """
    with private_temp_folder():
        return _train_session(cfg, resume, stop_at)


def _train_session(cfg: TrainConfig, resume: str | os.PathLike | None, stop_at: int | None) -> TrainResult:
    if cfg.pairs is None:
        raise UsageError("--pairs is needed to start a run", hint="or continue one with --resume RUN_FOLDER")
    features = vgg_features("vgg19", cfg.vgg_weights) if cfg.vgg else None
    teachers = _teachers(cfg.pairs)        # before any work: a damaged pairs.json stops the run here
    if resume is not None:
        check_resumable(cfg, resume, RESUMABLE)
    else:
        check_writable(Path(cfg.output) / "00000-run")
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(cfg.device)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, global_batch = dist.get_rank() if world > 1 else 0, cfg.batch_size * world
    stopper, run, bar, batches = StopRequest(), None, None, None
    try:
        dataset = PairedDataset(cfg.pairs, cfg.res, augment=cfg.augment, seed=cfg.seed)
        torch.manual_seed(cfg.seed)   # the same initial weights on every rank
        # A pair set with styles trains a conditioned student (conditional instance norm) on them.
        G = build_generator(cfg.preset, **({"styles": len(dataset.styles)} if dataset.styles else {})).to(device)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        # A conditioned student's D also sees the condition (condition_planes), so its GAN terms judge the
        # style and strength; a plain student's D takes source and image alone, as it always has.
        planes = len(dataset.styles) + 1 if dataset.styles else 0
        D = MultiscaleDiscriminator(6 + planes, ndf=cfg.ndf, num_D=cfg.num_d).to(device) if cfg.gan else None
        perceptual = PerceptualLoss(features).to(device) if features is not None else None
        # Fused Adam: one kernel over all parameters (CPU and CUDA), several times faster than the loop.
        opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas, fused=True)
        opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas, fused=True) if cfg.gan else None
        amp = cfg.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler(device.type, enabled=amp)
        state = None
        if resume is not None:
            state = load_training_state(Path(resume), device)
            for target, key in ((G, "G"), (G_ema, "G_ema"), (D, "D"), (opt_G, "opt_G"), (opt_D, "opt_D"),
                                (scaler, "scaler")):
                if target is not None:
                    try:
                        target.load_state_dict(state[key])
                    except (RuntimeError, KeyError, ValueError, TypeError) as e:
                        raise TrainError(f"its {key} does not fit this run ({(str(e).strip().splitlines() or [type(e).__name__])[0]})",
                                         Path(resume) / "checkpoints" / "latest.pt",
                                         hint="restore the file from a backup, or start the run again") from None
        start, seen = (state["step"], state["samples_seen"]) if state else (0, 0)
        if state is not None and len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:
            rank_seed = int(np.random.SeedSequence([cfg.seed, rank]).generate_state(1)[0])
            for seed_rng in (torch.manual_seed, random.seed, np.random.seed):
                seed_rng(rank_seed)
        # DDP registers the parameters that require grad when it wraps them, so D is frozen only after.
        device_ids = [device.index] if device.type == "cuda" else None
        G_train = DistributedDataParallel(G, device_ids) if world > 1 else G
        D_train = DistributedDataParallel(D, device_ids) if world > 1 and cfg.gan else D
        if D is not None:
            D.requires_grad_(False)
        stop = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        sampler = StepBatches(len(dataset), cfg.seed, cfg.batch_size, rank, world, seen, max(stop - start, 0))
        batches = iter(torch.utils.data.DataLoader(EpochItems(dataset), batch_sampler=sampler, collate_fn=collate,
                                                   num_workers=cfg.workers, pin_memory=device.type == "cuda"))

        if rank == 0:
            run = (RunFolder(Path(resume), resumed_at=start) if resume is not None
                   else RunFolder.create(Path(cfg.output), f"{cfg.preset}-{cfg.res}"))
            held_out = cfg.pairs / "val" if (cfg.pairs / "val" / "real").is_dir() else cfg.pairs
            shown = PairedDataset(held_out, cfg.res, augment=False)
            shown = [torch.stack(t).to(device) for t in zip(*(shown[i] for i in range(min(SAMPLES, len(shown)))))]
            info = StudentInfo(G.cfg, cfg.preset, cfg.res, run=run.path.name, styles=dataset.styles, **teachers)
            if state is None:
                run.write_config({
                    "config": cfg.to_json(), "student": jsonable(info.config), "world_size": world,
                    "global_batch": global_batch, "device": str(device), "amp": amp, "pairs": len(dataset),
                    "teachers": teachers, "torch": torch.__version__})
                run.samples(0, G_ema, *shown)
            elif state["world_size"] != world:
                run.log(f"note: resuming on {world} process(es), the run had {state['world_size']}: "
                        f"the global batch is now {global_batch}")
            run.log(f"{'resuming' if state else 'starting'} {run.path} at step {start} of {cfg.steps}: "
                    f"{len(dataset)} pairs, {cfg.preset} student ({sum(p.numel() for p in G.parameters()) / 1e6:.2f}M "
                    f"parameters) at {cfg.res} px, {world} process(es) on {device}, global batch {global_batch}")
            bar = progress("steps")
            task = bar.add_task("training", total=cfg.steps, completed=start)
            bar.start()

        def checkpoint(done: int) -> None:
            rng = [rng_state()] if world == 1 else [None] * world   # every rank's: each resumes its own
            if world > 1:
                dist.all_gather_object(rng, rng_state())
            if run is not None:
                run.save({"step": done, "samples_seen": seen + (done - start) * global_batch, "world_size": world,
                          "G": G.state_dict(), "G_ema": G_ema.state_dict(), "opt_G": opt_G.state_dict(),
                          "D": D.state_dict() if D else None, "opt_D": opt_D.state_dict() if opt_D else None,
                          "scaler": scaler.state_dict(), "rng": rng}, G, G_ema, info)

        done, sums, count, clock, began = start, {}, 0, time.perf_counter(), time.perf_counter()
        interrupted = False
        for step in range(start, stop):
            batch = next(batches)
            failure = agreed_failure(batch if isinstance(batch, LoadFailure) else None, device)
            if failure is not None:
                checkpoint(done)
                where = f"; the state at step {done} is saved in {run.path}" if run is not None else ""
                raise TrainError(failure.reason, failure.path, hint=(failure.hint or "replace or remove the file") + where)
            real, toon, *condition = (t.to(device, non_blocking=True) for t in batch)
            lr = learning_rate(cfg, step)
            for group in [*opt_G.param_groups, *(opt_D.param_groups if opt_D else [])]:
                group["lr"] = lr

            # Generator: D (unwrapped and frozen) only passes gradients through to the student.
            with torch.autocast(device.type, enabled=amp):
                fake = G_train(real, *condition)
                source = real if not condition else torch.cat(
                    [real, condition_planes(real, *condition, len(dataset.styles))], 1)
                loss_G, parts = _generator_objective(cfg, D, perceptual, source, fake, toon)
            opt_G.zero_grad(set_to_none=True)
            scaler.scale(loss_G).backward()
            _optimizer_step(opt_G, G, scaler, cfg.grad_clip)

            # Discriminator: the real pairs against the student's (detached) output.
            if D is not None:
                D.requires_grad_(True)
                with torch.autocast(device.type, enabled=amp):
                    loss_D, d_parts = discriminator_loss(D_train, source, fake, toon, cfg.gan_mode)
                opt_D.zero_grad(set_to_none=True)
                scaler.scale(loss_D).backward()
                _optimizer_step(opt_D, D, scaler, cfg.grad_clip)
                D.requires_grad_(False)
                parts.update(d_parts)
            scaler.update()
            # The ramp keeps the average from clinging to the random initial weights early in a run.
            update_ema(G_ema, G, min(cfg.ema_decay, (1 + step) / (10 + step)))

            done, count = step + 1, count + 1
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value.float()
            if done % cfg.log_every == 0 or done == stop:
                keys = sorted(sums)
                means = torch.stack([sums[k] for k in keys]) / count
                if world > 1:
                    dist.all_reduce(means)
                    means /= world
                now = time.perf_counter()
                if run is not None:
                    run.stats({"step": done, "lr": lr, "images_per_s": count * global_batch / (now - clock),
                               **{f"loss/{k}": v for k, v in zip(keys, means.tolist())}})
                sums, count, clock = {}, 0, now
            if run is not None and (done % cfg.sample_every == 0 or done == stop):
                run.samples(done, G_ema, *shown)
            if done % cfg.checkpoint_every == 0 and done < stop:
                checkpoint(done)
            if bar is not None:
                bar.advance(task)
            if stopper.agreed(device):
                interrupted = True
                break

        checkpoint(done)
        if run is not None:
            bar.stop()
            bar = None      # stopped once: off a terminal every stop() writes another (blank) line
            finished = done >= cfg.steps
            run.log(f"{'finished' if finished else 'stopped'} at step {done} of {cfg.steps} after "
                    f"{(time.perf_counter() - began) / 60:.1f} min; run folder: {run.path}")
            run.log(f"  export: toonify-fast distill export --student {run.path / 'student-ema.pt'} -o exports/toonify.onnx"
                    if finished else f"  continue: toonify-fast distill train --resume {run.path}")
        if interrupted:
            raise Interrupted(f"stopped by a signal at step {done} of {cfg.steps}; the state is saved",
                              run.path if run else None,
                              hint=f"continue with: toonify-fast distill train --resume {run.path if run else 'RUN'}")
        return TrainResult(run.path if run else None, done, G, G_ema)
    finally:
        batches = None        # the DataLoader's workers stop now, before their temporary folder goes
        if bar is not None:
            bar.stop()
        stopper.close()
        if run is not None:
            run.tb.close()
        if own_group:
            dist.destroy_process_group()
