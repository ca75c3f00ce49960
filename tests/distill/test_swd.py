"""The sliced Wasserstein distance: 0 for identical sets, small between two draws of one
distribution, large between different ones, on every pyramid level."""
import torch

from distill.swd import laplacian_pyramid, sliced_wasserstein


def smooth_noise(n, seed, res=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn([n, 3, res // 4, res // 4], generator=g)
    return torch.nn.functional.interpolate(x, size=res, mode="bilinear", align_corners=False).tanh()


def test_pyramid_halves_down_to_16_px():
    x = smooth_noise(2, 0, 64)
    levels = laplacian_pyramid(x)
    assert [lv.shape[-1] for lv in levels] == [64, 32, 16]


def test_identical_sets_score_zero_and_other_distributions_score_higher():
    a, b = smooth_noise(64, 0), smooth_noise(64, 1)
    same = sliced_wasserstein(a, a)
    assert same == {"swd/32": 0.0, "swd/16": 0.0, "swd": 0.0}
    twin = sliced_wasserstein(a, b)
    shifted = sliced_wasserstein(a, (b * 0.5 + 0.3).clamp(-1, 1))
    recoloured = sliced_wasserstein(a, b[:, [0, 0, 0]])
    assert set(twin) == {"swd/32", "swd/16", "swd"}
    for other in (shifted, recoloured):
        assert other["swd"] > 2.5 * twin["swd"], (twin, other)
    # A different number of images on each side is fine; the same seed gives the same number.
    assert sliced_wasserstein(a, b[:40]) == sliced_wasserstein(a, b[:40])
