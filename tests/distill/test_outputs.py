"""Every distill command that writes one file (blend, sample, export, eval), into a character device
and a named pipe: the device stays a device, the pipe gets exactly the bytes a regular file would
hold (README: Safety)."""
import json

import onnx
import pytest
import torch
from typer.testing import CliRunner

from distill.cli import app
from distill.runs import StudentInfo, save_student
from distill.translator import PRESETS, build_generator
from tests.helpers import BASE, fifo, is_fifo, is_null_device, make_pair_folder, make_toon, move_temp_folder, null_device


@pytest.fixture(autouse=True)
def temp_folder(tmp_path, monkeypatch):
    return move_temp_folder(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def toon(tmp_path_factory):
    path = tmp_path_factory.mktemp("teachers") / "toon.safetensors"
    make_toon(path)
    return path


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    torch.manual_seed(0)
    info = StudentInfo(PRESETS["lite"], "lite", 32, teacher_base_sha256="a" * 64, teacher_blended_sha256="b" * 64)
    path = tmp_path_factory.mktemp("student") / "student-ema.pt"
    save_student(build_generator("lite"), path, info)
    return path


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def into_each(tmp_path, command, name):
    """Run `command(out)` into a regular file NAME, a device and a pipe named NAME; returns (the
    regular file's bytes, what the pipe received), and checks the device and pipe are still there."""
    run(*command(tmp_path / name))
    dev = null_device(tmp_path / "null")
    run(*command(dev))
    assert is_null_device(dev)
    (tmp_path / "pipe").mkdir()
    with fifo(tmp_path / "pipe" / name) as received:
        run(*command(tmp_path / "pipe" / name))
        data = received()
    assert is_fifo(tmp_path / "pipe" / name)
    return (tmp_path / name).read_bytes(), data


def test_blend_into_a_device_and_a_pipe(tmp_path, temp_folder, toon):
    expected, received = into_each(tmp_path, lambda out: ["blend", "--base", BASE, "--toon", toon, "--swap-res", "16",
                                                          "-o", out], "blended.safetensors")
    assert received == expected and list(temp_folder.iterdir()) == []


def test_sample_grid_into_a_device_and_a_pipe(tmp_path, temp_folder, toon):
    expected, received = into_each(tmp_path, lambda out: ["sample", "--network", BASE, "--network", toon,
                                                          "--seeds", "0-1", "--device", "cpu", "-o", out], "grid.png")
    assert received == expected and expected.startswith(b"\x89PNG") and list(temp_folder.iterdir()) == []


def test_export_into_a_device_and_a_pipe_with_its_triton_copy(tmp_path, temp_folder, student):
    expected, received = into_each(tmp_path, lambda out: ["export", "--student", student, "-o", out,
                                                          "--triton", out.parent / "triton"], "toon.onnx")
    # The same graph and size; only the export time in the metadata may differ.
    assert len(received) == len(expected)
    assert onnx.load_from_string(received).graph == onnx.load_from_string(expected).graph
    assert (tmp_path / "pipe" / "triton" / "toon" / "1" / "model.onnx").read_bytes() == received
    assert list(temp_folder.iterdir()) == []


def test_eval_report_into_a_device_and_a_pipe(tmp_path, temp_folder, student):
    pairs = make_pair_folder(tmp_path / "pairs", count=1, val=2)
    expected, received = into_each(tmp_path, lambda out: ["eval", "--student", student, "--pairs", pairs / "val",
                                                          "--device", "cpu", "-o", out], "report.json")
    assert received == expected and json.loads(received)["count"] == 2 and list(temp_folder.iterdir()) == []


def test_blend_never_overwrites_its_input(tmp_path, toon):
    (tmp_path / "out.safetensors").symlink_to(toon)
    before = toon.read_bytes()
    for out in (toon, tmp_path / "out.safetensors"):
        result = CliRunner().invoke(app, ["blend", "--base", str(BASE), "--toon", str(toon), "-o", str(out)])
        assert (str(result.exception), result.exception.exit_code) == (
            f"{out}: the output would overwrite the input\n  hint: choose another -o", 2)
    assert toon.read_bytes() == before
