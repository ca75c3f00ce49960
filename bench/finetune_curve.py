"""Measure how a fine-tune approaches its image folder: the sliced Wasserstein distance (distill.swd)
of G and of G_ema to a folder with a known answer every --every steps, for a few recipes, and the
distance's noise floor.

    .venv/bin/python bench/finetune_curve.py                  # writes bench/results/finetune_curve.json
    .venv/bin/python bench/finetune_curve.py --steps 300 --every 20 --cases default,ramp,ramp-lr

The folder: --images renders (seeds 1000..) of the 32 px NVlabs test fixture
(../shared/fixtures/stylegan2/nvlabs_sg2ada_32.pkl, randomly initialised), recoloured (RGB -> BRG)
and posterised to 4 levels, the answer the tests fine-tune toward. The floor: the distance from
that folder to 48-image sets of other renders of the same answer (seeds 20000.., 30000.., 40000..).
Each case runs batch 4, no augmentation, no path length, in chunks of --every steps through the
exact resume, so its curve is the one of a straight run. Ratios are to the base's distance.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from distill.checkpoint import load_generator  # noqa: E402
from distill.finetune import FinetuneConfig, finetune, load_images, metric_samples  # noqa: E402
from distill.pairs import seed_latents  # noqa: E402
from distill.swd import sliced_wasserstein  # noqa: E402
from runtime.common import console, write_json_atomic  # noqa: E402
from runtime.images import nchw_to_hwc, write_image  # noqa: E402

BASE = ROOT.parent / "shared" / "fixtures" / "stylegan2" / "nvlabs_sg2ada_32.pkl"
RESULTS = ROOT / "bench" / "results" / "finetune_curve.json"
SWD_IMAGES = 48
# name -> FinetuneConfig overrides: today's default (G_ema without ramp-up), NVlabs' from-scratch
# ramp (the default before), and with the ramp a lower lr, a larger R1 gamma, a folder of 256, ADA
# with a p that can move within the run.
CASES = {"default": {}, "ramp": {"ema_rampup": 0.05}, "ramp-lr": {"ema_rampup": 0.05, "lr": 0.001},
         "ramp-gamma": {"ema_rampup": 0.05, "gamma": 5.0}, "ramp-256": {"ema_rampup": 0.05, "images": 256},
         "ramp-ada": {"ema_rampup": 0.05, "augment": "ada", "ada_kimg": 0.5}}


@torch.no_grad()
def answer(G, first_seed: int, count: int) -> torch.Tensor:
    """[count, 3, R, R] in [-1, 1]: renders of seeds first_seed.., channels rotated, 4 levels."""
    x = G(seed_latents(list(range(first_seed, first_seed + count)), G.z_dim)).clamp(-1, 1)[:, [2, 0, 1]]
    return torch.round((x + 1) * 1.5) / 1.5 - 1


def folder(G, root: Path, count: int) -> Path:
    path = root / f"answer-{count}"
    if not path.is_dir():
        for i, image in enumerate(nchw_to_hwc(answer(G, 1000, count).numpy())):
            write_image(path / f"{i:03d}.png", image)
    return path


def case(name: str, G, root: Path, steps: int, every: int) -> dict:
    overrides = dict(CASES[name])
    images = folder(G, root, overrides.pop("images", 48))
    cfg = FinetuneConfig(**{"base": BASE, "images": images, "output": root / name, "kimg": steps * 4 / 1000,
                            "batch": 4, "augment": "none", "pl_weight": 0, "snap_kimg": 1e6,
                            "swd_images": SWD_IMAGES, "device": "cpu", "log_every": every, **overrides})
    reals = load_images(images, G.img_resolution)[:SWD_IMAGES]

    def swd(net) -> float:
        return sliced_wasserstein(reals, metric_samples(net, cfg, torch.device("cpu")), seed=cfg.seed)["swd"]

    start = swd(G)
    curve, run, began = [{"step": 0, "G": 1.0, "G_ema": 1.0}], None, time.perf_counter()
    for stop in range(every, steps + 1, every):
        result = finetune(cfg, resume=run, stop_at=stop)
        run = result.run_dir
        curve.append({"step": stop, "G": swd(result.G) / start, "G_ema": swd(result.G_ema) / start})
    return {"case": name, "overrides": CASES[name], "swd_base": start, "curve": curve,
            "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--cases", default="default,ramp", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one: steady on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G = load_generator(BASE)
    reference = answer(G, 1000, SWD_IMAGES)
    floor = [sliced_wasserstein(reference, answer(G, s, SWD_IMAGES))["swd"] for s in (20000, 30000, 40000)]
    with tempfile.TemporaryDirectory() as tmp:
        results = [case(name, G, Path(tmp), args.steps, args.every) for name in args.cases.split(",")]
    table = Table("case", "SWD base", "G_ema at the end", "G_ema min..max, 2nd half", "G min..max, 2nd half")
    for r in results:
        late = r["curve"][len(r["curve"]) // 2:]
        table.add_row(r["case"], f"{r['swd_base']:.1f}", f"{r['curve'][-1]['G_ema']:.3f}",
                      f"{min(c['G_ema'] for c in late):.3f}..{max(c['G_ema'] for c in late):.3f}",
                      f"{min(c['G'] for c in late):.3f}..{max(c['G'] for c in late):.3f}")
    console.print(table)
    console.print(f"noise floor (48 vs 48 renders of the answer): {', '.join(f'{f:.1f}' for f in floor)}")
    write_json_atomic(RESULTS, {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                                "steps": args.steps, "every": args.every, "swd_images": SWD_IMAGES,
                                "noise_floor": floor, "results": results})


if __name__ == "__main__":
    main()
