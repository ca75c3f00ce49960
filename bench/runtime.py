"""Serving speed of the exported students on this machine, in one run: `python bench/runtime.py`.

Measures, with the same random-weight students exported through `distill.export` (speed does
not depend on the weights' values):
- lite at 256x256 and 512x512, batch 1 and 8, through runtime.Toonifier (uint8 in, uint8 out),
  float32 and int8 (`distill export --int8`, calibrated on --calibration images): images/s and
  latency; goals >= 15 images/s at 256x256 and <= 250 ms at 512x512 (float32);
- ONNX Runtime CPU against PyTorch eager (float32) for the same student and shapes, timed in
  turns: int8 (goal >= 2x, every shape) and float32 (the same numbers: both run near the
  machine's float32 peak, so float32 alone cannot double PyTorch's speed);
- achieved GFLOP/s as a share of a matrix-multiply peak measured in the same run (goal >= 50%):
  the peak is ONNX Runtime's own float32 GEMM (MLAS, same threads), the fairest ceiling for its
  convolutions; numpy's GEMM is reported beside it;
- cold start (session creation + first image, in a fresh interpreter that loads no torch; goal
  <= 2 s) and that process's peak resident memory (goal <= 500 MB);
- full (pix2pixHD's defaults) at 512x512 for comparison.
Writes bench/results/runtime.json and prints a table. Options: --quick (fewer repeats), --no-full,
--calibration FOLDER (default ../shared/photos).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill import quantize  # noqa: E402
from distill.export import ExportConfig, export_form, export_graph, export_student  # noqa: E402
from distill.runs import StudentInfo, save_student  # noqa: E402
from distill.translator import PRESETS, build_generator, count_flops  # noqa: E402
from runtime.common import write_json_atomic  # noqa: E402
from runtime.engine import ModelInfo, Toonifier, physical_cores  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "runtime.json"
GOALS = {"lite_256_images_per_s": 15.0, "lite_512_b1_ms": 250.0, "ort_int8_vs_torch": 2.0,
         "peak_share": 0.5, "cold_start_s": 2.0, "peak_rss_mb": 500.0}

COLD_START = """
import json, re, sys, time
import numpy as np
t0 = time.perf_counter()
from runtime.engine import Toonifier
t1 = time.perf_counter()
engine = Toonifier(sys.argv[1], provider="cpu")
t2 = time.perf_counter()
engine.run(np.zeros((1, int(sys.argv[2]), int(sys.argv[2]), 3), np.uint8))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "session_s": t2 - t1, "first_image_s": t3 - t2,
                  "cold_start_s": t3 - t1,
                  # VmHWM: getrusage's ru_maxrss would count the benchmark process this one was forked from.
                  "peak_rss_mb": int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) / 1024,
                  "torch_loaded": "torch" in sys.modules}))
"""


def race(fns: dict[str, object], seconds: float, min_runs: int, block: float = 0.5) -> dict[str, dict]:
    """Time several functions in turns, each for a block of about `block` seconds (at least two
    calls) per turn, until `seconds` pass and each ran `min_runs` times: best and median time per
    name. Turns keep a machine whose speed drifts (a shared VM) from favouring whichever ran in its
    fast minute; blocks keep each one's first call after a switch, slowed by the other's threads
    still spinning, from deciding its best."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    start = time.perf_counter()
    while min(map(len, times.values())) < min_runs or time.perf_counter() - start < seconds:
        for name, fn in fns.items():
            began, runs = time.perf_counter(), 0
            while runs < 2 or time.perf_counter() - began < block:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                runs += 1
    return {name: {"best_s": min(t), "median_s": float(np.median(t)), "runs": len(t)} for name, t in times.items()}


def timed(fn, seconds: float, min_runs: int) -> dict:
    """Call fn after one warm-up until `seconds` pass and at least `min_runs` ran: best and median time."""
    return race({"fn": fn}, seconds, min_runs)["fn"]


def export(preset: str, res: int, tmp: Path) -> Path:
    """The student exported as users export it (`distill export`, parity checks included)."""
    torch.manual_seed(0)
    cfg = PRESETS[preset]
    student = tmp / f"{preset}.pt"
    save_student(build_generator(preset), student, StudentInfo(cfg, preset, res))
    export_student(ExportConfig(student=student, output=tmp / f"{preset}.onnx"))
    return tmp / f"{preset}.onnx"


def export_int8_unchecked(preset: str, res: int, tmp: Path, calibration: list[Path]) -> Path:
    """The student in int8 as `distill export --int8` makes it, without the quality gate: a
    random-weight student loses ~25 dB to int8 (a trained one ~40 dB, tests/distill/test_train.py),
    and here only its speed is measured, which does not depend on the weights' values."""
    torch.manual_seed(0)
    path = tmp / f"{preset}-int8.onnx"
    export_graph(export_form(build_generator(preset).eval(), quantizable=True), torch.zeros(1, 3, res, res),
                 path, 17)
    model = quantize.quantize(onnx.load(str(path)), calibration, res)
    info = ModelInfo(input_name="input", output_name="output", resolution=res,
                     size_multiple=PRESETS[preset].size_multiple, preset=preset, precision="int8")
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def gemm_peak(threads: int, seconds: float) -> dict:
    """float32 GEMM GFLOP/s: ONNX Runtime's MatMul (same session settings as the engine) and numpy's."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [n, n])],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [n, n])],
        [onnx.numpy_helper.from_array(a, "b")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    flops = 2 * n ** 3
    ort_t = timed(lambda: session.run(None, {"a": a}), seconds, 5)
    np_t = timed(lambda: a @ a, seconds, 5)
    return {"ort_gflops": flops / ort_t["best_s"] / 1e9, "numpy_gflops": flops / np_t["best_s"] / 1e9, "n": n}


def measure_model(preset: str, paths: dict[str, Path], shapes: list[tuple[int, int]], seconds: float,
                  threads: int, passes: int = 3) -> dict:
    """Per (side, batch): each exported form's Toonifier time (uint8 in and out) and PyTorch eager's
    (float32, the same weights), timed in turns; images/s, GFLOP/s, and the ratio to PyTorch.
    Every shape is timed in `passes` passes spread over the whole measurement, so a busy spell of
    a shared machine cannot decide one shape's numbers; each keeps its best time over them all."""
    engines = {form: Toonifier(path, provider="cpu") for form, path in paths.items()}
    torch.manual_seed(0)
    model = build_generator(preset).eval()
    torch.set_num_threads(threads)
    times: dict[tuple[int, int], dict[str, list[float]]] = {shape: {} for shape in shapes}
    for _ in range(passes):
        for side, batch in shapes:
            images = np.random.default_rng(0).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
            x = torch.rand(batch, 3, side, side) * 2 - 1

            def eager():
                with torch.inference_mode():
                    model(x)
            fns = {form: (lambda e=engine: e.run(images)) for form, engine in engines.items()} | {"torch": eager}
            for name, t in race(fns, seconds * len(fns) / passes, 2).items():
                times[(side, batch)].setdefault(name, []).append(t["best_s"])
    rows = {}
    for (side, batch), best in times.items():
        gflop = count_flops(model, side, side) / 1e9
        torch_s = min(best["torch"])
        row = {"side": side, "batch": batch, "gflop_per_image": gflop,
               "torch_ms_per_batch": torch_s * 1e3, "torch_images_per_s": batch / torch_s}
        for form in engines:
            s = min(best[form])
            row[form] = {"ms_per_batch": s * 1e3, "ms_per_pass": [t * 1e3 for t in best[form]],
                         "images_per_s": batch / s, "gflops": gflop * batch / s, "vs_torch": torch_s / s}
        rows[f"{side}x{side}_b{batch}"] = row
    return rows


def cold_start(path: Path, side: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", COLD_START, str(path), str(side)], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test, not a measurement)")
    parser.add_argument("--no-full", action="store_true", help="skip the full pix2pixHD model")
    parser.add_argument("--calibration", type=Path, default=ROOT.parent / "shared" / "photos",
                        help="images (a folder) to calibrate the int8 form on")
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 4.0
    threads = physical_cores()
    results: dict = {"machine": {"cpus": os.cpu_count(), "physical_cores": threads, "ort": ort.__version__,
                                 "torch": torch.__version__}, "goals": GOALS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lite = {"fp32": export("lite", 256, tmp),
                "int8": export_int8_unchecked("lite", 256, tmp, quantize.calibration_images((args.calibration,)))}
        results["gemm_peak"] = gemm_peak(threads, seconds)
        results["lite"] = measure_model("lite", lite, [(256, 1), (256, 8), (512, 1), (512, 8)], seconds, threads)
        results["cold_start"] = {f"lite_{s}_{form}": cold_start(path, s) for form, path in lite.items()
                                 for s in (256, 512)}
        if not args.no_full:
            full = export("full", 512, tmp)
            results["full"] = measure_model("full", {"fp32": full}, [(512, 1)], seconds, threads)
            results["cold_start"]["full_512_fp32"] = cold_start(full, 512)
    peak = results["gemm_peak"]["ort_gflops"]
    rows = results["lite"].values()
    results["summary"] = {
        "lite_256_images_per_s": max(results["lite"][k]["fp32"]["images_per_s"] for k in ("256x256_b1", "256x256_b8")),
        "lite_512_b1_ms": results["lite"]["512x512_b1"]["fp32"]["ms_per_batch"],
        "ort_int8_vs_torch": min(r["int8"]["vs_torch"] for r in rows),
        "ort_fp32_vs_torch": min(r["fp32"]["vs_torch"] for r in rows),
        "peak_share": max(r["fp32"]["gflops"] for r in rows) / peak,
        "cold_start_s": results["cold_start"]["lite_256_fp32"]["cold_start_s"],
        "peak_rss_mb": results["cold_start"]["lite_512_fp32"]["peak_rss_mb"],
    }
    write_json_atomic(RESULTS, results)
    print_table(results)


def print_table(results: dict) -> None:
    print(f"GEMM peak (float32, {results['machine']['physical_cores']} threads): ONNX Runtime "
          f"{results['gemm_peak']['ort_gflops']:.0f} GFLOP/s, numpy {results['gemm_peak']['numpy_gflops']:.0f} GFLOP/s")
    print(f"{'model':11} {'shape':12} {'GFLOP/img':>9} {'ORT ms':>8} {'ORT img/s':>9} {'GFLOP/s':>8} "
          f"{'%peak':>6} {'torch ms':>9} {'ORT/torch':>9}")
    peak = results["gemm_peak"]["ort_gflops"]
    for preset in ("lite", "full"):
        for name, r in results.get(preset, {}).items():
            for form in ("fp32", "int8"):
                if form in r:
                    f = r[form]
                    share = f"{100 * f['gflops'] / peak:5.0f}%" if form == "fp32" else "     -"
                    print(f"{preset + ' ' + form:11} {name:12} {r['gflop_per_image']:9.2f} {f['ms_per_batch']:8.1f} "
                          f"{f['images_per_s']:9.1f} {f['gflops']:8.1f} {share} "
                          f"{r['torch_ms_per_batch']:9.1f} {f['vs_torch']:8.2f}x")
    for name, c in results["cold_start"].items():
        print(f"cold start {name}: import {c['import_s']:.2f} s, session {c['session_s']:.2f} s, first image "
              f"{c['first_image_s']:.2f} s, peak RSS {c['peak_rss_mb']:.0f} MB, torch loaded: {c['torch_loaded']}")
    print("goals:")
    at_most = ("lite_512_b1_ms", "cold_start_s", "peak_rss_mb")
    for key, value in results["summary"].items():
        goal = GOALS.get(key)
        verdict = "" if goal is None else (f"  goal {'<=' if key in at_most else '>='} {goal:g}  " +
                                           ("met" if (value <= goal if key in at_most else value >= goal) else "NOT met"))
        print(f"  {key:22} {value:10.2f}{verdict}")


if __name__ == "__main__":
    main()
