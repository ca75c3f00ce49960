"""The student in a web page: a static site that finds, aligns and converts faces in the visitor's
own browser (ONNX Runtime Web, face-api's 68 landmarks), and a local server for it.

    build_site(WebConfig(model=Path("exports/lite.onnx"), output=Path("site")))
    toonify-fast serve site/ --model exports/toonify.onnx     # the page and the API: runtime/server.py

The page's sources live in runtime/web/ (shipped with the package); its JavaScript dependencies
come from the npm registry, pinned by runtime/web/package-lock.json, installed with `npm ci`.
Nothing is fetched from elsewhere at run time: the site works offline from any static host.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime.common import ToonifyError, UsageError, atomic_path, console, write_json_atomic
from runtime.images import MAX_PIXELS
from runtime.engine import provider_setting, read_model_info
from runtime.options import setting

PAGE = Path(__file__).with_name("web")
PAGE_FILES = ("index.html", "app.js", "align.js", "track.js")
MODEL_FILE, MODEL_JSON = "model.onnx", "model.json"
# node_modules path -> site path. ORT's WASM-only build and its runtime serve every browser;
# the WebGPU build brings its own (bigger) runtime, fetched only where WebGPU is there.
WASM_FILES = {
    "onnxruntime-web/dist/ort.wasm.min.mjs": "ort/ort.wasm.min.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs": "ort/ort-wasm-simd-threaded.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm": "ort/ort-wasm-simd-threaded.wasm",
    "@vladmandic/face-api/dist/face-api.esm.js": "face-api/face-api.esm.js",
    **{f"@vladmandic/face-api/model/{net}{part}": f"face-api/model/{net}{part}"
       for net in ("tiny_face_detector_model", "face_landmark_68_model")
       for part in ("-weights_manifest.json", ".bin")},
    # face-api bundles tfjs; its WASM backend needs these binaries (threaded on an isolated page).
    **{f"@tensorflow/tfjs-backend-wasm/dist/{name}": f"tfjs/{name}"
       for name in ("tfjs-backend-wasm.wasm", "tfjs-backend-wasm-simd.wasm", "tfjs-backend-wasm-threaded-simd.wasm")},
    # Their licences travel with them (ORT and tfjs name theirs in package.json only).
    "onnxruntime-web/package.json": "licenses/onnxruntime-web.package.json",
    "@vladmandic/face-api/LICENSE": "licenses/face-api.LICENSE.txt",
    "@tensorflow/tfjs-backend-wasm/package.json": "licenses/tfjs-backend-wasm.package.json",
}
WEBGPU_FILES = {
    "onnxruntime-web/dist/ort.webgpu.min.mjs": "ort/ort.webgpu.min.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs": "ort/ort-wasm-simd-threaded.asyncify.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm": "ort/ort-wasm-simd-threaded.asyncify.wasm",
}
NPM_HINT = "install Node.js and npm (Debian: apt-get install -y nodejs npm), then run the command again"
MIME = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
        ".json": "application/json", ".onnx": "application/octet-stream", ".bin": "application/octet-stream",
        ".txt": "text/plain", ".png": "image/png", ".jpg": "image/jpeg"}
# What the server sends gzip-encoded (from the .gz beside it): code, weights, model; images are compressed already.
GZIP_SUFFIXES = (".wasm", ".js", ".mjs", ".onnx", ".bin", ".json")
# Cross-origin isolation: without it the page has no SharedArrayBuffer and WASM runs one thread.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


@dataclass(frozen=True)
class WebConfig:
    model: Path = setting(help="An exported model (.onnx): the site carries a copy.", metavar="MODEL")
    output: Path = setting(Path("site"), "The site folder to write (created; files of an earlier build are replaced).")
    webgpu: bool = setting(True, "Also ship ONNX Runtime's WebGPU build (fetched only by browsers with WebGPU).")


@dataclass(frozen=True)
class ServeConfig:
    folder: Path | None = setting(None, "A site written by `toonify-fast web`, served at / (with COOP/COEP).",
                                  metavar="SITE")
    model: Path | None = setting(None, "Exported model (.onnx): serve the API at POST /v1/toonify.",
                                 flags=("-m", "--model"))
    port: int = setting(8000, "TCP port (0: any free one).", min=0, max=65535)
    host: str = setting("127.0.0.1", "Address to listen on.")
    provider: str = provider_setting()
    max_batch: int = setting(8, "Most faces per engine run, gathered across requests (1: batching off).", min=1)
    max_wait_ms: float = setting(5.0, "How long a batch's first face waits for more to arrive.", min=0)
    workers: int = setting(1, "Engine runs at once (each with the physical cores / workers threads on CPU).", min=1)
    queue_limit: int = setting(64, "Requests in the service at once; more are refused at once (503, Retry-After).",
                               min=1)
    max_upload: int = setting(20_000_000, "Refuse uploads larger than this many megabytes (413).",
                              flags=("--max-upload-mb",), cli=float, min=0.001, shown=lambda v: v / 1e6,
                              parse=lambda v: int(v * 1e6))
    max_pixels: int = setting(MAX_PIXELS, "Refuse images with more megapixels than this (decompression bombs).",
                              flags=("--max-megapixels",), cli=float, min=0.001, shown=lambda v: v / 1e6,
                              parse=lambda v: int(v * 1e6))
    max_faces: int | None = setting(None, "Convert at most this many faces per image, largest first (default: all).",
                                    min=1)
    timeout: float = setting(30.0, "Seconds a request may take before it is answered 504.", min=0.01)


def node_modules() -> Path:
    """The npm packages the site needs, installed from the lockfile with `npm ci` when missing:
    beside package.json in a clone (`make test` puts them there), else in a cache folder per lockfile."""
    lock = PAGE / "package-lock.json"
    needed = [*WASM_FILES, *WEBGPU_FILES]
    local = PAGE / "node_modules"
    if all((local / name).is_file() for name in needed):
        return local
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "toonify-fast" / f"npm-{digest}"
    modules = cache / "node_modules"
    if all((modules / name).is_file() for name in needed):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise UsageError("the web page's JavaScript packages are not installed and npm is not on PATH",
                           hint=NPM_HINT)
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(PAGE / name, cache / name)
    console.print(f"installing the page's npm packages into {cache} (npm ci)")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=cache,
                          capture_output=True, text=True)
    if done.returncode != 0 or not all((modules / name).is_file() for name in needed):
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ToonifyError(f"npm ci failed: {' / '.join(last) or 'files missing after install'}", cache,
                           hint="check that the npm registry can be reached (or run `npm ci` in runtime/web/)")
    return modules


def build_site(cfg: WebConfig) -> dict[str, int]:
    """Write the static site: the page, the model and its metadata (model.json), ONNX Runtime Web
    and face-api with their models. Returns {site path: bytes}. Raises ModelError for a file that
    is not a toonify-fast model, ToonifyError (exit 2) when npm is needed and missing."""
    info = read_model_info(cfg.model)
    modules = node_modules()
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise UsageError("exists and is not a folder", out, hint="choose another -o")
    files = {**{f"page:{n}": n for n in PAGE_FILES}, **WASM_FILES, **(WEBGPU_FILES if cfg.webgpu else {})}
    for source, dest in files.items():
        src = PAGE / source[5:] if source.startswith("page:") else modules / source
        _copy(src, out / dest)
    if not cfg.webgpu:
        for dest in WEBGPU_FILES.values():
            (out / dest).unlink(missing_ok=True)
    _copy(Path(cfg.model), out / MODEL_FILE)
    for dest in [*files.values(), *WEBGPU_FILES.values(), MODEL_FILE]:
        (out / (dest + ".gz")).unlink(missing_ok=True)
        if (out / dest).is_file() and Path(dest).suffix in GZIP_SUFFIXES:
            _gzip(out / dest)
    write_json_atomic(out / MODEL_JSON, {"file": MODEL_FILE, "bytes": (out / MODEL_FILE).stat().st_size,
                                         "webgpu": cfg.webgpu, "metadata": info.to_metadata()})
    sizes = {dest: (out / dest).stat().st_size for dest in [*files.values(), MODEL_FILE, MODEL_JSON]}
    console.print(f"wrote {out}/ ({len(sizes)} files, {sum(sizes.values()) / 1e6:.1f} MB); "
                  f"serve it with `toonify-fast serve {out}`")
    return sizes


def _gzip(path: Path) -> None:
    """Write PATH.gz beside a file: `toonify-fast serve` sends it to browsers that accept gzip."""
    with atomic_path(path.with_name(path.name + ".gz")) as tmp, open(path, "rb") as src, \
            gzip.GzipFile(tmp, "wb", compresslevel=9, mtime=0) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
