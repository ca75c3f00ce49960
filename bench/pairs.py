"""Measure paired-data generation (`distill pairs`): pairs/s at 64 and 256 px, batch 1 and 8.

    .venv/bin/python bench/pairs.py          # prints a table, writes bench/results/pairs.json

The teachers are random-init generators with NVlabs' 'paper256' settings (z_dim = w_dim = 512,
8 mapping layers, channel_base 16384, channel_max 512, conv_clamp 256): 512 channels up to 32 px,
then 256, 128 and 64 at 64, 128 and 256 px. The toon teacher is the same architecture with other
weights, blended at 32 px. Speed does not depend on the weights, so the numbers hold for real
teachers of that size; FFHQ at 1024 px (config-f, channel_base 32768) costs several times more
per pair. Each setting runs generate_pairs end to end (two teachers, PNG writing included) for 1
and for 1 + N pairs in fresh folders; pairs/s = N / (t(1 + N) - t(1)) so loading, hashing and
warm-up cancel. On CPU the networks run one pair at a time whatever the batch size (see
distill/pairs.py), so batch 8 is expected to match batch 1 there.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill.blend import BlendConfig, blend_files  # noqa: E402
from distill.checkpoint import save_generator  # noqa: E402
from distill.device import resolve_device  # noqa: E402
from distill.pairs import PairsConfig, generate_pairs  # noqa: E402
from distill.stylegan2 import Generator  # noqa: E402
from bench.generator import TEACHER  # noqa: E402
from runtime.common import write_json_atomic  # noqa: E402

RESOLUTIONS = (64, 256)
BATCHES = (1, 8)


def make_teachers(res: int, folder: Path) -> tuple[Path, Path]:
    """A random base and a blend of it with another random init, as checkpoint files."""
    paths = []
    for seed, name in ((0, "base"), (1, "toon")):
        torch.manual_seed(seed)
        save_generator(Generator(img_resolution=res, **TEACHER), folder / f"{name}-{res}.safetensors")
        paths.append(folder / f"{name}-{res}.safetensors")
    blended = blend_files(paths[0], paths[1], BlendConfig(swap_res=32), folder / f"blended-{res}.safetensors")
    return paths[0], blended


def timed_run(base: Path, blended: Path, out: Path, count: int, batch: int, device: str) -> float:
    start = time.perf_counter()
    generate_pairs(PairsConfig(base=base, blended=blended, output=out, count=count, batch_size=batch, device=device))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="timed pairs per setting (N)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pairs.json")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for res in RESOLUTIONS:
            base, blended = make_teachers(res, tmp)
            for batch in BATCHES:
                key = f"{res}px_b{batch}"
                t_one = timed_run(base, blended, tmp / f"{key}-one", 1, batch, device)
                t_all = timed_run(base, blended, tmp / f"{key}-all", 1 + args.pairs, batch, device)
                seconds = max(t_all - t_one, 1e-9)
                results[key] = {"res": res, "batch_size": batch, "pairs": args.pairs, "seconds": seconds,
                                "pairs_per_s": args.pairs / seconds, "s_per_pair": seconds / args.pairs}
    report = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
              "teacher": TEACHER, "method": "N / (t(1 + N pairs) - t(1 pair)), end to end incl. PNG writing",
              "results": results}
    write_json_atomic(args.out, report)
    table = Table(title=f"distill pairs on {device}: paper256-size teachers, {args.pairs} timed pairs per row")
    for column in ("resolution", "batch", "pairs/s", "s/pair"):
        table.add_column(column, justify="right")
    for r in results.values():
        table.add_row(f"{r['res']} px", str(r["batch_size"]), f"{r['pairs_per_s']:.2f}", f"{r['s_per_pair']:.3f}")
    Console(width=100).print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
