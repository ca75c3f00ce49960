"""Tiny ONNX students built with onnx.helper (no torch), so runtime tests are fast and exact.

    path = build_model(tmp_path / "m.onnx", "invert", resolution=32)   # toon = 255 - photo, exactly

Each graph takes and returns [N, 3, H, W] float32 with dynamic N, H and W, like an export.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.engine import ModelInfo

# What each op does to a uint8 RGB image, for the tests' expected outputs.
EXPECTED = {
    "identity": lambda u8: u8,
    "invert": lambda u8: 255 - u8,           # -x in [-1, 1] is 255 - u in uint8, exactly
    "swap_rb": lambda u8: u8[..., ::-1],     # catches any RGB/BGR confusion
}


def build_model(path: Path, op: str = "invert", resolution: int = 32, size_multiple: int = 8,
                metadata: dict[str, str] | None = None, input_name: str = "input",
                output_name: str = "output", batch: int | str = "N") -> Path:
    """Write a one-node student to `path`; `metadata` replaces the default toonify-fast metadata_props."""
    image = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, "H", "W"])
    toon = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, 3, "H", "W"])
    initializers = []
    if op == "identity":
        nodes = [helper.make_node("Identity", [input_name], [output_name])]
    elif op == "invert":
        nodes = [helper.make_node("Neg", [input_name], [output_name])]
    elif op == "swap_rb":
        weight = np.eye(3, dtype=np.float32)[::-1].reshape(3, 3, 1, 1).copy()
        initializers = [numpy_helper.from_array(weight, "swap_weight")]
        nodes = [helper.make_node("Conv", [input_name, "swap_weight"], [output_name])]
    else:
        raise ValueError(op)
    graph = helper.make_graph(nodes, f"tiny_{op}", [image], [toon], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if metadata is None:
        metadata = ModelInfo(input_name=input_name, output_name=output_name, resolution=resolution,
                             size_multiple=size_multiple, preset=f"test-{op}",
                             exported_at="2024-01-01T00:00:00+00:00", toonify_fast_version="0.1.0").to_metadata()
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
