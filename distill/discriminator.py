"""The StyleGAN2 discriminator: NVlabs stylegan2-ada-pytorch's `Discriminator` in plain PyTorch, its
loader, and what a fine-tune loop needs around it (the R1 penalty, FreezeD).

    D = load_discriminator("network-snapshot.pkl")      # NVlabs 'D', or a rosinality training 'd'
    logits = D(images)                                  # [N, 3, R, R] in [-1, 1] -> [N, 1]
    r1 = r1_penalty(D, reals)                           # [N], differentiable: loss += gamma / 2 * r1.mean()
    D.freeze(blocks=2)                                  # FreezeD: b{R} and b{R/2} keep their weights

It computes what NVlabs' `training/networks.py` computes for the 'resnet' architecture (equalised
learning rate, [1,3,3,1] FIR low-pass before every 2x downsampling, minibatch standard deviation,
conv clamp) and its state_dict uses NVlabs' names (`b32.fromrgb.weight`, `b4.mbstd`, `b4.fc.bias`).
rosinality's `Discriminator` is the same network: its checkpoints are copied into this layout.
Float32 everywhere (`num_fp16_res` is accepted and ignored). Files without a readable discriminator
(rosinality `g_ema`-only files, TensorFlow pickles, our .safetensors generators) load with
`fallback=True`: a new one, initialised as NVlabs initialises it and sized to the file's generator.
"""
from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.checkpoint import (FORMATS_HINT, MAX_RESOLUTION, MAX_WIDTH, TORCH_LEGACY_MAGIC, CheckpointError,
                                PersistentObject, Table, _Budget, _container, _describe, _existing, _fill, _flatten,
                                _plain, _torch_load, _unpickle, load_generator)
from distill.safe_pickle import TFNetwork
from distill.stylegan2 import LRELU_GAIN, FullyConnectedLayer, Generator, _disable_tf32, fir_filter
from runtime.common import console

RESIDUAL_GAIN = math.sqrt(0.5)  # NVlabs' resnet blocks scale both branches by it; rosinality divides by sqrt(2)
FALLBACK_HINT = "pass fallback=True for a new discriminator initialised as NVlabs does, sized to the file's generator"


def downsample_fir(x: torch.Tensor, f: torch.Tensor, pad: int, down: int = 1) -> torch.Tensor:
    """The FIR filter `f` (gain 1) on every channel of [N, C, H, W], padded by `pad` on each side, keeping
    every `down`-th pixel: NVlabs' upfirdn2d(x, f, down, padding) for a symmetric filter."""
    c = x.shape[1]
    return F.conv2d(x, f[None, None].expand(c, 1, *f.shape), padding=pad, stride=down, groups=c)


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate conv (optionally 2x down) + bias + activation, times gain, then clamp.

    Downsampling is NVlabs' conv2d_resample: FIR-filter with padding k//2 + 1, then a stride-2 conv
    (a 1x1 conv filters and drops pixels first, which is the same and cheaper).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None):
        super().__init__()
        assert activation in ("linear", "lrelu") and down in (1, 2), (activation, down)
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        if down > 1:
            self.register_buffer("resample_filter", fir_filter(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        if self.down == 1:
            x = F.conv2d(x, w, padding=self.padding)
        elif w.shape[-1] == 1:
            x = F.conv2d(downsample_fir(x, self.resample_filter, pad=self.padding + 1, down=2), w)
        else:
            x = F.conv2d(downsample_fir(x, self.resample_filter, pad=self.padding + 1), w, stride=2)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2)
        x = x * (self.act_gain * gain)
        return x.clamp(-self.conv_clamp * gain, self.conv_clamp * gain) if self.conv_clamp is not None else x


class DiscriminatorBlock(nn.Module):
    """One resolution R -> R/2: [fromrgb] -> conv0 -> conv1 (down), plus the 1x1 `skip` (down)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 conv_clamp: float | None = None):
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"b{resolution}: in_channels must be 0 or {tmp_channels}, got {in_channels}")
        self.in_channels, self.resolution = in_channels, resolution
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    @property
    def layer_names(self) -> list[str]:
        """Its layers in NVlabs' counting order (`first_layer_idx`, `freeze_layers`)."""
        return (["fromrgb"] if self.in_channels == 0 else []) + ["conv0", "conv1", "skip"]

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=RESIDUAL_GAIN)
        return y + self.conv1(self.conv0(x), gain=RESIDUAL_GAIN)


class MinibatchStdLayer(nn.Module):
    """Appends `num_channels` feature maps: the standard deviation over groups of `group_size` samples
    (the whole batch when it is smaller or group_size is None), averaged over channels and pixels."""

    def __init__(self, group_size: int | None, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"a batch of {n} does not split into minibatch-stddev groups of {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n/g, F]
        return torch.cat([x, y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 end: mbstd -> 3x3 conv -> fc (lrelu) -> out, one logit per sample."""

    def __init__(self, in_channels: int, resolution: int = 4, mbstd_group_size: int | None = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.out(self.fc(self.conv(x).flatten(1)))


class Discriminator(nn.Module):
    """images [N, img_channels, R, R] in [-1, 1] -> logits [N, 1]; NVlabs' init kwargs, kept in `init_kwargs`.

    Channels per resolution: `channels` ({resolution: count}, int or str keys) when given, else
    min(channel_base // R, channel_max) as in NVlabs. Only the unconditional 'resnet' architecture
    (StyleGAN2 config-f, the ADA default) is built; `num_fp16_res` is accepted and ignored.
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int, architecture: str = "resnet",
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: float | None = None, cmap_dim: int | None = None, block_kwargs: dict | None = None,
                 mapping_kwargs: dict | None = None, epilogue_kwargs: dict | None = None,
                 channels: dict | None = None):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 8 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        if architecture != "resnet":
            raise ValueError(f"only the 'resnet' architecture is supported, got {architecture!r}")
        if c_dim:
            raise ValueError(f"only unconditional discriminators (c_dim=0) are supported, got c_dim={c_dim}")
        if block_kwargs:
            raise ValueError(f"unsupported block_kwargs {sorted(block_kwargs)}")
        self.init_kwargs = copy.deepcopy(dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
            epilogue_kwargs=dict(epilogue_kwargs or {}),
            **({"channels": {str(r): int(c) for r, c in channels.items()}} if channels is not None else {})))
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        if channels is not None:
            self.channels = {int(r): int(c) for r, c in channels.items()}
            if missing := [r for r in self.block_resolutions + [4] if r not in self.channels]:
                raise ValueError(f"`channels` has no entry for resolutions {missing}")
        else:
            self.channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        for res in self.block_resolutions:
            setattr(self, f"b{res}", DiscriminatorBlock(
                self.channels[res] if res < img_resolution else 0, self.channels[res], self.channels[res // 2],
                res, img_channels, conv_clamp=conv_clamp))
        self.b4 = DiscriminatorEpilogue(self.channels[4], conv_clamp=conv_clamp, **(epilogue_kwargs or {}))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """img [N, img_channels, R, R] float, [-1, 1] -> [N, 1] float32 logits (real > fake). `c` is
        NVlabs' label argument: None (or an empty [N, 0] tensor) for these unconditional networks."""
        if c is not None and c.numel():
            raise ValueError("this discriminator is unconditional: pass c=None")
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f"images must be [N, {self.img_channels}, {self.img_resolution}, "
                             f"{self.img_resolution}], got {list(img.shape)}")
        if img.is_cuda:
            _disable_tf32()  # NVlabs' training runs D in true float32 too
        x, img = None, img.to(torch.float32)
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x)

    @property
    def layer_names(self) -> list[str]:
        """The blocks' layers from the highest resolution down, as NVlabs' `--freezed` counts them
        (`b32.fromrgb`, `b32.conv0`, `b32.conv1`, `b32.skip`, `b16.conv0`, ...); the epilogue b4 is not counted."""
        return [f"b{r}.{name}" for r in self.block_resolutions for name in getattr(self, f"b{r}").layer_names]

    def freeze(self, blocks: int | None = None, layers: int | None = None) -> list[str]:
        """FreezeD: stop training the first `blocks` blocks (b{R}, b{R/2}, ...) or the first `layers` of
        `layer_names` (NVlabs' `--freezed=N`); everything else trains. Returns the frozen tensors' names.

        `freeze(blocks=0)` unfreezes all. A fine-tune loop gives the optimiser only the parameters
        that require grad; R1 differentiates by the input and is unaffected.
        """
        if (blocks is None) == (layers is None):
            raise ValueError("pass exactly one of blocks= or layers=")
        if blocks is not None:
            if not 0 <= blocks <= len(self.block_resolutions):
                raise ValueError(f"blocks must be in 0..{len(self.block_resolutions)}, got {blocks}")
            prefixes = [f"b{r}." for r in self.block_resolutions[:blocks]]
        else:
            if not 0 <= layers <= len(self.layer_names):
                raise ValueError(f"layers must be in 0..{len(self.layer_names)}, got {layers}")
            prefixes = [f"{name}." for name in self.layer_names[:layers]]
        frozen = []
        for name, p in self.named_parameters():
            p.requires_grad_(not name.startswith(tuple(prefixes)))
            if not p.requires_grad:
                frozen.append(name)
        return frozen


def r1_penalty(D: nn.Module, reals: torch.Tensor, c: torch.Tensor | None = None,
               create_graph: bool = True) -> torch.Tensor:
    """Per-sample R1 terms ||d D(reals).sum() / d reals||^2, summed over C, H, W: [N] float32.

    As NVlabs' loss computes it (the minibatch-stddev layer couples the samples of a group, so the
    batch is differentiated as a whole). With `create_graph` the result can be backpropagated into
    D's weights: NVlabs' regulariser adds r1.mean() * gamma / 2 (times its lazy-regularisation interval).
    """
    reals = reals.detach().to(torch.float32).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(reals, c).sum(), reals, create_graph=create_graph)
    return grad.square().sum(dim=[1, 2, 3])


# --- A new discriminator for a generator -------------------------------------------------------

def discriminator_for(G: Generator, seed: int = 0, source: str | os.PathLike = "generator",
                      why: str = "no discriminator given") -> Discriminator:
    """A Discriminator initialised as NVlabs initialises it (weights N(0, 1), biases 0; seeded, the
    global RNG untouched), sized to G: its resolution, image channels, conv clamp and per-resolution
    channels (for NVlabs generators that is min(channel_base // R, channel_max), as NVlabs' training
    sizes D; for rosinality and TF ones their own tables). Says so in one console line."""
    synthesis = G.init_kwargs.get("synthesis_kwargs", {})
    channels = {r: G.synthesis.channels[r] for r in G.synthesis.block_resolutions}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        D = Discriminator(c_dim=0, img_resolution=G.img_resolution, img_channels=G.img_channels,
                          conv_clamp=synthesis.get("conv_clamp"), channels=channels)
    widths = "/".join(str(D.channels[r]) for r in D.block_resolutions + [4])
    console.print(f"{source}: {why}; a new discriminator, initialised as NVlabs does (seed {seed}): "
                  f"{D.img_resolution} px, channels {widths} (b{D.img_resolution}..b4)", soft_wrap=True)
    return D


# --- Loading -------------------------------------------------------------------------------------

class _NoDiscriminator(CheckpointError):
    """The file holds no discriminator that can be read: `fallback=True` may build one."""


DISCRIMINATOR_ARGS = ("c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
                      "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs")
# Training-time options: CUDA memory formats, and NVlabs' own FreezeD (D.freeze does that here).
BLOCK_RUNTIME_ONLY = {"fp16_channels_last", "freeze_layers"}


def _check_filters(source: dict, suffix: str, path: Path) -> None:
    """Every stored resampling filter must be the [1,3,3,1] one this network hard-codes."""
    for key, f in source.items():
        if key.endswith(suffix) and not (tuple(f.shape) == (4, 4) and torch.allclose(torch.as_tensor(f), fir_filter())):
            raise CheckpointError(f"unsupported resampling filter '{key}' (only [1, 3, 3, 1])", path)


def _build(path: Path, kwargs: dict) -> Discriminator:
    """The Discriminator `kwargs` describe, on the meta device (shapes only): _fill checks the
    file's tensors against it before the real one is allocated. Bounded as generators are."""
    resolution, channels = kwargs.get("img_resolution"), kwargs.get("channels") or {}
    widths = [kwargs.get("img_channels"), *channels.values()] if isinstance(channels, dict) else [None]
    if not (type(resolution) is int and 4 <= resolution <= MAX_RESOLUTION and resolution & (resolution - 1) == 0
            and all(type(c) is int and 1 <= c <= MAX_WIDTH for c in widths)):
        raise CheckpointError(f"unsupported discriminator configuration: img_resolution {str(resolution)[:20]}, "
                              f"channels {str(widths)[:80]} (supported: a power of two 4..{MAX_RESOLUTION}, "
                              f"widths 1..{MAX_WIDTH})", path, "the file is damaged, or holds another network")
    try:
        with torch.device("meta"):
            return Discriminator(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"unsupported discriminator configuration: {e}", path) from None


def _from_nvlabs(data: dict, network: str, path: Path) -> Discriminator:
    found = [k for k, v in data.items() if isinstance(v, PersistentObject)]
    if not any(data[k].class_name == "Discriminator" for k in found):
        raise _NoDiscriminator(f"no discriminator in it (found: {', '.join(found)})", path, FALLBACK_HINT)
    obj = data.get(network)
    if not isinstance(obj, PersistentObject):
        raise CheckpointError(f"no network '{network}' in it (found: {', '.join(found)})", path, "pass network='D'")
    if obj.class_name != "Discriminator":
        raise CheckpointError(f"'{network}' is a {obj.class_name}, not a Discriminator", path, "pass network='D'")
    kwargs = _plain(dict(zip(DISCRIMINATOR_ARGS, obj.state.get("_init_args", ()))) | dict(obj.state.get("_init_kwargs", {})),
                    _Budget(path, "init kwargs"))
    block = {k: v for k, v in (kwargs.pop("block_kwargs", None) or {}).items() if k not in BLOCK_RUNTIME_ONLY}
    epilogue = dict(kwargs.pop("epilogue_kwargs", None) or {})
    for options in (block, epilogue):
        for key, only in (("resample_filter", [1, 3, 3, 1]), ("activation", "lrelu")):
            if (value := options.pop(key, only)) != only:
                raise CheckpointError(f"unsupported {key} {value!r} (only {only!r})", path)
    source = _flatten(obj, path)
    _check_filters(source, "resample_filter", path)
    D = _build(path, kwargs | {"block_kwargs": block, "epilogue_kwargs": epilogue})
    return _fill(D, source, path, ignored=("resample_filter",))


ROSINALITY_NETWORKS = {"D": "d"}


def _from_rosinality(ckpt: dict, network: str, path: Path) -> Discriminator:
    key = ROSINALITY_NETWORKS.get(network, network)
    if "d" not in ckpt:
        raise _NoDiscriminator(f"no discriminator in it: no rosinality 'd' (found: {', '.join(map(str, ckpt))}); "
                               "only training checkpoints hold one", path, FALLBACK_HINT)
    sd = ckpt.get(key)
    if not isinstance(sd, dict):
        named = f"'{network}'" + (f" (rosinality '{key}')" if key != network else "")
        raise CheckpointError(f"no network {named} in it (found: {', '.join(map(str, ckpt))})", path, "pass network='D'")
    blocks = sorted(int(m[1]) for k in sd if (m := re.fullmatch(r"convs\.(\d+)\.conv1\.0\.weight", k)))
    if not blocks or "convs.0.0.weight" not in sd or "final_conv.0.weight" not in sd or blocks != list(range(1, len(blocks) + 1)):
        raise CheckpointError(f"'{key}' is not a rosinality StyleGAN2 discriminator (no convs.* / final_conv)", path)
    size = 2 ** (len(blocks) + 2)
    channels = {size: int(sd["convs.0.0.weight"].shape[0])}
    channels |= {size >> i: int(sd[f"convs.{i + 1}.conv1.0.weight"].shape[0]) for i in range(len(blocks))}
    channels[4] = int(sd["final_conv.0.weight"].shape[0])
    # rosinality fixes the stddev group at 4 and stddev_feat at 1; the final conv's input shows the latter.
    mbstd = int(sd["final_conv.0.weight"].shape[1]) - channels[4]
    D = _build(path, dict(c_dim=0, img_resolution=size, img_channels=int(sd["convs.0.0.weight"].shape[1]),
                          channels=channels, epilogue_kwargs={"mbstd_group_size": 4, "mbstd_num_channels": mbstd}))
    # ConvLayer = [Blur] + EqualConv2d + FusedLeakyReLU (the bias); ResBlock conv1/conv2 are NVlabs' conv0/conv1.
    table: Table = {f"b{size}.fromrgb.weight": ("convs.0.0.weight", None), f"b{size}.fromrgb.bias": ("convs.0.1.bias", None)}
    for i in range(len(blocks)):
        src, dst = f"convs.{i + 1}", f"b{size >> i}"
        table |= {f"{dst}.conv0.weight": (f"{src}.conv1.0.weight", None), f"{dst}.conv0.bias": (f"{src}.conv1.1.bias", None),
                  f"{dst}.conv1.weight": (f"{src}.conv2.1.weight", None), f"{dst}.conv1.bias": (f"{src}.conv2.2.bias", None),
                  f"{dst}.skip.weight": (f"{src}.skip.1.weight", None)}
    table |= {"b4.conv.weight": ("final_conv.0.weight", None), "b4.conv.bias": ("final_conv.1.bias", None),
              "b4.fc.weight": ("final_linear.0.weight", None), "b4.fc.bias": ("final_linear.0.bias", None),
              "b4.out.weight": ("final_linear.1.weight", None), "b4.out.bias": ("final_linear.1.bias", None)}
    _check_filters(sd, ".kernel", path)
    return _fill(D, sd, path, table, ignored=(".kernel",))


def _read(path: Path, network: str) -> Discriminator:
    container = _container(path)
    if container == "safetensors":
        raise _NoDiscriminator("a toonify-fast .safetensors generator holds no discriminator", path, FALLBACK_HINT)
    if container == "zip":
        return _from_rosinality(_torch_load(path), network, path)
    data = _unpickle(path)
    if isinstance(data, dict) and any(isinstance(v, PersistentObject) for v in data.values()):
        return _from_nvlabs(data, network, path)
    if isinstance(data, (tuple, list)) and len(data) == 3 and all(isinstance(n, TFNetwork) for n in data):
        raise _NoDiscriminator("TensorFlow discriminators are not read (that needs NVlabs' convert_tf_discriminator "
                               "mapping)", path, FALLBACK_HINT)
    if isinstance(data, int) and data == TORCH_LEGACY_MAGIC:
        return _from_rosinality(_torch_load(path), network, path)
    raise CheckpointError(f"not a StyleGAN2 checkpoint: {_describe(data)}", path, FORMATS_HINT)


def load_discriminator(path: str | os.PathLike, network: str = "D", fallback: bool = False, seed: int = 0,
                       device: str | torch.device = "cpu") -> Discriminator:
    """Read a discriminator into a trainable Discriminator (eval mode, which changes nothing it computes).

    NVlabs network pickles: `network` names it ('D'). rosinality training checkpoints: 'D' reads `d`,
    converted to NVlabs' layout. A file with no readable discriminator raises CheckpointError, or with
    `fallback=True` gives `discriminator_for(load_generator(path), seed)`, said in one console line.
    """
    path = _existing(path)
    try:
        with torch.no_grad():
            D = _read(path, network)
    except _NoDiscriminator as e:
        if not fallback:
            raise
        D = discriminator_for(load_generator(path), seed=seed, source=path, why=e.reason)
    return D.eval().to(device)
