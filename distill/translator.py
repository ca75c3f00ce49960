"""The student: pix2pixHD's global generator and local enhancer, and its multiscale discriminator.

    G = build_generator("lite")          # [N, 3, H, W] in [-1, 1] -> same shape, H and W multiples of 8

`full` is pix2pixHD's default generator; `lite` is a smaller one chosen by measurement with
ONNX Runtime on a 2-core CPU (bench/student.py). Every layer exports to plain ONNX ops.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch", "none")
BLOCKS = ("basic", "separable")
UPSAMPLES = ("transpose", "resize")


@dataclass(frozen=True)
class StudentConfig:
    arch: str = "global"          # 'global' | 'local' (a 2x local enhancer around a global generator)
    ngf: int = 64                 # channels after the first 7x7 conv of the outermost generator
    n_downsampling: int = 4       # stride-2 convs of the global generator, each doubling channels
    n_blocks: int = 9             # residual blocks at the lowest resolution
    norm: str = "instance"        # 'instance' | 'batch' | 'none'
    block: str = "basic"          # 'basic' (two 3x3 convs) | 'separable' (two depthwise 3x3 + 1x1)
    upsample: str = "transpose"   # 'transpose' (3x3 stride-2 transposed conv) | 'resize' (nearest x2, 3x3 conv)
    max_channels: int = 1024      # cap on the doubling (pix2pixHD's full model reaches exactly 1024)
    n_blocks_local: int = 3       # residual blocks of the local enhancer (arch 'local' only)
    styles: int = 0               # >0: a conditioned student (conditional instance norm) for this many styles

    def __post_init__(self):
        for name, value, allowed in (("arch", self.arch, ("global", "local")), ("norm", self.norm, NORMS),
                                     ("block", self.block, BLOCKS), ("upsample", self.upsample, UPSAMPLES)):
            if value not in allowed:
                raise ValueError(f"StudentConfig.{name} must be one of {allowed}, got {value!r}")
        if self.ngf < 1 or self.n_downsampling < 0 or self.n_blocks < 0 or self.n_blocks_local < 0:
            raise ValueError(f"StudentConfig needs ngf >= 1 and non-negative depths, got {self}")
        if self.styles < 0 or (self.styles and self.norm != "instance"):
            raise ValueError(f"a conditioned student (styles {self.styles}) needs norm 'instance', got {self.norm!r}")

    @property
    def layer_norm(self) -> str:
        """The norm its layers are built with: 'conditional' (instance norm with a per-condition
        scale and shift) for a conditioned student, else `norm`."""
        return "conditional" if self.styles else self.norm

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this (every stride-2 step must divide evenly)."""
        return 2 ** (self.n_downsampling + (self.arch == "local"))


PRESETS = {
    # pix2pixHD's command-line defaults: 182M parameters, 435 GFLOPs at 512x512 by count_flops
    # (the ~550 often quoted counts the transposed convs at their output size).
    "full": StudentConfig(),
    # pix2pixHD's own global generator at ngf 16, 3 downsamplings (128 channels at 1/8 scale), 9
    # basic blocks, instance norm: 2.85M parameters, 7.0 GFLOPs per 256x256 image. Chosen among
    # candidates by their speed on ONNX Runtime CPU (bench/student.py measures them all; the
    # figures are in bench/results/student.json and the README), against the targets of 15 images/s
    # at 256 px and 250 ms at 512 px with headroom for slower CPUs and busy machines:
    # - depthwise-separable blocks save FLOPs but not time (ONNX Runtime runs dense 3x3 convs far
    #   more efficiently per FLOP), and keep fewer weights;
    # - 4 downsamplings are fast but leave a 16x16 grid at 256 px (pix2pixHD keeps 32x32);
    # - batch norm is faster (folded into the convs), but instance norm, pix2pixHD's choice,
    #   normalises each photo's contrast and behaves the same at any training batch size;
    # - resize-conv upsampling and 12 blocks cost time that slower CPUs need.
    "lite": StudentConfig(ngf=16, n_downsampling=3, n_blocks=9, norm="instance"),
}


class ConditionalInstanceNorm(nn.Module):
    """Instance norm, then a per-channel scale and shift chosen by the condition (conditional
    instance normalisation, Dumoulin et al. 2017). Student.forward sets `affine` ([N, 2C]: scale
    minus 1, then shift) from its StyleCondition before the network runs; it holds no weights.

    The batch is normalised as one [1, N*C, H, W] instance norm with an [N*C] scale and bias: the
    same function as a norm followed by a multiply and an add, exported as ONNX's own
    InstanceNormalization with computed scale and bias, which costs what a plain norm costs."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.affine: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine is None:
            raise RuntimeError("a conditioned student runs as student(x, style, strength)")
        c = self.channels
        scale, shift = 1 + self.affine[:, :c], self.affine[:, c:]
        y = F.instance_norm(x.reshape(1, -1, x.shape[2], x.shape[3]), weight=scale.reshape(-1),
                            bias=shift.reshape(-1), eps=1e-5)
        return y.view_as(x)


class StyleCondition(nn.Module):
    """(style int64 [N], strength float32 [N]) -> [N, 2 * sum of the norms' channels]: every
    conditional norm's scale (minus 1) and shift. The code is strength * embedding(style), so at
    strength 0 every style gives one and the same condition (the photo's reconstruction); the last
    layer starts at zero, so a new conditioned student starts as the plain one."""

    def __init__(self, styles: int, channels: int, dim: int = 16, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(styles, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, style: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(style) * strength.reshape(-1, 1).to(self.embed.weight.dtype))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "conditional":
        return ConditionalInstanceNorm(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _conv(cin: int, cout: int, norm: str, kernel: int = 3, stride: int = 1, groups: int = 1,
          relu: bool = True) -> list[nn.Module]:
    """Reflect-padded conv (stride 1) or zero-padded strided conv, then norm and ReLU."""
    pad = kernel // 2
    layers: list[nn.Module] = []
    if stride == 1 and pad:
        # Reflection keeps image borders free of the dark frame zero padding teaches the generator.
        layers.append(nn.ReflectionPad2d(pad))
        pad = 0
    # A conv followed by a norm that subtracts the mean needs no bias.
    layers.append(nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=norm == "none"))
    layers.append(_norm(norm, cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class ResidualBlock(nn.Module):
    """x + f(x) at constant channels; f is two 3x3 convs, or two depthwise-separable 3x3 convs."""

    def __init__(self, channels: int, norm: str, kind: str):
        super().__init__()
        if kind == "basic":
            layers = _conv(channels, channels, norm) + _conv(channels, channels, norm, relu=False)
        else:
            layers = (_conv(channels, channels, norm, groups=channels, relu=False) + _conv(channels, channels, norm, 1)
                      + _conv(channels, channels, norm, groups=channels, relu=False)
                      + _conv(channels, channels, norm, 1, relu=False))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _up(cin: int, cout: int, norm: str, kind: str) -> list[nn.Module]:
    if kind == "transpose":
        conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=norm == "none")
        return [conv, _norm(norm, cout), nn.ReLU(inplace=True)]
    # Resize-conv: no checkerboard artefacts, at 4x the multiply-adds of the transposed conv.
    return [nn.Upsample(scale_factor=2, mode="nearest")] + _conv(cin, cout, norm)


def _to_rgb(cin: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(3), nn.Conv2d(cin, 3, 7), nn.Tanh()]


class GlobalGenerator(nn.Module):
    """pix2pixHD's global generator: 7x7 conv, downsampling, residual blocks, upsampling, 7x7 conv, tanh."""

    def __init__(self, cfg: StudentConfig, ngf: int | None = None):
        super().__init__()
        ngf = cfg.ngf if ngf is None else ngf
        widths = [min(ngf * 2 ** i, cfg.max_channels) for i in range(cfg.n_downsampling + 1)]
        self.head = nn.Sequential(*_conv(3, widths[0], cfg.layer_norm, kernel=7))
        self.down = nn.Sequential(*[layer for cin, cout in zip(widths, widths[1:])
                                    for layer in _conv(cin, cout, cfg.layer_norm, stride=2)])
        self.blocks = nn.Sequential(*[ResidualBlock(widths[-1], cfg.layer_norm, cfg.block) for _ in range(cfg.n_blocks)])
        self.up = nn.Sequential(*[layer for cin, cout in zip(widths[::-1], widths[-2::-1])
                                  for layer in _up(cin, cout, cfg.layer_norm, cfg.upsample)])
        self.to_rgb = nn.Sequential(*_to_rgb(widths[0]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, ngf, H, W]: everything but the final 7x7 conv and tanh."""
        return self.up(self.blocks(self.down(self.head(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_rgb(self.features(x))


class LocalEnhancer(nn.Module):
    """pix2pixHD's local enhancer: a global generator (2x ngf) sees the input at half resolution;
    its features are added to a full-resolution branch's downsampled features, then refined."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.global_net = GlobalGenerator(cfg, ngf=cfg.ngf * 2)
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.local_down = nn.Sequential(*_conv(3, cfg.ngf, cfg.layer_norm, kernel=7),
                                        *_conv(cfg.ngf, cfg.ngf * 2, cfg.layer_norm, stride=2))
        blocks = [ResidualBlock(cfg.ngf * 2, cfg.layer_norm, cfg.block) for _ in range(cfg.n_blocks_local)]
        self.local_up = nn.Sequential(*blocks, *_up(cfg.ngf * 2, cfg.ngf, cfg.layer_norm, cfg.upsample), *_to_rgb(cfg.ngf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_up(self.local_down(x) + self.global_net.features(self.downsample(x)))


class Student(nn.Module):
    """The generator with its config attached; checks the input size outside ONNX export.

    A conditioned student (cfg.styles > 0) also takes style (int64 [N], an index into its styles)
    and strength (float32 [N] in [0, 1]); its `condition` sets every norm's scale and shift."""

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        self.net = GlobalGenerator(cfg) if cfg.arch == "global" else LocalEnhancer(cfg)
        if cfg.styles:
            self.condition = StyleCondition(cfg.styles, sum(m.channels for m in self.conditional_norms()))

    def conditional_norms(self) -> list[ConditionalInstanceNorm]:
        return [m for m in self.net.modules() if isinstance(m, ConditionalInstanceNorm)]

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None,
                strength: torch.Tensor | None = None) -> torch.Tensor:
        m = self.cfg.size_multiple
        # Traced shapes would freeze this check into the exported graph; the runtime checks sizes
        # itself (runtime.engine.Toonifier.check_size) before a run.
        if not torch.onnx.is_in_onnx_export() and (x.shape[-2] % m or x.shape[-1] % m):
            raise ValueError(f"input {tuple(x.shape)}: H and W must be multiples of {m} for this student")
        if self.cfg.styles:
            if style is None or strength is None:
                raise ValueError("a conditioned student needs a style and a strength for every image")
            affine, start = self.condition(style, strength), 0
            for norm in self.conditional_norms():
                norm.affine, start = affine[:, start:start + 2 * norm.channels], start + 2 * norm.channels
            try:
                return self.net(x)
            finally:
                for norm in self.conditional_norms():
                    norm.affine = None      # holds no graph past the call (and the model stays deep-copyable)
        return self.net(x)


def fold_condition(model: Student, style: int, strength: float) -> Student:
    """A copy of a conditioned student fixed at one (style, strength): every conditional norm
    becomes a plain affine instance norm holding that condition's scale and shift, the condition
    network is dropped, and the copy takes x alone ([N, 3, H, W] in [-1, 1]) and computes what
    model(x, style, strength) does, at the cost of the plain student."""
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        affine = folded.condition(torch.tensor([style]), torch.tensor([float(strength)]))[0]
    start = 0
    for name, norm in list(folded.net.named_modules()):
        if isinstance(norm, ConditionalInstanceNorm):
            c = norm.channels
            plain = nn.InstanceNorm2d(c, affine=True)
            with torch.no_grad():
                plain.weight.copy_(1 + affine[start:start + c])
                plain.bias.copy_(affine[start + c:start + 2 * c])
            start += 2 * c
            parent, _, attr = name.rpartition(".")
            setattr(folded.net.get_submodule(parent) if parent else folded.net, attr, plain)
    del folded.condition
    folded.cfg = replace(model.cfg, styles=0)
    return folded.requires_grad_(False)


def resolve_preset(preset: str | StudentConfig) -> StudentConfig:
    if isinstance(preset, StudentConfig):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def init_weights(module: nn.Module) -> None:
    """pix2pixHD's initialisation: conv weights N(0, 0.02), batch-norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_generator(preset: str | StudentConfig, **overrides) -> Student:
    """A freshly initialised student: [N, 3, H, W] float32 in [-1, 1] -> [N, 3, H, W] in [-1, 1].

    `preset` is a name in PRESETS or a StudentConfig; `overrides` replace config fields
    (build_generator('lite', norm='batch')). H and W must be multiples of `cfg.size_multiple`.
    """
    cfg = resolve_preset(preset)
    model = Student(replace(cfg, **overrides) if overrides else cfg)
    init_weights(model)
    return model


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs (n_layers stride 2, then two stride 1); returns every layer's output."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int, norm: str):
        super().__init__()
        widths = [min(ndf * 2 ** i, 512) for i in range(n_layers + 1)]
        # pix2pixHD pads 4x4 convs by 2, so each layer grows the map by one pixel at stride 1.
        layers = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, 2, 2), nn.LeakyReLU(0.2, True))]
        for i in range(1, n_layers + 1):
            layers.append(nn.Sequential(nn.Conv2d(widths[i - 1], widths[i], 4, 2 if i < n_layers else 1, 2),
                                        _norm(norm, widths[i]), nn.LeakyReLU(0.2, True)))
        layers.append(nn.Sequential(nn.Conv2d(widths[-1], 1, 4, 1, 2)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs on the image at full, 1/2, 1/4... resolution (3x3 average pooling between).

    Input: concat(source, image) = [N, 6, H, W] in [-1, 1] (a conditioned student's D: concat(source,
    condition_planes, image), in_channels 6 + styles + 1). Output: one list per scale (full
    resolution first) of n_layers + 2 feature maps; the last map of each scale is the prediction.
    """

    def __init__(self, in_channels: int = 6, ndf: int = 64, n_layers: int = 3, num_D: int = 2,
                 norm: str = "instance"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.scales = nn.ModuleList(NLayerDiscriminator(in_channels, ndf, n_layers, norm) for _ in range(num_D))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for i, net in enumerate(self.scales):
            if i:
                x = self.downsample(x)
            outputs.append(net(x))
        return outputs


def condition_planes(like: torch.Tensor, style: torch.Tensor, strength: torch.Tensor, styles: int) -> torch.Tensor:
    """A conditioned student's condition as image planes for its discriminator: [N, styles + 1, H, W],
    one-hot(style) times strength, then strength, constant over the H x W of `like` ([N, C, H, W]).

    Concatenated with the source and the image, they let the discriminator judge a toon against
    the style and strength asked for, so the adversarial loss can punish a wrong one; at strength
    0 every style gives the same planes, as every style then asks for the photo."""
    s = strength.to(like.dtype).reshape(-1, 1)
    code = torch.cat([F.one_hot(style.long(), styles).to(like.dtype) * s, s], 1)
    return code[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3])


def count_flops(model: nn.Module, h: int, w: int) -> int:
    """Floating-point operations (2 per multiply-add of convs and matmuls) for one [1, 3, h, w] image.

    Runs on the meta device, so it costs no memory or compute even for the full model.
    """
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode
    state = {name: torch.empty_like(t, device="meta")
             for name, t in [*model.named_parameters(), *model.named_buffers()]}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        functional_call(model, state, (torch.empty(1, 3, h, w, device="meta"),))
    return counter.get_total_flops()
