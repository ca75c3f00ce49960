"""How close a trained student gets to its teacher on held-out pairs: PSNR and SSIM of the
student's output against the blended teacher's toon, next to the identity baseline (the input
photo itself as the answer), and LPIPS when its weights are on this machine.

    toonify-fast distill eval --student runs/00003-lite-256/student-ema.pt --pairs pairs/val -o report.json

A conditioned student (trained on pairs with styles) is scored on each pair at that pair's style
and strength, and the report adds the scores per (style, strength), strengths rounded to
STRENGTH_BIN (the pairs' strengths are drawn from a continuous range).

Images are compared as a user gets them: outputs rounded to uint8 (runtime.images.nchw_to_hwc),
then scaled to [0, 1]. Scores are means over pairs of the per-image values.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.data import PairedDataset
from distill.device import device_setting, resolve_device
from distill.runs import load_student
from runtime.common import UsageError, console, progress, write_json_atomic
from runtime.images import nchw_to_hwc
from runtime.options import setting

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LPIPS_ALEXNET = "alexnet-owt-7be5be79.pth"
STRENGTH_BIN = 0.1                           # strengths are grouped to this step in the per-condition scores   # torchvision's file name for the backbone LPIPS uses


@dataclass(frozen=True)
class EvalConfig:
    student: Path = setting(help="Student weights from `distill train` (RUN/student-ema.pt).")
    pairs: Path = setting(help="Held-out pair folder (e.g. pairs/val).")
    output: Path | None = setting(None, "Write the JSON report here (default: print it to stdout).")
    res: int | None = setting(None, "Evaluation resolution (default: the student's training one).")
    device: str = device_setting()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB: x, y [N, C, H, W] in [0, 1] -> [N] float64.

    10 * log10(1 / MSE) over all pixels and channels; identical images give inf.
    """
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """[size] float64 taps of a Gaussian normalised to sum 1; the 2-D window is its outer product."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004): x, y [N, C, H, W] in [0, 1] -> [N] float64.

    The standard definition: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03 for
    data range 1, local statistics at every position where the window fits inside the image
    (no padding), the SSIM map averaged over positions and channels. H, W >= 11.
    """
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    n, c = x.shape[:2]
    g = _gaussian_window().to(x.device)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        # Separable valid filtering of every channel on its own: rows, then columns.
        t = t.reshape(n * c, 1, *t.shape[-2:])
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    x, y = x.double(), y.double()
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.square()
    var_y = local_mean(y * y) - mu_y.square()
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(n, -1).mean(1)


def lpips_model(device: torch.device):
    """(LPIPS AlexNet model, None) when the lpips package and its backbone weights are local, else (None, why).

    The model maps two [N, 3, H, W] batches in [-1, 1] to their distances, [N, 1, 1, 1] (0 = identical).
    Nothing is downloaded: without the cached torchvision AlexNet file LPIPS is skipped.
    """
    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed (pip install lpips)"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_ALEXNET
    if not weights.is_file():
        return None, f"no AlexNet weights at {weights} (LPIPS would download them; this never does)"
    import lpips
    return lpips.LPIPS(net="alex", verbose=False).to(device).eval(), None


def unit(x: torch.Tensor | np.ndarray, rounded: bool = False) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] (a tensor or an array) -> float64 in [0, 1], the range the scores
    take; rounded: first to the uint8 image a user gets (runtime.images.nchw_to_hwc)."""
    if rounded:
        x = x.float().cpu().numpy() if torch.is_tensor(x) else x
        return torch.from_numpy(nchw_to_hwc(x)).permute(0, 3, 1, 2).double() / 255
    return ((x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))).double() + 1) / 2


@torch.no_grad()
def evaluate_student(model: nn.Module, pairs_dir: str | os.PathLike, res: int, batch_size: int = 16,
                     device: str | torch.device = "cpu") -> dict:
    """Score `model` ([N, 3, res, res] in [-1, 1] -> same) on every pair of `pairs_dir`.

    Pairs are fitted to res x res without augmentation (distill.data). Returns
    {"pairs", "count", "res", "student": {"psnr", "ssim"[, "lpips"]}, "identity": {...}, "lpips": {...}}
    where identity scores the input photo itself against the toon. On a pair set with styles the
    model is run as model(real, style, strength) and "conditions" lists
    {"style", "strength", "count", "student": {...}, "identity": {...}} per (style, strength bin).
    """
    dataset = PairedDataset(pairs_dir, res, augment=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    lpips_net, skipped = lpips_model(torch.device(device))
    model = model.to(device).eval()
    scores = {name: {"psnr": [], "ssim": [], "lpips": []} for name in ("student", "identity")}
    keys = []     # each pair's (style, strength bin) on a set with styles
    with progress("pairs", transient=True) as bar:
        task = bar.add_task("evaluating", total=len(dataset))
        for real, toon, *condition in loader:
            out = model(real.to(device), *(c.to(device) for c in condition))
            if condition:
                keys += [(dataset.styles[k], round(round(float(s) / STRENGTH_BIN) * STRENGTH_BIN, 6))
                         for k, s in zip(*(c.tolist() for c in condition))]
            target = unit(toon, rounded=True)
            for name, guess in (("student", out), ("identity", real)):
                guess = unit(guess, rounded=True)
                scores[name]["psnr"].append(psnr(guess, target))
                scores[name]["ssim"].append(ssim(guess, target))
                if lpips_net is not None:
                    # LPIPS takes [-1, 1]; the rounded images, like the other scores.
                    d = lpips_net(guess.float().to(device) * 2 - 1, target.float().to(device) * 2 - 1)
                    scores[name]["lpips"].append(d.flatten().double().cpu())
            bar.advance(task, len(real))
    report = {"pairs": str(pairs_dir), "count": len(dataset), "res": res,
              "lpips": {"computed": False, "reason": skipped} if skipped else {"computed": True, "net": "alex"}}
    for name, values in scores.items():
        report[name] = {metric: float(torch.cat(v).mean()) for metric, v in values.items() if v}
    if keys:
        flat = {name: {metric: torch.cat(v) for metric, v in values.items() if v} for name, values in scores.items()}
        report["conditions"] = []
        for style, strength in sorted(set(keys), key=lambda k: (dataset.styles.index(k[0]), k[1])):
            mask = torch.tensor([k == (style, strength) for k in keys])
            report["conditions"].append({"style": style, "strength": strength, "count": int(mask.sum()), **{
                name: {metric: float(v[mask].mean()) for metric, v in values.items()} for name, values in flat.items()}})
    return report


def evaluate_file(cfg: EvalConfig) -> dict:
    """Load a student file (distill.runs.load_student), evaluate it (res defaults to its training
    size) and write the report to cfg.output when set; returns the report."""
    if cfg.output is not None and cfg.output.resolve() == cfg.student.resolve():
        raise UsageError("the report would overwrite the student", cfg.output, hint="choose another -o")
    model, info = load_student(cfg.student)
    report = evaluate_student(model, cfg.pairs, cfg.res or info.resolution, device=resolve_device(cfg.device))
    report.update(student_file=str(cfg.student), step=info.step, preset=info.preset)
    for name in ("student", "identity"):
        scores = report[name]
        console.print(f"{name:>8}: PSNR {scores['psnr']:6.2f} dB   SSIM {scores['ssim']:.4f}"
                      + (f"   LPIPS {scores['lpips']:.4f}" if "lpips" in scores else ""))
    for c in report.get("conditions", ()):
        console.print(f"{c['style']:>12} at {c['strength']:.1f}: PSNR {c['student']['psnr']:6.2f} dB   "
                      f"SSIM {c['student']['ssim']:.4f}   (identity {c['identity']['psnr']:6.2f} dB, {c['count']} pairs)")
    if not report["lpips"]["computed"]:
        console.print(f"LPIPS skipped: {report['lpips']['reason']}")
    if cfg.output is not None:
        write_json_atomic(cfg.output, report)
    return report
