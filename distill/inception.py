"""KID and FID against an image folder, from the user's own local FID Inception weights (nothing is
downloaded): the Inception-v3 that pytorch-fid builds for the TF FID graph (its FID-specific blocks,
torchvision's state-dict names), its 2048-d pool features, and the two distances over them.

    net = load_inception("pt_inception-2015-12-05-6726825d.pth")
    print(kid(features(net, a), features(net, b)), fid(features(net, a), features(net, b)))

The FID blocks differ from torchvision's Inception3 where the TF graph does: average pools leave the
padding out of the mean, and the last block takes a max pool in its pool branch. Given the same
weights, its features are pytorch-fid's (tests/distill/fid_reference.npz, made with pytorch-fid's
own network).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.weights import state_dict_difference
from runtime.common import ToonifyError

FEATURES = 2048
INPUT_SIZE = 299
HINT = ("give the FID Inception weights pytorch-fid uses (pt_inception-2015-12-05-6726825d.pth, "
        "a torch state dict) or leave --inception out")


class InceptionError(ToonifyError):
    """The Inception weights file cannot be used."""


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), dbl,
                          self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """pytorch-fid's FIDInceptionE_1 (max_pool=False: a padding-free average) or _2 (a max pool)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl), self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """pytorch-fid's FID Inception-v3 up to the final average pool: [N, 3, 299, 299] in [-1, 1] ->
    [N, 2048]. Module names are torchvision's (Conv2d_1a_3x3, Mixed_5b, ...)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def expected_state() -> dict[str, torch.Tensor]:
    """name -> tensor (its shape is what counts) of every tensor a weights file must hold (torchvision's names; BatchNorm's
    counter, the classifier and the aux head a file may carry besides are not needed)."""
    return {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}


def load_inception(path: str | os.PathLike, device: torch.device | str = "cpu") -> FIDInception:
    """The FID Inception from a local torch state dict (pytorch-fid's pt_inception-*.pth), in eval
    mode. Raises InceptionError naming the file and the first missing or misshapen tensor."""
    path = Path(path)
    if not path.is_file():
        raise InceptionError("no such file", path, hint=HINT)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # only the kind of failure: torch's own text advises weights_only=False, which is unsafe
        raise InceptionError(f"it is not a readable torch state dict ({type(err).__name__})", path,
                             hint=HINT) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionError("it does not hold a state dict of tensors", path, hint=HINT)
    expected = expected_state()
    why = state_dict_difference(expected, state, ("the FID Inception", "the file"), extra=False)
    if why:
        raise InceptionError(why, path, hint=HINT)
    net = FIDInception()
    net.load_state_dict({k: state[k] for k in expected}, strict=False)
    return net.eval().requires_grad_(False).to(device)


@torch.no_grad()
def features(net: FIDInception, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """[N, 3, H, W] float in [-1, 1] or uint8 in [0, 255] -> [N, 2048] float64 pool features, each
    image resized bilinearly to 299 px first as pytorch-fid does."""
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].to(device)
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        out.append(net(x).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, FEATURES, dtype=torch.float64)


def kid(feats_a, feats_b, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception distance as NVlabs' metrics/kernel_inception_distance.py computes it: the
    unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over `num_subsets` random subsets of
    min(N_a, N_b, max_subset_size) features of each side. [N, d] arrays or tensors -> float."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    d, m = a.shape[1], min(len(a), len(b), max_subset_size)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = b[rng.choice(len(b), m, replace=False)]
        y = a[rng.choice(len(a), m, replace=False)]
        same = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        cross = (x @ y.T / d + 1) ** 3
        total += (same.sum() - np.diag(same).sum()) / (m - 1) - cross.sum() * 2 / m
    return float(total / num_subsets / m)


def fid(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two [N, d] feature sets:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)). tr (S_a S_b)^(1/2) is the sum of the square
    roots of the eigenvalues of the symmetric A^(1/2) S_b A^(1/2), A = S_a (no complex sqrtm)."""
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)
