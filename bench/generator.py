"""Measure the StyleGAN2 teacher: images/s of G.synthesis at 32, 64 and 256 px, batch 1 and 8.

    .venv/bin/python bench/generator.py      # prints a table, writes bench/results/generator.json

The generators are random-init with NVlabs' 'paper256' settings (z_dim = w_dim = 512, 8 mapping
layers, channel_base 16384, channel_max 512, conv_clamp 256): 512 channels up to 32 px, then
256, 128 and 64 at 64, 128 and 256 px. Speed does not depend on the weights, so the numbers hold
for real teachers of that size (FFHQ config-f at 1024 px, channel_base 32768, costs far more).
Each setting runs G.synthesis on fixed w+ with const noise under torch.inference_mode: one
warm-up call, then calls until `--seconds` have passed (at least `--min-calls`); the best call
counts, since the machine may be busy with other work. A row also times the batch as a loop of
single-sample calls, which is how distill/pairs.py runs the teachers on CPU.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill.stylegan2 import Generator  # noqa: E402
from runtime.common import write_json_atomic  # noqa: E402

RESOLUTIONS = (32, 64, 256)
BATCHES = (1, 8)
TEACHER = dict(z_dim=512, c_dim=0, w_dim=512, img_channels=3, mapping_kwargs={"num_layers": 8},
               synthesis_kwargs={"channel_base": 16384, "channel_max": 512, "conv_clamp": 256})


def best_seconds(fn, seconds: float, min_calls: int) -> float:
    fn()  # warm-up: first calls pick kernels and allocate
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@torch.inference_mode()
def measure(res: int, batch: int, device: torch.device, seconds: float, min_calls: int) -> dict:
    torch.manual_seed(0)
    G = Generator(img_resolution=res, **TEACHER).eval().to(device)
    ws = G.mapping(torch.randn([batch, G.z_dim], device=device))

    def batched():
        G.synthesis(ws)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def looped():
        for i in range(batch):
            G.synthesis(ws[i:i + 1])
        if device.type == "cuda":
            torch.cuda.synchronize()

    t_batch = best_seconds(batched, seconds, min_calls)
    t_loop = best_seconds(looped, seconds, min_calls) if batch > 1 else t_batch
    return {"res": res, "batch_size": batch, "seconds_per_call": t_batch, "images_per_s": batch / t_batch,
            "images_per_s_looped": batch / t_loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement")
    parser.add_argument("--min-calls", type=int, default=2, help="timed calls per measurement at least")
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generator.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {f"{res}px_b{batch}": measure(res, batch, device, args.seconds, args.min_calls)
               for res in args.resolutions for batch in BATCHES}
    write_json_atomic(args.out, {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}", "teacher": TEACHER,
        "method": f"G.synthesis, const noise, inference_mode; best of >= {args.min_calls} calls over "
                  f"{args.seconds} s after one warm-up call", "results": results})
    table = Table(title=f"G.synthesis on {device} ({torch.get_num_threads()} threads): paper256-size generators")
    for column in ("resolution", "batch", "images/s", "ms/call", "images/s as 1-sample loop"):
        table.add_column(column, justify="right")
    for r in results.values():
        table.add_row(f"{r['res']} px", str(r["batch_size"]), f"{r['images_per_s']:.2f}",
                      f"{1000 * r['seconds_per_call']:.1f}", f"{r['images_per_s_looped']:.2f}")
    Console(width=100).print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
