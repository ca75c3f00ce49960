"""The student in the browser against native ONNX Runtime, in one run: `python bench/web.py`.

Builds the site of `toonify-fast web` for the lite student at 256x256 (random weights: speed does
not depend on their values), float32 and int8 (as bench/runtime.py exports them), serves it on
127.0.0.1 and drives Debian's headless Chromium (Playwright) with WASM and 2 threads. Measures:
- ms per face for the model alone (an aligned 256 px face of obama.jpg), median over --runs, in
  the page and in native ONNX Runtime (2 intra-op threads) on the same ONNX file;
- a whole photo in the page (face-api detection + 68 landmarks, alignment, model, paste back)
  and face-api alone;
- the webcam path on Chromium's fake camera fed the shared clip: frames per second;
- what the page downloads (every resource it fetched: its size, the bytes `toonify-fast serve`
  sent for it (gzip-encoded from the .gz beside it, per the browser's resource timing), and the
  file gzipped here); goal <= 15 MB with the int8 model; the site's size on disk (the WebGPU build
  and the .gz files included).
Writes bench/results/web.json and prints a summary. Needs /usr/bin/chromium, Playwright, npm
packages (`make test` installs them). Options: --runs N, --camera-seconds S.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import importlib.util
import os
import statistics
import sys
import tempfile
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.common import write_json_atomic  # noqa: E402
from runtime.faces import FaceAligner, align  # noqa: E402
from runtime.images import hwc_to_nchw, read_image  # noqa: E402
from runtime.videoio import write_y4m  # noqa: E402
from runtime.web import WebConfig, build_site  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "photos"
RES = 256
THREADS = 2
GOAL_DOWNLOAD_MB = 15.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def bench_runtime():
    """bench/runtime.py as a module: its exports of the lite student (float32, int8)."""
    spec = importlib.util.spec_from_file_location("bench_runtime", ROOT / "bench" / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def native_ms(model: Path, crop: np.ndarray, runs: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = hwc_to_nchw(crop)
    for _ in range(3):
        session.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


PAGE_TIMES = """async ([crop, photo, runs]) => {
  const app = await import('./app.js');
  const rgb = Uint8Array.from(atob(crop), (c) => c.charCodeAt(0));
  const img = new Image();
  img.src = 'data:image/jpeg;base64,' + photo;
  await img.decode();
  const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
  const time = async (fn, n) => {
    const ts = [];
    for (let i = 0; i < n; i++) { const t = performance.now(); await fn(); ts.push(performance.now() - t); }
    return median(ts);
  };
  for (let i = 0; i < 3; i++) await app.runModel(rgb, %d, %d);
  const canvas = document.createElement('canvas');
  [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
  canvas.getContext('2d').drawImage(img, 0, 0);
  await app.toonify(img);
  return {model_ms: await time(() => app.runModel(rgb, %d, %d), runs),
          photo_ms: await time(() => app.toonify(img), Math.max(3, runs >> 2)),
          face_api_ms: await time(() => app.findFaces(canvas), Math.max(3, runs >> 2)),
          state: await app.describe()};
}""" % (RES, RES, RES, RES)


def downloads(page, site: Path) -> dict:
    """Every file the page fetched (by site path): its size, the bytes sent for it, and gzipped here."""
    entries = page.evaluate("() => [...performance.getEntriesByType('navigation'), "
                            "...performance.getEntriesByType('resource')].map(e => [e.name, e.encodedBodySize])")
    files = {}
    for url, sent in entries:
        path = url.split("/", 3)[3].split("?")[0] or "index.html"
        if (site / path).is_file():
            data = (site / path).read_bytes()
            files[path] = {"bytes": len(data), "served_bytes": sent, "gzip_bytes": len(gzip.compress(data, 6))}
    return {"files": files, "mb": sum(f["bytes"] for f in files.values()) / 1e6,
            "served_mb": sum(f["served_bytes"] for f in files.values()) / 1e6,
            "gzip_mb": sum(f["gzip_bytes"] for f in files.values()) / 1e6}




def camera_fps(playwright, url: str, clip: Path, seconds: float) -> dict:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS + [
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60_000)
        page.click("#webcam")
        page.wait_for_function("window.toonifyStats.framesWithFace >= 3", timeout=60_000)
        time.sleep(seconds)
        return page.evaluate("() => window.toonifyStats")
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--camera-seconds", type=float, default=8.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rgb, _ = read_image(PHOTOS / "obama.jpg")
    crop = align(rgb, FaceAligner().detect(rgb)[0].quad, RES)
    photo = base64.b64encode((PHOTOS / "obama.jpg").read_bytes()).decode()
    # The machine is shared: the load says how far these figures are from an idle one's.
    results = {"resolution": RES, "threads": THREADS, "runs": args.runs, "goal_download_mb": GOAL_DOWNLOAD_MB,
               "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        br = bench_runtime()
        calibration = br.quantize.calibration_images((PHOTOS,))
        models = {"fp32": br.export("lite", RES, tmp), "int8": br.export_int8_unchecked("lite", RES, tmp, calibration)}
        clip = tmp / "clip.y4m"
        write_y4m(PHOTOS / "short_hamilton_clip.mp4", clip, 90, 90)
        with sync_playwright() as p:
            for form, model in models.items():
                site = tmp / f"site-{form}"
                build_site(WebConfig(model=model, output=site))
                server = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", str(site), "--port", "0"],
                                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
                url = f"{server.stdout.readline().strip()}?backend=wasm&threads={THREADS}"
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page()
                errors = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(url)
                page.wait_for_function("document.body.dataset.ready === 'true'", timeout=60_000)
                row = page.evaluate(PAGE_TIMES, [base64.b64encode(crop.tobytes()).decode(), photo, args.runs])
                row["native_model_ms"] = native_ms(model, crop, args.runs)
                row["browser_vs_native"] = row["model_ms"] / row["native_model_ms"]
                row["download"] = downloads(page, site)
                row["site_mb_on_disk"] = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6
                row["model_mb"] = model.stat().st_size / 1e6
                row["console_errors"] = errors
                browser.close()
                if form == "fp32":
                    row["camera"] = camera_fps(p, url, clip, args.camera_seconds)
                server.terminate()
                server.wait(30)
                results[form] = row
    results["int8_download_meets_goal"] = results["int8"]["download"]["mb"] <= GOAL_DOWNLOAD_MB
    results["int8_gzip_download_meets_goal"] = results["int8"]["download"]["gzip_mb"] <= GOAL_DOWNLOAD_MB
    results["int8_served_download_meets_goal"] = results["int8"]["download"]["served_mb"] <= GOAL_DOWNLOAD_MB
    write_json_atomic(ROOT / "bench" / "results" / "web.json", results)
    for form in models:
        r = results[form]
        print(f"{form}: browser WASM {THREADS} threads {r['model_ms']:.1f} ms/face, native ORT "
              f"{r['native_model_ms']:.1f} ms ({r['browser_vs_native']:.1f}x); whole photo {r['photo_ms']:.0f} ms "
              f"(face-api {r['face_api_ms']:.0f} ms); session {r['state']['sessionMs']:.0f} ms; download "
              f"{r['download']['mb']:.1f} MB ({r['download']['served_mb']:.1f} MB sent gzip-encoded), site on disk "
              f"{r['site_mb_on_disk']:.1f} MB")
    print(f"webcam (fp32): {results['fp32']['camera']}")


if __name__ == "__main__":
    main()
