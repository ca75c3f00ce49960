"""Measure student candidates with ONNX Runtime on CPU and choose the `lite` preset.

    .venv/bin/python bench/student.py        # prints a table, writes bench/results/student.json

Each candidate is exported to ONNX as `distill export` does (export_form, export_graph: opset 17, dynamic
batch/height/width, the TorchScript exporter) and run with the CPUExecutionProvider, graph optimisation
ALL and 2 intra-op threads, at 256x256 batch 1, 256x256 batch 8 and 512x512 batch 1. The
machine may be busy with other work: candidates are timed round-robin within one run (every
round times every candidate at every shape) and compared by their best round.
Targets for `lite`: >= 15 images/s at 256x256 (batch 8 allowed) and <= 250 ms at 512x512
batch 1. The table marks the preset currently in distill/translator.py and each candidate's
headroom over the targets; the reasons for the choice sit beside the preset.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill.export import export_form, export_graph  # noqa: E402
from distill.translator import PRESETS, StudentConfig, build_generator, count_flops  # noqa: E402
from runtime.common import console, progress, write_json_atomic  # noqa: E402

SHAPES = ((256, 1), (256, 8), (512, 1))   # (side, batch)
OPSET = 17
TARGET_256_IMAGES_PER_S = 15.0
TARGET_512_MS = 250.0

CANDIDATES = {
    # The smallest pix2pixHD the reference facts quote (about 0.4 s at 256x256 there): the yardstick.
    "p2phd-32-3d-9basic-in": StudentConfig(ngf=32, n_downsampling=3),
    # pix2pixHD at half width, then one change at a time: norm, upsampling, depth, block type.
    "16-3d-9basic-in": StudentConfig(ngf=16, n_downsampling=3),
    "16-3d-9basic-bn": StudentConfig(ngf=16, n_downsampling=3, norm="batch"),
    "16-3d-9basic-in-resize": StudentConfig(ngf=16, n_downsampling=3, upsample="resize"),
    "16-3d-6basic-in": StudentConfig(ngf=16, n_downsampling=3, n_blocks=6),
    "16-3d-12basic-in": StudentConfig(ngf=16, n_downsampling=3, n_blocks=12),
    "16-3d-9sep-in": StudentConfig(ngf=16, n_downsampling=3, block="separable"),
    # Wider but depthwise-separable at the lowest resolution; a coarser 4-downsampling variant.
    "24-3d-9sep-in": StudentConfig(ngf=24, n_downsampling=3, block="separable"),
    "32-3d-9sep-bn": StudentConfig(ngf=32, n_downsampling=3, block="separable", norm="batch"),
    "16-4d-9sep-in": StudentConfig(ngf=16, n_downsampling=4, block="separable"),
}


def cpu_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(names: list[str], rounds: int, threads: int, tmp: Path) -> dict[str, dict]:
    """Per candidate: size, GFLOPs and run times at every shape, timed round-robin.

    The best of the rounds is the least disturbed by other work on the machine (as timeit
    recommends); the median is reported beside it.
    """
    rng = np.random.default_rng(0)
    inputs = {shape: rng.uniform(-1, 1, (shape[1], 3, shape[0], shape[0])).astype(np.float32) for shape in SHAPES}
    sessions, results = {}, {}
    with progress("runs") as bar:
        exporting = bar.add_task("export", total=len(names))
        for name in names:
            model = build_generator(CANDIDATES[name]).eval()
            export_graph(export_form(model), torch.zeros(1, 3, 256, 256), tmp / f"{name}.onnx", OPSET)
            sessions[name] = cpu_session(tmp / f"{name}.onnx", threads)
            results[name] = {"config": asdict(CANDIDATES[name]),
                             "params": sum(p.numel() for p in model.parameters()),
                             "gflops_per_image": {f"{s}": count_flops(model, s, s) / 1e9 for s in (256, 512)},
                             "samples_s": {f"{s}x{s}_b{b}": [] for s, b in SHAPES}}
            bar.advance(exporting)
        timing = bar.add_task("timing", total=(rounds + 1) * len(names) * len(SHAPES))
        # Round 0 warms up each session at each shape (ORT plans memory per new shape) and is dropped.
        for round_ in range(rounds + 1):
            # Each round starts at another candidate, so a burst of outside load hits them in turn.
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                for (side, batch), x in inputs.items():
                    start = time.perf_counter()
                    sessions[name].run(None, {"input": x})
                    if round_:
                        results[name]["samples_s"][f"{side}x{side}_b{batch}"].append(time.perf_counter() - start)
                    bar.advance(timing)
    for result in results.values():
        for side, batch in SHAPES:
            key = f"{side}x{side}_b{batch}"
            best, median = min(result["samples_s"][key]), statistics.median(result["samples_s"][key])
            result[key] = {"ms_per_image": 1000 * best / batch, "images_per_s": batch / best,
                           "ms_per_image_median": 1000 * median / batch, "images_per_s_median": batch / median}
        result["headroom"] = min(max(result[f"256x256_b{b}"]["images_per_s"] for s, b in SHAPES if s == 256)
                                 / TARGET_256_IMAGES_PER_S, TARGET_512_MS / result["512x512_b1"]["ms_per_image"])
    return results


def print_table(results: dict[str, dict], preset: str | None) -> None:
    table = Table(title=f"Student candidates on ONNX Runtime CPU: best of rounds (median). Targets: "
                        f">= {TARGET_256_IMAGES_PER_S:g} images/s at 256x256, <= {TARGET_512_MS:g} ms at 512x512 b1")
    for column in ("candidate", "params", "GFLOPs/img 256", "256 b1 ms", "256 b8 ms/img", "256 b8 img/s",
                   "512 b1 ms", "headroom"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for name, r in results.items():
        def cell(key: str, field: str, fmt: str) -> str:
            return f"{r[key][field]:{fmt}} ({r[key][field + '_median']:{fmt}})"
        table.add_row(name + (" = lite" if name == preset else ""), f"{r['params'] / 1e6:.2f}M",
                      f"{r['gflops_per_image']['256']:.2f}", cell("256x256_b1", "ms_per_image", ".1f"),
                      cell("256x256_b8", "ms_per_image", ".1f"), cell("256x256_b8", "images_per_s", ".1f"),
                      cell("512x512_b1", "ms_per_image", ".0f"),
                      f"{r['headroom']:.2f}x" if r["headroom"] >= 1 else f"[red]{r['headroom']:.2f}x[/red]")
    # A fixed width: the table is a report, and piped output would otherwise be cut to 80 columns.
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="measure these candidates only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "student.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = next((name for name, cfg in CANDIDATES.items() if cfg == PRESETS["lite"]), None)
    names = args.only or list(CANDIDATES)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(names, args.rounds, args.threads, Path(tmp))
    print_table(results, preset)
    if preset in results:
        verdict = "meets both targets" if results[preset]["headroom"] >= 1 else "MISSES a target"
        console.print(f"PRESETS['lite'] = {preset}: {verdict} (headroom {results[preset]['headroom']:.2f}x)")
    else:
        console.print(f"PRESETS['lite'] ({PRESETS['lite']}) was not measured in this run")
    write_json_atomic(args.out, {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "onnxruntime": ort.__version__, "torch": torch.__version__},
        "targets": {"256_images_per_s": TARGET_256_IMAGES_PER_S, "512_b1_ms": TARGET_512_MS},
        "timing": "best of rounds (ms_per_image, images_per_s) and median (*_median); headroom = "
                  "min(best 256 images/s / target, target / best 512 ms)",
        "rounds": args.rounds, "lite_preset": preset, "candidates": results})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
