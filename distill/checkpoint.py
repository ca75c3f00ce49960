"""Every StyleGAN2 checkpoint format turned into one `Generator`, read without running its code.

    G = load_generator("ffhq.pkl")          # NVlabs .pkl, rosinality .pt, TF .pkl or our .safetensors

Formats: NVlabs network pickles (stylegan2-ada-pytorch, and the StyleGAN2 networks of the stylegan3
repo), rosinality stylegan2-pytorch `.pt`, legacy TensorFlow StyleGAN2 pickles (the original Toonify
models) and the project's own `.safetensors` (`save_generator`). Pickles go through the restricted
unpickler of distill.safe_pickle, which builds only tensors, arrays and plain containers; the source
code they embed (`module_src`, `build_module_src`) stays an unused string. Every tensor is copied by
name with a shape check against the configuration the file declares or implies.

Nothing in a file is trusted before it is checked: torch files are scanned so that no storage
declares more bytes than the file holds, the configuration must lie within CONFIG_LIMITS and is
built first on the meta device, every tensor must be floating point with the shape it is checked
against before anything of that size is allocated, and non-finite weights are refused by name.
Whatever a file does wrong ends in a CheckpointError.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from distill.safe_pickle import (PersistentObject, RefusedGlobal, TFNetwork, check_legacy_torch, load_pickle,
                                 refused_name, torch_pickle_storages)
from distill.stylegan2 import Generator
from runtime.common import ToonifyError, atomic_path, console

FORMATS_HINT = "pass an NVlabs .pkl, a rosinality .pt, a TensorFlow StyleGAN2 .pkl or a toonify-fast .safetensors"
UNTRUSTED_HINT = "only load checkpoints from sources you trust; this file may be malicious"
SAFETENSORS_KEY = "toonify_fast"
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of a pre-1.6 torch.save file
W_AVG_SAMPLES = 4096  # rosinality's own mean_latent(4096)
MAX_WIDTH = 4096  # z_dim, w_dim, channels, feature counts
MAX_RESOLUTION = 4096
MAX_MAPPING_LAYERS = 64
MAX_NESTING = 16  # module trees and init kwargs; real ones nest a few levels
MAX_NODES = 10_000  # modules, or values in init kwargs, visited in one file


class CheckpointError(ToonifyError):
    """A checkpoint that cannot be read: missing, damaged, unsupported or refused as unsafe."""


# --- Network pickles, read without running them -------------------------------------------------

def _unpickle(path: Path):
    try:
        return load_pickle(path)
    except RefusedGlobal as e:
        raise CheckpointError(f"refused to load: the pickle asks for `{e}`, which is not on the allow-list "
                              "(tensors, arrays and network state); nothing it asked for was run",
                              path, UNTRUSTED_HINT) from None
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e):
            raise CheckpointError("truncated pickle: the file ends in the middle of the data", path,
                                  "the download or copy is incomplete; fetch it again") from None
        with open(path, "rb") as f:
            head = f.read(8).hex(" ")
        raise CheckpointError(f"not a StyleGAN2 checkpoint: unrecognised content (first bytes {head}; {e})",
                              path, FORMATS_HINT) from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged pickle makes the builders raise
        raise CheckpointError(f"damaged pickle: {type(e).__name__}: {_short(e)}", path, FORMATS_HINT) from None


def _short(e: BaseException) -> str:
    """An exception's first line, cut short: a message may quote a hostile file at length."""
    text = (str(e).splitlines() or [""])[0]
    return text if len(text) <= 200 else text[:200] + "..."


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"a pickled dict with keys {', '.join(str(k)[:40] for k in list(obj)[:8]) or '(none)'}"
    return f"a pickled {type(obj).__name__}"


# --- Building the Generator and copying tensors into it -----------------------------------------

class _Budget:
    """Counts what one walk over a file's nested structure visits: cycles and shared sub-trees end it."""

    def __init__(self, path: Path, what: str):
        self.path, self.what, self.left = path, what, MAX_NODES

    def visit(self, depth: int) -> None:
        self.left -= 1
        if depth > MAX_NESTING or self.left < 0:
            raise CheckpointError(f"{self.what} nest deeper than {MAX_NESTING} levels or hold more than {MAX_NODES} "
                                  "entries (a cycle?)", self.path, "the file is damaged or malicious")


def _plain(value, budget: _Budget, depth: int = 0):
    """Pickled init kwargs (EasyDicts, numpy scalars, tuples) as plain JSON-able values."""
    budget.visit(depth)
    if isinstance(value, dict):
        return {str(k)[:100]: _plain(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, budget, depth + 1) for v in value]
    return value.item() if isinstance(value, np.generic) else value


CONFIG_LIMITS = (f"z_dim and w_dim 1..{MAX_WIDTH}, c_dim 0..{MAX_WIDTH}, img_resolution a power of two 4..{MAX_RESOLUTION}, "
                 f"img_channels and channels 1..{MAX_WIDTH}, num_layers 1..{MAX_MAPPING_LAYERS}")


def _whole(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _real(value, low: float = -math.inf, high: float = math.inf) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and low <= value <= high


def _config_problem(kwargs) -> str | None:
    """What is wrong with Generator init kwargs from a file, before anything is built; None if nothing."""
    if not isinstance(kwargs, dict):
        return f"the init kwargs are a {type(kwargs).__name__}, not a dict"
    checks = {"z_dim": lambda v: _whole(v, 1, MAX_WIDTH), "c_dim": lambda v: _whole(v, 0, MAX_WIDTH),
              "w_dim": lambda v: _whole(v, 1, MAX_WIDTH), "img_channels": lambda v: _whole(v, 1, MAX_WIDTH),
              "img_resolution": lambda v: _whole(v, 4, MAX_RESOLUTION) and v & (v - 1) == 0}
    mapping = {"num_layers": lambda v: _whole(v, 1, MAX_MAPPING_LAYERS),
               "embed_features": lambda v: v is None or _whole(v, 1, MAX_WIDTH),
               "layer_features": lambda v: v is None or _whole(v, 1, MAX_WIDTH),
               "lr_multiplier": lambda v: _real(v, 1e-8, 1e8), "w_avg_beta": lambda v: v is None or _real(v)}
    synthesis = {"channel_base": lambda v: _whole(v, 1, MAX_WIDTH * MAX_RESOLUTION * 16),
                 "channel_max": lambda v: _whole(v, 1, MAX_WIDTH), "num_fp16_res": lambda v: _whole(v, 0, 64),
                 "conv_clamp": lambda v: v is None or _real(v, 1e-8), "use_noise": lambda v: type(v) is bool,
                 "architecture": lambda v: v in ("orig", "skip", "resnet"), "channels": lambda v: isinstance(v, dict)}
    for group, allowed in ((kwargs, checks), (kwargs.get("mapping_kwargs") or {}, mapping),
                           (kwargs.get("synthesis_kwargs") or {}, synthesis)):
        if not isinstance(group, dict):
            return f"mapping_kwargs / synthesis_kwargs is a {type(group).__name__}, not a dict"
        for key, ok in allowed.items():
            if (key in group or group is kwargs) and not ok(group.get(key)):
                return f"{key} = {str(group.get(key))[:40]}"
    resolution, synthesis_kwargs = kwargs["img_resolution"], kwargs.get("synthesis_kwargs") or {}
    blocks = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
    if "channels" in synthesis_kwargs:
        given = {str(r): c for r, c in synthesis_kwargs["channels"].items()}
        widths = {r: given.get(str(r)) for r in blocks}
    else:
        base, most = synthesis_kwargs.get("channel_base", 32768), synthesis_kwargs.get("channel_max", 512)
        widths = {r: min(base // r, most) for r in blocks}
    bad = [r for r, c in widths.items() if not _whole(c, 1, MAX_WIDTH)]
    return f"{str(widths[bad[0]])[:40]} channels at resolution {bad[0]}" if bad else None


def _build(path: Path, kwargs: dict) -> Generator:
    """The Generator `kwargs` describe, on the meta device (shapes only, no memory): _fill checks the
    file's tensors against it and only then builds the real one."""
    if problem := _config_problem(kwargs):
        raise CheckpointError(f"unsupported generator configuration: {problem} (supported: {CONFIG_LIMITS})", path,
                              "the file is damaged, or holds a network this tool does not support")
    try:
        with torch.device("meta"):
            return Generator(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"unsupported generator configuration: {_short(e)}", path,
                              f"init kwargs found: {json.dumps(kwargs, sort_keys=True, default=str)[:400]}") from None


Table = dict[str, tuple[str, Callable | None]]  # our name -> (name in the file, conversion to our layout)


def _as_tensor(found, label: str, path: Path) -> torch.Tensor:
    """A file's tensor or array as a CPU tensor, refused unless it is plain, dense and floating point."""
    if type(found) in (torch.Tensor, torch.nn.Parameter):
        if found.layout != torch.strided or found.device.type != "cpu" or not found.is_floating_point():
            raise CheckpointError(f"tensor {label} is {found.dtype} ({found.layout}, {found.device.type}), not a "
                                  "dense floating-point tensor", path, "the file is damaged or not a generator")
        return found.detach()
    if type(found) is np.ndarray or isinstance(found, np.generic):
        if found.dtype.kind != "f":
            raise CheckpointError(f"tensor {label} is an array of {found.dtype}, not floating point", path,
                                  "the file is damaged or not a generator")
        return torch.as_tensor(np.asarray(found, dtype=np.float32))
    raise CheckpointError(f"tensor {label} is a {type(found).__name__}, not an array", path)


def _converted_shape(found: torch.Tensor, convert: Callable | None) -> torch.Size | None:
    # Worked out on the meta device: a conversion may copy, and the shape is not checked yet.
    if convert is None:
        return found.shape
    try:
        return convert(torch.empty(found.shape, device="meta")).shape
    except (IndexError, RuntimeError):
        return None


def _fill(G: nn.Module, source: dict, path: Path, table: Table | None = None,
          ignored: tuple[str, ...] = ()) -> nn.Module:
    """A network built like G (a Generator from _build, or a Discriminator: on the meta device,
    made from its `init_kwargs`) with every parameter and buffer copied from `source` (tensors or
    arrays by the file's names).

    Each must exist, be floating point and fit, all before the real Generator is allocated; a
    tensor of the file that nothing uses (other than names ending in `ignored`) is an error too,
    so a different architecture can never load half-way; a NaN or infinite weight is refused.
    """
    if not isinstance(source, dict):
        raise CheckpointError(f"the tensors are a {type(source).__name__}, not a dict", path, FORMATS_HINT)
    table, plan = table or {}, []
    for key, target in G.state_dict().items():
        theirs, convert = table.get(key, (key, None))
        label = f"'{theirs}'" + (f" (-> {key})" if theirs != key else "")
        if theirs not in source:
            raise CheckpointError(f"tensor {label} is missing", path,
                                  "the file is incomplete or not a StyleGAN2 generator")
        found = _as_tensor(source[theirs], label, path)
        shape = _converted_shape(found, convert)
        if shape != target.shape:
            raise CheckpointError(f"tensor {label} does not fit the configuration: expected {list(target.shape)}, "
                                  f"found {list(shape if shape is not None else found.shape)}", path,
                                  "the file's tensors disagree with its declared or inferred configuration")
        plan.append((key, label, found, convert))
    used = {theirs for theirs, _ in table.values()} | (set(G.state_dict()) - set(table))
    extra = sorted(str(k)[:100] for k in source if k not in used and not (isinstance(k, str) and k.endswith(ignored)))
    if extra:
        raise CheckpointError(f"unexpected tensor '{extra[0]}' ({len(extra)} in all) that this generator has no "
                              "place for", path, "the file holds a different architecture")
    G = type(G)(**G.init_kwargs)
    state = G.state_dict()
    for key, label, found, convert in plan:
        target = state[key].copy_(convert(found) if convert else found)
        if bad := int((~torch.isfinite(target)).sum()):
            raise CheckpointError(f"tensor {label} holds {bad} non-finite values (NaN or infinity)", path,
                                  "the file is damaged, or was saved from a diverged training run")
    return G


# --- NVlabs network pickles ---------------------------------------------------------------------

GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
# Options that pick CUDA kernels or memory formats: the numbers are the same without them.
RUNTIME_ONLY = {"fused_modconv_default", "fp16_channels_last", "channels_last"}


def _nvlabs_kwargs(obj: PersistentObject, path: Path) -> dict:
    kwargs = dict(zip(GENERATOR_ARGS, obj.state.get("_init_args", ()))) | dict(obj.state.get("_init_kwargs", {}))
    kwargs = _plain(kwargs, _Budget(path, "init kwargs"))
    # The stylegan3 repo's StyleGAN2 Generator takes the synthesis options as flat keyword arguments.
    synthesis = dict(kwargs.pop("synthesis_kwargs", None) or {})
    synthesis.update({k: kwargs.pop(k) for k in list(kwargs) if k not in GENERATOR_ARGS})
    mapping = dict(kwargs.pop("mapping_kwargs", None) or {})
    for options in (synthesis, mapping):
        for key in RUNTIME_ONLY & set(options):
            options.pop(key)
        for key, only in (("resample_filter", [1, 3, 3, 1]), ("activation", "lrelu")):
            if options.pop(key, only) != only:
                raise CheckpointError(f"unsupported {key} (only {only!r})", path)
    return kwargs | {"mapping_kwargs": mapping, "synthesis_kwargs": synthesis}


def _groups(state: dict, names: tuple[str, ...], prefix: str, path: Path):
    """(name, value) of the dicts `names` in a module state, refused unless they are dicts with str keys."""
    for group in names:
        items = state.get(group, {})
        if not isinstance(items, dict) or not all(isinstance(k, str) for k in items):
            raise CheckpointError(f"'{prefix}{group}' of a network layer is not a dict of names", path,
                                  "the file is damaged or not a network pickle")
        yield from items.items()


def _flatten(obj: PersistentObject, path: Path, prefix: str = "", budget: _Budget | None = None,
             depth: int = 0) -> dict:
    budget = budget or _Budget(path, "network layers")
    budget.visit(depth)
    out = {prefix + k: v for k, v in _groups(obj.state, ("_parameters", "_buffers"), prefix, path) if v is not None}
    for name, child in _groups(obj.state, ("_modules",), prefix, path):
        if not isinstance(child, PersistentObject):
            raise CheckpointError(f"sub-module '{prefix}{name}' is a {type(child).__name__}, not a network layer", path)
        out.update(_flatten(child, path, f"{prefix}{name}.", budget, depth + 1))
    return out


def _from_nvlabs(data: dict, network: str, path: Path) -> Generator:
    obj = data.get(network)
    if not isinstance(obj, PersistentObject):
        found = ", ".join(k for k, v in data.items() if isinstance(v, PersistentObject))
        raise CheckpointError(f"no network '{network}' in it (found: {found})", path, "pass network='G_ema' or 'G'")
    modules = obj.state.get("_modules", {})
    synthesis = modules.get("synthesis") if isinstance(modules, dict) else None
    if obj.class_name != "Generator" or not isinstance(synthesis, PersistentObject):
        raise CheckpointError(f"'{network}' is a {obj.class_name}, not a StyleGAN2 Generator", path)
    if not isinstance(synthesis.state.get("_modules"), dict) or "b4" not in synthesis.state["_modules"]:
        raise CheckpointError(f"'{network}' has no synthesis.b4: not a StyleGAN2 generator (StyleGAN3?)", path,
                              "only StyleGAN2 generators are supported")
    return _fill(_build(path, _nvlabs_kwargs(obj, path)), _flatten(obj, path), path, ignored=("resample_filter",))


# --- rosinality stylegan2-pytorch checkpoints ----------------------------------------------------

ROSINALITY_NETWORKS = {"G_ema": "g_ema", "G": "g"}


def first(t: torch.Tensor) -> torch.Tensor:
    """Drops the leading axis of 1 that rosinality's weights and TF's const carry."""
    return t[0]


def plane(t: torch.Tensor) -> torch.Tensor:
    """[1, 1, R, R] noise -> [R, R]."""
    return t[0, 0]


def _rosinality_layer(src: str, dst: str, table: Table, is_torgb: bool = False) -> None:
    """One StyledConv or ToRGB of rosinality (`src`) under NVlabs' names (`dst`). Weights keep their
    scale: rosinality applies 1/sqrt(fan_in) at run time where NVlabs applies the same gain."""
    table[f"{dst}.weight"] = (f"{src}.conv.weight", first)
    table[f"{dst}.affine.weight"] = (f"{src}.conv.modulation.weight", None)
    table[f"{dst}.affine.bias"] = (f"{src}.conv.modulation.bias", None)
    if is_torgb:
        table[f"{dst}.bias"] = (f"{src}.bias", lambda t: t.reshape(-1))
    else:
        table[f"{dst}.bias"] = (f"{src}.activate.bias", None)
        table[f"{dst}.noise_strength"] = (f"{src}.noise.weight", lambda t: t.reshape([]))


def _from_rosinality(ckpt: dict, network: str, path: Path) -> Generator:
    key = ROSINALITY_NETWORKS.get(network, network)
    sd = ckpt.get(key)
    if not isinstance(sd, dict):
        raise CheckpointError(f"no network '{network}' (rosinality '{key}') in it (found: {', '.join(str(k)[:40] for k in list(ckpt)[:8])})",
                              path, "pass network='G_ema' or 'G'")
    n_mlp = sum(1 for k in sd if re.fullmatch(r"style\.\d+\.weight", k))
    if not n_mlp or "input.input" not in sd:
        raise CheckpointError(f"'{key}' is not a rosinality StyleGAN2 generator (no style.* / input.input)", path)
    n_up = sum(1 for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
    resolutions = [2 ** (i + 3) for i in range(n_up)]
    w_dim = sd["style.1.weight"].shape[0]
    # Channel counts come from the tensors (the up-convs' outputs): rosinality's code and its forks vary them.
    up_convs = [f"convs.{2 * i}.conv.weight" for i in range(n_up)]
    if missing := [k for k in up_convs if k not in sd]:
        raise CheckpointError(f"tensor '{missing[0]}' is missing", path, "the file is incomplete")
    channels = {"4": int(sd["input.input"].shape[1])}
    channels |= {str(r): int(sd[k].shape[1]) for r, k in zip(resolutions, up_convs)}
    G = _build(path, dict(z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=resolutions[-1] if n_up else 4,
                          img_channels=3, mapping_kwargs={"num_layers": n_mlp},
                          synthesis_kwargs={"channels": channels}))
    table: Table = {f"mapping.fc{i}.{p}": (f"style.{i + 1}.{p}", None)
                    for i in range(n_mlp) for p in ("weight", "bias")}
    table["mapping.w_avg"] = ("latent_avg", None)
    table["synthesis.b4.const"] = ("input.input", first)
    _rosinality_layer("conv1", "synthesis.b4.conv1", table)
    _rosinality_layer("to_rgb1", "synthesis.b4.torgb", table, is_torgb=True)
    table["synthesis.b4.conv1.noise_const"] = ("noises.noise_0", plane)
    for i, r in enumerate(resolutions):
        for j, conv in enumerate(("conv0", "conv1")):
            _rosinality_layer(f"convs.{2 * i + j}", f"synthesis.b{r}.{conv}", table)
            table[f"synthesis.b{r}.{conv}.noise_const"] = (f"noises.noise_{2 * i + j + 1}", plane)
        _rosinality_layer(f"to_rgbs.{i}", f"synthesis.b{r}.torgb", table, is_torgb=True)
    # latent_avg belongs to g_ema; without it (training checkpoints, or 'g') w_avg is estimated below.
    latent_avg = ckpt.get("latent_avg") if key == "g_ema" else None
    G = _fill(G, dict(sd, latent_avg=latent_avg if latent_avg is not None else torch.zeros([w_dim])), path, table,
          ignored=("blur.kernel", "upsample.kernel"))
    if latent_avg is None:
        z = torch.randn([W_AVG_SAMPLES, G.z_dim], generator=torch.Generator().manual_seed(0))
        G.mapping.w_avg.copy_(G.mapping(z)[:, 0].mean(dim=0))
        console.print(f"{path}: no latent_avg for '{key}': w_avg estimated from {W_AVG_SAMPLES} "
                      "mapped latents (seed 0)")
    return G


# --- Legacy TensorFlow StyleGAN2 pickles -------------------------------------------------------

TF_NETWORKS = {"G_ema": 2, "G": 0}  # the (G, D, Gs) tuple
TF_DEFAULTS = {"latent_size": 512, "dlatent_size": 512, "resolution": 1024, "num_channels": 3,
               "mapping_layers": 8, "mapping_fmaps": None, "mapping_lrmul": 0.01, "fmap_base": 16 << 10,
               "fmap_max": 512, "architecture": "skip", "use_noise": True}
# Options this generator supports only at their TF defaults.
TF_FIXED = {"label_size": 0, "mapping_nonlinearity": "lrelu", "nonlinearity": "lrelu", "resample_kernel": [1, 3, 3, 1],
            "fmap_min": 1, "fmap_decay": 1.0, "normalize_latents": True}
# Options that steer the TF graph at run time or in training only.
TF_RUNTIME_ONLY = {"truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
                   "dlatent_avg_beta", "style_mixing_prob", "randomize_noise", "is_training", "is_validation",
                   "return_dlatents", "structure", "is_template_graph", "dtype", "fused_modconv", "num_fp16_res",
                   "conv_clamp", "components"}


TF_LAYOUTS = {  # TF variable layout -> ours
    "dense": lambda t: t.t(),  # [in, out] -> [out, in]
    "conv": lambda t: t.permute(3, 2, 0, 1),  # [kh, kw, I, O] -> [O, I, kh, kw]
    # TF's up-conv is a true convolution where NVlabs' transposed conv is not: flip the kernel too.
    "up_conv": lambda t: t.flip([0, 1]).permute(3, 2, 0, 1),
}


def _tf_variables(net: TFNetwork, path: Path, prefix: str = "", budget: _Budget | None = None, depth: int = 0) -> dict:
    budget = budget or _Budget(path, "TensorFlow networks")
    budget.visit(depth)
    variables, components = net.state.get("variables", []), net.state.get("components", {})
    if not isinstance(variables, list) or not all(
            isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in variables):
        raise CheckpointError(f"the variables of TensorFlow network '{prefix or '/'}' are not (name, array) pairs",
                              path, "the file is damaged or not a TensorFlow StyleGAN2 pickle")
    out = {prefix + name: value for name, value in variables}
    if not isinstance(components, dict):
        raise CheckpointError(f"the components of TensorFlow network '{prefix or '/'}' are not a dict", path)
    for name, child in components.items():
        if not isinstance(child, TFNetwork):
            raise CheckpointError(f"TensorFlow component '{prefix}{name}' is a {type(child).__name__}, not a network",
                                  path)
        out.update(_tf_variables(child, path, f"{prefix}{name}/", budget, depth + 1))
    return out


def _tf_layer(table: Table, dst: str, src: str, layout: str, noise: int | None) -> None:
    table[f"{dst}.weight"] = (f"{src}/weight", TF_LAYOUTS[layout])
    table[f"{dst}.bias"] = (f"{src}/bias", None)
    table[f"{dst}.affine.weight"] = (f"{src}/mod_weight", TF_LAYOUTS["dense"])
    table[f"{dst}.affine.bias"] = (f"{src}/mod_bias", lambda t: t + 1)  # TF stores the style bias minus its init 1
    if noise is not None:
        table[f"{dst}.noise_strength"] = (f"{src}/noise_strength", None)
        table[f"{dst}.noise_const"] = (f"synthesis/noise{noise}", plane)


def _from_tf(nets: tuple, network: str, path: Path) -> Generator:
    if network not in TF_NETWORKS:
        raise CheckpointError(f"no network '{network}' in it (found: G, D, Gs, read as 'G' and 'G_ema')", path,
                              "pass network='G_ema' or 'G'")
    net = nets[TF_NETWORKS[network]]
    version = net.state.get("version", 0)
    if type(version) is not int or version < 4:
        raise CheckpointError(f"TensorFlow pickle version {str(version)[:40]} is too old (needs >= 4)", path)
    static = _plain(dict(net.state.get("static_kwargs", {})), _Budget(path, "static kwargs"))
    unknown = sorted(set(static) - set(TF_DEFAULTS) - set(TF_FIXED) - TF_RUNTIME_ONLY)
    if unknown:
        raise CheckpointError(f"unsupported TensorFlow generator option '{unknown[0]}'", path)
    for k, only in TF_FIXED.items():
        if static.get(k, only) != only:
            raise CheckpointError(f"unsupported TensorFlow generator option {k}={static[k]!r} (only {only!r})", path)
    kw = TF_DEFAULTS | {k: v for k, v in static.items() if k in TF_DEFAULTS}
    G = _build(path, dict(z_dim=kw["latent_size"], c_dim=0, w_dim=kw["dlatent_size"], img_resolution=kw["resolution"],
                          img_channels=kw["num_channels"],
                          mapping_kwargs={"num_layers": kw["mapping_layers"], "layer_features": kw["mapping_fmaps"],
                                          "lr_multiplier": kw["mapping_lrmul"]},
                          synthesis_kwargs={"channel_base": kw["fmap_base"] * 2, "channel_max": kw["fmap_max"],
                                            "architecture": kw["architecture"], "use_noise": kw["use_noise"]}))
    table: Table = {"mapping.w_avg": ("dlatent_avg", None), "synthesis.b4.const": ("synthesis/4x4/Const/const", first)}
    for i in range(kw["mapping_layers"]):
        table[f"mapping.fc{i}.weight"] = (f"mapping/Dense{i}/weight", TF_LAYOUTS["dense"])
        table[f"mapping.fc{i}.bias"] = (f"mapping/Dense{i}/bias", None)
    noise = 0
    for r in G.synthesis.block_resolutions:
        block, src = getattr(G.synthesis, f"b{r}"), f"synthesis/{r}x{r}"
        layers = [("conv0", "Conv0_up", "up_conv"), ("conv1", "Conv1", "conv")] if r > 4 else [("conv1", "Conv", "conv")]
        for ours, theirs, layout in layers:
            _tf_layer(table, f"synthesis.b{r}.{ours}", f"{src}/{theirs}", layout, noise if kw["use_noise"] else None)
            noise += 1
        if hasattr(block, "torgb"):
            _tf_layer(table, f"synthesis.b{r}.torgb", f"{src}/ToRGB", "conv", None)
        if hasattr(block, "skip"):
            table[f"synthesis.b{r}.skip.weight"] = (f"{src}/Skip/weight", TF_LAYOUTS["up_conv"])
    # `lod` is G_main's level-of-detail scalar from progressive growing; StyleGAN2 never reads it.
    return _fill(G, _tf_variables(net, path), path, table, ignored=("lod",))


# --- The project's own format ------------------------------------------------------------------

def save_generator(G: Generator, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write G's tensors and the JSON `{"init_kwargs": G.init_kwargs, **metadata}` to one .safetensors
    file, atomically. `metadata` (provenance, blend settings) must be JSON-able, without 'init_kwargs'."""
    from safetensors.torch import save_file
    metadata = dict(metadata or {})
    if "init_kwargs" in metadata:
        raise ValueError("metadata may not contain 'init_kwargs': it is written from G.init_kwargs")
    header = json.dumps({"init_kwargs": G.init_kwargs, **metadata}, sort_keys=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={SAFETENSORS_KEY: header})


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON that save_generator wrote: {"init_kwargs": {...}, plus the caller's metadata keys}."""
    from safetensors import safe_open
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(SAFETENSORS_KEY)
    except Exception as e:  # safetensors reports every kind of damage as its own SafetensorError
        raise CheckpointError(f"damaged safetensors file: {e}", path, "write it again with save_generator") from None
    if header is None:
        raise CheckpointError(f"a safetensors file without toonify-fast metadata (no '{SAFETENSORS_KEY}' entry)", path,
                              "only generators written by save_generator load from .safetensors")
    try:
        metadata = json.loads(header)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"damaged toonify-fast metadata: {type(e).__name__}: {_short(e)}", path,
                              "write it again with save_generator") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("init_kwargs"), dict):
        raise CheckpointError("damaged toonify-fast metadata: no 'init_kwargs' dict", path,
                              "write it again with save_generator")
    return metadata


# --- The one entry point -------------------------------------------------------------------------

def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such file" if not path.exists() else "not a file", path,
                              f"check the path; {FORMATS_HINT}")
    return path


def _container(path: Path) -> str:
    """'safetensors' (a u64 header length, then the JSON header), 'zip' (torch.save >= 1.6) or 'pickle'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return "zip" if head.startswith(b"PK\x03\x04") else "pickle"


def _check_torch_zip(path: Path) -> None:
    """A torch.save zip whose records fit in the file and whose storages fit in their records."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        records = {info.filename: info.file_size for info in archive.infolist()}
        if sum(records.values()) > size:
            raise pickle.UnpicklingError(f"truncated: its records declare {sum(records.values())} bytes, more than "
                                         f"the {size} bytes of the file")
        pickles = [name for name in records if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise zipfile.BadZipFile(f"{len(pickles)} data.pkl records where torch.save writes one")
        data = archive.read(pickles[0])
    prefix = pickles[0][: -len("data.pkl")]
    for key, (numel, itemsize) in torch_pickle_storages(io.BytesIO(data)).items():
        if numel * itemsize > records.get(f"{prefix}data/{key}", -1):
            raise pickle.UnpicklingError(f"truncated: storage '{key[:40]}' declares {numel * itemsize} bytes, more "
                                         "than its record holds")


def _torch_load(path: Path) -> dict:
    try:
        if zipfile.is_zipfile(path):
            _check_torch_zip(path)
        else:
            with open(path, "rb") as f:
                check_legacy_torch(f)
        # rosinality training checkpoints carry their argparse options, which are plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except RefusedGlobal as e:
        raise CheckpointError(f"refused to load: the torch file asks for `{e}`, which is not allowed; nothing it "
                              "asked for was run", path, UNTRUSTED_HINT) from None
    except pickle.UnpicklingError as e:
        if name := refused_name(e):
            raise CheckpointError(f"refused to load: the torch file asks for `{name}`, which weights-only loading "
                                  "does not allow; nothing it asked for was run", path, UNTRUSTED_HINT) from None
        raise CheckpointError(f"damaged torch file: {_short(e)}", path, "fetch the file again") from None
    except Exception as e:  # noqa: BLE001 - torch reports damage as OSError, RuntimeError, UnicodeDecodeError, ...
        raise CheckpointError(f"damaged torch file: {type(e).__name__}: {_short(e)}", path,
                              "fetch the file again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"not a StyleGAN2 checkpoint: {_describe(data)}", path, FORMATS_HINT)
    return data


@torch.no_grad()
def load_generator(path: str | os.PathLike, network: str = "G_ema", device: str | torch.device = "cpu") -> Generator:
    """Read any supported checkpoint into a Generator in eval mode with requires_grad False.

    `network` picks the generator in files that hold several: 'G_ema' (the one to sample from;
    rosinality 'g_ema', TF 'Gs') or 'G' (the raw training weights). A .safetensors file holds one.
    """
    path = _existing(path)
    try:
        G = _load(path, network)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a structure no check above foresaw: still the file's fault
        raise CheckpointError(f"malformed checkpoint: {type(e).__name__}: {_short(e)}", path, FORMATS_HINT) from None
    return G.eval().requires_grad_(False).to(device)


def _load(path: Path, network: str) -> Generator:
    container = _container(path)
    if container == "safetensors":
        from safetensors.torch import load_file
        G = _build(path, read_metadata(path)["init_kwargs"])
        try:
            tensors = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors reports every kind of damage as its own SafetensorError
            raise CheckpointError(f"damaged safetensors file: {_short(e)}", path,
                                  "write it again with save_generator") from None
        G = _fill(G, tensors, path)
    elif container == "zip":
        G = _from_rosinality(_torch_load(path), network, path)
    else:
        data = _unpickle(path)
        if isinstance(data, int) and data == TORCH_LEGACY_MAGIC:
            G = _from_rosinality(_torch_load(path), network, path)
        elif isinstance(data, dict) and any(isinstance(v, PersistentObject) for v in data.values()):
            G = _from_nvlabs(data, network, path)
        elif isinstance(data, (tuple, list)) and len(data) == 3 and all(isinstance(n, TFNetwork) for n in data):
            G = _from_tf(tuple(data), network, path)
        else:
            raise CheckpointError(f"not a StyleGAN2 checkpoint: {_describe(data)}", path, FORMATS_HINT)
    return G


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(_existing(path), "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_difference(expected: dict, got: dict, names: tuple[str, str] = ("the model", "the file"),
                          extra: bool = True) -> str | None:
    """The first key or shape on which the tensors `got` differ from `expected`, in words ('x.weight
    has shape (64, 3) in the model and (32, 3) in the file'), or None when they fit. Keys are
    compared in `expected`'s order, so the first layer that does not fit is named. extra=False
    allows keys of `got` that `expected` lacks (a file holding more than the part that is used)."""
    for key, want in expected.items():
        if key not in got:
            return f"{key} is in {names[0]} but not in {names[1]}"
        if tuple(want.shape) != tuple(got[key].shape):
            return f"{key} has shape {tuple(want.shape)} in {names[0]} and {tuple(got[key].shape)} in {names[1]}"
    unexpected = [key for key in got if key not in expected] if extra else []
    return f"{unexpected[0]} is in {names[1]} but not in {names[0]}" if unexpected else None
