"""The student's losses (pix2pixHD): GAN (LSGAN or hinge) over a multiscale discriminator,
discriminator feature matching, and VGG perceptual L1 from locally stored VGG weights.

    vgg = PerceptualLoss(vgg_features("vgg19", weights_path))   # MissingWeightsError if none is found
    g_loss, parts = generator_loss(D, real, fake, toon, vgg)

VGG weights are never downloaded and never random: pass torchvision's state dict file
(`features.{i}.weight/bias`, e.g. vgg19-dcbe5ed2.pth) or put it in the torch hub cache.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.weights import state_dict_difference
from distill.safe_pickle import refused_name
from runtime.common import ToonifyError

GAN_MODES = ("lsgan", "hinge")

# torchvision's layer plans (configurations 'D' and 'E'): conv widths, 'M' = 2x2 max-pool.
VGG_PLANS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# The file names torchvision's model zoo caches them under.
VGG_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbe5ed2.pth"}
PIX2PIXHD_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PIX2PIXHD_TAP_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(ToonifyError):
    pass


class WeightsFileError(ToonifyError):
    pass


# ---------------------------------------------------------------------------------------------
# Adversarial and feature-matching losses. Discriminator outputs are lists per scale of feature
# maps, the last of each being the prediction map (translator.MultiscaleDiscriminator).

def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"GAN loss mode must be one of {GAN_MODES}, got {mode!r}")


def gan_loss_d(preds_real: list[list[torch.Tensor]], preds_fake: list[list[torch.Tensor]],
               mode: str = "lsgan") -> torch.Tensor:
    """Discriminator loss, summed over scales as pix2pixHD does.

    lsgan: 0.5 * (mean((D(real) - 1)^2) + mean(D(fake)^2));  hinge: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))).
    """
    _check_mode(mode)
    loss = 0.0
    for real, fake in zip(preds_real, preds_fake):
        real, fake = real[-1], fake[-1]
        if mode == "lsgan":
            loss = loss + 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
        else:
            loss = loss + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return loss


def gan_loss_g(preds_fake: list[list[torch.Tensor]], mode: str = "lsgan") -> torch.Tensor:
    """Generator adversarial loss, summed over scales. lsgan: mean((D(fake) - 1)^2); hinge: -mean(D(fake))."""
    _check_mode(mode)
    loss = 0.0
    for fake in preds_fake:
        fake = fake[-1]
        loss = loss + (F.mse_loss(fake, torch.ones_like(fake)) if mode == "lsgan" else -fake.mean())
    return loss


def feature_matching_loss(feats_fake: list[list[torch.Tensor]], feats_real: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean over scales and intermediate layers (not the prediction) of L1(D_k(fake), D_k(real)).

    Real features are constants here. pix2pixHD weights each of the n_layers + 1 layers by
    4 / (n_layers + 1) and each scale by 1 / num_D, i.e. 4x this mean; with its weight of 10
    the same balance is 40x this value, so scale `feat_weight` accordingly to reproduce it.
    """
    terms = [F.l1_loss(fake, real.detach()) for scale_fake, scale_real in zip(feats_fake, feats_real)
             for fake, real in zip(scale_fake[:-1], scale_real[:-1])]
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------------------------
# VGG features from torchvision-layout weights.

def _layer_names(arch: str) -> dict[str, int]:
    """'relu3_1' -> index in torchvision's `features` Sequential, for every conv and relu."""
    names, index, block, layer = {}, 0, 1, 1
    for item in VGG_PLANS[arch]:
        if item == "M":
            index, block, layer = index + 1, block + 1, 1
            continue
        names[f"conv{block}_{layer}"], names[f"relu{block}_{layer}"] = index, index + 1
        index, layer = index + 2, layer + 1
    return names


def find_vgg_weights(arch: str = "vgg19", weights_path: str | os.PathLike | None = None) -> Path:
    """The weights file to use: `weights_path` if given, else torchvision's cached download.

    Looks in torch.hub.get_dir()/checkpoints ($TORCH_HOME/hub, default ~/.cache/torch/hub).
    Raises MissingWeightsError saying where it looked; nothing is downloaded.
    """
    if arch not in VGG_PLANS:
        raise ValueError(f"arch must be one of {sorted(VGG_PLANS)}, got {arch!r}")
    if weights_path is not None:
        candidates = [Path(weights_path)]
    else:
        candidates = [Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILES[arch]]
        default = Path.home() / ".cache" / "torch" / "hub" / "checkpoints" / VGG_FILES[arch]
        if default not in candidates:
            candidates.append(default)
    for path in candidates:
        if path.is_file():
            return path
    raise MissingWeightsError(
        f"no {arch.upper()} weights found (the perceptual loss needs pretrained ImageNet weights; "
        f"random ones would be meaningless); looked in: {', '.join(str(p) for p in candidates)}",
        hint=f"pass --vgg-weights PATH to torchvision's {arch} state dict ({VGG_FILES[arch]}, keys "
             f"features.{{i}}.weight/bias; .pth or .safetensors), put it in the first folder above, "
             f"or run without the perceptual loss with --no-vgg")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    hint = "expected torchvision's VGG state dict: a torch.save'd dict of tensors (.pth) or a .safetensors file"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if (refused := refused_name(e)) is None:
            raise WeightsFileError("cannot read VGG weights: not a torch file, or a damaged one", path, hint) from None
        raise WeightsFileError(f"refused to load: the file asks for `{refused}`, which weights-only "
                               "loading does not allow; nothing it asked for was run", path, hint) from None
    except Exception as e:  # any unreadable file is the user's to fix, whatever the loader raised
        first_line = (str(e).splitlines() or [""])[0]
        raise WeightsFileError(f"cannot read VGG weights ({type(e).__name__}: {first_line})", path, hint) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError("not a state dict of tensors", path, hint)
    return state


class VGGFeatures(nn.Module):
    """A torchvision-layout VGG `features` stack, cut after its deepest tap, frozen.

    forward: [N, 3, H, W] in [-1, 1] -> list of activations at `taps` (e.g. relu1_1 is
    [N, 64, H, W], relu5_1 [N, 512, H/16, W/16]). Inputs are mapped to ImageNet normalisation.
    """

    def __init__(self, arch: str, state: dict[str, torch.Tensor], taps: tuple[str, ...], path: Path):
        super().__init__()
        names = _layer_names(arch)
        unknown = [t for t in taps if t not in names]
        if unknown:
            raise ValueError(f"unknown {arch} layer(s) {unknown}; known: {', '.join(names)}")
        self.taps = [names[t] for t in taps]
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG_PLANS[arch]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers[:max(self.taps) + 1])
        expected = self.features.state_dict()
        files = {key.removeprefix("features."): t for key, t in state.items() if key.startswith("features.")}
        why = state_dict_difference(expected, files, (arch, "the file"), extra=False)
        if why is not None:
            raise WeightsFileError(f"features.{why}", path, hint=f"expected torchvision's {arch} state dict ({VGG_FILES[arch]})")
        self.features.load_state_dict({key: state[f"features.{key}"].float() for key in expected})
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        outputs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outputs.append(x)
        return outputs


def vgg_features(arch: str = "vgg19", weights_path: str | os.PathLike | None = None,
                 taps: tuple[str, ...] = PIX2PIXHD_TAPS) -> VGGFeatures:
    """Frozen VGG16/19 features at `taps` from local torchvision-layout weights (see find_vgg_weights)."""
    path = find_vgg_weights(arch, weights_path)
    return VGGFeatures(arch, _load_tensors(path), taps, path)


class PerceptualLoss(nn.Module):
    """pix2pixHD's VGG loss: sum_i w_i * mean|phi_i(x) - phi_i(y)|, VGG19 relu1_1..relu5_1,
    w = [1/32, 1/16, 1/8, 1/4, 1]. x, y: [N, 3, H, W] in [-1, 1]; y is the (constant) target."""

    def __init__(self, features: VGGFeatures, weights: tuple[float, ...] = PIX2PIXHD_TAP_WEIGHTS):
        super().__init__()
        if len(weights) != len(features.taps):
            raise ValueError(f"{len(weights)} weights for {len(features.taps)} VGG taps")
        self.vgg, self.weights = features, weights

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # One pass over both halves is faster than two; detaching the target's half of every
        # feature keeps backward from running through it.
        feats = self.vgg(torch.cat([x, y.detach()]))
        n = x.shape[0]
        return sum(w * F.l1_loss(f[:n], f[n:].detach()) for w, f in zip(self.weights, feats))


# ---------------------------------------------------------------------------------------------
# The two objectives a training step minimises. The discriminator sees concat(source, image).

def discriminator_loss(disc: nn.Module, source: torch.Tensor, fake: torch.Tensor, target: torch.Tensor,
                       mode: str = "lsgan") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """D's loss on (source, target) as real and (source, fake) as fake; fake is detached.

    source, fake, target: [N, 3, H, W] in [-1, 1] (source may carry more planes: a condition,
    translator.condition_planes). Returns the loss and its parts, detached (no device sync here:
    the caller decides when to read them).
    """
    preds_real = disc(torch.cat([source, target], 1))
    preds_fake = disc(torch.cat([source, fake.detach()], 1))
    loss = gan_loss_d(preds_real, preds_fake, mode)
    return loss, {"d_gan": loss.detach()}


def generator_loss(disc: nn.Module, source: torch.Tensor, fake: torch.Tensor, target: torch.Tensor,
                   perceptual: PerceptualLoss | None = None, mode: str = "lsgan",
                   feat_weight: float = 10.0, vgg_weight: float = 10.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """G's loss: GAN + feat_weight * feature matching + vgg_weight * perceptual (if given).

    source, fake, target: [N, 3, H, W] in [-1, 1]. Returns the total and its unweighted parts (detached).
    """
    preds_fake = disc(torch.cat([source, fake], 1))
    with torch.no_grad():
        preds_real = disc(torch.cat([source, target], 1))
    gan, feat = gan_loss_g(preds_fake, mode), feature_matching_loss(preds_fake, preds_real)
    total = gan + feat_weight * feat
    parts = {"g_gan": gan.detach(), "g_feat": feat.detach()}
    if perceptual is not None:
        vgg = perceptual(fake, target)
        total = total + vgg_weight * vgg
        parts["g_vgg"] = vgg.detach()
    return total, parts
