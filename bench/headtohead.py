"""Head to head: the original Toonify (projection + blend, per image) against the distilled student.

    .venv/bin/python bench/headtohead.py     # prints a table, writes bench/results/headtohead.json

One run on this machine, same teacher and resolution. The teacher's seconds per image are measured
in full: `distill compare` projects every photo with the base model at the default 500 steps and
renders the latent with the blended model (alignment and model loading excluded), so each photo is
one full timing and the median is reported. The student runs the exported ONNX model through
runtime.Toonifier at batch 1, warm (after WARM_UP runs), on the same aligned crop; its median over
--runs is reported. Goal: the student at least 1000x faster. Alongside, quality: the student against
the teacher on held-out pairs (distill.evaluate, the model as served: uint8 in and out) and against
projection+blend on the real photos (distill.project.compare_files). Without VGG16 weights the
projection runs with the pixel loss only, which is cheaper per step than the default recipe; the
report says which loss ran. Defaults are the artefacts `make demo` writes.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from distill.evaluate import evaluate_student  # noqa: E402
from distill.losses import MissingWeightsError, find_vgg_weights  # noqa: E402
from distill.device import resolve_device  # noqa: E402
from distill.project import CompareConfig, ProjectConfig, compare_files  # noqa: E402
from runtime.common import console, write_json_atomic  # noqa: E402
from runtime.engine import Toonifier  # noqa: E402
from runtime.images import hwc_to_nchw, nchw_to_hwc, read_image, resize  # noqa: E402
from runtime.photos import expand_inputs  # noqa: E402

GOAL = 1000.0
WARM_UP = 5
PHOTOS = ROOT.parent / "shared" / "photos"


class ServedStudent(torch.nn.Module):
    """The exported student as an app runs it (Toonifier: uint8 RGB in and out) behind the
    [N, 3, H, W] in [-1, 1] interface that distill.evaluate scores."""

    def __init__(self, toonifier: Toonifier):
        super().__init__()
        self.toonifier = toonifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(hwc_to_nchw(self.toonifier.run(nchw_to_hwc(x.cpu().numpy()))))


def time_student(toonifier: Toonifier, crop: np.ndarray, runs: int) -> list[float]:
    """Seconds per call of one [R, R, 3] crop at batch 1, after WARM_UP untimed calls."""
    for _ in range(WARM_UP):
        toonifier.run(crop[None])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        toonifier.run(crop[None])
        times.append(time.perf_counter() - start)
    return times


def print_table(report: dict) -> None:
    t, s, c, p = report["teacher"], report["student"], report["photos"], report["held_out_pairs"]
    table = Table(title=f"projection+blend vs student, {report['resolution']} px, {report['device']}")
    table.add_column("")
    table.add_column("projection+blend", justify="right")
    table.add_column("student", justify="right")
    table.add_row("seconds per image (median)", f"{t['seconds_median']:.2f} s", f"{1000 * s['seconds_median']:.2f} ms")
    table.add_row("speed-up", "1x", f"{report['speedup']:,.0f}x (goal {GOAL:,.0f}x)")
    table.add_row("loss / steps", f"{t['loss']}, {t['steps']} steps", "-")
    table.add_row(f"photos ({len(c['scored'])}): PSNR / SSIM vs projection+blend", "reference",
                  f"{c['mean']['psnr']:.2f} dB / {c['mean']['ssim']:.4f}")
    table.add_row(f"held-out pairs ({p['count']}): PSNR / SSIM vs teacher", "reference",
                  f"{p['student']['psnr']:.2f} dB / {p['student']['ssim']:.4f}")
    table.add_row("held-out pairs: the input photo itself (identity)", "",
                  f"{p['identity']['psnr']:.2f} dB / {p['identity']['ssim']:.4f}")
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, default=ROOT / "demo" / "teacher" / "base.safetensors")
    parser.add_argument("--blended", type=Path, default=ROOT / "demo" / "teacher" / "blended.safetensors")
    parser.add_argument("--student", type=Path, default=ROOT / "exports" / "demo.onnx", help="exported student (.onnx)")
    parser.add_argument("--pairs", type=Path, default=ROOT / "demo" / "pairs" / "val", help="held-out pair folder")
    parser.add_argument("--photos", type=Path, nargs="+", default=[PHOTOS],
                        help="photos or folders of photos (images without a face are skipped)")
    parser.add_argument("--steps", type=int, default=500, help="projection steps (the default recipe: 500)")
    parser.add_argument("--runs", type=int, default=50, help="timed student runs")
    parser.add_argument("--vgg-weights", type=Path, help="torchvision VGG16 weights (default: the torch hub cache)")
    parser.add_argument("--device", default="auto", help="where the teacher runs: auto, cpu or cuda")
    parser.add_argument("--keep", type=Path, help="keep the projections and side-by-sides in this folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "headtohead.json")
    args = parser.parse_args()

    needed = {"--base": args.base, "--blended": args.blended, "--student": args.student, "--pairs": args.pairs}
    missing = [f"{flag} {path}" for flag, path in needed.items() if not path.exists()]
    if missing:
        console.print("missing: " + "; ".join(missing) + "\n  hint: `make demo` writes the demo teacher, pairs and "
                      "student there; or pass --base, --blended, --student and --pairs")
        sys.exit(2)
    photos = expand_inputs([str(p) for p in args.photos])
    try:
        vgg_note = str(find_vgg_weights("vgg16", args.vgg_weights))
    except MissingWeightsError as e:
        vgg_note = f"none: {e.reason}"
        console.print("no VGG16 weights: the projection runs with the pixel loss only (fewer operations per step "
                      "than the full recipe, so the teacher's time below is an underestimate)")
    device = resolve_device(args.device)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        projection = ProjectConfig(base=args.base, blended=args.blended, images=tuple(photos), output=out,
                                   steps=args.steps, vgg=not vgg_note.startswith("none"), vgg_weights=args.vgg_weights,
                                   device=str(device))
        compared = compare_files(CompareConfig(student=args.student, projection=projection))
        scored = [r for r in compared["results"] if "skipped" not in r]
        if not scored:
            console.print("no photo had a face: nothing to time the projection on")
            sys.exit(1)
        toonifier = Toonifier(args.student, provider="cpu" if device.type == "cpu" else "auto")
        crop = resize(read_image(out / f"{Path(scored[0]['image']).stem}_target.png")[0],
                      toonifier.resolution, toonifier.resolution)
        student_times = time_student(toonifier, crop, args.runs)

    pairs = evaluate_student(ServedStudent(toonifier), args.pairs, toonifier.resolution)
    teacher_times = [r["projection_seconds"] for r in scored]
    teacher_s, student_s = statistics.median(teacher_times), statistics.median(student_times)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "onnxruntime": ort.__version__, "provider": toonifier.provider,
                    "load_average_before_after": [load_before[0], os.getloadavg()[0]]},
        "device": str(device), "resolution": toonifier.resolution,
        "files": {k.lstrip("-"): str(v) for k, v in needed.items()},
        "teacher": {"seconds": teacher_times, "seconds_median": teacher_s, "steps": args.steps,
                    "loss": compared["loss"], "vgg16_weights": vgg_note,
                    "timed": "project_image + blended render per photo, full run, alignment and loading excluded"},
        "student": {"seconds_median": student_s, "seconds_best": min(student_times), "runs": args.runs,
                    "warm_up": WARM_UP, "batch": 1, "timed": "Toonifier.run on one aligned crop"},
        "speedup": teacher_s / student_s, "goal": GOAL, "meets_goal": teacher_s / student_s >= GOAL,
        "photos": {"scored": [r["image"] for r in scored], "mean": compared["mean"], "lpips": compared["lpips"],
                   "results": compared["results"]},
        "held_out_pairs": pairs,
    }
    print_table(report)
    console.print(f"student {report['speedup']:,.0f}x faster: goal of {GOAL:,.0f}x "
                  f"{'met' if report['meets_goal'] else 'NOT met'}")
    write_json_atomic(args.out, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
