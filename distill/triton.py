"""The fleet side of an export: Triton Python-backend models beside the ONNX Runtime one, and a
KServe InferenceService manifest for the ONNX model.

    write_python_models(repo, "toon", onnx_bytes, max_batch_size=8)   # toon_python/, toon_photo/
    write_kserve_manifest(Path("exports/triton-kserve.yaml"), "toon", "s3://bucket/triton")

The Python-backend models run runtime/triton_model.py (copied as model.py) with a copy of the
runtime package beside it, so they load on any Triton, CPU-only ones included: `toon_python`
takes and returns tensors as the ONNX model does, `toon_photo` takes an encoded photo and answers
the toonified photo (PNG) and its faces. A server given the whole repository tries to load all
of them: start it with `--model-control-mode=explicit --load-model=NAME` to pick (the manifest does).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import runtime
from runtime.common import write_bytes_atomic

RUNTIME = Path(runtime.__file__).parent
KSERVE_API = "serving.kserve.io/v1beta1"


def python_config(name: str, mode: str, max_batch_size: int, input_name: str = "input",
                  output_name: str = "output") -> str:
    """config.pbtxt of a Python-backend model: mode "tensor" (FP32 [3, -1, -1] in and out) or
    "photo" (an encoded image in; the PNG and the faces as JSON out), dynamic batching, CPU instances."""
    if mode == "tensor":
        tensors = ("input [", f'  {{ name: "{input_name}" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }}', "]",
                   "output [", f'  {{ name: "{output_name}" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }}', "]")
    else:
        tensors = ("input [", '  { name: "image" data_type: TYPE_STRING dims: [ 1 ] }', "]",
                   "output [", '  { name: "toon" data_type: TYPE_STRING dims: [ 1 ] },',
                   '  { name: "faces" data_type: TYPE_STRING dims: [ 1 ] }', "]")
    return "\n".join([
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        *tensors,
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        "instance_group [ { count: 1 kind: KIND_CPU } ]",
        f'parameters {{ key: "mode" value: {{ string_value: "{mode}" }} }}',
        'parameters { key: "provider" value: { string_value: "auto" } }',
        "",
    ])


def runtime_sources() -> dict[str, bytes]:
    """The runtime package's Python files (relative path -> bytes), for a model folder."""
    return {f"runtime/{p.relative_to(RUNTIME).as_posix()}": p.read_bytes()
            for p in sorted(RUNTIME.rglob("*.py")) if "node_modules" not in p.parts}


def write_python_models(repo: Path, name: str, onnx_bytes: bytes, max_batch_size: int,
                        input_name: str = "input", output_name: str = "output") -> list[Path]:
    """Write repo/NAME_python (tensors) and repo/NAME_photo (the photo path); returns their folders."""
    folders = []
    sources = runtime_sources()
    for mode, suffix in (("tensor", "python"), ("photo", "photo")):
        folder = repo / f"{name}_{suffix}"
        version = folder / "1"
        write_bytes_atomic(version / "model.onnx", onnx_bytes)
        write_bytes_atomic(version / "model.py", (RUNTIME / "triton_model.py").read_bytes())
        for rel, data in sources.items():
            write_bytes_atomic(version / rel, data)
        write_bytes_atomic(folder / "config.pbtxt", python_config(folder.name, mode, max_batch_size,
                                                                  input_name, output_name).encode())
        folders.append(folder)
    return folders


def kserve_manifest(name: str, storage_uri: str) -> str:
    """A KServe InferenceService (YAML) serving the repository's ONNX model with the Triton runtime
    over the v2 protocol, on one GPU; `storage_uri` is where the repository folder is uploaded."""
    service = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "toonify"
    args = ["--model-control-mode=explicit", f"--load-model={name}"]
    # JSON strings are valid YAML scalars: names and URIs are quoted exactly.
    q = json.dumps
    return "\n".join([
        f"apiVersion: {KSERVE_API}",
        "kind: InferenceService",
        "metadata:",
        f"  name: {q(service)}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        "        name: onnx",
        "      runtime: kserve-tritonserver",
        "      protocolVersion: v2",
        f"      storageUri: {q(storage_uri)}",
        f"      args: [{', '.join(q(a) for a in args)}]",
        "      resources:",
        "        limits:",
        '          nvidia.com/gpu: "1"',
        "",
    ])


def write_kserve_manifest(path: Path, name: str, storage_uri: str) -> Path:
    write_bytes_atomic(path, kserve_manifest(name, storage_uri).encode())
    return path
