"""Every StyleGAN2 checkpoint format turned into one `Generator`, read without running its code.

    G = load_generator("ffhq.pkl")          # NVlabs .pkl, rosinality .pt, TF .pkl or our .safetensors

Formats: NVlabs network pickles (stylegan2-ada-pytorch, and the StyleGAN2 networks of the stylegan3
repo), rosinality stylegan2-pytorch `.pt`, legacy TensorFlow StyleGAN2 pickles (the original Toonify
models) and the project's own `.safetensors` (`save_generator`). Pickles go through the restricted
unpickler of distill.safe_pickle, which builds only tensors, arrays and plain containers; the source
code they embed (`module_src`, `build_module_src`) stays an unused string. Every tensor is copied by
name with a shape check against the configuration the file declares or implies.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distill.safe_pickle import PersistentObject, RefusedGlobal, TFNetwork, load_pickle, refused_name
from distill.stylegan2 import Generator
from runtime.common import ToonifyError, atomic_path, console

FORMATS_HINT = "pass an NVlabs .pkl, a rosinality .pt, a TensorFlow StyleGAN2 .pkl or a toonify-fast .safetensors"
UNTRUSTED_HINT = "only load checkpoints from sources you trust; this file may be malicious"
SAFETENSORS_KEY = "toonify_fast"
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of a pre-1.6 torch.save file
W_AVG_SAMPLES = 4096  # rosinality's own mean_latent(4096)


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
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"damaged pickle: {type(e).__name__}: {e}", path, FORMATS_HINT) from None


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"a pickled dict with keys {', '.join(map(str, list(obj)[:8])) or '(none)'}"
    return f"a pickled {type(obj).__name__}"


# --- Building the Generator and copying tensors into it -----------------------------------------

def _plain(value):
    """Pickled init kwargs (EasyDicts, numpy scalars, tuples) as plain JSON-able values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _build(path: Path, kwargs: dict) -> Generator:
    try:
        return Generator(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"unsupported generator configuration: {e}", path,
                              f"init kwargs found: {json.dumps(kwargs, sort_keys=True)}") from None


Table = dict[str, tuple[str, Callable | None]]  # our name -> (name in the file, conversion to our layout)


def _fill(G: Generator, source: dict, path: Path, table: Table | None = None,
          ignored: tuple[str, ...] = ()) -> Generator:
    """Copy every parameter and buffer of G from `source` (tensors or arrays by the file's names).

    Each must exist and fit; a tensor of the file that nothing uses (other than names ending in
    `ignored`) is an error too, so a different architecture can never load half-way.
    """
    table = table or {}
    for key, target in G.state_dict().items():
        theirs, convert = table.get(key, (key, None))
        label = f"'{theirs}'" + (f" (-> {key})" if theirs != key else "")
        if theirs not in source:
            raise CheckpointError(f"tensor {label} is missing", path,
                                  "the file is incomplete or not a StyleGAN2 generator")
        found = source[theirs]
        try:
            found = found.detach() if torch.is_tensor(found) else torch.as_tensor(np.asarray(found, dtype=np.float32))
        except (TypeError, ValueError):
            raise CheckpointError(f"tensor {label} is a {type(found).__name__}, not an array", path) from None
        found = convert(found) if convert else found
        if found.shape != target.shape:
            raise CheckpointError(f"tensor {label} does not fit the configuration: expected {list(target.shape)}, "
                                  f"found {list(found.shape)}", path,
                                  "the file's tensors disagree with its declared or inferred configuration")
        target.copy_(found)
    used = {theirs for theirs, _ in table.values()} | (set(G.state_dict()) - set(table))
    extra = sorted(k for k in source if k not in used and not k.endswith(ignored))
    if extra:
        raise CheckpointError(f"unexpected tensor '{extra[0]}' ({len(extra)} in all) that this generator has no "
                              "place for", path, "the file holds a different architecture")
    return G


# --- NVlabs network pickles ---------------------------------------------------------------------

GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
# Options that pick CUDA kernels or memory formats: the numbers are the same without them.
RUNTIME_ONLY = {"fused_modconv_default", "fp16_channels_last", "channels_last"}


def _nvlabs_kwargs(obj: PersistentObject, path: Path) -> dict:
    kwargs = dict(zip(GENERATOR_ARGS, obj.state.get("_init_args", ()))) | dict(obj.state.get("_init_kwargs", {}))
    kwargs = _plain(kwargs)
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


def _flatten(obj: PersistentObject, path: Path, prefix: str = "") -> dict:
    out = {prefix + k: v for group in ("_parameters", "_buffers") for k, v in obj.state.get(group, {}).items()
           if v is not None}
    for name, child in obj.state.get("_modules", {}).items():
        if not isinstance(child, PersistentObject):
            raise CheckpointError(f"sub-module '{prefix}{name}' is a {type(child).__name__}, not a network layer", path)
        out.update(_flatten(child, path, f"{prefix}{name}."))
    return out


def _from_nvlabs(data: dict, network: str, path: Path) -> Generator:
    obj = data.get(network)
    if not isinstance(obj, PersistentObject):
        found = ", ".join(k for k, v in data.items() if isinstance(v, PersistentObject))
        raise CheckpointError(f"no network '{network}' in it (found: {found})", path, "pass network='G_ema' or 'G'")
    synthesis = obj.state.get("_modules", {}).get("synthesis")
    if obj.class_name != "Generator" or not isinstance(synthesis, PersistentObject):
        raise CheckpointError(f"'{network}' is a {obj.class_name}, not a StyleGAN2 Generator", path)
    if "b4" not in synthesis.state.get("_modules", {}):
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
        raise CheckpointError(f"no network '{network}' (rosinality '{key}') in it (found: {', '.join(map(str, ckpt))})",
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
    _fill(G, dict(sd, latent_avg=latent_avg if latent_avg is not None else torch.zeros([w_dim])), path, table,
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


def _tf_variables(net: TFNetwork, prefix: str = "") -> dict:
    out = {prefix + name: value for name, value in net.state.get("variables", [])}
    for name, child in net.state.get("components", {}).items():
        out.update(_tf_variables(child, f"{prefix}{name}/"))
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
    if net.state.get("version", 0) < 4:
        raise CheckpointError(f"TensorFlow pickle version {net.state.get('version')} is too old (needs >= 4)", path)
    static = _plain(dict(net.state.get("static_kwargs", {})))
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
    return _fill(G, _tf_variables(net), path, table, ignored=("lod",))


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
    return json.loads(header)


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


def _torch_load(path: Path) -> dict:
    try:
        # rosinality training checkpoints carry their argparse options, which are plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refused to load: the torch file asks for `{refused_name(e) or e}`, which "
                              "weights-only loading does not allow; nothing it asked for was run", path,
                              UNTRUSTED_HINT) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"damaged torch file: {str(e).splitlines()[0]}", path, "fetch the file again") from None
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
    container = _container(path)
    if container == "safetensors":
        from safetensors.torch import load_file
        G = _fill(_build(path, read_metadata(path)["init_kwargs"]), load_file(str(path)), path)
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
    return G.eval().requires_grad_(False).to(device)


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
