"""Resolution-dependent blending of two StyleGAN2 generators (Toonify, Pinkney & Adler 2020).

    toonify-fast distill blend --base ffhq.pkl --toon cartoon.pkl --swap-res 32 -o blended.safetensors

The low-resolution synthesis blocks (head shape, eyes: the *structure*) come from the toon
fine-tune, the high-resolution blocks (rendering: the *texture*) from the base FFHQ model.
Each tensor is W = y * W_texture + (1 - y) * W_structure, with one weight y per synthesis block:

- hard swap: y = 0 for blocks at resolution <= swap_res (toon), y = 1 above it (base);
- smooth: y = 1 / (1 + exp(-(pos - pos_swap) / width)) with pos = log2(R) - 2, the block index
  (b4 -> 0, b8 -> 1, ...), and pos_swap = log2(swap_res) - 2 + 0.5, so the midpoint y = 0.5 falls
  between the swap block and the next one and width -> 0 gives back the hard swap;
- explicit: one y per block resolution, lowest first.

A strength s in [0, 1] scales every tensor's toon share: y_l(s) = 1 - s * (1 - y_l), so s = 1 is
the blend as configured and s = 0 the base model itself (the photo's own reconstruction); in
between the toon weight of each layer is s times its full value. Since a blend is linear in the
weights, the same model at strength s is the base and the blend interpolated per tensor,
W(s) = (1 - s) * W_base + s * W_blend (at_strength): what `distill pairs --strengths` and
`distill sample --strengths` use, given blended files.

Everything outside the synthesis blocks (mapping.*, mapping.w_avg) and the noise constants
come whole from one model, `mapping_from` ('base' by default): pairs are made by mapping a
latent once with the base mapping network and feeding the same w+ and noise to the base and
the blended synthesis, which only lines up if the blend shares the base's mapping and noise.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from distill.checkpoint import file_sha256, load_generator, save_generator
from distill.stylegan2 import Generator, architecture_difference
from distill.weights import state_dict_difference
from runtime.common import ToonifyError, UsageError, check_writable, console, jsonable, note, output_suffix
from runtime.options import setting

_BLOCK_KEY = re.compile(r"^synthesis\.b(\d+)\.")


class BlendError(ToonifyError):
    """Two models that cannot be blended, or blend settings that make no sense."""


@dataclass(frozen=True)
class BlendConfig:
    swap_res: int = setting(32, "Blocks at this resolution and below come from the toon model.")
    width: float | None = setting(None, "Smooth swap: logistic ramp of this width, in blocks, around swap-res "
                                        "(default: hard swap).")
    weights: tuple[float, ...] | None = setting(
        None, "Explicit base share per block, b4 first, e.g. 0,0,0,0.5,1,1 (replaces --swap-res).",
        cli=Optional[str], parse=lambda text: None if text is None else parse_block_weights(text))
    mapping_from: str = setting("base", "Mapping network, w_avg and noise constants from 'base' (keeps pairs "
                                        "aligned) or 'toon'.", flags=("--mapping",))
    strength: float = setting(1.0, "Write the blend at this strength: every toon share times it (0 is the base "
                                    "model, 1 the blend as configured).", min=0.0, max=1.0)

    def __post_init__(self):
        if self.swap_res < 1 or self.swap_res & (self.swap_res - 1):
            raise BlendError(f"swap_res must be a power of two, got {self.swap_res}",
                             hint="use a block resolution such as 16, 32 or 64 (2 swaps no block)")
        if self.width is not None and not (math.isfinite(self.width) and self.width > 0):
            raise BlendError(f"width must be a positive number of blocks, got {self.width}",
                             hint="try --width 0.5; leave it out for a hard swap")
        if self.weights is not None:
            if self.width is not None:
                raise BlendError("explicit weights and a smooth width exclude each other",
                                 hint="give either --weights or --width")
            bad = [y for y in self.weights if not 0.0 <= y <= 1.0]
            if bad:
                raise BlendError(f"per-block weights must lie in [0, 1], got {bad[0]}",
                                 hint="1 takes a block from the base model, 0 from the toon model")
        if self.mapping_from not in ("base", "toon"):
            raise BlendError(f"mapping_from must be 'base' or 'toon', got {self.mapping_from!r}")
        check_strength(self.strength)


def parse_block_weights(text: str) -> tuple[float, ...]:
    """'0,0,0.5,1' -> (0.0, 0.0, 0.5, 1.0): base shares per block, lowest resolution first."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise BlendError(f"cannot read per-block weights {text!r}",
                         hint="give comma-separated numbers in [0, 1], one per block from b4 up: "
                              "0,0,0,0.5,1,1") from None


def block_resolution(key: str) -> int | None:
    """The synthesis block resolution a state_dict key belongs to ('synthesis.b32.conv0.weight' -> 32)."""
    m = _BLOCK_KEY.match(key)
    return int(m.group(1)) if m else None


def hard_swap_weight(res: int, swap_res: int) -> float:
    """Base (texture) share of block `res`: 0 at or below swap_res (toon), 1 above it (base)."""
    return 0.0 if res <= swap_res else 1.0


def smooth_weight(res: int, swap_res: int, width: float) -> float:
    """Base share of block `res` on the logistic ramp over block positions (see module docstring)."""
    pos = math.log2(res) - 2
    pos_swap = math.log2(swap_res) - 2 + 0.5
    x = (pos - pos_swap) / width
    # The two algebraically equal forms keep exp() from overflowing at small widths.
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def block_weights(resolutions: list[int], cfg: BlendConfig) -> dict[int, float]:
    """Base share y in [0, 1] for each synthesis block resolution (ascending, b4 first)."""
    resolutions = sorted(resolutions)
    if cfg.weights is not None:
        if len(cfg.weights) != len(resolutions):
            raise BlendError(f"{len(cfg.weights)} per-block weights given, the model has "
                             f"{len(resolutions)} blocks ({', '.join(f'b{r}' for r in resolutions)})",
                             hint="give one weight per block resolution, lowest first")
        return dict(zip(resolutions, cfg.weights))
    if cfg.width is None:
        return {r: hard_swap_weight(r, cfg.swap_res) for r in resolutions}
    return {r: smooth_weight(r, cfg.swap_res, cfg.width) for r in resolutions}


def layer_weights(keys: list[str], cfg: BlendConfig) -> dict[str, float]:
    """Base share y for every state_dict key: its block's weight for synthesis tensors; for
    noise constants and everything outside the synthesis blocks, 1 (mapping_from='base') or 0."""
    whole = 1.0 if cfg.mapping_from == "base" else 0.0
    per_block = block_weights(sorted({r for k in keys if (r := block_resolution(k)) is not None}), cfg)
    return {k: whole if block_resolution(k) is None or k.endswith(".noise_const") else per_block[block_resolution(k)]
            for k in keys}


def check_strength(strength: float) -> float:
    """`strength` as a float, or BlendError when it lies outside [0, 1]."""
    if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise BlendError(f"strength must lie in [0, 1], got {strength}",
                         hint="0 is the base model (no toon), 1 the full blend")
    return float(strength)


def strength_weights(weights: Mapping[str, float], strength: float) -> dict[str, float]:
    """Base shares at a strength: y(s) = 1 - s * (1 - y) for every key (the toon share 1 - y scaled by s)."""
    s = check_strength(strength)
    # At s = 1 the weights are returned as they are: 1 - (1 - y) may round away from y.
    return dict(weights) if s == 1.0 else {k: 1.0 - s * (1.0 - y) for k, y in weights.items()}


def at_strength(base: Mapping[str, torch.Tensor], blended: Mapping[str, torch.Tensor],
                strength: float) -> dict[str, torch.Tensor]:
    """A blend at `strength` from the base and the full blend's state_dicts: (1 - s) * base + s * blended
    per tensor, which is the blend whose every toon share is s times the blend's."""
    s = check_strength(strength)
    return blend_state_dicts(base, blended, lambda key: 1.0 - s)


def check_same_architecture(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                            names: tuple[str, str] = ("base", "toon")) -> None:
    """Raise BlendError naming the first key or shape on which two state_dicts differ."""
    why = state_dict_difference(a, b, (f"the {names[0]} model", f"the {names[1]} model"))
    if why is not None:
        raise BlendError(f"the models differ in architecture: {why}",
                         hint="blend a fine-tune with the model it was fine-tuned from")


def blend_state_dicts(texture: Mapping[str, torch.Tensor], structure: Mapping[str, torch.Tensor],
                      weights: Mapping[str, float] | Callable[[str], float]) -> dict[str, torch.Tensor]:
    """W = y * W_texture + (1 - y) * W_structure for every key, y = weights[key] (or weights(key)).

    texture is the base (FFHQ) state_dict, structure the toon fine-tune's; both must hold the
    same keys and shapes (BlendError otherwise). y = 1 and y = 0 copy a tensor exactly. Returns
    new tensors in texture's key order and dtypes; the inputs are not modified.
    """
    check_same_architecture(texture, structure, ("texture", "structure"))
    weight_of = weights if callable(weights) else weights.__getitem__
    out = {}
    for key, t in texture.items():
        s, y = structure[key], float(weight_of(key))
        if y == 1.0:
            out[key] = t.detach().clone()
        elif y == 0.0:
            out[key] = s.detach().clone().to(t.dtype)
        else:
            out[key] = (y * t.detach().float() + (1.0 - y) * s.detach().float()).to(t.dtype)
    return out


def blend_generators(base: Generator, toon: Generator, cfg: BlendConfig, strength: float = 1.0) -> Generator:
    """A new Generator whose weights blend `base` (texture) and `toon` (structure) per `cfg`, at
    `strength` (strength_weights: 0 gives the base, 1 the blend as configured).

    Both must share the architecture (keys, shapes, z_dim, w_dim, num_ws, resolution); other
    construction settings (conv_clamp, fp16 layers) are taken from the base model.
    """
    why = architecture_difference(base, toon, names=("the base model", "the toon model"))
    if why is not None:
        raise BlendError(f"the models differ in architecture: {why}",
                         hint="blend a fine-tune with the model it was fine-tuned from")
    texture, structure = base.state_dict(), toon.state_dict()
    check_same_architecture(texture, structure, ("base", "toon"))
    differing = sorted(k for k in set(base.init_kwargs) | set(toon.init_kwargs)
                       if base.init_kwargs.get(k) != toon.init_kwargs.get(k))
    if differing:
        note(f"the models' settings differ in {', '.join(differing)}; the blend uses the base model's")
    blended = blend_state_dicts(texture, structure, strength_weights(layer_weights(list(texture), cfg), strength))
    G = Generator(**base.init_kwargs)
    G.load_state_dict(blended)
    return G.eval().requires_grad_(False)


def blend_files(base_path: str | Path, toon_path: str | Path, cfg: BlendConfig, out_path: str | Path) -> Path:
    """Load two checkpoints (any format load_generator reads), blend them and write a .safetensors
    with provenance in its metadata: both sources' names and sha256, the config and per-block weights."""
    out_path = Path(out_path)
    if output_suffix(out_path, ".safetensors") != ".safetensors":
        raise UsageError("the blended model is written as .safetensors", path=out_path,
                         hint=f"use -o {out_path.with_suffix('.safetensors').name}")
    for source in (base_path, toon_path):
        if out_path.resolve() == Path(source).resolve():
            raise UsageError("the output would overwrite the input", out_path, hint="choose another -o")
    check_writable(out_path)
    base, toon = load_generator(base_path), load_generator(toon_path)
    G = blend_generators(base, toon, cfg, strength=cfg.strength)
    weights = strength_weights(block_weights(list(G.synthesis.block_resolutions), cfg), cfg.strength)
    provenance = {"blend": {
        "base": {"file": Path(base_path).name, "sha256": file_sha256(base_path)},
        "toon": {"file": Path(toon_path).name, "sha256": file_sha256(toon_path)},
        "config": jsonable(cfg),
        "block_weights": {f"b{r}": y for r, y in weights.items()},
    }}
    save_generator(G, out_path, metadata=provenance)
    console.print("blended " + ", ".join(f"b{r} {'toon' if y == 0 else 'base' if y == 1 else f'{y:.2f} base'}"
                                         for r, y in weights.items()) + f" -> {out_path}")
    return out_path
