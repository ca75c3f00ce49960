"""`distill export --triton`: the real tritonserver (from PyPI's nvidia-pytriton wheel, unpacked by
`make triton-deps` into build/triton) loads the exported Python-backend models and answers as the
local runtime does; the KServe manifest beside the repository has the fields KServe reads."""
import contextlib
import glob
import json
import os
import re
import struct
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from distill.export import ExportConfig, export_student
from runtime.engine import Toonifier
from runtime.faces import FaceAligner
from runtime.images import decode_image, read_image
from runtime.photos import toonify_photo
from runtime.server import free_ports
from tests.conftest import PHOTOS, ROOT
from tests.helpers import make_student

TRITON = ROOT / "build" / "triton"
SERVER = TRITON / "unpacked" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
RES = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton")
    make_student(folder / "student-ema.pt", RES)
    report = export_student(ExportConfig(student=folder / "student-ema.pt", output=folder / "toon.onnx",
                                         triton=folder / "repo", storage_uri="s3://fleet-models/toon-repo"))
    return folder, report


@pytest.fixture(scope="module")
def triton(exported):
    """tritonserver on loopback with the Python-backend models loaded: yields (HTTP URL, metrics URL)."""
    if not (TRITON / ".installed").is_file():
        pytest.fail(f"{TRITON} is not set up: run `make triton-deps` (make test does it)")
    folder, _ = exported
    http, grpc, metrics = free_ports(3)
    site = glob.glob(str(TRITON / "env" / "lib" / "python3.*" / "site-packages"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(TRITON / "unpacked" / "nvidia_pytriton.libs"),
           "PYTHONPATH": os.pathsep.join(site)}
    log = open(folder / "triton.log", "w")
    proc = subprocess.Popen([str(SERVER), f"--model-repository={folder / 'repo'}",
                             f"--backend-directory={TRITON / 'backends'}", "--model-control-mode=explicit",
                             "--load-model=toon_python", "--load-model=toon_photo",
                             "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1",
                             f"--grpc-port={grpc}", f"--metrics-port={metrics}", "--allow-metrics=true"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/v2/health/ready").status_code == 200:
                    break
            assert proc.poll() is None, (folder / "triton.log").read_text()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("tritonserver not ready in 60 s: " + (folder / "triton.log").read_text()[-3000:])
        yield url, f"http://127.0.0.1:{metrics}/metrics"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def infer_bytes(url: str, model: str, blob: bytes) -> httpx.Response:
    """A v2 inference request with one BYTES input in the binary extension (length-prefixed)."""
    data = struct.pack("<I", len(blob)) + blob
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in ("toon", "faces")]
                         }).encode()
    return httpx.post(f"{url}/v2/models/{model}/infer", content=header + data, timeout=60,
                      headers={"Inference-Header-Content-Length": str(len(header)),
                               "Content-Type": "application/octet-stream"})


def bytes_outputs(r: httpx.Response) -> dict[str, bytes]:
    size = int(r.headers["inference-header-content-length"])
    header, rest = json.loads(r.content[:size]), r.content[size:]
    out = {}
    for o in header["outputs"]:
        n = o["parameters"]["binary_data_size"]
        chunk, rest = rest[:n], rest[n:]
        (length,) = struct.unpack("<I", chunk[:4])
        out[o["name"]] = chunk[4:4 + length]
    return out


def test_triton_python_backend_answers_tensors_as_the_runtime(triton, exported):
    url, _ = triton
    folder, _ = exported
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, RES, RES)).astype(np.float32)
    r = httpx.post(f"{url}/v2/models/toon_python/infer", timeout=60, json={"inputs": [
        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    got = np.array(out["data"], np.float32).reshape(out["shape"])
    toonifier = Toonifier(folder / "toon.onnx", "cpu")
    want = toonifier.session.run(["output"], {"input": x})[0]
    assert out["shape"] == [2, 3, RES, RES]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_triton_photo_model_converts_a_photo_as_the_runtime(triton, exported):
    url, metrics = triton
    folder, _ = exported
    r = infer_bytes(url, "toon_photo", (PHOTOS / "obama.jpg").read_bytes())
    assert r.status_code == 200, r.text
    out = bytes_outputs(r)
    rgb = read_image(PHOTOS / "obama.jpg")[0]
    want, faces = toonify_photo(Toonifier(folder / "toon.onnx", "cpu"), FaceAligner(), rgb)
    got = decode_image(out["toon"])[0]
    assert json.loads(out["faces"]) == [list(f.box) for f in faces] == [[378, 158, 625, 405]]
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    refused = infer_bytes(url, "toon_photo", (PHOTOS / "dogs.jpg").read_bytes())
    assert refused.status_code == 400 and "no face found" in refused.json()["error"]
    text = httpx.get(metrics).text
    # Triton counts a request its backend answered with an error as executed.
    assert re.search(r'nv_inference_request_success\{model="toon_photo",version="1"\} 2\n', text), text


def test_the_repository_has_the_onnx_and_python_models_and_a_kserve_manifest(exported):
    folder, report = exported
    repo = folder / "repo"
    assert sorted(p.name for p in repo.iterdir()) == ["toon", "toon_photo", "toon_python"]
    for name in ("toon_photo", "toon_python"):
        assert (repo / name / "1" / "model.onnx").read_bytes() == (folder / "toon.onnx").read_bytes()
        assert (repo / name / "1" / "runtime" / "engine.py").is_file()
        assert 'backend: "python"' in (repo / name / "config.pbtxt").read_text()
    assert report["kserve"] == str(folder / "repo-kserve.yaml")
    manifest = yaml.safe_load(Path(report["kserve"]).read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "toon"
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"}
    assert model["runtime"] == "kserve-tritonserver" and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://fleet-models/toon-repo"
    assert model["args"] == ["--model-control-mode=explicit", "--load-model=toon"]
