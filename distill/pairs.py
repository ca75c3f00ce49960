"""The same latents through several StyleGAN2 generators: sample grids to judge a blend, and the
paired (real, toon) data set the student trains on.

    toonify-fast distill pairs --base ffhq.pkl --blended blended.safetensors --count 50000 --res 512 -o pairs/

Pair i depends only on (seed, i): its latent comes from a generator seeded with a hash of
(seed, i) (EDM's per-sample generators), is mapped once by the base mapping network (with
truncation), and the same w+ and the same noise go through the base and the blended synthesis.
Batch size, sharding (`--shard k/n`, or torchrun's RANK / WORLD_SIZE: rank k takes the indices
i % n == k) and resuming never change a pair. On CPU every pair goes through the networks alone:
grouped convolutions make batches slower there, and a pair's pixels then cannot depend on its
batch. On CUDA a batch goes through together; kernels picked by batch shape may then move a
few pixels by one level between batch sizes.

Several styles and strengths (a conditioned student's training set):

    toonify-fast distill pairs --base ffhq.pkl --style cartoon=cartoon.safetensors --style ukiyoe=ukiyoe.safetensors \
        --strengths 0:1 --count 50000 -o pairs/

Each --style is a blended model (`distill blend`) of the base. Pair i draws its style (uniform over
the styles) and its strength (uniform in LO:HI, or the one value given) from its own generator
seeded with a hash of (seed, i) (the "style" stream), so sharding and resuming keep them; its toon
comes from the base and that blend interpolated per tensor at the strength (blend.at_strength:
every layer's toon share times the strength; 0 gives the base's own image). The manifest records
each pair's style, style_index and strength; pairs.json lists the styles in index order.

Layout of OUT (and of OUT/val/ for the held-out indices count .. count+val_count-1):
    pairs.json           the set's settings and the teachers' sha256; a rerun must match it
    real/000123.png      base teacher      toon/000123.png   blended teacher
    latents/000123.npy   w+ [num_ws, w_dim] float32 (--save-latents)
    manifest.jsonl       one line per pair, index order, written once the split is complete
Every file is written atomically, so a file under its final name is complete and the files are
the source of truth. While a run is going, each shard appends to its own manifest part
(manifest-00000-of-00002.jsonl), rebuilt from the files when it resumes; concurrent shards thus
never write the same file. The run that finds a split complete writes manifest.jsonl and drops
the parts; entries depend only on (settings, i), so shards finishing together write the same file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from distill.blend import at_strength
from distill.checkpoint import file_sha256, load_generator, read_metadata
from distill.device import device_setting, resolve_device
from distill.stylegan2 import LATENT_SPACE, Generator, architecture_difference
from runtime.common import (ToonifyError, UsageError, atomic_path, console, note, output_suffix, progress,
                            read_json, write_bytes_atomic, write_json_atomic)
from runtime.images import image_grid, nchw_to_hwc, resize, write_image
from runtime.options import setting

# Settings a pair set is made with: a rerun into the same folder must repeat every one of them.
SET_KEYS = ("base_sha256", "blended_sha256", "count", "val_count", "res", "psi", "seed", "noise", "format",
            "style_mixing", "save_latents", "fp16")
STYLE_KEYS = ("styles", "strengths")     # in pairs.json only when the set has styles; checked like SET_KEYS
_PARTIAL = re.compile(r"^\.(\d+)\.partial-")   # atomic_path's temporary names for 000123.*


class PairsError(ToonifyError):
    """A pair set that cannot be made or resumed as asked."""


def psi_setting():
    """Truncation, the same for sample grids and pairs (so a grid previews the pairs)."""
    return setting(0.7, "Truncation towards the first (base) network's average w.")


@dataclass(frozen=True)
class PairsConfig:
    base: Path = setting(help="Base (FFHQ) checkpoint: the real images and the mapping network.")
    output: Path = setting(help="Folder of the pair set (made or completed).")
    count: int = setting(help="Number of training pairs (indices 0 .. count-1).")
    blended: Path | None = setting(None, "Blended checkpoint from `distill blend`: the toon images (or give --style).")
    styles: tuple[tuple[str, Path], ...] = setting(
        (), "NAME=BLENDED: a style for a conditioned student, a blended checkpoint; repeat for more (instead of "
            "--blended). Each pair draws one.", flags=("--style",), cli=Optional[list[str]], metavar="NAME=BLENDED",
        parse=lambda texts: parse_styles(texts or ()))
    strengths: tuple[float, float] | None = setting(
        None, "With --style: each pair's strength, uniform in LO:HI (e.g. 0:1), or one value (default: 1).",
        cli=Optional[str], metavar="LO:HI", parse=lambda text: None if text is None else parse_strengths(text))
    res: int | None = setting(None, "Side of the written images, Lanczos-resized (default: the teachers' resolution).")
    psi: float = psi_setting()
    seed: int = setting(0, "Seed of the set: pair i depends on (seed, i) only.")
    noise: str = setting("const", "const (stored noise), random (drawn per pair, the same for both teachers) or none.")
    format: str = setting("png", "png, or jpg (quality 95).")
    batch_size: int = setting(8, "Pairs per forward pass on CUDA (CPU runs one at a time).")
    shard: tuple[int, int] = setting((0, 1), "Make only the indices i % n == k of the set, as k/n (default: "
                                             "torchrun's RANK/WORLD_SIZE).", cli=Optional[str], parse=lambda t: resolve_shard(t))
    device: str = device_setting()
    fp16: bool = setting(False, "Run the teachers in float16 (CUDA only).")
    val_count: int = setting(0, "Held-out pairs written to OUTPUT/val (indices after the training ones).")
    save_latents: bool = setting(False, "Also save each pair's w+ as latents/INDEX.npy.")
    style_mixing: float = setting(0.0, "Probability that a pair's w+ switches to a second latent at a random layer.")

    def __post_init__(self):
        k, n = self.shard
        checks = [(self.count >= 1, f"count must be at least 1, got {self.count}"),
                  (self.val_count >= 0, f"val_count must be >= 0, got {self.val_count}"),
                  (self.res is None or self.res >= 8, f"res must be at least 8 px, got {self.res}"),
                  (self.noise in ("const", "random", "none"),
                   f"noise must be const, random or none, got {self.noise!r}"),
                  (self.format in ("png", "jpg"), f"format must be png or jpg, got {self.format!r}"),
                  (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
                  (n >= 1 and 0 <= k < n, f"shard must be k/n with 0 <= k < n, got {k}/{n}"),
                  (0.0 <= self.style_mixing <= 1.0, f"style_mixing is a probability, got {self.style_mixing}"),
                  (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
                  ((self.blended is None) != (not self.styles),
                   "give either --blended (one toon teacher) or --style NAME=BLENDED (one or more)"),
                  (self.strengths is None or bool(self.styles), "--strengths needs --style"),
                  (len({name for name, _ in self.styles}) == len(self.styles), "each --style needs its own name")]
        if self.strengths is not None:
            lo, hi = self.strengths
            checks.append((0.0 <= lo <= hi <= 1.0, f"strengths must be LO:HI with 0 <= LO <= HI <= 1, got {lo}:{hi}"))
        for ok, reason in checks:
            if not ok:
                raise PairsError(reason)


@dataclass(frozen=True)
class SampleConfig:
    networks: tuple[Path, ...] = setting(help="A generator checkpoint, one grid row; repeat for more rows. w comes "
                                              "from the first one's mapping.", flags=("--network",))
    output: Path = setting(help="The grid to write (.png).")
    seeds: tuple[int, ...] = setting((0, 1, 2, 3, 4, 5, 6, 7), "One column per seed: 0-7, 1,5,9 or 0-3,10.",
                                     cli=str, shown=lambda s: format_seeds(s), parse=lambda t: tuple(parse_seeds(t)))
    psi: float = psi_setting()
    device: str = device_setting()
    strengths: tuple[float, ...] | None = setting(
        None, "A strength sweep: each network after the first (a blend of it) gives one row per strength, e.g. "
              "0,0.5,1, interpolated per tensor with the first (the base); 0 shows the base's own image.",
        cli=Optional[str], metavar="S,S,...", parse=lambda text: None if text is None else parse_strength_list(text))


def parse_strength_list(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0), each in [0, 1]."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise PairsError(f"cannot read strengths {text!r}", hint="give comma-separated values in [0, 1]: 0,0.5,1") from None
    if not all(0.0 <= v <= 1.0 for v in values):
        raise PairsError(f"strengths must lie in [0, 1], got {text!r}", hint="0 is the base, 1 the full blend")
    return values


@dataclass(frozen=True)
class PairsSummary:
    made: int
    skipped: int                     # already present from an earlier run
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.made / self.seconds if self.seconds > 0 else 0.0


def resolve_shard(text: str | None, env: dict | None = None) -> tuple[int, int]:
    """'k/n' -> (k, n); without it torchrun's (RANK, WORLD_SIZE), else (0, 1)."""
    env = os.environ if env is None else env
    rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    if text is None:
        return rank, world
    if world > 1:
        raise UsageError(f"--shard {text} given inside a torchrun job (WORLD_SIZE={world}): both split the work",
                         hint="use --shard or torchrun, not both")
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise UsageError(f"cannot read shard {text!r}", hint="write k/n with 0 <= k < n, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


MAX_SEEDS = 1024  # one grid column each
SEED_LIMIT = 2**32  # numpy's RandomState takes seeds below this


def parse_seeds(text: str) -> list[int]:
    """'0-7' -> [0..7], '1,5,9' -> [1, 5, 9], '0-3,10' -> [0, 1, 2, 3, 10]; at most MAX_SEEDS seeds,
    each below 2**32."""
    seeds = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,20})\s*(?:-\s*(\d{1,20})\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UsageError(f"cannot read seeds {text[:80]!r} (at {part.strip()[:40]!r})",
                             hint="write ranges and lists of non-negative integers: 0-7, 1,5,9 or 0-3,10")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last >= SEED_LIMIT:
            raise UsageError(f"seed {last} is too large (at {part.strip()!r})",
                             hint=f"seeds are integers from 0 to {SEED_LIMIT - 1}")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise UsageError(f"too many seeds in {text[:80]!r}: {len(seeds) + last - first + 1} or more, at most "
                             f"{MAX_SEEDS}", hint="each seed is one grid column: ask for fewer, e.g. 0-7")
        seeds += range(first, last + 1)
    return seeds


def parse_styles(texts) -> tuple[tuple[str, Path], ...]:
    """['cartoon=a.safetensors', ...] -> (('cartoon', Path('a.safetensors')), ...), in the order given."""
    styles = []
    for text in texts:
        name, sep, path = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path:
            raise PairsError(f"cannot read --style {text!r}",
                             hint="give NAME=BLENDED, NAME of letters, digits, '_', '-' or '.': --style cartoon=cartoon.safetensors")
        styles.append((name, Path(path)))
    return tuple(styles)


def parse_strengths(text: str) -> tuple[float, float]:
    """'0:1' -> (0.0, 1.0), a uniform range; '0.6' -> (0.6, 0.6), one strength."""
    try:
        lo, _, hi = text.partition(":")
        return float(lo), float(hi if hi else lo)
    except ValueError:
        raise PairsError(f"cannot read strengths {text!r}", hint="give LO:HI such as 0:1, or one value such as 0.6") from None


def pair_condition(seed: int, index: int, styles: int, strengths: tuple[float, float]) -> tuple[int, float]:
    """(style index in [0, styles), strength in [lo, hi]) of pair `index`, from its own CPU generator."""
    g = torch.Generator().manual_seed(pair_seed(seed, index, "style"))
    style = int(torch.randint(styles, [], generator=g))
    lo, hi = strengths
    return style, lo + (hi - lo) * torch.rand([], dtype=torch.float64, generator=g).item()


def format_seeds(seeds: tuple[int, ...] | list[int]) -> str:
    """The inverse of parse_seeds for a run of consecutive seeds ('0-7'), else a list ('1,5,9')."""
    seeds = list(seeds)
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def seed_latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """[len(seeds), z_dim] float32: z = RandomState(seed).randn(z_dim), as NVlabs' generate.py draws them."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def pair_seed(seed: int, index: int, stream: str) -> int:
    """A 63-bit seed for pair `index` of the set `seed`; `stream` separates the latent from the noise."""
    digest = hashlib.sha256(f"toonify-fast/{seed}/{index}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def pair_latents(seed: int, index: int, z_dim: int, num_ws: int,
                 style_mixing: float) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """(z [z_dim], z2 [z_dim] or None, cutoff or None) for pair `index`, from its own CPU generator.

    With style mixing, w+ layers cutoff.. come from z2 (cutoff in [1, num_ws)), with probability style_mixing.
    """
    g = torch.Generator().manual_seed(pair_seed(seed, index, "latent"))
    z = torch.randn([z_dim], generator=g)
    if style_mixing == 0:
        return z, None, None
    mix = torch.rand([], generator=g).item() < style_mixing
    z2 = torch.randn([z_dim], generator=g)
    cutoff = int(torch.randint(1, num_ws, [], generator=g))
    return (z, z2, cutoff) if mix else (z, None, None)


def _in_steps(fn: Callable[[slice], torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
    """fn over [0, n) one item at a time on CPU (faster there, and batch-independent), all at once elsewhere."""
    step = 1 if device.type == "cpu" else n
    return torch.cat([fn(slice(s, s + step)) for s in range(0, n, step)])


@torch.inference_mode()
def synthesize(G: Generator, ws: torch.Tensor, noise_mode: str = "const", noise_seeds: list[int] | None = None,
               fp16: bool = False) -> torch.Tensor:
    """ws [N, num_ws, w_dim] -> [N, 3, R, R] float32 in about [-1, 1], on ws.device.

    With noise_mode='random', sample j's noise comes from a CPU generator seeded with noise_seeds[j],
    so two networks given the same seeds get the same noise, on any device.
    """
    def run(s: slice) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(x) for x in noise_seeds[s]] if noise_mode == "random" else None
        with torch.autocast(ws.device.type, dtype=torch.float16, enabled=fp16):
            return G.synthesis(ws[s], noise_mode=noise_mode, generator=gens).float()
    return _in_steps(run, len(ws), ws.device)


@torch.inference_mode()
def map_latents(G: Generator, z: torch.Tensor, psi: float) -> torch.Tensor:
    """z [N, z_dim] -> w+ [N, num_ws, w_dim] with G's mapping, truncated towards its w_avg."""
    return _in_steps(lambda s: G.mapping(z[s], None, truncation_psi=psi), len(z), z.device)


def _check_same_latent_space(networks: list[Generator], names: list[str]) -> None:
    for G, name in zip(networks[1:], names[1:]):
        if (why := architecture_difference(networks[0], G, LATENT_SPACE, (names[0], name))) is not None:
            raise PairsError(f"{why}: the same w+ cannot drive both",
                             hint="use networks of one architecture (a base and its blends or fine-tunes)")


def sample_rows(networks: list[Generator], seeds: list[int], psi: float, device: torch.device) -> list[list[np.ndarray]]:
    """Row r from networks[r], column c from seeds[c]: [R, R, 3] uint8 images.

    w comes from the FIRST network's mapping (truncated towards its w_avg); the same w+ goes into
    every synthesis with its stored const noise, so the rows differ only by their synthesis weights
    (and noise constants, which a blend takes from its base).
    """
    ws = map_latents(networks[0], seed_latents(seeds, networks[0].z_dim).to(device), psi)
    return [list(nchw_to_hwc(synthesize(G, ws).cpu().numpy())) for G in networks]


def sample_grid(networks: list[Generator], seeds: list[int], psi: float, device: torch.device) -> np.ndarray:
    """[rows*R, cols*R, 3] uint8, unlabelled: sample_rows as one image."""
    return image_grid(sample_rows(networks, seeds, psi, device))


def interpolated(base: Generator, blended: Generator, strength: float) -> Generator:
    """A new Generator between `base` and `blended` at `strength` (blend.at_strength), on base's device."""
    G = Generator(**base.init_kwargs).to(next(base.parameters()).device)
    G.load_state_dict(at_strength(base.state_dict(), blended.state_dict(), strength))
    return G.eval().requires_grad_(False)


class StyleTeachers:
    """The toon teachers of a pair set with styles: style k at strength s is the base and blend k
    interpolated per tensor (at_strength), loaded into one working generator when asked for."""

    def __init__(self, base: Generator, blends: list[Generator]):
        self.base, self.blends = base.state_dict(), [G.state_dict() for G in blends]
        self.G, self.current = interpolated(base, base, 0.0), None

    def at(self, style: int, strength: float) -> Generator:
        if self.current != (style, strength):
            self.G.load_state_dict(at_strength(self.base, self.blends[style], strength))
            self.current = (style, strength)
        return self.G


def write_sample_grid(cfg: SampleConfig) -> Path:
    """Load each network, render the grid (see sample_grid) and write it as a PNG, atomically."""
    out = Path(cfg.output)
    if output_suffix(out, ".png").lower() != ".png":
        raise UsageError("the sample grid is written as PNG", path=out, hint=f"use -o {out.with_suffix('.png').name}")
    dev = resolve_device(cfg.device)
    networks = [load_generator(p, device=dev) for p in cfg.networks]
    _check_same_latent_space(networks, [str(p) for p in cfg.networks])
    labels = [Path(p).stem for p in cfg.networks]
    if cfg.strengths is not None:
        if len(networks) < 2:
            raise UsageError("a strength sweep needs the base and at least one blend", hint="--network BASE --network BLENDED")
        labels = [f"{name} s={s:g}" for name in labels[1:] for s in cfg.strengths]
        networks = [interpolated(networks[0], G, s) for G in networks[1:] for s in cfg.strengths]
    grid = image_grid(sample_rows(networks, list(cfg.seeds), cfg.psi, dev), row_labels=labels,
                      col_labels=[f"seed {s}" for s in cfg.seeds])
    write_image(out, grid)
    console.print(f"{len(cfg.networks)} x {len(cfg.seeds)} grid ({grid.shape[1]}x{grid.shape[0]} px) -> {out}")
    return out


def _files(split: Path, index: int, cfg: PairsConfig) -> dict[str, Path]:
    stem = f"{index:06d}"
    files = {"real": split / "real" / f"{stem}.{cfg.format}", "toon": split / "toon" / f"{stem}.{cfg.format}"}
    if cfg.save_latents:
        files["latent"] = split / "latents" / f"{stem}.npy"
    return files


def _complete(split: Path, index: int, cfg: PairsConfig) -> bool:
    return all(p.is_file() for p in _files(split, index, cfg).values())


def _entry(split: Path, index: int, cfg: PairsConfig, settings: dict, num_ws: int, z_dim: int) -> dict:
    """The manifest line of pair `index`: a function of the settings and the index alone."""
    entry = {"index": index, "seed": cfg.seed, "psi": cfg.psi,
             **{k: p.relative_to(split).as_posix() for k, p in _files(split, index, cfg).items()},
             "base_sha256": settings["base_sha256"], "blended_sha256": settings["blended_sha256"]}
    if cfg.style_mixing:
        entry["mix_cutoff"] = pair_latents(cfg.seed, index, z_dim, num_ws, cfg.style_mixing)[2]
    if cfg.styles:
        style, strength = pair_condition(cfg.seed, index, len(cfg.styles), _strengths(cfg))
        entry.update(style=cfg.styles[style][0], style_index=style, strength=strength,
                     blended_sha256=settings["styles"][style]["sha256"])
    return entry


def _strengths(cfg: PairsConfig) -> tuple[float, float]:
    return cfg.strengths or (1.0, 1.0)


def _claim_folder(out: Path, settings: dict) -> None:
    """Write pairs.json into a new folder, or check that an existing set was made with these settings."""
    meta = out / "pairs.json"
    if not meta.exists():
        leftovers = [p.name for p in (out / "real", out / "toon", out / "val", out / "latents") if p.exists()]
        leftovers += [p.name for p in out.glob("manifest*.jsonl")]
        if leftovers:
            raise PairsError(f"the folder holds {', '.join(sorted(leftovers))} but no pairs.json: it was not made by "
                             "`distill pairs`", path=out, hint="choose a new output folder")
        write_json_atomic(meta, settings)
    # Read back even after writing: a concurrent shard with other settings may have won the race.
    existing = read_json(meta, "pairs.json is damaged: restore it, or write the set into a new folder", PairsError)
    if not isinstance(existing, dict):
        raise PairsError("damaged: not the JSON object `distill pairs` writes", meta,
                         hint="restore it, or write the set into a new folder")
    for key in SET_KEYS + STYLE_KEYS:
        if existing.get(key) != settings.get(key):
            raise PairsError(f"this pair set was made with {key} = {existing.get(key)!r}; this run asks for "
                             f"{settings.get(key)!r}", path=meta,
                             hint="use a new output folder, or the same teachers and settings to complete this set")


def _clean_partials(split: Path, mine: set[int], part: Path) -> int:
    """Remove temporary files a killed run left for this shard's indices and manifest part
    (other shards may be writing theirs)."""
    leftovers = list(split.glob(f".{part.stem}.partial-*"))
    for folder in (split / "real", split / "toon", split / "latents"):
        leftovers += [p for p in folder.glob(".*.partial-*")
                      if (m := _PARTIAL.match(p.name)) and int(m.group(1)) in mine]
    for p in leftovers:
        p.unlink(missing_ok=True)
    return len(leftovers)


def _write_latent(path: Path, w: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, w)


def _split_complete(split: Path, indices: range, cfg: PairsConfig) -> bool:
    return all(_complete(split, i, cfg) for i in indices)


def _finish_split(split: Path, indices: range, entry: Callable[[int], dict], cfg: PairsConfig) -> bool:
    """Once every pair of the split exists: write manifest.jsonl and drop the parts."""
    if not _split_complete(split, indices, cfg):
        return False
    write_bytes_atomic(split / "manifest.jsonl", "".join(json.dumps(entry(i)) + "\n" for i in indices).encode())
    for part in split.glob("manifest-*-of-*.jsonl"):
        part.unlink(missing_ok=True)
    return True


def read_manifest(folder: str | Path) -> list[dict]:
    """The entries of a complete pair set (or its val/ split), in index order."""
    path = Path(folder) / "manifest.jsonl"
    if not path.is_file():
        raise PairsError("no manifest.jsonl: the pair set is missing or incomplete", path=folder,
                         hint="rerun `toonify-fast distill pairs` with the same settings to complete it")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@torch.inference_mode()
def _render(base: Generator, blended: Generator | StyleTeachers, indices: list[int], cfg: PairsConfig,
            device: torch.device) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """w+ [N, num_ws, w_dim] and the real and toon images [N, R, R, 3] uint8 of pairs `indices`."""
    latents = [pair_latents(cfg.seed, i, base.z_dim, base.num_ws, cfg.style_mixing) for i in indices]
    ws = map_latents(base, torch.stack([z for z, _, _ in latents]).to(device), cfg.psi)
    for j, (_, z2, cutoff) in enumerate(latents):
        if z2 is not None:
            ws[j, cutoff:] = map_latents(base, z2[None].to(device), cfg.psi)[0, cutoff:]
    noise_seeds = [pair_seed(cfg.seed, i, "noise") for i in indices]
    real = nchw_to_hwc(synthesize(base, ws, cfg.noise, noise_seeds, cfg.fp16).cpu().numpy())
    if isinstance(blended, StyleTeachers):
        # Each pair its own teacher: one at a time, in any batch.
        conditions = [pair_condition(cfg.seed, i, len(cfg.styles), _strengths(cfg)) for i in indices]
        toon = torch.cat([synthesize(blended.at(*c), ws[j:j + 1], cfg.noise, noise_seeds[j:j + 1], cfg.fp16)
                          for j, c in enumerate(conditions)])
    else:
        toon = synthesize(blended, ws, cfg.noise, noise_seeds, cfg.fp16)
    return ws, real, nchw_to_hwc(toon.cpu().numpy())


def _batches(items: list, size: int) -> Iterable[list]:
    return (items[s:s + size] for s in range(0, len(items), size))


def generate_pairs(cfg: PairsConfig) -> PairsSummary:
    """Make (or complete) this shard's part of the pair set in cfg.output; see the module docstring."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.fp16 and device.type != "cuda":
        raise PairsError("--fp16 needs a CUDA device", hint="leave out --fp16 on CPU")
    teacher_files = [cfg.blended] if cfg.blended is not None else [path for _, path in cfg.styles]
    base, toons = load_generator(cfg.base, device=device), [load_generator(p, device=device) for p in teacher_files]
    _check_same_latent_space([base, *toons], [str(cfg.base), *map(str, teacher_files)])
    base_sd = base.state_dict()
    for G, path in zip(toons, teacher_files):
        toon_sd = G.state_dict()
        if cfg.noise == "const" and any(not torch.equal(v, toon_sd[k]) for k, v in base_sd.items()
                                        if k.endswith(".noise_const")):
            note(f"the blended model{f' {Path(path).name}' if cfg.styles else ''}'s noise constants differ from the "
                 "base's (blended with --mapping toon?), so pairs differ in fine detail; --noise random gives both "
                 "the same noise")
    settings = {"base_sha256": file_sha256(cfg.base),
                "blended_sha256": file_sha256(cfg.blended) if cfg.blended is not None else "",
                "count": cfg.count, "val_count": cfg.val_count, "res": cfg.res or base.img_resolution,
                "psi": cfg.psi, "seed": cfg.seed, "noise": cfg.noise, "format": cfg.format,
                "style_mixing": cfg.style_mixing, "save_latents": cfg.save_latents, "fp16": cfg.fp16,
                "base": Path(cfg.base).name, "blended": Path(cfg.blended).name if cfg.blended is not None else None,
                "teacher_resolution": base.img_resolution, "num_ws": base.num_ws, "w_dim": base.w_dim}
    if cfg.styles:
        settings["styles"] = [{"name": name, "file": path.name, "sha256": file_sha256(path)} for name, path in cfg.styles]
        settings["strengths"] = list(_strengths(cfg))
    for path in teacher_files:
        blend = read_metadata(path).get("blend") if Path(path).suffix == ".safetensors" else None
        if blend and blend["base"]["sha256"] != settings["base_sha256"]:
            note(f"{Path(path).name} was blended from {blend['base']['file']}, another file than "
                 f"{Path(cfg.base).name}: pairs are only aligned if both hold the same base weights")
    blended = toons[0] if cfg.blended is not None else StyleTeachers(base, toons)
    cfg.output.mkdir(parents=True, exist_ok=True)
    _claim_folder(cfg.output, settings)

    k, n, res = *cfg.shard, settings["res"]
    splits = [(cfg.output, range(0, cfg.count)), (cfg.output / "val", range(cfg.count, cfg.count + cfg.val_count))]
    splits = [(split, indices) for split, indices in splits if len(indices)]
    entry = {split: (lambda i, split=split: _entry(split, i, cfg, settings, base.num_ws, base.z_dim))
             for split, _ in splits}
    todo, skipped, parts = [], 0, {}
    for split, indices in splits:
        mine = [i for i in indices if i % n == k]
        part = split / f"manifest-{k:05d}-of-{n:05d}.jsonl"
        if _clean_partials(split, set(mine), part):
            console.print(f"removed leftover partial files of an interrupted run in {split}")
        done = [i for i in mine if _complete(split, i, cfg)]
        skipped += len(done)
        todo += [(split, i) for i in sorted(set(mine) - set(done))]
        if not _split_complete(split, indices, cfg):
            (split / "manifest.jsonl").unlink(missing_ok=True)   # it would list files that are gone
        write_bytes_atomic(part, "".join(json.dumps(entry[split](i)) + "\n" for i in done).encode())
        parts[split] = open(part, "a")
    try:
        with progress("pairs") as bar:
            task = bar.add_task(f"pairs {k}/{n}" if n > 1 else "pairs", total=skipped + len(todo), completed=skipped)
            for batch in _batches(todo, cfg.batch_size):
                ws, real, toon = _render(base, blended, [i for _, i in batch], cfg, device)
                for j, (split, i) in enumerate(batch):
                    files = _files(split, i, cfg)
                    if cfg.save_latents:
                        _write_latent(files["latent"], ws[j].float().cpu().numpy())
                    for side, images in (("real", real), ("toon", toon)):
                        image = images[j] if res == base.img_resolution else resize(images[j], res, res)
                        write_image(files[side], image)
                    parts[split].write(json.dumps(entry[split](i)) + "\n")
                    parts[split].flush()
                    bar.advance(task)
    finally:
        for f in parts.values():
            f.close()
    complete = [_finish_split(split, indices, entry[split], cfg) for split, indices in splits]
    summary = PairsSummary(made=len(todo), skipped=skipped, seconds=time.perf_counter() - start)
    console.print(f"made {summary.made} pairs, skipped {summary.skipped} already present, {summary.seconds:.1f} s, "
                  f"{summary.pairs_per_s:.2f} pairs/s -> {cfg.output}" + ("" if all(complete) else
                  " (set not complete yet: other shards still to run)"))
    return summary
