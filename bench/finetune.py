"""Measure fine-tuning speed: kimg/s of `distill finetune` on the CPU at 32, 64 and 256 px, batch 4,
with the whole recipe on (ADA, R1 every 16 steps, path length every 4, style mixing, G_ema).

    .venv/bin/python bench/finetune.py            # prints a table, writes bench/results/finetune.json
    .venv/bin/python bench/finetune.py --steps 48 --device cuda

Each case is a real `distill.finetune.finetune` run on a randomly initialised StyleGAN2 of the
size given below (saved as .safetensors, so its discriminator is a new one sized to it) and a
folder of random images. The rate timed is the one stats.jsonl logs for the last `--window`
steps (a window of 16 holds one R1 step and four path-length steps, as every 16 steps do);
the first window (warm-up) and the snapshots (grid, SWD) fall outside it. FFHQ's 1024 px
config-f (512 channels) is far larger: these networks time the loop, not a production run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill.checkpoint import save_generator  # noqa: E402
from distill.finetune import FinetuneConfig, finetune  # noqa: E402
from distill.stylegan2 import Generator  # noqa: E402
from runtime.common import console, write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "finetune.json"
# res -> (channel_base, channel_max): the 32 px test fixture's size, the demo teacher's, a small 256 px one.
SIZES = {32: (2048, 64), 64: (4096, 64), 256: (4096, 64)}


def case(res: int, root: Path, steps: int, window: int, device: str) -> dict:
    base, cmax = SIZES[res]
    torch.manual_seed(0)
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=res, img_channels=3, mapping_kwargs={"num_layers": 4},
                  synthesis_kwargs={"channel_base": base, "channel_max": cmax, "conv_clamp": 256})
    save_generator(G, root / f"g{res}.safetensors")
    images = root / f"images{res}"
    rng = np.random.default_rng(0)
    for i in range(32):
        images.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    cfg = FinetuneConfig(base=root / f"g{res}.safetensors", images=images, output=root / "runs", kimg=steps * 4 / 1000,
                         batch=4, snap_kimg=1e3, swd_images=16, device=device, log_every=window)
    result = finetune(cfg)
    lines = [line for line in (result.run_dir / "stats.jsonl").read_text().splitlines() if "kimg_per_s" in line]
    rate = json.loads(lines[-1])["kimg_per_s"]
    return {"res": res, "batch": 4, "channels": {str(r): G.synthesis.channels[r] for r in G.synthesis.block_resolutions},
            "parameters_G": sum(p.numel() for p in G.parameters()), "steps_timed": window,
            "kimg_per_s": rate, "seconds_per_step": 4 / 1000 / rate, "hours_per_36_kimg": 36 / rate / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="steps per case (the last --window are timed)")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one: steady on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]   # a shared CPU's other work slows every case: it is recorded
    with tempfile.TemporaryDirectory() as tmp:
        results = [case(res, Path(tmp), args.steps, args.window, args.device) for res in SIZES]
    table = Table("res", "params G", "kimg/s", "s/step", "h per 36 kimg")
    for r in results:
        table.add_row(str(r["res"]), f"{r['parameters_G'] / 1e6:.2f}M", f"{r['kimg_per_s']:.4f}",
                      f"{r['seconds_per_step']:.2f}", f"{r['hours_per_36_kimg']:.1f}")
    console.print(table)
    write_json_atomic(RESULTS, {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
                                "results": results})


if __name__ == "__main__":
    main()
