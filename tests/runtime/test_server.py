"""`toonify-fast serve --model`: the HTTP service started as a subprocess on a free loopback port,
driven with httpx: real photos against the CLI, batching across clients, the queue limit, every
refused upload, /metrics, graceful shutdown, and the site's gzip."""
import base64
import concurrent.futures
import contextlib
import gzip
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from runtime.cli import main
from runtime.engine import Toonifier
from runtime.images import ImageError, read_image
from tests.conftest import PHOTOS, ROOT
from tests.helpers import build_conditioned_model, build_model

OBAMA = PHOTOS / "obama.jpg"


@contextlib.contextmanager
def service(*args):
    """The service in a subprocess: yields (base URL, the process); stops it with SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--port", "0", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("http://127.0.0.1:"), line + proc.stderr.read()
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(line + "healthz").status_code == 200:
                    break
            time.sleep(0.1)
        yield line, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def encoded(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("serve") / "invert64.onnx", "invert", resolution=64)


@pytest.fixture(scope="module")
def api(model):
    with service("--model", model, "--max-upload-mb", "1", "--max-megapixels", "2") as (url, proc):
        yield url
        assert proc.poll() is None, "the service died"


def test_a_photo_converts_as_the_cli_converts_it(api, model, tmp_path):
    for extra, crop in (([], False), (["--crop"], True)):
        assert main_exit([str(OBAMA), "--model", str(model), "-o", str(tmp_path / "cli.png"), *extra]) == 0
        r = httpx.post(api + "v1/toonify", params={"crop": str(crop).lower()}, content=OBAMA.read_bytes(),
                       headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        want = read_image(tmp_path / "cli.png")[0]       # one face: --crop -o cli.png writes cli.png itself
        np.testing.assert_array_equal(png(r.content), want)
    faces = json.loads(r.headers["x-faces"])
    assert len(faces) == 1 and faces[0]["box"] == [378, 158, 625, 405]
    # The same photo as a multipart upload, answered as JPEG.
    r = httpx.post(api + "v1/toonify", params={"format": "jpeg"}, files={"image": ("obama.jpg", OBAMA.read_bytes())},
                   timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert png(r.content).shape == (1137, 910, 3)
    # The JSON variant: the same image in base64 beside the same faces, for a client that asks for JSON first.
    r = httpx.post(api + "v1/toonify", params={"crop": "true"}, content=OBAMA.read_bytes(), timeout=30,
                   headers={"Content-Type": "image/jpeg", "Accept": "application/json, image/png;q=0.5"})
    answer = r.json()
    assert r.status_code == 200 and answer["media_type"] == "image/png" and answer["faces"] == faces
    np.testing.assert_array_equal(png(base64.b64decode(answer["image"])), read_image(tmp_path / "cli.png")[0])
    r = httpx.post(api + "v1/toonify", content=OBAMA.read_bytes(), timeout=30,
                   headers={"Content-Type": "image/jpeg", "Accept": "image/webp, application/json"})
    assert r.headers["content-type"] == "image/png" and "x-faces" in r.headers


def main_exit(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_refused_uploads_get_the_clis_reasons_and_are_counted(api, tmp_path):
    def post(data, **kw):
        return httpx.post(api + "v1/toonify", content=data, timeout=30, **kw)

    big = post(b"x" * 1_000_001)
    assert big.status_code == 413 and big.json()["error"] == "upload larger than 1 MB"
    chunked = post(iter([b"x" * 600_000, b"x" * 600_000]))        # no Content-Length: counted while read
    assert chunked.status_code == 413
    data = OBAMA.read_bytes()
    truncated = post(data[:len(data) // 2])
    assert truncated.status_code == 422 and truncated.json()["error"].startswith("truncated or corrupt image (")
    junk = post(b"hello, not an image")
    assert junk.status_code == 422 and junk.json() == {
        "error": "not an image (or in a format Pillow cannot read)", "hint": "use JPEG, PNG, WebP, BMP or TIFF"}
    # A decompression bomb in miniature: a tiny file that decodes to 3 MP (the limit here is 2).
    bomb = encoded(np.zeros((1500, 2000, 3), np.uint8))
    assert len(bomb) < 20_000
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageError) as cli_error:
        read_image(tmp_path / "bomb.png", 2_000_000)
    refused = post(bomb)
    assert refused.status_code == 422
    assert refused.json() == {"error": "2000x1500 is 3 MP, over the limit of 2 MP", "hint": cli_error.value.hint}
    assert refused.json()["error"] == cli_error.value.reason
    dogs = post((PHOTOS / "dogs.jpg").read_bytes())
    assert dogs.status_code == 422 and dogs.json()["error"] == "no face found"
    assert post(b"", params={"format": "gif"}).json() == {"error": "unknown format 'gif'",
                                                         "hint": "choose png, jpeg or webp"}
    assert post(data, params={"strength": "0.5"}).json()["error"] == "this model has no style or strength input"
    text = httpx.get(api + "metrics").text
    assert metric(text, "toonify_requests_total", code=413, reason="too_large") == 2
    assert metric(text, "toonify_requests_total", code=422, reason="truncated") == 1
    assert metric(text, "toonify_requests_total", code=422, reason="not_an_image") == 1
    assert metric(text, "toonify_requests_total", code=422, reason="too_many_pixels") == 1
    assert metric(text, "toonify_requests_total", code=422, reason="no_face") == 1
    assert metric(text, "toonify_requests_total", code=422, reason="request") == 2     # format, strength
    assert httpx.get(api + "healthz").json()["status"] == "ok"


def concurrently(count: int, fn) -> list:
    results = [None] * count
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn(i))) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(model):
    # Flat grey faces (align=false: each image is the face) of a different level per client.
    levels = [10 * i + 5 for i in range(8)]
    with service("--model", model, "--max-batch", "8", "--max-wait-ms", "500") as (url, _):
        def send(i):
            image = encoded(np.full((40, 48, 3), levels[i], np.uint8))
            return httpx.post(url + "v1/toonify", params={"align": "false"}, content=image, timeout=30)

        answers = concurrently(len(levels), send)
        text = httpx.get(url + "metrics").text
    for level, r in zip(levels, answers):
        assert r.status_code == 200
        np.testing.assert_array_equal(png(r.content), np.full((40, 48, 3), 255 - level, np.uint8))
    batches = metric(text, "toonify_batch_faces_count")
    assert metric(text, "toonify_batch_faces_sum") == 8 and metric(text, "toonify_faces_total") == 8
    assert batches <= 2 and metric(text, "toonify_batch_faces_bucket", le=4) <= 1, text
    assert metric(text, "toonify_requests_total", code=200, reason="ok") == 8


def test_over_the_queue_limit_requests_are_refused_at_once_and_the_service_stays_up(model):
    image = encoded(np.full((32, 32, 3), 100, np.uint8))
    with service("--model", model, "--queue-limit", "2", "--max-wait-ms", "1500") as (url, _):
        post = lambda: httpx.post(url + "v1/toonify", params={"align": "false"}, content=image, timeout=30)
        waiting = [threading.Thread(target=post) for _ in range(2)]
        for t in waiting:
            t.start()
        for _ in range(50):
            if metric(httpx.get(url + "metrics").text, "toonify_queue_depth") == 2:
                break
            time.sleep(0.02)
        start = time.perf_counter()
        refused = post()
        seconds = time.perf_counter() - start
        for t in waiting:
            t.join(30)
        after = post()
        text = httpx.get(url + "metrics").text
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1" and seconds < 0.5
    assert refused.json()["error"] == "busy: too many requests in the service"
    assert after.status_code == 200
    assert metric(text, "toonify_requests_total", code=503, reason="busy") == 1
    assert metric(text, "toonify_requests_total", code=200, reason="ok") == 3


def test_a_request_past_the_time_limit_gets_504_and_the_engine_skips_it(model):
    image = encoded(np.full((32, 32, 3), 9, np.uint8))
    with service("--model", model, "--timeout", "0.3", "--max-wait-ms", "1000") as (url, _):
        start = time.perf_counter()
        late = httpx.post(url + "v1/toonify", params={"align": "false"}, content=image, timeout=30)
        seconds = time.perf_counter() - start
        time.sleep(1.2)                     # the batch it would have joined has run by now
        text = httpx.get(url + "metrics").text
    assert late.status_code == 504 and late.json() == {"error": "not done within 0.3 s", "hint": "retry later"}
    assert 0.3 <= seconds < 0.9
    assert metric(text, "toonify_requests_total", code=504, reason="timeout") == 1
    assert metric(text, "toonify_batch_faces_count") == 0 and metric(text, "toonify_queued_faces") == 0


def test_sigterm_finishes_the_request_in_flight(model):
    image = encoded(np.full((32, 32, 3), 7, np.uint8))
    with service("--model", model, "--max-wait-ms", "1000") as (url, proc):
        answer = []
        t = threading.Thread(target=lambda: answer.append(
            httpx.post(url + "v1/toonify", params={"align": "false"}, content=image, timeout=30)))
        t.start()
        for _ in range(50):
            if metric(httpx.get(url + "metrics").text, "toonify_queue_depth") == 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        # A stop asked for ends as a success once the requests in flight are answered.
        assert proc.wait(20) == 0
        assert "stopped (SIGTERM): the requests in flight were answered" in proc.stderr.read()
    assert answer[0].status_code == 200
    np.testing.assert_array_equal(png(answer[0].content), np.full((32, 32, 3), 248, np.uint8))


def test_the_site_and_the_api_in_one_service_with_gzip(model, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>toon</title>")
    code = b"export const x = 1;\n" * 2000
    (site / "app.js").write_bytes(code)
    (site / "app.js.gz").write_bytes(gzip.compress(code))
    with service(site, "--model", model) as (url, _):
        plain = httpx.get(url + "app.js", headers={"Accept-Encoding": "identity"})
        zipped = httpx.get(url + "app.js", headers={"Accept-Encoding": "gzip, br"})
        page = httpx.get(url)
        health = httpx.get(url + "healthz")
    assert plain.content == code and "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == code
    assert int(zipped.headers["content-length"]) == len(gzip.compress(code))
    assert zipped.headers["content-type"].startswith("text/javascript")
    assert page.status_code == 200 and "<title>toon</title>" in page.text
    for r in (plain, zipped, page):
        assert r.headers["cross-origin-opener-policy"] == "same-origin"
        assert r.headers["cross-origin-embedder-policy"] == "require-corp"
    assert health.json()["model"] == str(model)


def test_serve_needs_a_site_or_a_model(capsys):
    assert main_exit(["serve"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: nothing to serve hint: give a site folder (toonify-fast web ...), --model M.onnx, or both" in err


def test_a_conditioned_model_serves_each_request_its_style_and_strength(tmp_path):
    model = build_conditioned_model(tmp_path / "styles.onnx", resolution=32)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    asks = [{"style": "cartoon", "strength": "0"}, {"style": "ukiyoe", "strength": "1"},
            {"style": "cartoon", "strength": "0.25"}, {}]
    local = Toonifier(model, "cpu")
    with service("--model", model, "--max-wait-ms", "200") as (url, _):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda ia: httpx.post(url + "v1/toonify", params={"align": "false", **ia[1]},
                                                          content=encoded(ia[0]), timeout=30), zip(images, asks)))
        refused = httpx.post(url + "v1/toonify", params={"align": "false", "style": "oil"}, content=encoded(images[0]))
    for image, ask, answer in zip(images, asks, answers):
        assert answer.status_code == 200, answer.text
        want = local.run([image], style=ask.get("style"),
                         strength=float(ask["strength"]) if "strength" in ask else None)[0]
        np.testing.assert_array_equal(png(answer.content), want)
    assert refused.status_code == 422 and refused.json()["error"] == "no style 'oil' in this model"
