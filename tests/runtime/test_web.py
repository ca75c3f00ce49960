"""The page of `toonify-fast web`, in a real browser: Debian's headless Chromium driven by Playwright
against `toonify-fast serve` on 127.0.0.1. `make test` installs Chromium, Playwright and the npm
packages; where one is missing these tests fail saying how to install it (they never skip)."""
import base64
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
import pytest

from runtime.cli import main
from runtime.engine import ModelError, ModelInfo, Toonifier
from runtime.faces import FaceAligner, align, crop_transform, ffhq_quad, paste_back
from runtime.images import hwc_to_nchw, read_image
from runtime.photos import toonify_photo
from runtime.tracking import OneEuroSmoother, quad_params
from runtime.web import WebConfig, build_site
from runtime.videoio import write_y4m
from tests.conftest import PHOTOS, ROOT
from tests.helpers import build_model, make_student

VECTORS = json.loads((ROOT / "tests" / "runtime" / "alignment_vectors.json").read_text())
CHECK_VECTORS = ROOT / "tests" / "runtime" / "check_vectors.mjs"
WEB = ROOT / "runtime" / "web"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
FAKE_CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
RES = 64
# Whole photos, browser against CLI, in the faces' regions (the test prints the PSNR): face-api's
# landmarks are not dlib's, so the crops sit slightly apart; given dlib's landmarks, what is left
# is the resampling (Chromium's resize and bicubic against PIL's). A few dB under what was measured.
MIN_PSNR = {"obama.jpg": 33.0, "two_people.jpg": 34.0}
MIN_PSNR_SAME_LANDMARKS = 38.0


def test_python_reproduces_the_alignment_vectors():
    for case in VECTORS["cases"]:
        quad = ffhq_quad(np.array(case["landmarks"]))
        transform = crop_transform(quad, case["size"])
        s = case["size"]
        corners = np.array([(0, 0), (0, s), (s, s), (s, 0)]) @ transform[:, :2].T + transform[:, 2]
        np.testing.assert_allclose(quad, case["quad"], rtol=0, atol=1e-6, err_msg=case["name"])
        np.testing.assert_allclose(transform, case["transform"], rtol=0, atol=1e-6, err_msg=case["name"])
        np.testing.assert_allclose(corners, case["corners"], rtol=0, atol=1e-6, err_msg=case["name"])
        np.testing.assert_allclose(corners, quad + 0.5, rtol=0, atol=1e-4, err_msg=case["name"])
        np.testing.assert_allclose(quad_params(quad), case["params"], rtol=0, atol=1e-6, err_msg=case["name"])
    e = VECTORS["one_euro"]
    smoother = OneEuroSmoother(e["rate"], e["min_cutoff"], e["beta"])
    for t, (p, want) in enumerate(zip(e["inputs"], e["outputs"])):
        smoother.add(0, t, np.array(p))
        np.testing.assert_allclose(smoother.smoothed(0, t), want, rtol=0, atol=1e-6)
    f = VECTORS["feather"]
    s = f["size"]
    square = np.array([(0, 0), (0, s), (s, s), (s, 0)], np.float32) - 0.5
    mask = paste_back(np.zeros((s, s, 3), np.uint8), np.full((s, s, 3), 255, np.uint8), square, f["feather"])
    np.testing.assert_array_equal(mask[..., 0], f["mask"])
    assert len(VECTORS["cases"]) == 10 and f["mask"][s // 2][0] == 29


def node_errors() -> dict:
    script = (f"import {{readFileSync}} from 'node:fs';"
              f"import {{maxErrors}} from {json.dumps(CHECK_VECTORS.as_uri())};"
              f"import * as align from {json.dumps((WEB / 'align.js').as_uri())};"
              f"import * as track from {json.dumps((WEB / 'track.js').as_uri())};"
              f"const v = JSON.parse(readFileSync({json.dumps(str(ROOT / 'tests/runtime/alignment_vectors.json'))}));"
              f"console.log(JSON.stringify(maxErrors(v, align, track)));")
    node = shutil.which("node")
    assert node, "node is not installed: apt-get install -y nodejs npm (or run `make test`)"
    out = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_vectors_reproduced(errors: dict) -> None:
    assert errors.pop("cases") == len(VECTORS["cases"])
    assert errors == {k: pytest.approx(0, abs=1e-6) for k in errors} and set(errors) == {
        "quad", "transform", "corners", "params", "one_euro", "mask"}, errors


def test_node_reproduces_the_alignment_vectors():
    assert_vectors_reproduced(node_errors())


def test_runtime_web_loads_no_torch():
    code = ("import sys, runtime.web; bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'distill')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_web_refuses_a_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "photo.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="not an ONNX model"):
        build_site(WebConfig(model=bad, output=tmp_path / "site"))
    assert not (tmp_path / "site").exists()


def test_web_without_npm_says_to_install_it(tmp_path, monkeypatch, capsys):
    page = tmp_path / "page"
    page.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(WEB / name, page / name)
    monkeypatch.setattr("runtime.web.PAGE", page)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    model = build_model(tmp_path / "invert.onnx", "invert", resolution=32)
    with pytest.raises(SystemExit) as e:
        main(["web", str(model), "-o", str(tmp_path / "site")])
    assert e.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("error: the web page's JavaScript packages are not installed and npm is not on PATH hint: install "
            "Node.js and npm (Debian: apt-get install -y nodejs npm), then run the command again") in err


def test_serve_refuses_a_folder_without_a_site(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path), "--port", "0"])
    assert e.value.code == 2
    assert "not a site folder (no index.html)" in " ".join(capsys.readouterr().err.split())


# ---- in the browser ----

@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A lite student (random but not initial weights) exported at RES: a real network for parity."""
    from distill.export import ExportConfig, export_student
    folder = tmp_path_factory.mktemp("student")
    make_student(folder / "student-ema.pt", RES)
    export_student(ExportConfig(student=folder / "student-ema.pt", output=folder / "lite.onnx"))
    return folder / "lite.onnx"


@pytest.fixture(scope="module")
def site(tmp_path_factory, student) -> Path:
    folder = tmp_path_factory.mktemp("web") / "site"
    with pytest.raises(SystemExit) as e:
        main(["web", str(student), "-o", str(folder)])
    assert e.value.code in (0, None)
    # A second site beside it, for a model whose metadata asks for style and strength controls.
    styled = build_model(tmp_path_factory.mktemp("styled") / "styled.onnx", "invert", resolution=32, metadata=ModelInfo(
        input_name="input", output_name="output", resolution=32, extra={"styles": "Toon, Pixar", "default_strength": "0.7"},
    ).to_metadata())
    build_site(WebConfig(model=styled, output=folder / "styled", webgpu=False))
    build_site(WebConfig(model=swap_model(tmp_path_factory), output=folder / "swap", webgpu=False))
    return folder


def swap_model(tmp_path_factory) -> Path:
    """A 256 px model with a smooth response (red and blue swapped): for comparing whole photos
    with the CLI. A random student is not: it amplifies the least resampling difference in a crop."""
    path = tmp_path_factory.getbasetemp() / "swap_rb.onnx"
    return path if path.exists() else build_model(path, "swap_rb", resolution=256)


@pytest.fixture(scope="module")
def url(site):
    server = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", str(site), "--port", "0"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip()
        assert line.startswith("http://127.0.0.1:"), line + server.stderr.read()
        yield line
    finally:
        server.terminate()
        server.wait(10)


def launch(playwright, *extra):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (as root: apt-get update && apt-get install "
                    "-y chromium), or run `make test`, which does it")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + list(extra))


@pytest.fixture(scope="module")
def playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[dev]' (or `make test`); "
                    "never `playwright install`: the tests use Debian's chromium")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = launch(playwright)
    yield b
    b.close()


class Page:
    """A page of the site with its console and page errors collected."""

    def __init__(self, browser, url):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.errors, self.messages = [], []
        self.page.on("console", lambda m: (self.errors if m.type == "error" else self.messages).append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # The JS half of the alignment vectors, importable from the page (it is not part of the site).
        self.page.route("**/__tests__/check_vectors.mjs", lambda route: route.fulfill(
            body=CHECK_VECTORS.read_text(), content_type="text/javascript"))
        self.page.goto(url)
        self.page.wait_for_function("document.body.dataset.ready === 'true' || "
                                    "document.getElementById('status').textContent.startsWith('error')", timeout=30_000)

    def evaluate(self, script, arg=None):
        return self.page.evaluate(script, arg)


@pytest.fixture(scope="module")
def page(browser, url):
    p = Page(browser, url)
    yield p
    p.context.close()


TOONIFY = """async ([b64, type, landmarks]) => {
  const app = await import('./app.js');
  const img = new Image();
  img.src = `data:${type};base64,` + b64;
  await img.decode();
  const {canvas, faces} = await app.toonify(img, {landmarks});
  const rgba = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let s = '';
  for (let i = 0; i < rgba.length; i += 32768) s += String.fromCharCode(...rgba.subarray(i, i + 32768));
  return {faces, width: canvas.width, height: canvas.height, rgba: btoa(s)};
}"""


def browser_toonify(page, photo: Path, landmarks=None):
    r = page.evaluate(TOONIFY, [base64.b64encode(photo.read_bytes()).decode(), "image/jpeg", landmarks])
    rgb = np.frombuffer(base64.b64decode(r["rgba"]), np.uint8).reshape(r["height"], r["width"], 4)[..., :3]
    return rgb, r["faces"]


def test_page_loads_isolated_on_wasm_threads_without_console_errors(page):
    assert page.errors == []
    state = page.evaluate("async () => (await import('./app.js')).describe()")
    assert (state["backend"], state["threads"], state["isolated"], state["faceBackend"]) == ("wasm", 2, True, "wasm")
    assert state["info"]["resolution"] == RES and state["info"]["inputName"] == "input"
    assert page.page.text_content("#status") == ("ready: WASM, 2 threads · faces on wasm · pick or drop a photo, "
                                                 "or start the webcam")
    # Today's models name no styles and no strength: no controls.
    assert page.page.is_hidden("#style-control") and page.page.is_hidden("#strength-control")
    # Every file came from the site itself.
    hosts = page.evaluate("() => [...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).host))]")
    assert hosts == [page.page.url.split("/")[2]]


def test_style_and_strength_controls_appear_when_the_model_has_them(browser, url, site):
    # --no-webgpu leaves ORT's WebGPU build out; the page then never asks for an adapter.
    assert (site / "ort" / "ort.webgpu.min.mjs").is_file() and not (site / "styled" / "ort" / "ort.webgpu.min.mjs").exists()
    assert json.loads((site / "styled" / "model.json").read_text())["webgpu"] is False
    p = Page(browser, url + "styled/")
    try:
        assert p.errors == []
        assert p.page.is_visible("#style-control") and p.page.is_visible("#strength-control")
        assert p.page.eval_on_selector_all("#style option", "o => o.map(x => x.textContent)") == ["Toon", "Pixar"]
        assert p.page.input_value("#strength") == "0.7"
    finally:
        p.context.close()


def test_browser_reproduces_the_alignment_vectors(page):
    errors = page.evaluate("""async (v) => {
      const {maxErrors} = await import('/__tests__/check_vectors.mjs');
      return maxErrors(v, await import('./align.js'), await import('./track.js'));
    }""", VECTORS)
    assert_vectors_reproduced(errors)


def test_model_output_on_an_aligned_face_equals_onnxruntime(page, student):
    rgb, _ = read_image(PHOTOS / "obama.jpg")
    crop = align(rgb, FaceAligner().detect(rgb)[0].quad, RES)
    got = page.evaluate("""async (b64) => {
      const app = await import('./app.js');
      const rgb = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const y = await app.runModel(rgb, %d, %d);
      return btoa(String.fromCharCode(...new Uint8Array(y.buffer, y.byteOffset, y.byteLength)));
    }""" % (RES, RES), base64.b64encode(crop.tobytes()).decode())
    got = np.frombuffer(base64.b64decode(got), np.float32).reshape(1, 3, RES, RES)
    session = ort.InferenceSession(str(student), providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": hwc_to_nchw(crop)})[0]
    assert float(np.abs(got - want).max()) <= 1e-3
    assert float(np.abs(want).mean()) > 0.05          # a real output, not zeros on both sides


def face_region(shape, quads) -> np.ndarray:
    """[H, W] bool: the bounding boxes of the crops' quads (where paste-back can change pixels)."""
    region = np.zeros(shape[:2], bool)
    for q in quads:
        x0, y0 = np.clip(np.floor(q.min(0)).astype(int), 0, None)
        x1, y1 = np.ceil(q.max(0)).astype(int) + 1
        region[y0:y1, x0:x1] = True
    return region


def psnr_in(region: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255 ** 2 / np.mean((a[region].astype(float) - b[region]) ** 2))


@pytest.fixture(scope="module")
def swap_page(browser, url):
    p = Page(browser, url + "swap/")
    yield p
    p.context.close()


@pytest.fixture(scope="module")
def cli_photos(tmp_path_factory, site):
    """name -> (photo, the CLI's output, dlib's faces) for the shared photos of one and two faces."""
    toonifier, aligner, out = Toonifier(swap_model(tmp_path_factory), "cpu"), FaceAligner(), {}
    for name in ("obama.jpg", "two_people.jpg"):
        rgb, _ = read_image(PHOTOS / name)
        out[name] = (rgb, *toonify_photo(toonifier, aligner, rgb))
    return out


@pytest.mark.parametrize("name, count", [("obama.jpg", 1), ("two_people.jpg", 2)])
def test_photo_faces_found_and_converted_like_the_cli(swap_page, cli_photos, name, count):
    rgb, want, dlib_faces = cli_photos[name]
    got, faces = browser_toonify(swap_page, PHOTOS / name)
    assert swap_page.errors == []
    assert len(faces) == count and got.shape == rgb.shape
    # Each face-api face is one of dlib's: crop centres within 5% of the side, sides within 10%.
    for face in faces:
        assert len(face["landmarks"]) == 68 and len(face["box"]) == 4
        p = quad_params(np.array(face["quad"]))
        q = quad_params(min(dlib_faces, key=lambda f: np.hypot(*(quad_params(f.quad)[:2] - p[:2]))).quad)
        assert np.hypot(*(p[:2] - q[:2])) < 0.05 * 2 * math.exp(q[2]), (name, p, q)
        assert abs(p[2] - q[2]) < math.log(1.1), (name, p, q)
    region = face_region(rgb.shape, [f.quad for f in dlib_faces])
    psnr = psnr_in(region, got, want)
    print(f"{name}: browser (face-api landmarks) vs CLI (dlib) in the face regions: PSNR {psnr:.1f} dB")
    assert psnr >= MIN_PSNR[name]
    # Outside every crop the photo is untouched (Chromium's JPEG decoder gives libjpeg's pixels).
    outside = ~(region | face_region(rgb.shape, [np.array(f["quad"]) for f in faces]))
    assert outside.mean() > 0.5 and np.array_equal(got[outside], rgb[outside])


@pytest.mark.parametrize("name", ["obama.jpg", "two_people.jpg"])
def test_given_dlib_landmarks_the_page_converts_like_the_cli(swap_page, cli_photos, name):
    rgb, want, dlib_faces = cli_photos[name]
    got, faces = browser_toonify(swap_page, PHOTOS / name, [f.landmarks.tolist() for f in dlib_faces])
    np.testing.assert_allclose([f["quad"] for f in faces], [f.quad for f in dlib_faces], rtol=0, atol=1e-6)
    region = face_region(rgb.shape, [f.quad for f in dlib_faces])
    psnr = psnr_in(region, got, want)
    print(f"{name}: browser vs CLI, the same (dlib) landmarks, in the face regions: PSNR {psnr:.1f} dB")
    assert psnr >= MIN_PSNR_SAME_LANDMARKS




def test_webcam_converts_the_fake_camera_frame_by_frame(playwright, url, tmp_path):
    # The shared clip's first 3 s hold no frontal face: the camera plays the 2 s after them, looped.
    clip = tmp_path / "clip.y4m"
    write_y4m(PHOTOS / "short_hamilton_clip.mp4", clip, 90, 60)
    b = launch(playwright, *FAKE_CAMERA, f"--use-file-for-fake-video-capture={clip}")
    try:
        p = Page(b, url)
        p.page.click("#webcam")
        p.page.wait_for_function("window.toonifyStats.framesWithFace >= 5", timeout=30_000)
        stats = p.evaluate("() => window.toonifyStats")
        assert stats["frames"] >= stats["framesWithFace"] >= 5 and stats["fps"] > 0
        print(f"webcam: {stats}")
        assert p.page.text_content("#fps").endswith(" fps")
        assert p.errors == []
    finally:
        b.close()


def test_a_picked_photo_is_shown_and_downloadable(swap_page):
    page = swap_page.page
    page.set_input_files("#file", str(PHOTOS / "two_people.jpg"))
    page.wait_for_selector("#download", state="visible", timeout=30_000)
    assert re.fullmatch(r"two_people\.jpg: 2 faces, \d+ ms", page.text_content("#status"))
    assert page.get_attribute("#download", "download") == "two_people_toon.png"
    assert page.eval_on_selector("#result", "c => [c.width, c.height]") == [1126, 661]
    page.set_input_files("#file", str(PHOTOS / "dogs.jpg"))
    page.wait_for_function("document.getElementById('status').textContent === 'dogs.jpg: no face found'",
                           timeout=30_000)
    assert swap_page.errors == []


def test_the_site_is_sent_gzip_encoded_from_the_files_web_wrote(url, site):
    import gzip

    import httpx
    wasm = "ort/ort-wasm-simd-threaded.wasm"
    assert gzip.decompress((site / (wasm + ".gz")).read_bytes()) == (site / wasm).read_bytes()
    assert not (site / "styled" / "ort" / "ort-wasm-simd-threaded.asyncify.wasm.gz").exists()   # --no-webgpu
    zipped = httpx.get(url + wasm, headers={"Accept-Encoding": "gzip"})
    plain = httpx.get(url + wasm, headers={"Accept-Encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["content-type"] == "application/wasm"
    assert int(zipped.headers["content-length"]) == (site / (wasm + ".gz")).stat().st_size
    assert zipped.content == plain.content == (site / wasm).read_bytes()
    assert "content-encoding" not in plain.headers
    assert zipped.headers["cross-origin-embedder-policy"] == "require-corp"
