import os
import sys

import numpy as np
import onnxruntime as ort
import pytest

from runtime import engine
from runtime.common import ToonifyError, UsageError
from runtime.engine import (EngineError, ModelError, ModelInfo, Toonifier, physical_cores, provider_chain,
                            read_model_info)
from tests.helpers import EXPECTED, build_model


def images(n, h=32, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_metadata_round_trips_through_the_onnx_file(tmp_path):
    info = ModelInfo(input_name="photo", output_name="toon", resolution=64, size_multiple=16, alignment="none",
                     preset="lite", teacher_base_sha256="ab" * 32, teacher_blended_sha256="cd" * 32,
                     exported_at="2024-05-01T12:00:00+00:00", toonify_fast_version="0.1.0", precision="fp16",
                     extra={"licence": "CC-BY"})
    meta = info.to_metadata()
    assert meta["toonify_fast.format"] == "1" and meta["resolution"] == "64" and meta["value_range"] == "-1,1"
    assert all(isinstance(v, str) for v in meta.values())
    path = build_model(tmp_path / "m.onnx", metadata=meta, input_name="photo", output_name="toon")
    assert read_model_info(path) == info


def test_metadata_is_read_without_the_onnx_package(tmp_path, monkeypatch):
    path = build_model(tmp_path / "m.onnx", resolution=48)
    with_onnx = read_model_info(path)
    monkeypatch.setitem(sys.modules, "onnx", None)       # `import onnx` now raises ImportError
    assert read_model_info(path) == with_onnx
    assert with_onnx.resolution == 48 and with_onnx.size_multiple == 8 and with_onnx.alignment == "ffhq"


def _meta(**changes):
    meta = ModelInfo(input_name="input", output_name="output", resolution=32).to_metadata()
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


@pytest.mark.parametrize("meta, reason", [
    ({}, "not a toonify-fast model (its metadata has no 'toonify_fast.format')"),
    (_meta(**{"toonify_fast.format": "2"}), "model format '2' is not supported (this runtime reads format 1)"),
    (_meta(resolution=None), "the model's metadata lacks resolution"),
    (_meta(resolution="big"), "bad metadata: invalid literal for int() with base 10: 'big'"),
    (_meta(resolution="36"), "bad metadata: resolution 36 is not a positive multiple of size_multiple 8"),
    (_meta(layout="NHWC"), "unsupported layout 'NHWC' (this runtime feeds NCHW)"),
    (_meta(value_range="0,1"), "unsupported value_range '0,1' (this runtime feeds -1,1)"),
    (_meta(alignment="arcface"), "unknown alignment 'arcface' (expected 'ffhq' or 'none')"),
])
def test_bad_metadata_is_refused_naming_the_file(tmp_path, meta, reason):
    path = build_model(tmp_path / "m.onnx", metadata=meta)
    with pytest.raises(ModelError) as e:
        read_model_info(path)
    assert e.value.reason == reason and e.value.path == str(path)


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(UsageError) as e:
        read_model_info(tmp_path / "none.onnx")
    assert e.value.reason == "no such model file" and e.value.exit_code == 2 and "make demo" in e.value.hint
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(ModelError, match=r"notes.onnx: not an ONNX model"):
        read_model_info(text)
    with pytest.raises(ModelError, match=r"notes.onnx: ONNX Runtime cannot load it"):
        Toonifier(text, provider="cpu")


@pytest.mark.parametrize("op", sorted(EXPECTED))
def test_run_is_exact_and_keeps_rgb_order(tmp_path, op):
    toonifier = Toonifier(build_model(tmp_path / f"{op}.onnx", op), provider="cpu")
    x = images(3)
    y = toonifier.run(x)
    assert y.shape == x.shape and y.dtype == np.uint8
    np.testing.assert_array_equal(y, EXPECTED[op](x))


def test_batches_and_lists_give_the_same_result(tmp_path):
    path = build_model(tmp_path / "m.onnx", "swap_rb")
    x = images(5, 16, 24, seed=1)
    one = Toonifier(path, provider="cpu")
    assert one.batch_size == 1 and one.resolution == 32
    batched = Toonifier(path, provider="cpu", batch_size=2)
    np.testing.assert_array_equal(batched.run(list(x)), one.run(x))
    assert batched.run([]).shape == (0, 32, 32, 3)


def test_run_refuses_bad_inputs_clearly(tmp_path):
    toonifier = Toonifier(build_model(tmp_path / "m.onnx"), provider="cpu")
    with pytest.raises(EngineError) as e:
        toonifier.run(images(1, 30, 32))
    assert e.value.reason == "input size 32x30 is not a multiple of 8"
    assert e.value.hint == "crop or resize to multiples of 8 (the model was trained on 32x32 face crops)"
    with pytest.raises(EngineError, match=r"expected \[N, H, W, 3\] uint8 RGB images, got \(1, 32, 32, 3\) float32"):
        toonifier.run(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(EngineError, match="images in one run must have the same size"):
        toonifier.run([images(1, 32, 32)[0], images(1, 40, 32)[0]])


def test_metadata_naming_a_missing_input_is_refused(tmp_path):
    path = build_model(tmp_path / "m.onnx", metadata=_meta(input_name="image"))
    with pytest.raises(ModelError, match=r"the metadata names input 'image' and output 'output', the graph has \['input'\]"):
        Toonifier(path, provider="cpu")


def test_cpu_session_settings(tmp_path):
    session = Toonifier(build_model(tmp_path / "m.onnx"), provider="cpu").session
    options = session.get_session_options()
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.intra_op_num_threads == physical_cores() and options.inter_op_num_threads == 1
    assert 1 <= physical_cores() <= (len(os.sched_getaffinity(0)))
    assert Toonifier(build_model(tmp_path / "m.onnx"), provider="cpu", threads=1).session \
        .get_session_options().intra_op_num_threads == 1


def test_provider_names(monkeypatch):
    monkeypatch.delenv("TOONIFY_FAST_TENSORRT", raising=False)
    assert provider_chain("auto") == ["cuda", "cpu"]
    assert provider_chain("tensorrt") == ["tensorrt", "cuda", "cpu"]
    monkeypatch.setenv("TOONIFY_FAST_TENSORRT", "1")
    assert provider_chain("auto") == ["tensorrt", "cuda", "cpu"]
    with pytest.raises(ToonifyError) as e:
        provider_chain("gpu")
    assert e.value.exit_code == 2 and str(e.value) == "unknown provider 'gpu'\n  hint: choose one of tensorrt, cuda, cpu, auto"


def test_cuda_request_that_cannot_start_is_a_usage_error(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(engine, "nvidia_driver", lambda: False)
    path = build_model(tmp_path / "m.onnx")
    with pytest.raises(UsageError) as e:
        Toonifier(path, provider="cuda")
    cuda = "found no NVIDIA driver (libcuda.so.1 does not load)" if "cuda" in engine.available_providers() else \
        "is not in this onnxruntime build (it needs onnxruntime-gpu)"
    assert e.value.exit_code == 2 and str(e.value) == (
        f"{path}: --provider cuda: CUDA cannot start here: CUDA {cuda}\n  hint: use --provider auto or cpu; a GPU "
        "needs an NVIDIA driver and the GPU build: pip uninstall onnxruntime && pip install 'toonify-fast[gpu]'")
    out, err = capfd.readouterr()               # file descriptor 2: ORT's own C++ log would show here
    assert out == "" and err == ""


def test_cuda_request_on_this_machine_runs_or_says_why(tmp_path, capfd):
    """This machine as it is: CUDA starts (a GPU machine) or the request is refused with the reason."""
    try:
        toonifier = Toonifier(build_model(tmp_path / "m.onnx"), provider="cuda")
    except UsageError as e:
        assert e.reason.startswith("--provider cuda: CUDA cannot start here: CUDA ") and "EP Error" not in str(e)
        assert capfd.readouterr() == ("", "")
    else:
        assert toonifier.provider == "cuda" and toonifier.fallbacks == {}


def test_auto_without_a_driver_says_nothing(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(engine, "nvidia_driver", lambda: False)
    monkeypatch.setenv("TOONIFY_FAST_TENSORRT", "1")
    toonifier = Toonifier(build_model(tmp_path / "m.onnx"), provider="auto")
    assert toonifier.provider == "cpu" and toonifier.fallbacks == {}
    assert capfd.readouterr() == ("", "")       # a CPU-only machine: the CPU is no fallback
    np.testing.assert_array_equal(toonifier.run(images(2)), 255 - images(2))


def test_auto_with_a_driver_says_why_the_gpu_did_not_start(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(engine, "nvidia_driver", lambda: True)
    monkeypatch.setattr(engine.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    toonifier = Toonifier(build_model(tmp_path / "m.onnx"), provider="auto")
    out, err = capfd.readouterr()
    if toonifier.provider == "cpu":        # the driver is pretended: CUDA's libraries or device are missing
        assert out == "" and err.count("\n") == 1 and err.startswith("note: running on CPU, not CUDA: CUDA ")
        assert toonifier.fallback_reason in err and "EP Error" not in err and "[E:" not in err


def test_provider_missing_from_the_build_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UsageError) as e:
        Toonifier(build_model(tmp_path / "m.onnx"), provider="tensorrt")
    assert e.value.reason == ("--provider tensorrt: TensorRT cannot start here: TensorRT is not in this onnxruntime "
                              "build (it needs onnxruntime-gpu); CUDA is not in this onnxruntime build "
                              "(it needs onnxruntime-gpu)")
    assert Toonifier(build_model(tmp_path / "m.onnx"), provider="auto").provider == "cpu"
    assert capsys.readouterr().err == ""       # 'auto' on a CPU-only build is no news


def test_provider_status_says_what_would_start(monkeypatch):
    monkeypatch.setattr(engine, "nvidia_driver", lambda: False)
    monkeypatch.setattr(engine.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert engine.provider_status() == {"tensorrt": "found no NVIDIA driver (libcuda.so.1 does not load)",
                                        "cuda": "found no NVIDIA driver (libcuda.so.1 does not load)", "cpu": ""}
    monkeypatch.setattr(engine.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert engine.provider_status() == {"tensorrt": "is not in this onnxruntime build (it needs onnxruntime-gpu)",
                                        "cuda": "is not in this onnxruntime build (it needs onnxruntime-gpu)", "cpu": ""}


def test_without_onnxruntime_the_error_says_how_to_add_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)        # what `import onnxruntime` meets in a base install
    with pytest.raises(ToonifyError) as e:
        engine.load_onnxruntime()
    assert str(e.value) == ("ONNX Runtime is not installed here (the base install has neither onnxruntime nor "
                            "onnxruntime-gpu)\n  hint: pip install 'toonify-fast[cpu]', or 'toonify-fast[gpu]' "
                            "with an NVIDIA GPU (never both)")


def test_the_command_without_onnxruntime_is_one_error(tmp_path):
    import subprocess
    code = ("import sys; sys.modules['onnxruntime'] = None; sys.modules['onnx'] = None; "
            "from runtime.cli import main; main(sys.argv[1:])")
    model = build_model(tmp_path / "m.onnx")
    out = subprocess.run([sys.executable, "-c", code, "info", str(model)], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(engine.Path(engine.__file__).parents[1])})
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == ("error: ONNX Runtime is not installed here (the base install has neither onnxruntime nor "
                          "onnxruntime-gpu)\n  hint: pip install 'toonify-fast[cpu]', or 'toonify-fast[gpu]' with an "
                          "NVIDIA GPU (never both)\n")


@pytest.mark.gpu
@pytest.mark.parametrize("provider,label", [("cuda", "cuda"), ("tensorrt", "tensorrt")])
def test_gpu_providers_run_exactly_and_report_themselves(tmp_path, provider, label):
    """On a machine with a GPU (`pytest -m gpu`): the session really gets the provider, with IO
    binding and warm-up, and the result equals the CPU path's."""
    path = build_model(tmp_path / "m.onnx", "invert", resolution=32)
    engine = Toonifier(path, provider=provider)
    assert engine.provider == label and not engine.fallbacks
    faces = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.stack(engine.run(faces)), 255 - faces)


def demo_metadata(demo: bool = True) -> dict:
    info = ModelInfo(input_name="input", output_name="output", resolution=32, extra={"demo": "1"} if demo else {})
    return info.to_metadata()


def test_the_default_model_is_toonify_then_the_demo_model_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOONIFY_FAST_MODEL", raising=False)
    with pytest.raises(UsageError) as e:
        engine.find_model(None)
    assert e.value.exit_code == 2 and str(e.value) == (
        "exports/toonify.onnx: no such model file (the default when neither --model nor $TOONIFY_FAST_MODEL is "
        "set; exports/demo.onnx is missing too)\n  hint: build one with `make demo` (writes exports/demo.onnx) "
        "or `toonify-fast distill export ...`, or pass --model")
    (tmp_path / "exports").mkdir()
    build_model(tmp_path / "exports" / "demo.onnx", metadata=demo_metadata())
    assert engine.find_model(None) == engine.Path("exports/demo.onnx")
    assert capsys.readouterr().err == ("note: using the demo model exports/demo.onnx (untrained; export your own "
                                       "to exports/toonify.onnx)\n")
    build_model(tmp_path / "exports" / "demo.onnx", metadata=demo_metadata(demo=False))
    assert engine.find_model(None) == engine.Path("exports/demo.onnx") and capsys.readouterr().err == ""
    build_model(tmp_path / "exports" / "toonify.onnx")
    assert engine.find_model(None) == engine.Path("exports/toonify.onnx") and capsys.readouterr().err == ""
    monkeypatch.setenv("TOONIFY_FAST_MODEL", "exports/demo.onnx")
    assert engine.find_model(None) == engine.Path("exports/demo.onnx")
    assert engine.find_model("exports/toonify.onnx") == engine.Path("exports/toonify.onnx")
    with pytest.raises(UsageError, match=r"^elsewhere.onnx: no such model file \(--model\)"):
        engine.find_model("elsewhere.onnx")


def test_a_model_that_is_not_ours_is_a_usage_error():
    assert issubclass(ModelError, UsageError) and ModelError("x").exit_code == 2
