"""Adaptive discriminator augmentation (Karras et al. 2020) in plain torch: the augmentations D sees,
and the controller that sets their probability p from D's outputs on reals.

    x = augment(images, p, generators)     # [N, 3, R, R] in [-1, 1] -> the same, differentiable
    ada = AdaController(target=0.6, batch=4); ada.accumulate(real_logits); p = ada.update(reduce)

Each transform is applied to each sample with probability p, as NVlabs' AugmentPipe 'bgc' does:
x-flip, integer translation (up to 1/8 of the side), isotropic scaling (log2-normal, std 0.2) and
rotation (uniform, any angle), then brightness (normal, std 0.2), contrast (log2-normal, std 0.5),
hue rotation about the luma axis (uniform, any angle) and saturation (log2-normal, std 1). The
geometric part is one affine matrix per sample applied with affine_grid / grid_sample (bilinear,
reflection padding); the colour part is one 4x4 matrix per sample, as NVlabs composes them.
NVlabs' 90-degree rotations, anisotropic scaling, fractional translation, luma flip and its
wavelet-filtered upsampling are left out, and the rotation is applied once with probability p
(NVlabs rotates twice, each time with probability 1 - sqrt(1 - p)). Samples whose draws leave them untouched are returned
as they came, bit for bit, so p = 0 is the identity exactly. Every random number is drawn from the
given generator(s) in a fixed order, whatever p is: sample i's transform depends only on its own
generator, not on the batch it is in.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

XINT_MAX, SCALE_STD, BRIGHTNESS_STD, CONTRAST_STD, SATURATION_STD = 0.125, 0.2, 0.2, 0.5, 1.0
DRAWS = 16   # uniform and normal numbers drawn per sample (a fixed count keeps the streams aligned)

Generators = torch.Generator | Sequence[torch.Generator] | None


def _draws(n: int, generator: Generators) -> tuple[torch.Tensor, torch.Tensor]:
    """([n, DRAWS] uniform, [n, DRAWS] normal) on the CPU: from one generator per sample, or one for all."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand([n, DRAWS], generator=generator), torch.randn([n, DRAWS], generator=generator)
    if len(generator) != n:
        raise ValueError(f"got {len(generator)} augmentation generators for a batch of {n}")
    u = torch.stack([torch.rand([DRAWS], generator=g) for g in generator])
    return u, torch.stack([torch.randn([DRAWS], generator=g) for g in generator])


def _affine(u: torch.Tensor, z: torch.Tensor, p: float, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 2, 3] sampling matrices (output -> input, normalised coordinates) and [n] bool: transformed."""
    n = u.shape[0]
    on = u[:, :4] < p                                             # which of flip, shift, scale, rotate
    flip = torch.where(on[:, 0] & (u[:, 4] < 0.5), -1.0, 1.0)
    shift = torch.round((u[:, 5:7] * 2 - 1) * XINT_MAX * res) * (2.0 / res)   # whole pixels
    shift = torch.where(on[:, 1:2], shift, 0.0)
    scale = torch.where(on[:, 2], torch.exp2(z[:, 0] * SCALE_STD), 1.0)
    theta = torch.where(on[:, 3], (u[:, 7] * 2 - 1) * math.pi, 0.0)
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    m = torch.zeros([n, 2, 3])
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos * flip, -sin, sin * flip, cos
    m[:, :, 2] = shift
    changed = (flip != 1) | (shift != 0).any(1) | (scale != 1) | (theta != 0)
    return m, changed


def _colour(u: torch.Tensor, z: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 4, 4] colour matrices acting on (r, g, b, 1), and [n] bool: transformed."""
    n = u.shape[0]
    on = u[:, 8:12] < p                                           # brightness, contrast, hue, saturation
    bright = torch.where(on[:, 0], z[:, 1] * BRIGHTNESS_STD, 0.0)
    contrast = torch.where(on[:, 1], torch.exp2(z[:, 2] * CONTRAST_STD), 1.0)
    hue = torch.where(on[:, 2], (u[:, 12] * 2 - 1) * math.pi, 0.0)
    sat = torch.where(on[:, 3], torch.exp2(z[:, 3] * SATURATION_STD), 1.0)
    v = torch.full([3], 1 / math.sqrt(3))                         # the luma axis, as NVlabs takes it
    vv, eye = torch.outer(v, v), torch.eye(3)
    cross = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    c = torch.eye(4).repeat(n, 1, 1)
    c[:, :3, 3] += bright[:, None]
    c = torch.diag_embed(torch.stack([contrast] * 3 + [torch.ones(n)], 1)) @ c
    rot = (vv + (eye - vv) * torch.cos(hue)[:, None, None] + cross * torch.sin(hue)[:, None, None])  # Rodrigues
    sat_m = vv + (eye - vv) * sat[:, None, None]
    lin = torch.eye(4).repeat(n, 1, 1)
    lin[:, :3, :3] = sat_m @ rot
    c = lin @ c
    changed = (bright != 0) | (contrast != 1) | (hue != 0) | (sat != 1)
    return c, changed


def augment(images: torch.Tensor, p: float, generator: Generators = None) -> torch.Tensor:
    """[N, 3, R, R] float in [-1, 1] -> [N, 3, R, R], each transform on each sample with probability p.

    Differentiable in `images` (both D's fakes and its reals pass through it). `generator`: one CPU
    torch.Generator for the batch, one per sample, or None (the global RNG).
    """
    n, c, h, w = images.shape
    if h != w or c != 3:
        raise ValueError(f"augment takes square RGB images [N, 3, R, R], got {list(images.shape)}")
    u, z = _draws(n, generator)
    if p <= 0:
        return images
    m, moved = _affine(u, z, p, h)
    x = images
    if moved.any():
        grid = F.affine_grid(m.to(images.device, images.dtype), [n, c, h, w], align_corners=False)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = torch.where(moved.to(images.device)[:, None, None, None], warped, images)
    cm, recoloured = _colour(u, z, p)
    if recoloured.any():
        cm = cm.to(images.device, images.dtype)
        flat = x.reshape(n, c, h * w)
        shaded = (cm[:, :3, :3] @ flat + cm[:, :3, 3:]).reshape(n, c, h, w)
        x = torch.where(recoloured.to(images.device)[:, None, None, None], shaded, x)
    return x


class AdaController:
    """NVlabs' ADA heuristic: every `interval` steps, p moves by batch * interval / (kimg * 1000) toward
    more augmentation when the mean sign of D's logits on reals exceeds `target` (D overfits), and
    toward less otherwise; p stays in [0, 1]. At that speed p can go from 0 to 1 in `kimg` kimg."""

    def __init__(self, target: float = 0.6, batch: int = 4, interval: int = 4, kimg: float = 500, p: float = 0.0):
        self.target, self.batch, self.interval, self.kimg = target, batch, interval, kimg
        self.p, self.steps = float(p), 0
        self.signs = torch.zeros(2, dtype=torch.float64)   # sum of signs, count (this process's)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Record D's logits on (augmented) reals: [N, 1] or [N]."""
        s = real_logits.detach().sign().flatten().to("cpu", torch.float64)
        self.signs += torch.stack([s.sum(), torch.tensor(float(s.numel()), dtype=torch.float64)])

    def update(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """Count one step; at every `interval`-th, adjust p from the signs since the last adjustment
        (`reduce` sums them over processes under DDP). Returns p."""
        self.steps += 1
        if self.steps % self.interval == 0:
            signs = reduce(self.signs.clone()) if reduce is not None else self.signs
            if signs[1] > 0:
                mean = float(signs[0] / signs[1])
                adjust = ((mean > self.target) - (mean < self.target)) * self.batch * self.interval / (self.kimg * 1000)
                self.p = min(max(self.p + adjust, 0.0), 1.0)
            self.signs.zero_()
        return self.p

    def state_dict(self) -> dict:
        return {"p": self.p, "steps": self.steps, "signs": self.signs.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.steps, self.signs = float(state["p"]), int(state["steps"]), state["signs"].clone()
