"""The cost of style control at serving time, on this machine: `python bench/conditioned.py`.

Times, on ONNX Runtime CPU through runtime.Toonifier (uint8 in, uint8 out), in turns within each
pass and best of several passes (the machine may be shared and noisy):
- plain: today's lite student (one input);
- conditioned: the lite student with conditional instance norm for 2 styles, exported with its
  `style` and `strength` inputs (goal: <= 1.1x plain);
- folded: that student with one style and strength folded into its norms (`distill export
  --style S --strength X`; goal: <= 1.02x plain).
At 256x256 and 512x512, batch 1. Speed does not depend on the weights' values, so the students
are random (the conditioned one with a non-zero condition network, so its norms' scales and shifts
are not the identity). Writes bench/results/conditioned.json and prints the ratios.
Options: --quick (fewer repeats), --passes N.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.export import ExportConfig, export_student  # noqa: E402
from distill.runs import StudentInfo, save_student  # noqa: E402
from distill.translator import build_generator  # noqa: E402
from runtime.common import write_json_atomic  # noqa: E402
from runtime.engine import Toonifier, physical_cores  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "conditioned.json"
GOALS = {"conditioned_vs_plain": 1.1, "folded_vs_plain": 1.02}
SHAPES = (256, 512)


def _bench_runtime():
    """bench/runtime.py (its `race`: timings in turns), loaded by path: its name would shadow the runtime package."""
    spec = importlib.util.spec_from_file_location("bench_runtime", ROOT / "bench" / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_all(tmp: Path, res: int) -> dict[str, Path]:
    """plain, conditioned and folded lite students, exported as users export them (parity checked)."""
    torch.manual_seed(0)
    plain = build_generator("lite")
    save_student(plain, tmp / "plain.pt", StudentInfo(plain.cfg, "lite", res))
    torch.manual_seed(0)
    conditioned = build_generator("lite", styles=2)
    with torch.no_grad():
        for p in conditioned.condition.mlp[-1].parameters():
            p.normal_(0, 0.05)
    save_student(conditioned, tmp / "conditioned.pt", StudentInfo(conditioned.cfg, "lite", res, styles=("a", "b")))
    paths = {"plain": tmp / "plain.onnx", "conditioned": tmp / "conditioned.onnx", "folded": tmp / "folded.onnx"}
    export_student(ExportConfig(student=tmp / "plain.pt", output=paths["plain"]))
    export_student(ExportConfig(student=tmp / "conditioned.pt", output=paths["conditioned"]))
    export_student(ExportConfig(student=tmp / "conditioned.pt", output=paths["folded"], style="b", strength=0.6))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test, not a measurement)")
    parser.add_argument("--passes", type=int, default=5, help="passes over the shapes; each keeps its best")
    args = parser.parse_args()
    seconds = 0.5 if args.quick else 3.0
    race = _bench_runtime().race
    threads = physical_cores()
    results: dict = {"machine": {"cpus": os.cpu_count(), "physical_cores": threads, "ort": ort.__version__},
                     "goals": GOALS, "passes": args.passes}
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(Path(tmp), 256)
        engines = {name: Toonifier(path, provider="cpu") for name, path in paths.items()}
        best: dict[int, dict[str, list[float]]] = {side: {} for side in SHAPES}
        for _ in range(args.passes):
            for side in SHAPES:
                images = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
                fns = {"plain": lambda: engines["plain"].run(images),
                       "conditioned": lambda: engines["conditioned"].run(images, style="b", strength=0.6),
                       "folded": lambda: engines["folded"].run(images)}
                for name, t in race(fns, seconds * len(fns) / args.passes, 3).items():
                    best[side].setdefault(name, []).append(t["best_s"])
    rows = {}
    for side, times in best.items():
        ms = {name: 1e3 * min(t) for name, t in times.items()}
        rows[f"{side}x{side}_b1"] = {
            "ms": ms, "ms_per_pass": {name: [1e3 * x for x in t] for name, t in times.items()},
            "conditioned_vs_plain": ms["conditioned"] / ms["plain"], "folded_vs_plain": ms["folded"] / ms["plain"]}
    results["lite"] = rows
    results["summary"] = {key: max(r[key] for r in rows.values()) for key in GOALS}
    write_json_atomic(RESULTS, results)
    for name, r in rows.items():
        print(f"lite {name}: plain {r['ms']['plain']:.1f} ms, conditioned {r['ms']['conditioned']:.1f} ms "
              f"({r['conditioned_vs_plain']:.3f}x), folded {r['ms']['folded']:.1f} ms ({r['folded_vs_plain']:.3f}x)")
    for key, value in results["summary"].items():
        print(f"  {key:22} {value:.3f}  goal <= {GOALS[key]:g}  {'met' if value <= GOALS[key] else 'NOT met'}")


if __name__ == "__main__":
    main()
