"""Hostile inputs for the runtime, each made here: models whose graph does not fit, file names with
markup and terminal escapes, outputs that would overwrite inputs, special files, stale partials."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.cli import main
from runtime.common import atomic_path, printable
from runtime.engine import ModelError, ModelInfo, Toonifier
from runtime.images import read_image, write_image
from runtime.photos import ConvertConfig, convert_photos
from tests.conftest import ROOT
from tests.helpers import build_model

N, H, W = "N", "H", "W"


def graph_model(path: Path, nodes, inputs, outputs, resolution: int = 32, metadata: dict | None = None) -> Path:
    """A toonify-fast model with these nodes; inputs/outputs: (name, ONNX element type, shape)."""
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = metadata or ModelInfo(input_name=inputs[0][0], output_name=outputs[0][0], resolution=resolution).to_metadata()
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


F, D = TensorProto.FLOAT, TensorProto.DOUBLE
IDENTITY = [helper.make_node("Identity", ["input"], ["output"])]
UNFIT = {  # name: (nodes, inputs, outputs, resolution, the reason Toonifier gives)
    "rank3": (IDENTITY, [("input", F, [3, H, W])], [("output", F, [3, H, W])], 32,
              "its input 'input' has rank 3 [3, 'H', 'W'], not 4 [N, 3, H, W]"),
    "gray": (IDENTITY, [("input", F, [N, 1, H, W])], [("output", F, [N, 1, H, W])], 32,
             "its input 'input' has 1 channels ['N', 1, 'H', 'W'], not 3 (RGB)"),
    "float64": (IDENTITY, [("input", D, [N, 3, H, W])], [("output", D, [N, 3, H, W])], 32,
                "its input 'input' has type tensor(double), not float32 (tensor(float))"),
    "fixed32": (IDENTITY, [("input", F, [N, 3, 32, 32])], [("output", F, [N, 3, 32, 32])], 64,
                "its input 'input' has the fixed size ['N', 3, 32, 32], which does not match the model "
                "resolution 64"),
    "six": ([helper.make_node("Concat", ["input", "input"], ["output"], axis=1)],
            [("input", F, [N, 3, H, W])], [("output", F, [N, 6, H, W])], 32,
            "its output 'output' has 6 channels ['N', 6, 'H', 'W'], not 3 (RGB)"),
}


@pytest.mark.parametrize("name", sorted(UNFIT))
def test_a_model_whose_graph_does_not_fit_is_refused_when_opened(tmp_path, name, capsys):
    nodes, inputs, outputs, resolution, reason = UNFIT[name]
    path = graph_model(tmp_path / f"{name}.onnx", nodes, inputs, outputs, resolution)
    with pytest.raises(ModelError) as e:
        Toonifier(path, "cpu")
    assert (e.value.reason, e.value.path, e.value.exit_code) == (reason, str(path), 2)
    with pytest.raises(SystemExit) as exit_:
        main(["info", str(path)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "problem" in out and "Traceback" not in err
    assert f"error: {path}: {reason}" in " ".join(err.split())


def test_an_output_of_the_wrong_size_or_not_finite_is_a_model_error(tmp_path):
    half = graph_model(tmp_path / "half.onnx", [helper.make_node("MaxPool", ["input"], ["output"], kernel_shape=[2, 2],
                                                                 strides=[2, 2])],
                       [("input", F, [N, 3, H, W])], [("output", F, [N, 3, "h", "w"])])
    with pytest.raises(ModelError) as e:
        Toonifier(half, "cpu").run(np.zeros((2, 32, 32, 3), np.uint8))
    assert e.value.reason == ("the model gave [1, 3, 16, 16] float32 for a [1, 3, 32, 32] float32 input "
                              "(it must give the input's shape back)") and e.value.path == str(half)
    nan = graph_model(tmp_path / "sqrt.onnx", [helper.make_node("Sqrt", ["input"], ["output"])],
                      [("input", F, [N, 3, H, W])], [("output", F, [N, 3, H, W])])
    toonifier = Toonifier(nan, "cpu")
    assert (toonifier.run(np.full((1, 32, 32, 3), 255, np.uint8)) == 255).all()
    with pytest.raises(ModelError) as e:
        toonifier.run(np.zeros((1, 32, 32, 3), np.uint8))
    assert e.value.reason == f"the model gave {32 * 32 * 3} NaN or infinite values" and e.value.path == str(nan)


def test_photos_that_make_the_model_fail_are_reported_and_the_rest_go_on(tmp_path, capsys):
    # sqrt(x): NaN wherever x < 0, so a dark photo fails and a white one converts.
    model = graph_model(tmp_path / "sqrt.onnx", [helper.make_node("Sqrt", ["input"], ["output"])],
                        [("input", F, [N, 3, H, W])], [("output", F, [N, 3, H, W])])
    names = ["a_white.png", "b_dark.png", "c_white.png"]
    for name in names:
        write_image(tmp_path / name, np.full((40, 48, 3), 0 if "dark" in name else 255, np.uint8))
    summary = convert_photos(ConvertConfig(inputs=tuple(str(tmp_path / n) for n in names), model=model,
                                           provider="cpu", align=False, batch_size=1))
    err = " ".join(capsys.readouterr().err.split())
    assert (summary.converted, summary.failed) == (2, 1)
    assert f"error: {tmp_path / 'b_dark.png'}: the model gave {32 * 32 * 3} NaN or infinite values" in err
    assert (read_image(tmp_path / "c_white_toon.png")[0] == 255).all()
    assert not (tmp_path / "b_dark_toon.png").exists()


def test_info_shows_markup_and_escapes_from_the_file_as_plain_text(tmp_path, capsys):
    meta = ModelInfo(input_name="input", output_name="output", resolution=32,
                     preset="\x1b]0;owned\x07\x1b[2J[/x][red]", extra={"note\x1b[31m": "a\rb"}).to_metadata()
    folder = tmp_path / "[/x]"            # the folders "[" and "x]"
    folder.mkdir(parents=True)
    path = build_model(folder / "m[b].onnx", metadata=meta)
    main_exit = None
    try:
        main(["info", str(path)])
    except SystemExit as e:
        main_exit = e.code
    out, err = capsys.readouterr()
    assert main_exit in (None, 0), err
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2J[/x][red]" in out and "note\\x1b[31m" in out and "a\\rb" in out
    assert "[/x]/m[b].onnx" in out
    assert printable("ok [b] é\t\u202e") == "ok [b] é\\t\\u202e"
