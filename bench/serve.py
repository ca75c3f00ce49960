"""The HTTP service under load, in one run: `python bench/serve.py`.

Exports the lite student at 256x256 (as bench/runtime.py does: random weights, speed does not
depend on their values), starts `toonify-fast serve --model` on 127.0.0.1 and drives POST
/v1/toonify with obama.jpg scaled to --width pixels wide (JPEG; smaller than the original so that
detection, which no batching shares, weighs less against the model) from a bounded number of
concurrent clients (a fixed count of requests per level, then it stops). Measures, with batching
on (--max-batch 8) and off (--max-batch 1), both served at once and run level by level in turn:
throughput and p50/p99 latency at 1, 4, 16 and 64 clients, failures (any answer
but 200), the server's resident memory before and after; then above capacity (64 clients against
--queue-limit 8): the share of 503s (a refused client waits 100 ms) and the latency of accepted
requests. The same levels against Triton's Python-backend photo model (tritonserver from
`make triton-deps`, dynamic batching, one instance). First, in the same process, what batching
should give here: one request's stages timed alone (decode, detection and alignment, the model,
paste-back and encoding) and the engine's faces/s at batch 1 and at --max-batch give Amdahl's
estimate of the service's speed-up (only the model's share of a request is batched; it leaves
out what fewer engine runs save in contention with the other stages for the cores). Writes
bench/results/serve.json.
Options: --requests N (per client level, at least 2 per client), --clients 1,4,16,64, --width W,
--no-triton, --output NAME.json.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import glob
import importlib.util
import io
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.common import write_json_atomic  # noqa: E402
from runtime.server import free_ports  # noqa: E402

PHOTO = ROOT.parent / "shared" / "photos" / "obama.jpg"
RES = 256
TRITON = ROOT / "build" / "triton"
GOALS = {"batching_speedup_at_16": 1.3, "p99_over_p50_at_64": 3.0}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


async def drive(send, clients: int, requests: int, refused_wait: float = 0.1) -> dict:
    """`clients` coroutines send `requests` in all; returns throughput, latency of 200s, failures."""
    left = requests
    latencies, codes = [], []

    async def client(http):
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            try:
                code = await send(http)
            except httpx.HTTPError as e:
                code = type(e).__name__
            codes.append(code)
            if code == 200:
                latencies.append(time.perf_counter() - start)
            elif code == 503:
                await asyncio.sleep(refused_wait)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    ok = codes.count(200)
    return {"clients": clients, "requests": len(codes), "ok": ok, "answers": dict(collections.Counter(map(str, codes))), "refused_503": codes.count(503),
            "failed": len(codes) - ok - codes.count(503), "seconds": seconds, "per_second": ok / seconds,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99),
            "p99_over_p50": percentile(latencies, 0.99) / percentile(latencies, 0.5) if latencies else None}


@contextlib.contextmanager
def service(model: Path, *args):
    # No time limit: the levels measure queueing, and the shared machine can be slow.
    log = tempfile.TemporaryFile("w+")        # the service's stderr, shown when it stops answering
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--model", str(model), "--port", "0",
                             "--timeout", "600", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        url = proc.stdout.readline().strip()
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "healthz").status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the service at {url!r} did not answer /healthz (exit status {proc.poll()})")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(60)
        log.seek(0)
        if proc.returncode not in (0, -15):
            print(f"  the service ended with exit status {proc.returncode}: {log.read()[-2000:]}", flush=True)
        log.close()


MODES = {"batching": ["--max-batch", "8", "--max-wait-ms", "5"], "no_batching": ["--max-batch", "1", "--max-wait-ms", "0"]}


def bench_service(model: Path, photo: bytes, levels: list[int], requests: int) -> dict:
    """Both modes served at once and measured level by level, one after the other: the shared
    machine's load drifts over minutes, and this way both modes see the same."""
    headers = {"Content-Type": "image/jpeg"}
    out = {mode: {"args": args, "levels": []} for mode, args in MODES.items()}

    def sender(url):
        async def send(http):
            return (await http.post(url + "v1/toonify", content=photo, headers=headers)).status_code
        return send

    with contextlib.ExitStack() as stack:
        served = {mode: stack.enter_context(service(model, *args, "--queue-limit", "64")) for mode, args in MODES.items()}
        for mode, (url, proc) in served.items():
            asyncio.run(drive(sender(url), 2, 4))              # warm up: first runs of every thread and shape
            out[mode]["rss_mb_before"] = rss_mb(proc.pid)
        for clients in levels:
            for mode, (url, proc) in served.items():
                row = asyncio.run(drive(sender(url), clients, max(requests, 2 * clients)))
                row["rss_mb_after"] = rss_mb(proc.pid)      # a level repeated (--clients 16,16,16) shows a plateau
                out[mode]["levels"].append(row)
                print(f"  {mode}: {row}", flush=True)
        for mode, (url, proc) in served.items():
            out[mode]["rss_mb_after"] = rss_mb(proc.pid)
            out[mode]["metrics_batches"] = [line for line in httpx.get(url + "metrics").text.splitlines()
                                            if line.startswith("toonify_batch_faces_")]
    with service(model, *MODES["batching"], "--queue-limit", "8") as (url, proc):
        warm = asyncio.run(drive(sender(url), 2, 4))
        if warm["ok"] != 4:
            print(f"  the over-capacity service answered its warm-up {warm['answers']} (running: {proc.poll() is None})")
        row = asyncio.run(drive(sender(url), 64, max(requests, 128)))
        row["refused_share"] = row["refused_503"] / row["requests"]
        out["over_capacity"] = row
        print(f"  over capacity (queue limit 8, 64 clients): {row}", flush=True)
    return out


def estimate(model: Path, photo: bytes, batch: int = 8, repeats: int = 8) -> dict:
    """One request's stages timed alone (ms) and the engine's faces/s at batch 1 and `batch`, as
    the service runs them; `speedup_estimate` is what batching should speed a request stream up
    by: only the model's share of a request gets faster, by the engine's batch scaling (Amdahl)."""
    import numpy as np
    from runtime.engine import Toonifier, physical_cores
    from runtime.faces import FaceAligner
    from runtime.images import decode_image, encode_image
    from runtime.photos import compose, face_crops
    engine = Toonifier(model, "cpu", threads=physical_cores(), batch_size=batch)
    aligner = FaceAligner()

    def timed(fn):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            result = fn()
        return result, 1000 * (time.perf_counter() - start) / repeats

    (rgb, alpha), decode_ms = timed(lambda: decode_image(photo, 40_000_000))
    (faces, crops), detect_ms = timed(lambda: face_crops(aligner, rgb, engine.resolution, None))
    toons, model_ms = timed(lambda: engine.run(np.stack(crops)))
    _, encode_ms = timed(lambda: encode_image(compose(rgb, faces, list(toons)), alpha, "PNG"))
    stacked = np.stack([crops[0]] * batch)
    _, batch_ms = timed(lambda: engine.run(stacked))
    per_face = {"1": 1000 / model_ms * len(crops), str(batch): 1000 * batch / batch_ms}
    scaling = per_face[str(batch)] / per_face["1"]
    total = decode_ms + detect_ms + model_ms + encode_ms
    return {"stages_ms": {"decode": decode_ms, "detect_align": detect_ms, "model": model_ms, "paste_encode": encode_ms},
            "engine_faces_per_second": per_face, "engine_batch_scaling": scaling,
            "speedup_estimate": total / (total - model_ms + model_ms / scaling)}


def bench_triton(model: Path, photo: bytes, levels: list[int], requests: int, tmp: Path) -> dict:
    from distill.triton import write_python_models
    repo = tmp / "repo"
    write_python_models(repo, "toon", model.read_bytes(), max_batch_size=8)
    http, grpc, metrics = free_ports(3)
    env = {**os.environ, "LD_LIBRARY_PATH": str(TRITON / "unpacked" / "nvidia_pytriton.libs"),
           "PYTHONPATH": os.pathsep.join(glob.glob(str(TRITON / "env" / "lib" / "python3.*" / "site-packages")))}
    proc = subprocess.Popen([str(TRITON / "unpacked" / "pytriton" / "tritonserver" / "bin" / "tritonserver"),
                             f"--model-repository={repo}", f"--backend-directory={TRITON / 'backends'}",
                             "--model-control-mode=explicit", "--load-model=toon_photo", "--http-address=127.0.0.1",
                             f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
                             f"--metrics-port={metrics}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    data = struct.pack("<I", len(photo)) + photo
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in ("toon", "faces")]
                         }).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}

    async def send(http):
        return (await http.post(f"{url}/v2/models/toon_photo/infer", content=header + data, headers=headers)).status_code
    out = {"levels": []}
    try:
        for _ in range(900):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/v2/health/ready").status_code == 200:
                    break
            time.sleep(0.1)
        asyncio.run(drive(send, 2, 4))
        stub = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        pids = [proc.pid] + [int(p) for p in stub]
        out["rss_mb_before"] = sum(rss_mb(p) for p in pids)
        for clients in levels:
            row = asyncio.run(drive(send, clients, max(requests, 2 * clients)))
            out["levels"].append(row)
            print(f"  triton: {row}", flush=True)
        out["rss_mb_after"] = sum(rss_mb(p) for p in pids)
    finally:
        proc.terminate()
        proc.wait(60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--output", default="serve.json", help="file name in bench/results/")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    image = Image.open(PHOTO)
    image = image.resize((args.width, round(image.height * args.width / image.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    photo = buffer.getvalue()
    spec = importlib.util.spec_from_file_location("bench_runtime", ROOT / "bench" / "runtime.py")
    br = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(br)
    # The machine is shared: the load says how far these figures are from an idle one's.
    results = {"resolution": RES, "photo": f"{PHOTO.name} at {image.width}x{image.height}", "cores": os.cpu_count(), "goals": GOALS,
               "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = br.export("lite", RES, tmp)
        results["estimate"] = estimate(model, photo)
        print(f"  estimate: {results['estimate']}", flush=True)
        results |= bench_service(model, photo, levels, args.requests)
        if not args.no_triton:
            results["triton"] = bench_triton(model, photo, levels, args.requests, tmp)
    on, off = results["batching"]["levels"], results["no_batching"]["levels"]
    at = {r["clients"]: (r, s) for r, s in reversed(list(zip(on, off)))}     # the first run of a repeated level
    if 16 in at:
        results["batching_speedup_at_16"] = at[16][0]["per_second"] / at[16][1]["per_second"]
    if 64 in at:
        results["p99_over_p50_at_64"] = at[64][0]["p99_over_p50"]
    results["failed_below_capacity"] = sum(r["failed"] + r["refused_503"] for r in on + off)
    write_json_atomic(ROOT / "bench" / "results" / args.output, results)
    print(f"{'clients':>7} {'batching req/s':>15} {'p50':>7} {'p99':>7} {'off req/s':>10} {'p50':>7} {'p99':>7}")
    for r, s in zip(on, off):
        print(f"{r['clients']:>7} {r['per_second']:>15.2f} {r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f} "
              f"{s['per_second']:>10.2f} {s['p50_ms']:>7.0f} {s['p99_ms']:>7.0f}")
    print({k: results.get(k) for k in ("batching_speedup_at_16", "p99_over_p50_at_64", "failed_below_capacity")},
          f"Amdahl's estimate for batching here: {results['estimate']['speedup_estimate']:.2f}x "
          f"(engine batch scaling {results['estimate']['engine_batch_scaling']:.2f}x)")


if __name__ == "__main__":
    main()
