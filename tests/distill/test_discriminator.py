"""The discriminator against the reference fixtures (logits and R1 per sample), its refusals, the
NVlabs-initialised fallback and FreezeD.

Ground truth: ../shared/fixtures/stylegan2/*_D_expected.npz (see its README): what the official
NVlabs `Discriminator` and rosinality's `Discriminator` compute for the pickled `D` / `d`.
"""
import argparse

import numpy as np
import pytest
import torch

from distill import load_discriminator as lazily_loaded
from distill.checkpoint import CheckpointError, load_generator, save_generator
from distill.discriminator import Discriminator, discriminator_for, load_discriminator, r1_penalty

FORMATS = {
    "nvlabs": ("nvlabs_sg2ada_32.pkl", "nvlabs_sg2ada_32_D_expected.npz", ("random4", "random2", "renders4")),
    "rosinality": ("rosinality_32_train.pt", "rosinality_32_D_expected.npz", ("random4", "random2")),
}
CASES = [(fmt, batch) for fmt, (_, _, batches) in FORMATS.items() for batch in batches]
TOLERANCE = 1e-4


@pytest.mark.parametrize("fmt,batch", CASES)
def test_reproduces_logits_and_r1_per_sample(fixtures_dir, fmt, batch):
    ckpt, expected_npz, _ = FORMATS[fmt]
    expected = np.load(fixtures_dir / expected_npz)
    D = load_discriminator(fixtures_dir / ckpt)
    x = torch.from_numpy(expected[f"x_{batch}"])
    logits = D(x, c=None)
    assert logits.shape == (x.shape[0], 1) and logits.dtype == torch.float32
    assert np.abs(logits.detach().numpy() - expected[f"logits_{batch}"]).max() <= TOLERANCE
    r1 = r1_penalty(D, x).detach().numpy()
    assert r1.shape == (x.shape[0],)
    assert (np.abs(r1 - expected[f"r1_{batch}"]) / expected[f"r1_{batch}"]).max() <= TOLERANCE


def test_rosinality_d_is_read_in_nvlabs_layout(fixtures_dir):
    D = load_discriminator(fixtures_dir / "rosinality_32_train.pt")
    assert D.layer_names == ["b32.fromrgb", "b32.conv0", "b32.conv1", "b32.skip", "b16.conv0", "b16.conv1",
                             "b16.skip", "b8.conv0", "b8.conv1", "b8.skip"]
    assert D.channels == {32: 32, 16: 32, 8: 32, 4: 32}
    assert D.b4.mbstd.group_size == 4 and D.b4.mbstd.num_channels == 1
    with torch.serialization.safe_globals([argparse.Namespace]):
        sd = torch.load(fixtures_dir / "rosinality_32_train.pt", weights_only=True)["d"]
    assert torch.equal(D.b16.conv1.weight, sd["convs.2.conv2.1.weight"])
    assert torch.equal(D.b4.fc.bias, sd["final_linear.0.bias"])


def test_r1_penalty_backpropagates_into_the_weights(fixtures_dir):
    D = load_discriminator(fixtures_dir / "nvlabs_sg2ada_32.pkl")
    x = torch.from_numpy(np.load(fixtures_dir / "nvlabs_sg2ada_32_D_expected.npz")["x_random4"])
    r1_penalty(D, x).mean().backward()
    # Every weight shapes d D / d x; the output bias does not (and through piecewise-linear lrelus, neither
    # do the biases right before it).
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in D.named_parameters() if n.endswith("weight"))
    assert D.b4.out.bias.grad is None


def test_lazy_export_from_the_package():
    assert lazily_loaded is load_discriminator


def test_wrong_network_names(fixtures_dir):
    nvlabs = fixtures_dir / "nvlabs_sg2ada_32.pkl"
    with pytest.raises(CheckpointError, match=r"no network 'X' in it \(found: G, D, G_ema\)\n  hint: pass network='D'"):
        load_discriminator(nvlabs, network="X")
    with pytest.raises(CheckpointError, match=r"'G_ema' is a Generator, not a Discriminator"):
        load_discriminator(nvlabs, network="G_ema", fallback=True)
    with pytest.raises(CheckpointError, match=r"no network 'G' in it \(found: g, d, g_ema, g_optim, d_optim, args, "
                                              r"ada_aug_p\)"):
        load_discriminator(fixtures_dir / "rosinality_32_train.pt", network="G")
    with pytest.raises(CheckpointError, match=r"'g_ema' is not a rosinality StyleGAN2 discriminator"):
        load_discriminator(fixtures_dir / "rosinality_32_train.pt", network="g_ema")


def test_files_without_a_discriminator(fixtures_dir, tmp_path):
    G = load_generator(fixtures_dir / "nvlabs_sg2ada_32.pkl")
    save_generator(G, tmp_path / "g.safetensors")
    hint = r"\n  hint: pass fallback=True for a new discriminator initialised as NVlabs does, sized to the file's generator"
    cases = {
        fixtures_dir / "rosinality_32.pt": r"no discriminator in it: no rosinality 'd' \(found: g_ema, latent_avg\); "
                                           r"only training checkpoints hold one",
        fixtures_dir / "tf_stylegan2_32.pkl": r"TensorFlow discriminators are not read \(that needs NVlabs' "
                                              r"convert_tf_discriminator mapping\)",
        tmp_path / "g.safetensors": r"a toonify-fast \.safetensors generator holds no discriminator",
    }
    for path, reason in cases.items():
        with pytest.raises(CheckpointError, match=f"^{path}: {reason}{hint}$"):
            load_discriminator(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_discriminator(tmp_path / "missing.pkl", fallback=True)


def test_fallback_is_sized_to_the_generator_and_says_so(fixtures_dir, capsys):
    # Sized as NVlabs sizes D for this G (channel_base/channel_max): the shapes of the pickle's own D.
    nvlabs = load_discriminator(fixtures_dir / "nvlabs_sg2ada_32.pkl")
    new = discriminator_for(load_generator(fixtures_dir / "nvlabs_sg2ada_32.pkl"))
    assert {k: v.shape for k, v in new.state_dict().items()} == {k: v.shape for k, v in nvlabs.state_dict().items()}
    assert new.b32.conv0.conv_clamp == 256 and new.b32.skip.conv_clamp is None
    assert capsys.readouterr().err == ("generator: no discriminator given; a new discriminator, initialised as NVlabs "
                                       "does (seed 0): 32 px, channels 64/64/64/64 (b32..b4)\n")
    # A g_ema-only rosinality file: the shapes of the matching training checkpoint's d.
    path = fixtures_dir / "rosinality_32.pt"
    D = load_discriminator(path, fallback=True)
    err = capsys.readouterr().err
    assert err == (f"{path}: no discriminator in it: no rosinality 'd' (found: g_ema, latent_avg); only training "
                   "checkpoints hold one; a new discriminator, initialised as NVlabs does (seed 0): 32 px, channels "
                   "32/32/32/32 (b32..b4)\n")
    real = load_discriminator(fixtures_dir / "rosinality_32_train.pt")
    assert {k: v.shape for k, v in D.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
    # NVlabs' initialisation: weights N(0, 1), biases 0; seeded and repeatable.
    weights = torch.cat([p.flatten() for n, p in D.named_parameters() if n.endswith("weight")])
    assert abs(weights.mean().item()) < 0.02 and abs(weights.std().item() - 1) < 0.02
    assert all(not p.any() for n, p in D.named_parameters() if n.endswith("bias"))
    again = load_discriminator(path, fallback=True)
    assert all(torch.equal(a, b) for a, b in zip(D.state_dict().values(), again.state_dict().values()))
    assert D(torch.zeros([2, 3, 32, 32])).shape == (2, 1)
    # The TF fixture: fmap_base 1024, fmap_max 64 (NVlabs' channel_base 2048).
    assert load_discriminator(fixtures_dir / "tf_stylegan2_32.pkl", fallback=True).channels == {32: 64, 16: 64, 8: 64, 4: 64}


def test_freeze_names_exactly_the_frozen_tensors():
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16)
    assert D.freeze(blocks=1) == ["b32.fromrgb.weight", "b32.fromrgb.bias", "b32.conv0.weight", "b32.conv0.bias",
                                  "b32.conv1.weight", "b32.conv1.bias", "b32.skip.weight"]
    assert [n for n, p in D.named_parameters() if not p.requires_grad] == D.freeze(blocks=1)
    # NVlabs' --freezed counts layers: b32 has four, so the fifth is b16.conv0.
    assert D.freeze(layers=5)[-2:] == ["b16.conv0.weight", "b16.conv0.bias"] and len(D.freeze(layers=5)) == 9
    frozen = D.freeze(blocks=2)
    assert all(n.startswith(("b32.", "b16.")) for n in frozen) and len(frozen) == 12
    D(torch.randn([4, 3, 32, 32])).sum().backward()
    assert all((p.grad is None) == (n in frozen) for n, p in D.named_parameters())
    assert D.freeze(blocks=0) == [] and all(p.requires_grad for p in D.parameters())
    with pytest.raises(ValueError, match=r"blocks must be in 0\.\.3, got 4"):
        D.freeze(blocks=4)
    with pytest.raises(ValueError, match="pass exactly one of blocks= or layers="):
        D.freeze()


def test_refuses_bad_inputs():
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=8)
    with pytest.raises(ValueError, match=r"images must be \[N, 3, 16, 16\], got \[2, 3, 32, 32\]"):
        D(torch.zeros([2, 3, 32, 32]))
    with pytest.raises(ValueError, match="a batch of 6 does not split into minibatch-stddev groups of 4"):
        D(torch.zeros([6, 3, 16, 16]))
    with pytest.raises(ValueError, match="only the 'resnet' architecture is supported, got 'skip'"):
        Discriminator(c_dim=0, img_resolution=16, img_channels=3, architecture="skip")
