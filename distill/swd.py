"""The multi-scale sliced Wasserstein distance (Karras et al. 2018, progressive GAN) between two
image sets: a distance to an image folder that needs no downloaded network.

    d = sliced_wasserstein(reals, fakes)     # two [N, 3, R, R] sets in [-1, 1] -> {"swd": mean, "swd/16": ...}

Both sets go through a Laplacian pyramid (the [1, 4, 6, 4, 1] binomial filter) down to 16 px;
from each level `patches` random 7x7 patches per image become 147-vectors, normalised per level
and channel; then `repeats` x `directions` random unit projections of the two sets of vectors are
sorted and compared: the mean absolute difference is the 1-D Wasserstein distance along each
direction. Reported, as Karras' code does, times 1000 per level, and their mean. Karras normalises
each set by its own statistics; here both are normalised by the first set's (the reference), so a
shift of mean colour or contrast between the sets still counts. The same seed draws the same
patches and directions: identical sets score exactly 0.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PATCH, MIN_RES = 7, 16


def _binomial(device: torch.device) -> torch.Tensor:
    f = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device)
    f = torch.outer(f, f)
    return (f / f.sum())[None, None].repeat(3, 1, 1, 1)


def laplacian_pyramid(x: torch.Tensor, min_res: int = MIN_RES) -> list[torch.Tensor]:
    """[N, 3, R, R] -> levels [N, 3, R, R], [N, 3, R/2, R/2], ... down to min_res (the last one is the
    Gaussian level, the others band-pass differences)."""
    f = _binomial(x.device)
    levels = []
    while x.shape[-1] > min_res:
        small = F.conv2d(F.pad(x, [2] * 4, mode="reflect"), f, stride=2, groups=3)
        up = torch.zeros_like(x)
        up[..., ::2, ::2] = small * 4
        levels.append(x - F.conv2d(F.pad(up, [2] * 4, mode="reflect"), f, groups=3))
        x = small
    return levels + [x]


def _patches(level: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    """`count` random 7x7 patches per image: [N * count, 3, 7, 7]."""
    n, _, h, w = level.shape
    ys = torch.randint(0, h - PATCH + 1, [n, count], generator=g)
    xs = torch.randint(0, w - PATCH + 1, [n, count], generator=g)
    d = torch.arange(PATCH)
    rows = (ys[..., None] + d).to(level.device)            # [n, count, 7]
    cols = (xs[..., None] + d).to(level.device)
    idx = torch.arange(n, device=level.device)[:, None, None, None]
    out = level.permute(0, 2, 3, 1)[idx, rows[..., :, None], cols[..., None, :]]   # [n, count, 7, 7, 3]
    return out.permute(0, 1, 4, 2, 3).reshape(n * count, 3, PATCH, PATCH)


@torch.no_grad()
def sliced_wasserstein(reference: torch.Tensor, other: torch.Tensor, patches: int = 128, repeats: int = 4,
                       directions: int = 128, seed: int = 0, min_res: int = MIN_RES) -> dict[str, float]:
    """Two sets [N, 3, R, R] and [M, 3, R, R] (same R, at least 16; any N, M) in [-1, 1] ->
    {"swd": mean over levels, "swd/R": ..., "swd/16": ...}, each times 1000 (0 for identical sets)."""
    if reference.shape[1:] != other.shape[1:] or reference.shape[-1] < min_res:
        raise ValueError(f"both sets must be [N, 3, R, R] with the same R >= {min_res}, got "
                         f"{list(reference.shape)} and {list(other.shape)}")
    # Patch positions come from one stream per set, seeded alike: equal sets give equal descriptors.
    ga, gb, g = (torch.Generator().manual_seed(seed + i) for i in (0, 0, 1))
    result = {}
    for a, b in zip(laplacian_pyramid(reference.float(), min_res), laplacian_pyramid(other.float(), min_res)):
        da, db = _patches(a, patches, ga), _patches(b, patches, gb)
        mean, std = da.mean(dim=[0, 2, 3], keepdim=True), da.std(dim=[0, 2, 3], keepdim=True) + 1e-8
        da, db = ((da - mean) / std).flatten(1), ((db - mean) / std).flatten(1)
        # Equal counts to compare sorted projections: the larger set is subsampled evenly.
        k = min(len(da), len(db))
        da = da[torch.linspace(0, len(da) - 1, k).round().long()]
        db = db[torch.linspace(0, len(db) - 1, k).round().long()]
        dists = []
        for _ in range(repeats):
            dirs = torch.randn([da.shape[1], directions], generator=g).to(da.device)
            dirs /= dirs.norm(dim=0, keepdim=True)
            # [directions, k] sorted along rows; numpy's sort is much faster than torch's on CPU here.
            pa, pb = (np.sort((dirs.T @ d.T).cpu().numpy(), axis=1) for d in (da, db))
            dists.append(torch.tensor(np.abs(pa - pb).mean(dtype=np.float64)))
        result[f"swd/{a.shape[-1]}"] = float(torch.stack(dists).mean()) * 1000
    result["swd"] = sum(result.values()) / len(result)
    return result
