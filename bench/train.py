"""Measure training speed: steps/s of the `lite` and `full` students at 256 px, batch 1, with the
full pix2pixHD objective (GAN + feature matching), without and with the VGG19 perceptual term.

    .venv/bin/python bench/train.py            # prints a table, writes bench/results/train.json
    .venv/bin/python bench/train.py --steps-lite 20 --steps-full 5 --device cuda

Each case is a real `distill.train.train` run (data loading, both networks, EMA, logging) on a
synthetic pair folder of random 256 px images; steps/s is the median over the steps after the
warm-up ones, read from the run's stats.jsonl (logged every step). The VGG19 weights in the
"vgg" cases are RANDOM and exist only to time the network: a real run refuses random weights,
so these cases measure speed, never quality.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill.losses import VGG_PLANS  # noqa: E402
from distill.train import TrainConfig, train  # noqa: E402
from runtime.common import console, write_json_atomic  # noqa: E402

RES = 256
RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def synthetic_pairs(root: Path, count: int = 8) -> Path:
    """real/ and toon/ folders of random 256 px images: decoding and augmentation cost like real pairs."""
    rng = np.random.default_rng(0)
    for sub in ("real", "toon"):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)).save(root / sub / f"{i:06d}.png")
    return root


def random_vgg19(path: Path) -> Path:
    """A torchvision-layout VGG19 state dict with RANDOM weights: for timing only (see the docstring)."""
    state, index, channels = {}, 0, 3
    for item in VGG_PLANS["vgg19"]:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, channels, 3, 3) * (2 / (9 * channels)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(item)
        index, channels = index + 2, item
    torch.save(state, path)
    return path


def measure(preset: str, vgg_weights: Path | None, steps: int, warmup: int, pairs: Path, out: Path,
            device: str) -> dict:
    cfg = TrainConfig(pairs=pairs, output=out, preset=preset, res=RES, steps=steps, batch_size=1,
                      vgg=vgg_weights is not None, vgg_weights=vgg_weights, workers=0, device=device,
                      log_every=1, sample_every=10 ** 9, checkpoint_every=10 ** 9)
    result = train(cfg)
    rates = [json.loads(line)["images_per_s"] for line in (result.run_dir / "stats.jsonl").read_text().splitlines()]
    timed = rates[warmup:]
    return {"preset": preset, "vgg": "random weights (timing only)" if vgg_weights else "off",
            "steps_timed": len(timed), "steps_per_s": statistics.median(timed),
            "seconds_per_step": 1 / statistics.median(timed),
            "parameters_G": sum(p.numel() for p in result.G.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-lite", type=int, default=10, help="steps per lite case (the first 2 are warm-up)")
    parser.add_argument("--steps-full", type=int, default=4, help="steps per full case (the first is warm-up)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = synthetic_pairs(tmp / "pairs")
        vgg = random_vgg19(tmp / "vgg19-random.pth")
        for preset, steps, warmup in (("lite", args.steps_lite, 2), ("full", args.steps_full, 1)):
            for weights in (None, vgg):
                console.print(f"timing {preset}, VGG {'on (random weights)' if weights else 'off'}: {steps} steps")
                results.append(measure(preset, weights, steps, warmup, pairs, tmp / "runs", args.device))

    table = Table(title=f"training at {RES} px, batch 1, GAN + feature matching, {args.device}")
    for column in ("student", "VGG term", "G parameters", "steps/s", "s/step", "steps timed"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["preset"], r["vgg"], f"{r['parameters_G'] / 1e6:.1f}M", f"{r['steps_per_s']:.3f}",
                      f"{r['seconds_per_step']:.2f}", str(r["steps_timed"]))
    console.print(table)
    write_json_atomic(RESULTS, {
        "what": f"distill.train steps/s at {RES} px, batch 1, median after warm-up; VGG cases use random "
                "weights for timing only",
        "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "results": results})
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
