"""The original Toonify path, kept as the reference the student is judged against: project a photo
into the base generator's latent space, then render that latent with the blended generator.

    toonify-fast distill project --base ffhq.pkl --blended blended.safetensors photo.jpg -o out/

Projection is the StyleGAN2 projector recipe (NVlabs stylegan2-ada-pytorch `projector.py`): w
starts at the mapping's w_avg; Adam with a learning rate that ramps up over the first 5% of the
steps and down (cosine) over the last 25%; Gaussian noise on w that decays to zero by 75% of the
steps; the per-layer noise maps are optimised too, held near white noise by a penalty on their
autocorrelation at every scale of a pyramid and renormalised after each step. The loss is an
LPIPS-style distance between VGG16 features (unit-normalised channels, equal layer weights: the
learned LPIPS weights are not on this machine) plus a pixel MSE. `compare` then runs an exported
student on the same aligned crops and scores it against the projection+blend toon.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.checkpoint import load_generator
from distill.device import device_setting, resolve_device
from distill.evaluate import lpips_model, psnr, ssim, unit
from distill.losses import vgg_features
from distill.stylegan2 import LATENT_SPACE, Generator, architecture_difference
from runtime.common import ToonifyError, UsageError, atomic_path, console, jsonable, progress, write_json_atomic
from runtime.faces import FaceAligner
from runtime.images import ImageError, hwc_to_nchw, image_grid, nchw_to_hwc, read_image, resize, write_image
from runtime.options import setting
from runtime.photos import expand_inputs, face_crops

# The projector's schedule and weights (NVlabs defaults).
INITIAL_LR = 0.1
LR_RAMPUP, LR_RAMPDOWN = 0.05, 0.25       # fractions of the run
W_NOISE_FACTOR, W_NOISE_RAMP = 0.05, 0.75  # w noise: this times w's spread, gone after this fraction
NOISE_REG_WEIGHT = 1e5
W_STD_SAMPLES = 10_000
VGG_MAX_SIDE = 256                          # VGG sees at most 256x256, as in the projector
# The LPIPS taps of VGG16: the last ReLU of each of the five blocks.
LPIPS_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# The projector has no pixel term; ours keeps colours, which unit-normalised features are blind to.
# Weight 1: MSE of [-1, 1] images and the feature distance (at most 4 per tap) are both of order
# 0.1-1 for a poor fit, so neither term drowns the other. A judgement, not a tuned value.
PIXEL_WEIGHT = 1.0


@dataclass(frozen=True)
class ProjectConfig:
    images: tuple[Path, ...] = setting(
        help="Photos, folders or glob patterns; the largest face of each is aligned as the runtime does "
             "(aligned face crops with --no-align).", metavar="IMAGE", cli=list[str],
        parse=lambda args: tuple(expand_inputs(args)))
    base: Path = setting(help="Base (FFHQ) checkpoint: the photo is projected into its latent space.")
    blended: Path = setting(help="Blended checkpoint from `distill blend`: renders the latent as a toon.")
    output: Path = setting(help="Folder for the results (made if missing): NAME_target/_projected/_toon.png, "
                                "NAME_w.npy, project.json.")
    steps: int = setting(500, "Optimisation steps per image.", min=1)
    wplus: bool = setting(False, "Optimise one w per layer (w+, [num_ws, w_dim]) instead of a single w.")
    vgg: bool = setting(True, "Perceptual loss on VGG16 features (--no-vgg: pixel loss only, when no VGG16 "
                              "weights exist).")
    vgg_weights: Path | None = setting(None, "torchvision's VGG16 state dict (vgg16-397923af.pth) for the "
                                             "perceptual loss (default: the torch hub cache).")
    align: bool = setting(True, "Find and align the face (--no-align: each image is already an aligned face: "
                                "only resize it).")
    device: str = device_setting()
    seed: int = setting(0, "Seed of the initial noise maps and the latent noise.")

    def __post_init__(self):
        if not self.vgg and self.vgg_weights is not None:
            raise UsageError("--no-vgg and --vgg-weights contradict each other", hint="pass one of them")


@dataclass(frozen=True)
class CompareConfig:
    student: Path                      # an exported student (.onnx)
    projection: ProjectConfig          # the teacher side; its output folder gets the comparison too


class ProjectError(ToonifyError):
    pass


class FeatureDistance(nn.Module):
    """LPIPS-style distance on VGG16 features: for each tap, channels unit-normalised, squared
    differences summed over channels and averaged over positions; summed over taps.

    features(x): x [1, 3, H, W] in [-1, 1] -> the normalised taps; forward(x, target_features) -> scalar.
    Inputs larger than 256 px are area-downsampled first.
    """

    def __init__(self, weights_path: Path | None):
        super().__init__()
        self.vgg = vgg_features("vgg16", weights_path, taps=LPIPS_TAPS)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] > VGG_MAX_SIDE:
            x = F.interpolate(x, size=(VGG_MAX_SIDE, VGG_MAX_SIDE), mode="area")
        return [f * (f.square().sum(1, keepdim=True) + 1e-10).rsqrt() for f in self.vgg(x)]

    def forward(self, x: torch.Tensor, target_features: list[torch.Tensor]) -> torch.Tensor:
        return sum((f - t).square().sum(1).mean() for f, t in zip(self.features(x), target_features))


def noise_maps(G: Generator) -> dict[str, torch.Tensor]:
    """G.synthesis' stored noise, name ('b64.conv0.noise_const') -> [R, R]."""
    return {name: buf for name, buf in G.synthesis.named_buffers() if name.endswith("noise_const")}


def _set_noise(G: Generator, noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Put `noise` in place of G's noise_const buffers; returns the ones it replaced."""
    modules, old = dict(G.synthesis.named_modules()), {}
    for name, value in noise.items():
        layer = modules[name.rsplit(".", 1)[0]]
        old[name], layer.noise_const = layer.noise_const, value
    return old


def render(G: Generator, ws: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
    """ws [1, num_ws, w_dim] with these noise maps -> [1, 3, R, R] in about [-1, 1]; G is left as it was."""
    old = _set_noise(G, noise)
    try:
        return G.synthesis(ws, noise_mode="const")
    finally:
        _set_noise(G, old)


def _noise_penalty(noise: dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared autocorrelation (one pixel right and down) of each map, at every pyramid scale down to 8 px."""
    total = 0.0
    for v in noise.values():
        x = v[None, None]
        while True:
            total = total + (x * x.roll(1, dims=3)).mean() ** 2 + (x * x.roll(1, dims=2)).mean() ** 2
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


def _learning_rate(t: float) -> float:
    """The projector's schedule at progress t in [0, 1): linear ramp up, cosine ramp down."""
    down = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    return INITIAL_LR * (0.5 - 0.5 * math.cos(down * math.pi)) * min(1.0, t / LR_RAMPUP)


@torch.no_grad()
def _w_std(G: Generator, device: torch.device) -> float:
    """Spread of w: the root of the summed per-coordinate variance over W_STD_SAMPLES mapped latents."""
    z = torch.randn([W_STD_SAMPLES, G.z_dim], generator=torch.Generator().manual_seed(123)).to(device)
    w = G.mapping(z, None)[:, 0]
    return float((w - w.mean(0)).square().sum(1).mean().sqrt())


def project_image(G: Generator, target: torch.Tensor, cfg: ProjectConfig, perceptual: FeatureDistance | None = None,
                  label: str = "projecting") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Find the latent and noise maps with which G renders `target` [1, 3, R, R] in [-1, 1].

    Returns (ws [1, num_ws, w_dim], noise {name: [R_l, R_l]}), detached; with cfg.wplus False all
    num_ws rows are the same w. Loss: perceptual(image, target) (when given) + PIXEL_WEIGHT * MSE
    + NOISE_REG_WEIGHT * the noise penalty. G's own buffers are not changed. Shows a progress bar.
    """
    if target.shape != (1, G.img_channels, G.img_resolution, G.img_resolution):
        raise ValueError(f"target must be [1, {G.img_channels}, {G.img_resolution}, {G.img_resolution}], "
                         f"got {list(target.shape)}")
    device = target.device
    w_std = _w_std(G, device)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    rows = G.num_ws if cfg.wplus else 1
    w_opt = G.mapping.w_avg.detach().to(device).reshape(1, 1, -1).repeat(1, rows, 1).requires_grad_(True)
    # The projector starts the noise maps from fresh white noise, not the stored constants.
    noise = {name: torch.randn(buf.shape, generator=gen, device=device).requires_grad_(True)
             for name, buf in noise_maps(G).items()}
    opt = torch.optim.Adam([w_opt, *noise.values()], betas=(0.9, 0.999), lr=INITIAL_LR)
    target_features = perceptual.features(target) if perceptual is not None else None
    old = _set_noise(G, noise)
    try:
        with progress("steps", transient=True) as bar:
            task = bar.add_task(label, total=cfg.steps)
            for step in range(cfg.steps):
                t = step / cfg.steps
                for group in opt.param_groups:
                    group["lr"] = _learning_rate(t)
                w_noise = w_std * W_NOISE_FACTOR * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2
                w = w_opt + torch.randn(w_opt.shape, generator=gen, device=device) * w_noise
                image = G.synthesis(w.expand(1, G.num_ws, -1), noise_mode="const")
                loss = PIXEL_WEIGHT * F.mse_loss(image, target) + NOISE_REG_WEIGHT * _noise_penalty(noise)
                if perceptual is not None:
                    loss = loss + perceptual(image, target_features)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for v in noise.values():
                        v.sub_(v.mean()).mul_(v.square().mean().rsqrt())
                bar.advance(task)
    finally:
        _set_noise(G, old)
    return w_opt.detach().expand(1, G.num_ws, -1).clone(), {k: v.detach() for k, v in noise.items()}


def _check_compatible(base: Generator, blended: Generator, cfg: ProjectConfig) -> None:
    """The blended model must take the base model's latent and noise maps as they are."""
    hint = "pass the base model the blend was made from, and the blend"
    why = architecture_difference(base, blended, LATENT_SPACE, ("the base model", "this one"))
    if why is not None:
        raise ProjectError(f"{why}: it cannot render the base model's latents", cfg.blended, hint)
    if {k: v.shape for k, v in noise_maps(base).items()} != {k: v.shape for k, v in noise_maps(blended).items()}:
        raise ProjectError("its noise maps differ from the base model's", cfg.blended, hint)
    if base.c_dim:
        raise ProjectError("a conditional generator (c_dim > 0) cannot be projected into without a label",
                           cfg.base, hint="use an unconditional StyleGAN2 (FFHQ)")


def _u8(x: torch.Tensor) -> np.ndarray:
    """[1, 3, R, R] in [-1, 1] -> [R, R, 3] uint8 as written to disk."""
    return nchw_to_hwc(x.detach().cpu().numpy())[0]


NO_FACE = "no face found (pass --no-align if it is already an aligned face)"


def _aligned_crops(cfg: ProjectConfig, res: int) -> dict[Path, np.ndarray | str]:
    """Each image -> its aligned [res, res, 3] uint8 crop (largest face), or why it has none.

    All are read before any long work starts; unreadable images and images without a face are
    reported here and skipped later.
    """
    stems = [p.stem for p in cfg.images]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise UsageError(f"several inputs are named {clash[0]}: their outputs would overwrite each other",
                         cfg.output, hint="rename them or project them into separate folders")
    aligner = FaceAligner() if cfg.align else None
    crops: dict[Path, np.ndarray | str] = {}
    for path in cfg.images:
        try:
            _, found = face_crops(aligner, read_image(path)[0], res, max_faces=1)
            crops[path] = found[0] if found else NO_FACE
        except ImageError as e:
            crops[path] = e.reason
        if isinstance(crops[path], str):
            console.print(f"[yellow]skipped[/yellow] {path}: {crops[path]}")
    return crops


def project_files(cfg: ProjectConfig) -> list[dict]:
    """Project each of cfg.images with the base model and render the result with the blended one.

    Writes, atomically, per image in cfg.output: NAME_target.png (the aligned crop, R x R),
    NAME_projected.png (the base model's reconstruction), NAME_toon.png (the blended model's render
    of the same latent and noise), NAME_w.npy (float32 [1, num_ws, w_dim] with wplus, else
    [1, w_dim]); then project.json. Returns one dict per image, in order: {image, target, projected,
    toon, w, psnr (the reconstruction's against the crop, dB), seconds}, or {image, skipped: reason}.
    Raises MissingWeightsError, before loading anything else, when cfg.vgg and no VGG16 weights are found.
    """
    device = resolve_device(cfg.device)
    if cfg.vgg:
        perceptual = FeatureDistance(cfg.vgg_weights).to(device)
    else:
        perceptual = None
        console.print("perceptual loss off (--no-vgg): projecting with the pixel loss only, which "
                      "reconstructs faces less faithfully than with VGG16 features")
    base, blended = load_generator(cfg.base, device=device), load_generator(cfg.blended, device=device)
    _check_compatible(base, blended, cfg)
    crops = _aligned_crops(cfg, base.img_resolution)
    todo = [p for p, c in crops.items() if not isinstance(c, str)]
    results = []
    for path, crop in crops.items():
        if isinstance(crop, str):
            results.append({"image": str(path), "skipped": crop})
            continue
        start = time.perf_counter()
        ws, noise = project_image(base, torch.from_numpy(hwc_to_nchw(crop)).to(device), cfg, perceptual,
                                  label=f"{todo.index(path) + 1}/{len(todo)} {path.name}")
        with torch.no_grad():
            projected, toon = _u8(render(base, ws, noise)), _u8(render(blended, ws, noise))
        seconds = time.perf_counter() - start
        names = {k: cfg.output / f"{path.stem}_{k}.png" for k in ("target", "projected", "toon")}
        for key, image in zip(names, (crop, projected, toon)):
            write_image(names[key], image)
        with atomic_path(cfg.output / f"{path.stem}_w.npy") as tmp:
            np.save(tmp, (ws if cfg.wplus else ws[:, 0]).cpu().numpy().astype(np.float32))
        score = float(psnr(unit(hwc_to_nchw(projected)), unit(hwc_to_nchw(crop)))[0])
        console.print(f"{path.name}: reconstruction PSNR {score:.2f} dB in {seconds:.1f} s "
                      f"({cfg.steps / seconds:.1f} steps/s)")
        results.append({"image": str(path), **{k: str(v) for k, v in names.items()},
                        "w": str(cfg.output / f"{path.stem}_w.npy"), "psnr": score, "seconds": seconds})
    write_json_atomic(cfg.output / "project.json", {"config": jsonable(cfg), "loss": _loss_name(cfg),
                                                 "results": results})
    return results


def _loss_name(cfg: ProjectConfig) -> str:
    return "VGG16 LPIPS-style feature distance + pixel MSE" if cfg.vgg else "pixel MSE (--no-vgg)"


COMPARE_COLUMNS = ("photo", "reconstruction", "teacher (projection + blend)", "student")


def compare_files(cfg: CompareConfig) -> dict:
    """The student next to projection+blend on real photos.

    Projects every image (project_files, with its outputs), then runs the exported student through
    runtime.Toonifier on the aligned crop resized to the model's resolution S. Writes per image
    NAME_compare.png, four S x S columns under labels (COMPARE_COLUMNS): aligned input |
    reconstruction | projection+blend toon | student
    (the teacher's images Lanczos-resized to S), then compare.json. Returns that report:
    {"results": [{image, side_by_side, psnr, ssim[, lpips], projection_seconds, student_ms,
    reconstruction_psnr} or {image, skipped}], "mean": {psnr, ssim[, lpips]}, ...}, scores of the
    student against the projection+blend toon at S x S (LPIPS when its weights are on this machine).
    """
    from runtime.engine import Toonifier
    proj = cfg.projection
    # The student runs where the teacher does: CPU (quietly) when projecting on CPU.
    toonifier = Toonifier(cfg.student, provider="cpu" if resolve_device(proj.device).type == "cpu" else "auto")
    size = toonifier.resolution
    lpips_net, lpips_skipped = lpips_model(torch.device("cpu"))
    results = []
    for r in project_files(proj):
        if "skipped" in r:
            results.append(r)
            continue
        crop, recon, toon = (resize(read_image(r[k])[0], size, size) for k in ("target", "projected", "toon"))
        start = time.perf_counter()
        student = toonifier.run(crop[None])[0]
        student_ms = 1000 * (time.perf_counter() - start)
        sheet = write_image(proj.output / f"{Path(r['image']).stem}_compare.png",
                            image_grid([[crop, recon, toon, student]], col_labels=list(COMPARE_COLUMNS)))
        pair = unit(hwc_to_nchw(student)), unit(hwc_to_nchw(toon))
        scores = {"psnr": float(psnr(*pair)[0]), "ssim": float(ssim(*pair)[0])}
        if lpips_net is not None:
            with torch.no_grad():
                scores["lpips"] = float(lpips_net(*(torch.from_numpy(hwc_to_nchw(u8)) for u8 in (student, toon))))
        results.append({"image": r["image"], "side_by_side": str(sheet), **scores, "projection_seconds": r["seconds"],
                        "student_ms": student_ms, "reconstruction_psnr": r["psnr"]})
        console.print(f"{Path(r['image']).name}: student vs projection+blend PSNR {scores['psnr']:.2f} dB, "
                      f"SSIM {scores['ssim']:.4f}; {r['seconds']:.1f} s against {student_ms:.1f} ms")
    scored = [r for r in results if "skipped" not in r]
    report = {"config": jsonable(cfg), "student_resolution": size, "loss": _loss_name(proj),
              "lpips": {"computed": True, "net": "alex"} if lpips_net is not None
              else {"computed": False, "reason": lpips_skipped},
              "mean": {m: float(np.mean([r[m] for r in scored])) for m in ("psnr", "ssim", "lpips")
                       if scored and m in scored[0]},
              "results": results}
    write_json_atomic(proj.output / "compare.json", report)
    return report
