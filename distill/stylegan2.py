"""The StyleGAN2 teacher: the NVlabs stylegan2-ada-pytorch Generator in plain PyTorch.

    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3)
    img = G(torch.randn([4, G.z_dim]), truncation_psi=0.7)     # [4, 3, 256, 256], about [-1, 1]

It computes what NVlabs' `training/networks.py` computes (mapping with truncation, modulated and
demodulated convolutions, FIR [1,3,3,1] resampling, conv clamp, 'skip' / 'orig' / 'resnet'
architectures) without custom CUDA ops, and its state_dict uses NVlabs' names
(`mapping.fc0.weight`, `synthesis.b64.conv0.affine.bias`, ...), so checkpoints map by name and
blending can parse the block resolution from `synthesis.b{R}.`. It is an inference network:
float32 everywhere (`num_fp16_res` is accepted and ignored) and `mapping.w_avg` is never updated.
The `resample_filter` buffers are non-persistent: they are a constant of the architecture.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2)
NOISE_MODES = ("random", "const", "none")
NoiseGenerator = torch.Generator | Sequence[torch.Generator] | None


def fir_filter() -> torch.Tensor:
    """StyleGAN2's [1, 3, 3, 1] low-pass filter as a [4, 4] tensor summing to 1."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W]: zero insertion, then the FIR filter with gain 4.

    For the symmetric 4-tap filter that is one depthwise stride-2 transposed conv cropped by 1 on
    each side (NVlabs' upfirdn2d with padding [2, 1]).
    """
    c = x.shape[1]
    return F.conv_transpose2d(x, (f * 4)[None, None].expand(c, 1, *f.shape), stride=2, padding=1, groups=c)


def blur(x: torch.Tensor, f: torch.Tensor, pad: int) -> torch.Tensor:
    """The FIR filter with gain 4 on every channel of [N, C, H, W], padded by `pad` on each side.

    A depthwise conv: several times faster on CPU than treating channels as a batch of images.
    """
    c = x.shape[1]
    return F.conv2d(x, (f * 4)[None, None].expand(c, 1, *f.shape), padding=pad, groups=c)


def _lrelu(x: torch.Tensor, gain: float, clamp: float | None) -> torch.Tensor:
    """NVlabs' bias_act tail for 'lrelu': leaky ReLU 0.2, times gain, then the optional clamp."""
    x = F.leaky_relu(x, 0.2) * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, f: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample modulated convolution as one grouped conv (NVlabs' fused path).

    x [N, I, H, W], weight [O, I, k, k], styles [N, I] -> [N, O, H, W] (or [N, O, 2H, 2W] with `up`,
    which is a stride-2 transposed conv followed by the FIR filter `f`, NVlabs' 3x3 up-conv).
    """
    n, i, h, w_ = x.shape
    o, _, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(n, 1, i, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, o, 1, 1, 1)
    x = x.reshape(1, n * i, h, w_)
    if not up:
        x = F.conv2d(x, w.reshape(n * o, i, kh, kw), padding=kh // 2, groups=n)
        return x.reshape(n, o, h, w_)
    # The transposed conv takes [groups*I, O, k, k]; no kernel flip, as in NVlabs (flip_weight=False).
    x = F.conv_transpose2d(x, w.transpose(1, 2).reshape(n * i, o, kh, kw), stride=2, groups=n)
    return blur(x, f, pad=1).reshape(n, o, 2 * h, 2 * w_)


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: weight gain lr/sqrt(in), bias gain lr."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        assert activation in ("linear", "lrelu"), activation
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return _lrelu(x.matmul(w.t()) + b, LRELU_GAIN, None)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim], truncated towards `w_avg`.

    `w_avg_beta` is accepted for NVlabs compatibility; w_avg is a frozen buffer here.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim else 0
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim:
            if c is None:
                raise ValueError(f"this generator is conditional: pass c with shape [N, {self.c_dim}]")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cut] = self.w_avg.lerp(x[:, :cut], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) + noise + bias + leaky ReLU + clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        if up:
            self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, generator: NoiseGenerator,
                gain: float = 1.0) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w), up=self.up,
                             f=self.resample_filter if self.up else None)
        if self.use_noise and noise_mode == "random":
            x = x + draw_noise(x.shape[0], self.resolution, generator, x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return _lrelu(x + self.bias.reshape(1, -1, 1, 1), LRELU_GAIN * gain, clamp)


def draw_noise(n: int, resolution: int, generator: NoiseGenerator, device: torch.device) -> torch.Tensor:
    """[n, 1, R, R] standard normal noise from one generator, or one generator per sample.

    Per-sample generators make sample i's noise independent of the batch it is drawn in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else device
        return torch.randn([n, 1, resolution, resolution], generator=generator, device=dev).to(device)
    if len(generator) != n:
        raise ValueError(f"got {len(generator)} noise generators for a batch of {n}")
    return torch.cat([torch.randn([1, 1, resolution, resolution], generator=g, device=g.device).to(device)
                      for g in generator])


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation + bias + clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        x = x + self.bias.reshape(1, -1, 1, 1)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class SkipLayer(nn.Module):
    """The 'resnet' shortcut: NVlabs' Conv2dLayer(1x1, up=2, bias=False) applied after the
    upsampling, with the residual gain sqrt(0.5) folded into the weight gain."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.weight_gain = math.sqrt(0.5) / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_gain)


class SynthesisBlock(nn.Module):
    """One resolution: (const | up-conv0) -> conv1 -> torgb, with the architecture's skips."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", conv_clamp: float | None = None,
                 use_noise: bool = True):
        super().__init__()
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.register_buffer("resample_filter", fir_filter(), persistent=False)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True,
                                        use_noise=use_noise, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, use_noise=use_noise,
                                    conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = int(is_last or architecture == "skip")
        if self.num_torgb:
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if in_channels and architecture == "resnet":
            self.skip = SkipLayer(in_channels, out_channels)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str,
                generator: NoiseGenerator) -> tuple[torch.Tensor, torch.Tensor | None]:
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode, generator)
        elif self.architecture == "resnet":
            y = self.skip(upsample2d(x, self.resample_filter))
            x = self.conv0(x, next(w_iter), noise_mode, generator)
            x = y + self.conv1(x, next(w_iter), noise_mode, generator, gain=math.sqrt(0.5))
        else:
            x = self.conv0(x, next(w_iter), noise_mode, generator)
            x = self.conv1(x, next(w_iter), noise_mode, generator)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter))
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R].

    Channels per resolution: `channels` ({resolution: count}, int or str keys) when given, else
    min(channel_base // R, channel_max) as in NVlabs. `num_fp16_res` is accepted and ignored.
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, conv_clamp: float | None = None,
                 architecture: str = "skip", use_noise: bool = True, channels: dict | None = None):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        if channels is not None:
            self.channels = {int(r): int(c) for r, c in channels.items()}
            missing = [r for r in self.block_resolutions if r not in self.channels]
            if missing:
                raise ValueError(f"`channels` has no entry for resolutions {missing}")
        else:
            self.channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(self.channels[res // 2] if res > 4 else 0, self.channels[res], w_dim, res,
                                   img_channels, is_last=res == img_resolution, architecture=architecture,
                                   conv_clamp=conv_clamp, use_noise=use_noise)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", generator: NoiseGenerator = None) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> [N, img_channels, R, R] float32, about [-1, 1].

        `generator` (one torch.Generator, or one per sample) drives noise_mode='random'; noise is
        drawn block by block, conv0 before conv1, so equally seeded generators give equal noise.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if ws.is_cuda:
            _disable_tf32()
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), noise_mode, generator)
            w_idx += block.num_conv
        return img


def _disable_tf32() -> None:
    """NVlabs runs in true float32 on CUDA; TF32 would change the teacher's numbers."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


class Generator(nn.Module):
    """z [N, z_dim] -> image [N, img_channels, R, R]; NVlabs' init kwargs, kept in `init_kwargs`.

        G2 = Generator(**G.init_kwargs)      # same architecture (init_kwargs is JSON-able)
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None):
        super().__init__()
        mapping_kwargs, synthesis_kwargs = dict(mapping_kwargs or {}), dict(synthesis_kwargs or {})
        self.init_kwargs = copy.deepcopy(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                              img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                              synthesis_kwargs=synthesis_kwargs))
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const",
                generator: NoiseGenerator = None) -> torch.Tensor:
        """z [N, z_dim] -> [N, img_channels, R, R] float32, about [-1, 1]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, generator=generator)


# What two generators must share: to take the same w+ (pairs, sample grids, projection), and to be
# blended tensor by tensor (the same shapes may still mean other things when these differ).
LATENT_SPACE = ("num_ws", "w_dim", "img_resolution")
ARCHITECTURE = ("img_resolution", "img_channels", "z_dim", "c_dim", "w_dim", "num_ws")


def architecture_difference(a: Generator, b: Generator, attrs: tuple[str, ...] = ARCHITECTURE,
                            names: tuple[str, str] = ("the first model", "the second model")) -> str | None:
    """The first of `attrs` on which two generators differ, in words ('w_dim is 64 in base and 32
    in toon'), or None when they agree on all."""
    for attr in attrs:
        if getattr(a, attr, None) != getattr(b, attr, None):
            return f"{attr} is {getattr(a, attr, None)} in {names[0]} and {getattr(b, attr, None)} in {names[1]}"
    return None
