import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from distill import export as export_module
from distill.export import ExportConfig, ExportError, export_student
from distill.quantize import QuantizeError
from runtime.common import UsageError
from distill.runs import StudentFileError, StudentInfo, load_student, save_student
from distill.translator import PRESETS, build_generator
from runtime.engine import Toonifier, read_model_info
from runtime.images import hwc_to_nchw, nchw_to_hwc

RES = 32


@pytest.fixture(scope="module")
def student_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    G = build_generator("lite")
    # A trained student's norms and biases are not at their initial values; perturb them like one.
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.03 * torch.randn_like(p))
    info = StudentInfo(PRESETS["lite"], "lite", RES, teacher_base_sha256="a" * 64, teacher_blended_sha256="b" * 64)
    path = tmp_path_factory.mktemp("student") / "student-ema.pt"
    save_student(G, path, info)
    return path


@pytest.fixture(scope="module")
def exported(student_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    report = export_student(ExportConfig(student=student_file, output=out / "toon.onnx", triton=out / "triton",
                                         extra_metadata=(("demo", "1"),)))
    return out, report


def test_fp32_export_checks_parity_and_describes_itself(exported, student_file):
    out, report = exported
    path = out / "toon.onnx"
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert set(report["parity"]) == {f"random {RES}x{RES}", f"random {RES + 16}x{RES + 8}", "photo astronaut.png"}
    assert max(report["parity"].values()) <= 1e-4
    info = read_model_info(path)
    assert (info.input_name, info.output_name, info.resolution, info.size_multiple) == ("input", "output", RES, 8)
    assert (info.layout, info.value_range, info.alignment, info.preset, info.precision) == \
        ("NCHW", "-1,1", "ffhq", "lite", "fp32")
    assert info.teacher_base_sha256 == "a" * 64 and info.teacher_blended_sha256 == "b" * 64
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", info.exported_at)
    assert info.toonify_fast_version
    assert info.extra == {"demo": "1"}       # extra_metadata (the demo marks its student so)


def test_exported_model_runs_in_the_runtime_like_pytorch(exported, student_file):
    out, _ = exported
    model, _ = load_student(student_file)
    faces = np.random.default_rng(1).integers(0, 256, (3, RES * 2, RES, 3), dtype=np.uint8)  # dynamic N, H != W
    got = np.stack(Toonifier(out / "toon.onnx", provider="cpu").run(faces))
    with torch.no_grad():
        expected = nchw_to_hwc(model(torch.from_numpy(hwc_to_nchw(faces))).numpy())
    assert got.shape == faces.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1   # rounding of outputs within 1e-4


def _parse_pbtxt(text: str):
    """A small protobuf text-format reader: enough to read Triton model configs back."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        return tok[1:-1] if tok.startswith('"') else (int(tok) if re.fullmatch(r"-?\d+", tok) else tok)

    def message(end):
        nonlocal pos
        fields = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            fields[key] = value()
        pos += 1
        return fields

    return message(None)


def test_triton_repository_config(exported):
    out, report = exported
    folder = out / "triton" / "toon"
    assert report["triton"] == str(folder)
    assert (folder / "1" / "model.onnx").read_bytes() == (out / "toon.onnx").read_bytes()
    config = _parse_pbtxt((folder / "config.pbtxt").read_text())
    assert config["name"] == "toon" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]
    assert config["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


def test_fp16_export_keeps_float32_io_within_tolerance(student_file, tmp_path):
    report = export_student(ExportConfig(student=student_file, output=tmp_path / "half.onnx", fp16=True))
    assert 0 < max(report["parity"].values()) <= 2e-2
    model = onnx.load(str(tmp_path / "half.onnx"))
    assert [i.type.tensor_type.elem_type for i in (*model.graph.input, *model.graph.output)] == \
        [onnx.TensorProto.FLOAT] * 2
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert read_model_info(tmp_path / "half.onnx").precision == "fp16"


def test_parity_is_enforced(student_file, tmp_path, monkeypatch):
    monkeypatch.setitem(export_module.TOLERANCE, "fp32", 0.0)
    with pytest.raises(ExportError, match=r"ONNX Runtime disagrees with PyTorch on '(random|photo) [^']+': "
                                         r"max abs diff \d\.\d\de-\d\d > 0e\+00"):
        export_student(ExportConfig(student=student_file, output=tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def test_bad_arguments_are_named(student_file, tmp_path):
    with pytest.raises(UsageError, match="the output must end in .onnx"):
        export_student(ExportConfig(student=student_file, output=tmp_path / "x.pt"))
    with pytest.raises(StudentFileError, match="no such file"):
        export_student(ExportConfig(student=tmp_path / "missing.pt", output=tmp_path / "x.onnx"))


def test_export_forms_compute_the_same_function():
    torch.manual_seed(0)
    t = torch.nn.ConvTranspose2d(8, 5, 3, stride=2, padding=1, output_padding=1, bias=True)
    c = torch.nn.Conv2d(16, 3, 7)
    x = torch.randn(2, 8, 7, 9)
    y = torch.randn(2, 16, 20, 26)
    with torch.no_grad():
        assert torch.allclose(export_module.SubPixelUp(t)(x), t(x), atol=1e-6)
        assert torch.allclose(export_module.PhaseConv(c)(y), c(y), atol=1e-6)
    G = build_generator("lite").eval()
    x = torch.rand(1, 3, 40, 48) * 2 - 1
    for quantizable, transposed in ((False, 3), (True, 0)):
        form = export_module.export_form(G, quantizable=quantizable)
        count = {kind: sum(isinstance(m, kind) for m in form.modules())
                 for kind in (export_module.SubPixelUp, export_module.PhaseConv, torch.nn.ConvTranspose2d)}
        assert count == {export_module.SubPixelUp: 3 - transposed, export_module.PhaseConv: 1,
                         torch.nn.ConvTranspose2d: transposed}
        with torch.no_grad():
            assert torch.allclose(form(x), G(x), atol=1e-5)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules()) == 3    # the original is untouched


def test_int8_is_refused_below_the_quality_limit(student_file, photos_dir, tmp_path):
    # The random-weight student's activations are nothing like a trained one's: int8 costs it
    # ~25 dB, under the 30 dB limit (tests/distill/test_train.py exports a trained one that passes).
    with pytest.raises(QuantizeError, match=r"int8 output is too far from float32 on '(held-out|photo) [^']+': "
                                         r"PSNR \d\d\.\d dB < 30 dB\n  hint: calibrate on images like"):
        export_student(ExportConfig(student=student_file, output=tmp_path / "x.onnx", int8=True,
                                    calibration=(photos_dir,)))
    assert list(tmp_path.iterdir()) == []


def test_int8_arguments_are_checked(student_file, photos_dir, tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(UsageError, match="--int8 needs calibration images") as e:
        export_student(ExportConfig(student=student_file, output=out, int8=True))
    assert e.value.exit_code == 2
    with pytest.raises(UsageError, match="--fp16 and --int8 exclude each other"):
        export_student(ExportConfig(student=student_file, output=out, int8=True, fp16=True,
                                    calibration=(photos_dir,)))
    with pytest.raises(UsageError, match="no such file or folder"):
        export_student(ExportConfig(student=student_file, output=out, int8=True, calibration=(tmp_path / "none",)))
    with pytest.raises(UsageError, match=r"found 1 calibration image\(s\) in .*obama.jpg; at least 2 are needed"):
        export_student(ExportConfig(student=student_file, output=out, int8=True,
                                    calibration=(photos_dir / "obama.jpg",)))
    assert not out.exists()


def test_stable_norms_fix_instance_norm_precision_on_image_like_activations(tmp_path):
    # A channel whose mean dwarfs its spread (a smooth photo through the first conv): ONNX Runtime's
    # one-pass instance norm loses digits there; the LayerNormalization form does not.
    norm = torch.nn.InstanceNorm2d(4)
    export_module.export_graph(norm, torch.zeros(1, 4, 16, 16), tmp_path / "norm.onnx", 17)
    plain = onnx.load(str(tmp_path / "norm.onnx"))
    stable = export_module.stable_norms(plain, 2)
    assert [n.op_type for n in stable.graph.node if "Norm" in n.op_type] == ["LayerNormalization"]
    assert [n.op_type for n in plain.graph.node if "Norm" in n.op_type] == ["InstanceNormalization"]
    x = (10 + 0.01 * np.random.default_rng(0).standard_normal((1, 4, 64, 64))).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = (x64 - x64.mean((2, 3), keepdims=True)) / np.sqrt(x64.var((2, 3), keepdims=True) + 1e-5)
    errors = {name: np.abs(export_module.run_both(m.SerializeToString(), norm, {"x": x})["x"][0] - exact).max()
              for name, m in (("plain", plain), ("stable", stable))}
    assert errors["plain"] > 1e-4 and errors["stable"] < 1e-6
    # The export tries the fast form first and the exact one where parity needs it.
    data, parity, count = export_module.parity_checked(plain, norm, {"x": x}, 1e-4)
    assert count == 1 and parity["x"] < 1e-4
    assert b"LayerNormalization" in data
    data, parity, count = export_module.parity_checked(plain, norm, {"x": x - 10}, 1e-4)
    assert count == 0 and b"LayerNormalization" not in data
