"""The StyleGAN2 Generator: NVlabs' names and interface, truncation, noise modes and architectures.

Its numbers against the official implementations are checked in test_checkpoint.py, which loads
the reference fixtures into it.
"""
import json
import math

import pytest
import torch

from distill.stylegan2 import Generator


def tiny(resolution: int = 16, **synthesis) -> Generator:
    torch.manual_seed(0)
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=resolution, img_channels=3,
                  mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 128, "channel_max": 16, "conv_clamp": 256, **synthesis}).eval()
    with torch.no_grad():  # non-zero noise strengths and w_avg, so noise and truncation show
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
        G.mapping.w_avg.normal_()
    return G


def z(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn([n, 16], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("resolution", [4, 8, 32, 64])
def test_num_ws_and_block_resolutions_follow_nvlabs(resolution):
    G = tiny(resolution)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2
    assert G.synthesis.block_resolutions == [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
    assert G.mapping(z()).shape == (2, G.num_ws, 16)
    assert G(z()).shape == (2, 3, resolution, resolution)


def test_state_dict_uses_nvlabs_names():
    layer = ["weight", "bias", "noise_strength", "noise_const", "affine.weight", "affine.bias"]
    torgb = ["weight", "bias", "affine.weight", "affine.bias"]
    expected = {f"mapping.fc{i}.{p}" for i in range(2) for p in ("weight", "bias")} | {"mapping.w_avg"}
    expected |= {"synthesis.b4.const"} | {f"synthesis.b4.conv1.{p}" for p in layer}
    expected |= {f"synthesis.b8.{c}.{p}" for c in ("conv0", "conv1") for p in layer}
    expected |= {f"synthesis.b{r}.torgb.{p}" for r in (4, 8) for p in torgb}
    assert set(tiny(8).state_dict()) == expected  # resample_filter buffers are non-persistent


def test_init_kwargs_rebuild_the_same_network_through_json():
    G = tiny()
    G2 = Generator(**json.loads(json.dumps(G.init_kwargs)))
    G2.load_state_dict(G.state_dict())
    with torch.no_grad():
        assert torch.equal(G(z()), G2.eval()(z()))


def test_explicit_channels_per_resolution_with_string_keys():
    G = Generator(16, 0, 16, 16, 3, {"num_layers": 2}, {"channels": {"4": 8, "8": 6, "16": 4}})
    assert G.synthesis.b8.conv0.weight.shape == (6, 8, 3, 3)
    assert G.synthesis.b16.conv1.weight.shape == (4, 4, 3, 3)
    assert Generator(**json.loads(json.dumps(G.init_kwargs))).synthesis.channels == {4: 8, 8: 6, 16: 4}
    with pytest.raises(ValueError, match=r"no entry for resolutions \[16\]"):
        Generator(16, 0, 16, 16, 3, {}, {"channels": {4: 8, 8: 6}})


@torch.no_grad()
def test_truncation_psi_and_cutoff():
    G = tiny()
    w = G.mapping(z())
    assert torch.allclose(G.mapping(z(), truncation_psi=0.0), G.mapping.w_avg.expand_as(w))
    cut = G.mapping(z(), truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], G.mapping.w_avg + 0.5 * (w[:, :2] - G.mapping.w_avg), atol=1e-6)
    assert torch.equal(cut[:, 2:], w[:, 2:])
    assert torch.equal(G(z(), truncation_psi=0.5), G.synthesis(G.mapping(z(), truncation_psi=0.5)))


@torch.no_grad()
def test_noise_modes():
    G, ws = tiny(), tiny().mapping(z())
    const, none = G.synthesis(ws), G.synthesis(ws, noise_mode="none")
    assert torch.equal(const, G.synthesis(ws, noise_mode="const"))  # const is the default
    assert (const - none).abs().max() > 1e-3
    seeded = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = G.synthesis(ws, noise_mode="random", generator=seeded(7))
    assert torch.equal(a, G.synthesis(ws, noise_mode="random", generator=seeded(7)))
    assert (a - G.synthesis(ws, noise_mode="random", generator=seeded(8))).abs().max() > 1e-3


@torch.no_grad()
def test_random_noise_is_drawn_block_by_block_conv0_before_conv1():
    # What pairs rely on: noise comes from the generator in a fixed order, so two synthesis networks
    # given equally seeded generators see the same noise. Store that sequence as const noise and compare.
    G = tiny()
    ws = G.mapping(z(1))
    drawn = G.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    for res in G.synthesis.block_resolutions:
        block = getattr(G.synthesis, f"b{res}")
        for layer in ([block.conv0] if res > 4 else []) + [block.conv1]:
            layer.noise_const.copy_(torch.randn([1, 1, res, res], generator=g)[0, 0])
    assert torch.allclose(drawn, G.synthesis(ws, noise_mode="const"), atol=1e-6)


@torch.no_grad()
def test_per_sample_generators_make_a_sample_independent_of_its_batch():
    G = tiny()
    ws = G.mapping(z(3))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = G.synthesis(ws, noise_mode="random", generator=gens([10, 11, 12]))
    alone = G.synthesis(ws[1:2], noise_mode="random", generator=gens([11]))
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    with pytest.raises(ValueError, match="got 2 noise generators for a batch of 3"):
        G.synthesis(ws, noise_mode="random", generator=gens([1, 2]))


@pytest.mark.parametrize("architecture", ["orig", "resnet"])
@torch.no_grad()
def test_other_architectures_build_and_run(architecture):
    G = tiny(architecture=architecture)
    img = G(z())
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    names = set(G.state_dict())
    assert ("synthesis.b8.skip.weight" in names) == (architecture == "resnet")
    assert ("synthesis.b8.torgb.weight" in names) == (architecture == "skip")
    assert "synthesis.b16.torgb.weight" in names


def test_bad_inputs_are_named():
    G = tiny()
    with pytest.raises(ValueError, match=r"ws must be \[N, 6, 16\], got \[2, 5, 16\]"):
        G.synthesis(torch.zeros([2, 5, 16]))
    with pytest.raises(ValueError, match="noise_mode must be one of"):
        G.synthesis(torch.zeros([2, 6, 16]), noise_mode="fixed")
    conditional = Generator(16, 4, 16, 8, 3, {"num_layers": 2}, {"channel_base": 64, "channel_max": 8})
    with pytest.raises(ValueError, match=r"pass c with shape \[N, 4\]"):
        conditional.mapping(z())
    assert conditional.mapping(z(), torch.eye(4)[:2]).shape == (2, conditional.num_ws, 16)
