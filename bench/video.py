"""Measure video conversion on the shared clip: end-to-end frames/s against inference-only frames/s.

    .venv/bin/python bench/video.py [--model exports/demo.onnx] [--batch-size 1] [--max-frames 275]

End to end is `toonify-fast video` as a user runs it (offline smoothing, paste-back, H.264 and the
audio copied): both decoding passes, face detection and tracking, alignment, inference, pasting
back and encoding, model loading included. Inference only runs the same model, provider and
batch size on as many face crops as the clip needed, back to back, after a warm-up. The overhead
is what the pipeline adds on top of that inference (goal: <= 20%); the pipeline overlaps
decoding, inference and encoding in threads, so a model that takes most of the time hides the
rest. Without --model the bench uses exports/demo.onnx when present, else builds a small conv net
(random weights: speed does not depend on them) and says so. Writes bench/results/video.json.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from runtime.common import write_json_atomic  # noqa: E402
from runtime.engine import ModelInfo, Toonifier  # noqa: E402
from runtime.video import VideoConfig, convert_video  # noqa: E402

CLIP = ROOT.parent / "shared" / "photos" / "short_hamilton_clip.mp4"
DEMO = ROOT / "exports" / "demo.onnx"


def build_conv_net(path: Path, resolution: int = 256, channels: int = 32, hidden: int = 3) -> Path:
    """A stand-in student: 3x3 convs 3 -> channels -> ... -> 3 with ReLU, tanh out, about 1.3 GMAC a
    256 px crop, carrying the toonify-fast metadata (needs the `onnx` package)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    widths = [3] + [channels] * (hidden + 1) + [3]
    nodes, weights, x = [], [], "input"
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        last = i == len(widths) - 2
        nodes.append(helper.make_node("Tanh" if last else "Relu", [f"c{i}"], ["output" if last else f"a{i}"]))
        x = f"a{i}"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, "H", "W"]) for n in ("input", "output")]
    model = helper.make_model(helper.make_graph(nodes, "bench_conv_net", io[:1], io[1:], weights),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelInfo(input_name="input", output_name="output", resolution=resolution,
                                            size_multiple=8, preset="bench-conv-net").to_metadata())
    onnx.save(model, str(path))
    return path


def inference_only(model: Path, provider: str, batch_size: int | None, crops: int) -> tuple[float, Toonifier]:
    """Seconds to run `crops` random face crops through the model in its batches, after a warm-up."""
    toonifier = Toonifier(model, provider, batch_size=batch_size)
    r, n = toonifier.resolution, toonifier.batch_size
    batch = np.random.default_rng(0).integers(0, 256, (n, r, r, 3), np.uint8)
    toonifier.run(batch)
    start = time.perf_counter()
    for i in range(0, crops, n):
        toonifier.run(batch[:min(n, crops - i)])
    return time.perf_counter() - start, toonifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="exported model (default: exports/demo.onnx, else a stand-in)")
    parser.add_argument("--provider", default="auto")
    parser.add_argument("--batch-size", type=int, help="face crops per run (default: the engine's)")
    parser.add_argument("--max-frames", type=int, help="convert only the first N frames of the clip")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "video.json")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or (DEMO if DEMO.is_file() else None)
        if model is None:
            model = build_conv_net(Path(tmp) / "bench_conv_net.onnx")
            console.print(f"no --model and no {DEMO}: using a stand-in conv net (random weights, 256 px)")
        report = convert_video(VideoConfig(args.clip, Path(tmp) / "toon.mp4", model, provider=args.provider,
                                           batch_size=args.batch_size, max_frames=args.max_frames))
        crops = sum(report["faces_per_frame"])
        infer_seconds, toonifier = inference_only(model, args.provider, args.batch_size, crops)
    frames, seconds = report["frames"], report["seconds"]
    result = {
        "clip": str(args.clip), "model": str(model if args.model or DEMO.is_file() else "stand-in conv net"),
        "resolution": toonifier.resolution, "provider": toonifier.provider, "batch_size": toonifier.batch_size,
        "frames": frames, "face_crops": crops,
        "end_to_end": {"seconds": seconds, "frames_per_second": frames / seconds,
                       "busy_seconds": report["busy_seconds"]},
        "inference_only": {"seconds": infer_seconds, "frames_per_second": frames / infer_seconds,
                           "crops_per_second": crops / infer_seconds},
        "pipeline_overhead": seconds / infer_seconds - 1,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
    }
    write_json_atomic(args.out, result)
    table = Table(title=f"video conversion, {frames} frames ({crops} face crops), {toonifier.resolution} px model, "
                        f"{toonifier.provider}, batch {toonifier.batch_size}")
    for column in ("", "seconds", "frames/s"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("end to end", f"{seconds:.2f}", f"{frames / seconds:.1f}")
    for work, busy in report["busy_seconds"].items():
        table.add_row(f"  {work.replace('_', ' ')} (busy, overlapped)", f"{busy:.2f}", "")
    table.add_row("inference only", f"{infer_seconds:.2f}", f"{frames / infer_seconds:.1f}")
    table.add_row("pipeline overhead", f"{100 * result['pipeline_overhead']:+.0f}%", "")
    console.print(table)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
