"""Fine-tune a StyleGAN2 on a folder of aligned images (the toon model a Toonify blend takes its
structure from): NVlabs' StyleGAN2-ADA recipe in one visible loop, data parallel, exact resume.

    toonify-fast distill finetune --base ffhq.pkl --images aligned/ --kimg 36 -o runs/
    torchrun --nproc_per_node 2 -m distill finetune --base ffhq.pkl ...   # the batch split over processes

The recipe (NVlabs' training/loss.py and training_loop.py): the non-saturating logistic loss, R1 on
reals every 16 steps and path-length regularisation every 4 (lazy: each scaled by its interval,
Adam's lr and betas by c = interval / (interval + 1)), style mixing, Adam with betas (0, 0.99), a
G_ema whose half-life is ema_kimg, and adaptive discriminator augmentation (distill.augment) on
everything D sees. The defaults NVlabs' 'auto' config derives from the resolution and batch are
resolved at the start and written to config.json. G and G_ema start from the base's G_ema, D from
its D (or, for files without one, a new one: distill.discriminator). `mapping.w_avg` follows the
mean w as in NVlabs (beta 0.995).
`--precision bf16|fp16` runs the G and D forward passes under autocast (distill.precision); the
regularisers stay fp32.

A run folder (runs/00004-finetune-256/, like `distill train`'s): config.json, log.txt, stats.jsonl,
tensorboard/, checkpoints/latest.pt (the training state), finetuned.safetensors (the latest G_ema,
for `distill blend --toon`), and every --snap-kimg snapshots/kimg-000004.safetensors beside
snapshots/kimg-000004.png (rows: base | fine-tune, the same latents) and the sliced Wasserstein
distance to the image folder (distill.swd) in stats.jsonl. Every random draw of a sample (latents,
noise, augmentation) comes from its own generator seeded by (seed, step, sample), so a resumed run
ends bit for bit where a straight one does, and N processes compute what one does.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distill.augment import AdaController, augment
from distill.checkpoint import file_sha256, load_generator, save_generator
from distill.device import resolve_device
from distill.discriminator import Discriminator, load_discriminator, r1_penalty
from distill.inception import features, fid, kid, load_inception
from distill.pairs import pair_seed, sample_grid
from distill.precision import PRECISIONS, autocast, check_precision, grad_scaler
from distill.runs import RunFolder, check_resumable, rng_state, run_config, runs_setting, set_rng_state
from distill.stylegan2 import Generator
from distill.swd import sliced_wasserstein
from distill.train import StepBatches, StopRequest
from runtime.common import Interrupted, ToonifyError, UsageError, atomic_path, jsonable, note, progress
from runtime.images import hwc_to_nchw, list_images, read_image, resize, write_image
from runtime.options import resumable_fields, setting

GRID_SEEDS = 8
AUGMENT_MODES = ("ada", "none")


class FinetuneError(ToonifyError):
    pass


@dataclass(frozen=True)
class FinetuneConfig:
    base: Path | None = setting(None, "The StyleGAN2 to fine-tune (NVlabs pickle with D, rosinality, TF, .safetensors). "
                                      "Needed unless --resume.")
    images: Path | None = setting(None, "Folder of aligned faces (`distill align`), resized to the model's resolution. "
                                        "Needed unless --resume.")
    output: Path = runs_setting()
    kimg: float = setting(36.0, "Length: thousands of real images shown to D.")
    batch: int = setting(4, "Global batch (split evenly over torchrun processes).")
    gamma: float | None = setting(None, "R1 weight (default: NVlabs' auto config, 0.0002 * res^2 / batch).")
    lr: float | None = setting(None, "Adam learning rate of G and D (default: NVlabs' auto, 0.0025; 0.002 at 1024 px).")
    freeze_d: int = setting(0, "FreezeD: keep the first N discriminator blocks (highest resolution first) fixed.")
    augment: str = setting("ada", "ada (adaptive discriminator augmentation) or none.")
    target: float = setting(0.6, "ADA target: the mean sign of D's outputs on reals that p steers to.")
    ada_kimg: float = setting(500.0, "ADA speed: p can go from 0 to 1 in this many kimg (NVlabs' resume uses 100).")
    pl_weight: float = setting(2.0, "Path-length regularisation weight (0 turns it off).")
    style_mixing: float = setting(0.9, "Probability that a sample mixes two latents.")
    ema_kimg: float | None = setting(None, "Half-life of G_ema in kimg (default: batch * 10 / 32).")
    ema_rampup: float = setting(0.0, "G_ema's half-life is at most this times the images seen. 0 (no ramp: "
                                     "the whole --ema-kimg from the first step, averaging G over its swings) is "
                                     "NVlabs' setting for a run from a trained network; 0.05 its from-scratch one.")
    mbstd_group: int | None = setting(None, cli=False)   # minibatch-stddev group (default min(batch per process, 4))
    betas: tuple[float, float] = setting((0.0, 0.99), cli=False)
    r1_interval: int = setting(16, cli=False)
    pl_interval: int = setting(4, cli=False)
    ada_interval: int = setting(4, cli=False)
    seed: int = setting(0, "Seed of every latent, noise and augmentation draw, and of the data order.")
    precision: str = setting("fp32", "fp32, bf16 (autocast of the G and D forward passes; CUDA or CPU) or fp16 "
                                     "(autocast and loss scaling; CUDA only). R1 and path length stay fp32. "
                                     "A resumed run keeps its own.")
    # Settings that change nothing the run computes: a resumed run may give other values for these.
    snap_kimg: float = setting(4.0, "kimg between snapshots (weights, grid, SWD) and checkpoints.", resumable=True)
    swd_images: int = setting(256, "Images on each side of the sliced Wasserstein distance.", resumable=True)
    device: str = setting("auto", "auto (cuda:LOCAL_RANK when present), cpu, cuda, ...", resumable=True)
    log_every: int = setting(20, "Steps between lines of stats.jsonl.", resumable=True)
    inception: Path | None = setting(None, "Local FID Inception weights (pytorch-fid's pt_inception-2015-12-05-*.pth): "
                                     "KID and FID at each snapshot, over --swd-images images.", resumable=True)

    def __post_init__(self):
        checks = [(self.kimg > 0 and self.batch >= 1, "kimg must be positive and batch at least 1"),
                  (self.augment in AUGMENT_MODES, f"augment must be one of {AUGMENT_MODES}, got {self.augment!r}"),
                  (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
                  (self.freeze_d >= 0, f"freeze_d counts blocks, got {self.freeze_d}"),
                  (self.gamma is None or self.gamma >= 0, f"gamma must be >= 0, got {self.gamma}"),
                  (self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}"),
                  (0 <= self.style_mixing <= 1 and self.pl_weight >= 0 and self.ema_rampup >= 0,
                   "style_mixing must lie in [0, 1], pl_weight and ema_rampup be >= 0"),
                  (self.ada_kimg > 0 and 0 < self.target < 1, "ada_kimg must be positive and target in (0, 1)"),
                  (self.snap_kimg > 0 and self.swd_images >= 1 and self.log_every >= 1,
                   "snap_kimg, swd_images and log_every must be positive")]
        for ok, reason in checks:
            if not ok:
                raise FinetuneError(reason, hint="see `toonify-fast distill finetune --help`")

    def to_json(self) -> dict:
        return jsonable(self)


RESUMABLE = resumable_fields(FinetuneConfig)


@dataclass(frozen=True)
class Recipe:
    """What NVlabs' auto config derives from resolution and batch, resolved once per run."""
    gamma: float
    lr: float
    ema_kimg: float
    mbstd_group: int
    total_steps: int

    @classmethod
    def resolve(cls, cfg: FinetuneConfig, res: int, per_process: int) -> Recipe:
        return cls(gamma=cfg.gamma if cfg.gamma is not None else 0.0002 * res ** 2 / cfg.batch,
                   lr=cfg.lr if cfg.lr is not None else (0.002 if res >= 1024 else 0.0025),
                   ema_kimg=cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch * 10 / 32,
                   mbstd_group=cfg.mbstd_group or min(per_process, 4),
                   total_steps=math.ceil(cfg.kimg * 1000 / cfg.batch))


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path | None    # None on ranks other than 0, which write nothing
    step: int               # steps completed
    G: Generator            # the trained generator of this process
    G_ema: Generator        # its moving average (finetuned.safetensors)
    D: Discriminator


def load_images(folder: Path, res: int) -> torch.Tensor:
    """Every image of `folder` as [N, 3, res, res] float32 in [-1, 1] (resized when it is not res x res)."""
    if folder is None or not folder.is_dir():
        raise UsageError("no such folder of images", folder, hint="pass the folder `distill align` wrote")
    paths, _ = list_images(folder)
    if not paths:
        raise UsageError("no images in it", folder, hint="pass the folder `distill align` wrote")
    rgbs = []
    for path in paths:
        rgb = read_image(path)[0]
        rgbs.append(rgb if rgb.shape[:2] == (res, res) else resize(rgb, res, res))
    return torch.from_numpy(hwc_to_nchw(np.stack(rgbs)))


def sample_generators(seed: int, step: int, samples: list[int], stream: str) -> list[torch.Generator]:
    """One CPU generator per global sample index of this step: all of a sample's draws in `stream`."""
    return [torch.Generator().manual_seed(pair_seed(seed, j, f"finetune/{stream}/{step}")) for j in samples]


def render(G: Generator, gens: list[torch.Generator], style_mixing: float,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n, 3, R, R], ws [n, num_ws, w_dim]): one sample per generator, each drawing its z, its
    style-mixing choice, z2 and cutoff, then its noise, as NVlabs' run_G does per batch."""
    z, z2, cut = [], [], []
    for g in gens:
        z.append(torch.randn([G.z_dim], generator=g))
        mix = torch.rand([], generator=g).item() < style_mixing
        z2.append(torch.randn([G.z_dim], generator=g))
        c = int(torch.randint(1, G.num_ws, [], generator=g))
        cut.append(c if mix else G.num_ws)
    ws = G.mapping(torch.stack(z).to(device), None)
    cut = torch.tensor(cut, device=device)
    if bool((cut < G.num_ws).any()):
        mixed = torch.arange(G.num_ws, device=device)[None, :] >= cut[:, None]
        ws = torch.where(mixed[:, :, None], G.mapping(torch.stack(z2).to(device), None), ws)
    return G.synthesis(ws, noise_mode="random", generator=gens), ws


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    for e, p in zip(G_ema.parameters(), G.parameters()):
        e.copy_(p.lerp(e, beta))
    for e, b in zip(G_ema.buffers(), G.buffers()):
        e.copy_(b)


def _all_sum(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(x)
    return x


def _all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    return _all_sum(x, world) / world


def _sync_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients over processes in one flat all-reduce (as NVlabs' stylegan3 loop does),
    so the phases, lazy regularisers and double backward need no DDP wrapper."""
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        flat = _all_mean(torch.cat([g.flatten() for g in grads]), world)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.reshape(g.shape))


def _phase(opt: torch.optim.Optimizer, params: list[nn.Parameter], loss: torch.Tensor, world: int,
           scaler: torch.amp.GradScaler | None = None) -> None:
    opt.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    # Scaled gradients are averaged before the scaler checks them: every rank skips the same steps.
    _sync_grads(params, world)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def _adam(params: list[nn.Parameter], lr: float, betas: tuple[float, float], interval: int | None):
    """NVlabs' lazy-regularisation adjustment: with a regulariser every `interval` steps, lr * c and betas ** c."""
    c = interval / (interval + 1) if interval else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=tuple(b ** c for b in betas), eps=1e-8)


def load_run_config(run_dir: str | os.PathLike) -> FinetuneConfig:
    """The FinetuneConfig a run folder was started with (its config.json)."""
    return run_config(FinetuneConfig, run_dir)


@torch.no_grad()
def metric_samples(G: Generator, cfg: FinetuneConfig, device: torch.device) -> torch.Tensor:
    """cfg.swd_images samples of G (psi 1, seeded) in [-1, 1] on the CPU: the fakes every distance compares."""
    fakes = []
    for start in range(0, cfg.swd_images, 16):
        gens = sample_generators(cfg.seed, 0, list(range(start, min(start + 16, cfg.swd_images))), "swd")
        fakes.append(render(G, gens, 0.0, device)[0].clamp(-1, 1).cpu())
    return torch.cat(fakes)


class FolderMetrics:
    """The distances of G's samples to the image folder logged at each snapshot: SWD always, KID and
    FID when cfg.inception names local weights (the folder's features computed once)."""

    def __init__(self, reals: torch.Tensor, cfg: FinetuneConfig, device: torch.device):
        self.reals, self.cfg, self.device = reals, cfg, device
        self.net = load_inception(cfg.inception, device) if cfg.inception is not None else None
        self.real_feats = features(self.net, reals[:cfg.swd_images]) if self.net is not None else None

    @torch.no_grad()
    def __call__(self, G: Generator) -> dict[str, float]:
        # One set of samples for every distance: rendering them is the snapshot's largest cost.
        fakes = metric_samples(G, self.cfg, self.device)
        n = min(self.cfg.swd_images, len(self.reals))
        out = {f"metric/{k}": v for k, v in sliced_wasserstein(self.reals[:n], fakes, seed=self.cfg.seed).items()}
        if self.net is not None:
            fake_feats = features(self.net, fakes)
            out.update({"metric/kid": kid(self.real_feats, fake_feats, seed=self.cfg.seed),
                        "metric/fid": fid(self.real_feats, fake_feats)})
        return out


def finetune(cfg: FinetuneConfig, resume: str | os.PathLike | None = None, stop_at: int | None = None) -> FinetuneResult:
    """Fine-tune cfg.base on cfg.images, or continue the run folder `resume` exactly where it stopped.

    Under torchrun (WORLD_SIZE > 1) each process takes batch / WORLD_SIZE samples of every step and
    only rank 0 writes. `stop_at` ends this session after that step with a checkpoint. Raises
    Interrupted (exit code 130) after a stop by signal, the state saved.
    """
    if resume is not None:
        check_resumable(cfg, resume, RESUMABLE)
    if cfg.base is None or cfg.images is None:
        raise UsageError("--base and --images are needed to start a run", hint="or continue one with --resume RUN")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if cfg.batch % world:
        raise UsageError(f"--batch {cfg.batch} does not split over {world} processes", hint="use a multiple of them")
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, per = (dist.get_rank() if world > 1 else 0), cfg.batch // world
    stopper, run, bar = StopRequest(), None, None
    try:
        base = load_generator(cfg.base, device=device)
        reals_all = load_images(cfg.images, base.img_resolution)
        recipe = Recipe.resolve(cfg, base.img_resolution, per)
        G = copy.deepcopy(base).requires_grad_(True)
        G_ema = copy.deepcopy(base)
        D = load_discriminator(cfg.base, fallback=True, seed=cfg.seed, device=device)
        if D.img_resolution != G.img_resolution:
            raise FinetuneError(f"its discriminator takes {D.img_resolution} px, its generator makes "
                                f"{G.img_resolution} px", cfg.base)
        if D.b4.mbstd is not None:
            D.b4.mbstd.group_size = recipe.mbstd_group
        if cfg.freeze_d > len(D.block_resolutions):
            raise UsageError(f"--freeze-d {cfg.freeze_d}: the discriminator has {len(D.block_resolutions)} blocks "
                             f"(b{D.img_resolution}..b8)", cfg.base, hint="freeze fewer blocks")
        frozen = D.freeze(blocks=cfg.freeze_d) if cfg.freeze_d else []
        G_params = list(G.parameters())
        D_params = [p for p in D.parameters() if p.requires_grad]
        opt_G = _adam(G_params, recipe.lr, cfg.betas, cfg.pl_interval if cfg.pl_weight > 0 else None)
        opt_D = _adam(D_params, recipe.lr, cfg.betas, cfg.r1_interval if recipe.gamma > 0 else None)
        ada = AdaController(cfg.target, cfg.batch, cfg.ada_interval, cfg.ada_kimg)
        pl_mean = torch.zeros([], device=device)
        scalers = {"scaler_G": grad_scaler(cfg.precision, device), "scaler_D": grad_scaler(cfg.precision, device)}
        state = None
        if resume is not None:
            state = torch.load(Path(resume) / "checkpoints" / "latest.pt", map_location=device, weights_only=True)
            for target, key in ((G, "G"), (G_ema, "G_ema"), (D, "D"), (opt_G, "opt_G"), (opt_D, "opt_D"),
                                (ada, "ada")):
                target.load_state_dict(state[key])
            pl_mean = state["pl_mean"].to(device)
            for key, scaler in scalers.items():
                if scaler is not None:
                    scaler.load_state_dict(state[key])
            if len(state["rng"]) == world:
                set_rng_state(state["rng"][rank])
        start = state["step"] if state else 0
        stop = recipe.total_steps if stop_at is None else min(stop_at, recipe.total_steps)
        order = StepBatches(len(reals_all), cfg.seed, per, rank, world, 0, 0)

        metrics = FolderMetrics(reals_all, cfg, device) if rank == 0 else None
        if rank == 0 and cfg.inception is None:
            note("KID and FID are off: give --inception PATH (pytorch-fid's pt_inception-2015-12-05-*.pth) "
                 "to log them beside SWD", "note")
        if rank == 0:
            run = RunFolder(Path(resume)) if resume is not None else RunFolder.create(
                Path(cfg.output), f"finetune-{G.img_resolution}")
            if state is None:
                run.write_config({"config": cfg.to_json(), "recipe": jsonable(recipe), "world_size": world,
                                  "device": str(device), "images": len(reals_all), "frozen_d": frozen,
                                  "base_sha256": file_sha256(cfg.base), "torch": torch.__version__})
            run.log(f"{'resuming' if state else 'starting'} {run.path} at kimg {start * cfg.batch / 1000:.3f} of "
                    f"{cfg.kimg}: {len(reals_all)} images at {G.img_resolution} px, batch {cfg.batch} over {world} "
                    f"process(es) on {device}, gamma {recipe.gamma:g}, lr {recipe.lr:g}, ema {recipe.ema_kimg:g} kimg, "
                    f"augment {cfg.augment}, D frozen: {cfg.freeze_d} block(s)")
            if state is None:
                run.stats({"step": 0, "kimg": 0.0, **metrics(G_ema)})
            bar = progress("kimg")
            task = bar.add_task("fine-tuning", total=recipe.total_steps * cfg.batch / 1000,
                                completed=start * cfg.batch / 1000)
            bar.start()
        meta = {"finetuned_from": str(cfg.base), "network": "G_ema"}

        def checkpoint(done: int, snapshot: bool) -> None:
            rng = [rng_state()] if world == 1 else [None] * world   # every rank's: each resumes its own
            if world > 1:
                dist.all_gather_object(rng, rng_state())
            if run is None:
                return
            kimg = done * cfg.batch / 1000
            if snapshot:
                name = f"kimg-{round(kimg):06d}" if kimg == round(kimg) else f"kimg-{kimg:010.3f}"
                save_generator(G_ema, run.path / "snapshots" / f"{name}.safetensors", {**meta, "kimg": kimg})
                write_image(run.path / "snapshots" / f"{name}.png",
                            sample_grid([base, G_ema], list(range(GRID_SEEDS)), 1.0, device))
                run.stats({"step": done, "kimg": kimg, **metrics(G_ema)})
            with atomic_path(run.path / "checkpoints" / "latest.pt") as tmp:
                torch.save({"step": done, "world_size": world, "G": G.state_dict(), "G_ema": G_ema.state_dict(),
                            "D": D.state_dict(), "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                            "ada": ada.state_dict(), "pl_mean": pl_mean, "rng": rng,
                            **{k: s.state_dict() for k, s in scalers.items() if s is not None}}, tmp)
            save_generator(G_ema, run.path / "finetuned.safetensors", {**meta, "kimg": kimg, "run": run.path.name})

        snap_nimg = round(cfg.snap_kimg * 1000)
        done, saved, sums, count, interrupted = start, start, {}, 0, False
        clock = began = time.perf_counter()
        for step in range(start, stop):
            mine = [step * cfg.batch + rank + k * world for k in range(per)]   # this rank's global sample indices
            reals = reals_all[[order.key(j)[1] for j in mine]].to(device)
            p = ada.p if cfg.augment == "ada" else 0.0
            parts = {}

            # Gmain: G against a D that only passes gradients through.
            D.requires_grad_(False)
            gens = sample_generators(cfg.seed, step, mine, "G")
            with autocast(cfg.precision, device):
                fake, ws = render(G, gens, cfg.style_mixing, device)
                logits = D(augment(fake, p, gens))
            loss = F.softplus(-logits.float()).mean()
            _phase(opt_G, G_params, loss, world, scalers["scaler_G"])
            parts["loss/G"] = loss.detach()
            with torch.no_grad():   # NVlabs tracks the mean w for truncation
                w_mean = _all_mean(ws[:, 0].detach().float().mean(0), world)
                G.mapping.w_avg.copy_(w_mean.lerp(G.mapping.w_avg, 0.995))

            # Greg: path-length regularisation on half a batch, every pl_interval steps.
            if cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
                pl_n = max(per // 2, 1)
                gens = sample_generators(cfg.seed, step, mine[:pl_n], "PL")
                fake, ws = render(G, gens, cfg.style_mixing, device)
                noise = torch.stack([torch.randn(fake.shape[1:], generator=g) for g in gens]).to(device)
                noise /= math.sqrt(fake.shape[2] * fake.shape[3])
                (grad,) = torch.autograd.grad((fake * noise).sum(), ws, create_graph=True)
                lengths = grad.square().sum(2).mean(1).sqrt()
                pl_mean = pl_mean.lerp(_all_mean(lengths.mean().detach(), world), 0.01)
                penalty = (lengths - pl_mean).square()
                _phase(opt_G, G_params, (penalty * cfg.pl_weight).mean() * cfg.pl_interval + fake[:, 0, 0, 0].mean() * 0,
                       world)
                parts["loss/pl"] = penalty.mean().detach()
            G.requires_grad_(False)

            # Dmain: reals against fakes, both augmented; the signs on reals drive ADA.
            for q in D_params:
                q.requires_grad_(True)
            gens = sample_generators(cfg.seed, step, mine, "D")
            with autocast(cfg.precision, device):
                with torch.no_grad():
                    fake, _ = render(G, gens, cfg.style_mixing, device)
                logits_fake = D(augment(fake, p, gens)).float()
                logits_real = D(augment(reals, p, sample_generators(cfg.seed, step, mine, "real"))).float()
            ada.accumulate(logits_real)
            loss = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
            _phase(opt_D, D_params, loss, world, scalers["scaler_D"])
            parts.update({"loss/D": loss.detach(), "D/real": logits_real.detach().mean(),
                          "D/fake": logits_fake.detach().mean()})

            # Dreg: R1 through the augmentation, every r1_interval steps.
            if recipe.gamma > 0 and step % cfg.r1_interval == 0:
                gens = sample_generators(cfg.seed, step, mine, "R1")
                r1 = r1_penalty(lambda x, c=None: D(augment(x, p, gens)), reals)
                _phase(opt_D, D_params, r1.mean() * (recipe.gamma / 2) * cfg.r1_interval, world)
                parts["loss/r1"] = r1.mean().detach()
            G.requires_grad_(True)

            # G_ema, with NVlabs' half-life in images and its ramp-up.
            ema_nimg = recipe.ema_kimg * 1000
            if cfg.ema_rampup > 0:
                ema_nimg = min(ema_nimg, step * cfg.batch * cfg.ema_rampup)
            update_ema(G_ema, G, 0.5 ** (cfg.batch / max(ema_nimg, 1e-8)))
            if cfg.augment == "ada":
                ada.update(lambda signs: _all_sum(signs, world))

            done, count = step + 1, count + 1
            for key, value in parts.items():   # the regularisers' means are over the steps that ran them
                sums.setdefault(key, []).append(value.float())
            if done % cfg.log_every == 0 or done == stop:
                keys = sorted(sums)
                means = _all_mean(torch.stack([torch.stack(sums[k]).mean() for k in keys]), world)
                now = time.perf_counter()
                if run is not None:
                    run.stats({"step": done, "kimg": done * cfg.batch / 1000, "augment/p": ada.p,
                               "kimg_per_s": count * cfg.batch / 1000 / (now - clock),
                               **dict(zip(keys, means.tolist()))})
                sums, count, clock = {}, 0, now
            snapshot = (done * cfg.batch) // snap_nimg > (step * cfg.batch) // snap_nimg or done == recipe.total_steps
            if snapshot:
                checkpoint(done, True)
                saved = done
            if bar is not None:
                bar.update(task, completed=done * cfg.batch / 1000,
                           description=f"fine-tuning, kimg {done * cfg.batch / 1000:g}/{cfg.kimg:g}")
            if stopper.agreed(device):
                interrupted = True
                break

        if saved != done or done == start:
            checkpoint(done, False)
        if run is not None:
            bar.stop()
            finished = done >= recipe.total_steps
            run.log(f"{'finished' if finished else 'stopped'} at kimg {done * cfg.batch / 1000:.3f} of {cfg.kimg} "
                    f"after {(time.perf_counter() - began) / 60:.1f} min; run folder: {run.path}")
            run.log(f"  blend: toonify-fast distill blend --base {cfg.base} --toon {run.path / 'finetuned.safetensors'} "
                    f"-o blended.safetensors" if finished else
                    f"  continue: toonify-fast distill finetune --resume {run.path}")
        if interrupted:
            raise Interrupted(f"stopped by a signal at kimg {done * cfg.batch / 1000:.3f}; the state is saved",
                              run.path if run else None,
                              hint=f"continue with: toonify-fast distill finetune --resume {run.path if run else 'RUN'}")
        return FinetuneResult(run.path if run else None, done, G, G_ema, D)
    finally:
        if bar is not None:
            bar.stop()
        stopper.close()
        if run is not None:
            run.tb.close()
        if own_group:
            dist.destroy_process_group()
