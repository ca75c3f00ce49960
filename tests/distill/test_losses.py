import pytest
import torch
from safetensors.torch import save_file

from distill.losses import (IMAGENET_MEAN, IMAGENET_STD, VGG_PLANS, MissingWeightsError, PerceptualLoss,
                            WeightsFileError, discriminator_loss, feature_matching_loss, find_vgg_weights,
                            gan_loss_d, gan_loss_g, generator_loss, vgg_features)
from distill.translator import MultiscaleDiscriminator
from tests.helpers import fake_vgg_state




@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg19-test.pth"
    torch.save(fake_vgg_state("vgg19"), path)
    return path


@pytest.fixture(scope="module")
def vgg19(vgg19_file):
    return vgg_features("vgg19", vgg19_file)


class Smuggled:
    """Any Python object in a .pth: weights-only loading must refuse to rebuild it."""


def preds(*values):
    """Discriminator-like outputs: one scale per value, two feature maps each, the last the prediction."""
    return [[torch.full((2, 4, 3, 3), v), torch.full((2, 1, 3, 3), v)] for v in values]


def test_lsgan_and_hinge_reference_values():
    # Summed over scales as pix2pixHD: two scales.
    assert gan_loss_g(preds(0.5, 0.5)) == pytest.approx(2 * 0.25)
    assert gan_loss_d(preds(1.0, 0.5), preds(0.0, 0.5)) == pytest.approx(0.5 * (0 + 0) + 0.5 * (0.25 + 0.25))
    assert gan_loss_g(preds(0.5, -1.0), "hinge") == pytest.approx(-0.5 + 1.0)
    assert gan_loss_d(preds(0.5, 2.0), preds(-0.5, -2.0), "hinge") == pytest.approx((0.5 + 0.5) + (0 + 0))
    with pytest.raises(ValueError, match="GAN loss mode must be one of"):
        gan_loss_g(preds(0.0), "wgan")


def test_feature_matching_averages_intermediate_layers_only():
    real = [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2)] for _ in range(2)]
    fake = [[torch.full((1, 2, 4, 4), 1.0), torch.full((1, 3, 2, 2), 3.0), torch.full((1, 1, 2, 2), 100.0)],
            [torch.full((1, 2, 4, 4), 2.0), torch.full((1, 3, 2, 2), 2.0), torch.full((1, 1, 2, 2), 100.0)]]
    # The prediction maps (100) are left out; the mean of 1, 3, 2, 2 is 2.
    assert feature_matching_loss(fake, real) == pytest.approx(2.0)


def test_vgg19_loads_torchvision_layout_and_taps_five_layers(vgg19):
    vgg = vgg19
    assert vgg.taps == [1, 6, 11, 20, 29]  # relu1_1 .. relu5_1 in torchvision's features indices
    assert not any(p.requires_grad for p in vgg.parameters())
    state = fake_vgg_state("vgg19")
    assert torch.equal(vgg.features[28].weight, state["features.28.weight"])
    feats = vgg(torch.zeros(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8), (1, 512, 4, 4),
                                               (1, 512, 2, 2)]
    # An image at the ImageNet mean normalises to zeros, so conv1_1 gives its bias: relu1_1 = relu(bias).
    mean = (torch.tensor(IMAGENET_MEAN) * 2 - 1).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    first = vgg(mean)[0]
    torch.testing.assert_close(first[0, :, 8, 8], state["features.0.bias"].clamp(min=0))
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_vgg16_taps_by_name_from_safetensors(tmp_path):
    path = tmp_path / "vgg16.safetensors"
    save_file(fake_vgg_state("vgg16"), str(path))
    vgg = vgg_features("vgg16", path, taps=("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"))
    assert vgg.taps == [3, 8, 15, 22, 29]
    assert [f.shape[1] for f in vgg(torch.zeros(1, 3, 32, 32))] == [64, 128, 256, 512, 512]


def test_perceptual_loss_reference_value_and_gradient(vgg19):
    loss = PerceptualLoss(vgg19)
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    value = loss(x, y)
    fx, fy = loss.vgg(x), loss.vgg(y)
    expected = sum(w * (a - b).abs().mean() for w, a, b in zip([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1], fx, fy))
    torch.testing.assert_close(value, expected)
    assert loss(y, y) == 0
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_vgg_weights_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(MissingWeightsError) as e:
        find_vgg_weights("vgg19")
    message = str(e.value)
    assert "no VGG19 weights found" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbe5ed2.pth") in message
    assert str(tmp_path / "home" / ".cache" / "torch" / "hub" / "checkpoints" / "vgg19-dcbe5ed2.pth") in message
    assert "--vgg-weights" in message and "--no-vgg" in message
    with pytest.raises(MissingWeightsError, match="looked in: .*nope.pth"):
        vgg_features("vgg19", tmp_path / "nope.pth")
    # Found in the cache when it is there.
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbe5ed2.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert find_vgg_weights("vgg19") == cached


def test_wrong_vgg_file_names_the_first_bad_key(tmp_path, vgg19_file):
    state = fake_vgg_state("vgg19")
    state["features.10.weight"] = torch.zeros(256, 64, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsFileError, match=r"bad.pth: features.10.weight has shape \(256, 128, 3, 3\) in vgg19 "
                                               r"and \(256, 64, 3, 3\) in the file"):
        vgg_features("vgg19", tmp_path / "bad.pth")
    torch.save(fake_vgg_state("vgg16"), tmp_path / "vgg16.pth")  # vgg16 has no conv at index 16
    with pytest.raises(WeightsFileError, match="features.16.weight is in vgg19 but not in the file"):
        vgg_features("vgg19", tmp_path / "vgg16.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsFileError, match="junk.pth: cannot read VGG weights"):
        vgg_features("vgg19", tmp_path / "junk.pth")
    torch.save({"features.0.weight": Smuggled()}, tmp_path / "object.pth")
    with pytest.raises(WeightsFileError,
                       match="object.pth: refused to load: the file asks for `tests.distill.test_losses.Smuggled`"):
        vgg_features("vgg19", tmp_path / "object.pth")


def test_generator_and_discriminator_losses_train_the_right_network(vgg19):
    torch.manual_seed(0)
    D = MultiscaleDiscriminator(ndf=4, n_layers=2, num_D=2)
    source, target = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    fake = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    perceptual = PerceptualLoss(vgg19)
    total, parts = generator_loss(D, source, fake, target, perceptual)
    torch.testing.assert_close(total, parts["g_gan"] + 10 * parts["g_feat"] + 10 * parts["g_vgg"])
    total.backward()
    assert fake.grad.abs().sum() > 0
    d_loss, d_parts = discriminator_loss(D, source, fake, target, mode="hinge")
    assert set(d_parts) == {"d_gan"} and d_loss.requires_grad
    fake.grad = None
    d_loss.backward()
    assert fake.grad is None  # D's step never reaches the generator's output
    _, parts = generator_loss(D, source, target, target)
    assert parts["g_feat"] == 0 and "g_vgg" not in parts
