"""Export a trained student to a self-describing ONNX model, and optionally a Triton model repository.

    toonify-fast distill export --student runs/00000-lite-256/student-ema.pt -o exports/toonify.onnx --triton exports/triton

The exported graph takes and returns [N, 3, H, W] float32 in [-1, 1] with dynamic N, H and W
(multiples of the architecture's size multiple). A conditioned student (trained on pairs with
styles) also takes `style` (int64 [N], an index into the metadata's `styles`) and `strength`
(float32 [N] in [0, 1]); `--style NAME --strength S` instead folds one condition into the norms'
scale and bias (translator.fold_condition): a one-input model as fast as the plain student. Everything the runtime needs travels in the
file's `metadata_props` (runtime.engine.ModelInfo), so apps never need torch or this package.
The export is checked before it is written: onnx.checker, then ONNX Runtime against PyTorch on
random inputs and on a real photo, at the training size and at a second size (`--int8`: PSNR on
real images instead, distill/quantize.py). What is exported is `export_form(model)`: the same
function with layers rewritten into forms ONNX Runtime computes faster (PhaseConv, SubPixelUp).
"""
from __future__ import annotations

import copy
import datetime
import importlib.util
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

import runtime
from distill import quantize, triton
from distill.runs import StudentInfo, load_student
from distill.translator import fold_condition
from runtime.common import ToonifyError, UsageError, console, note, output_suffix, write_bytes_atomic
from runtime.engine import ModelInfo
from runtime.options import setting

# Parity limits between ONNX Runtime and PyTorch, on outputs in [-1, 1].
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


@dataclass(frozen=True)
class ExportConfig:
    student: Path = setting(help="Student weights from `distill train` (RUN/student-ema.pt, or student.pt).")
    output: Path = setting(help="The ONNX model to write, e.g. exports/toonify.onnx.")
    fp16: bool = setting(False, "float16 weights and arithmetic (float32 inputs and outputs); for GPUs.")
    int8: bool = setting(False, "Static int8 (float32 inputs and outputs) for CPUs: about 2x the float32 speed where "
                                "the CPU has VNNI. Needs --calibration; refused when its PSNR against float32 falls "
                                "below 30 dB.")
    calibration: tuple[Path, ...] = setting(
        (), "int8: images to calibrate on, repeatable: files, folders, or the pair folder the student was trained on "
            "(its real/ side). Every 5th is held out to check quality.")
    opset: int = setting(17, "ONNX opset version.")
    triton: Path | None = setting(None, "Also write a Triton Inference Server model repository here "
                                        "(NAME/config.pbtxt, NAME/1/model.onnx).")
    triton_name: str | None = setting(None, cli=False)   # model name in that repository (default: the output's stem)
    extra_metadata: tuple[tuple[str, str], ...] = setting((), cli=False)   # more metadata_props, e.g. the demo's
    max_batch_size: int = setting(8, "Triton's max_batch_size for dynamic batching.")
    style: str | None = setting(None, "A conditioned student: fold this style into the model (one input, as fast "
                                      "as a plain student; default: keep the style and strength inputs).")
    strength: float | None = setting(None, "With --style: the strength folded in (default: the student's default).",
                                     min=0.0, max=1.0)
    default_strength: float | None = setting(
        None, "A conditioned model's strength when an app asks for none, written into its metadata (default: the "
              "student's, 1); with --style, the strength folded in unless --strength is given.", min=0.0, max=1.0)
    triton_tensorrt: bool = setting(False, "Triton: run the ONNX model through ONNX Runtime's TensorRT accelerator "
                                           "(FP16) on GPU instances.")
    storage_uri: str = setting("", "Where the Triton repository will be uploaded (s3://, gs://, pvc://), for the KServe "
                                   "manifest beside it (default: pvc://toonify-fast/NAME).")
    parity_images: tuple[Path, ...] = setting(
        (), "A real photo for the ONNX Runtime vs PyTorch parity check; repeatable (default: a bundled portrait).",
        flags=("--parity-image",))


class ExportError(ToonifyError):
    pass


def bundled_portrait() -> Path:
    """A real, public-domain portrait shipped inside scikit-image (no download), for checks and the demo."""
    spec = importlib.util.find_spec("skimage")
    path = Path(spec.submodule_search_locations[0]) / "data" / "astronaut.png" if spec else None
    if path is None or not path.is_file():
        raise ExportError("scikit-image's bundled portrait (skimage/data/astronaut.png) is not installed",
                          hint="pip install 'toonify-fast[distill]', or pass --parity-image PHOTO")
    return path


class SubPixelUp(torch.nn.Module):
    """A stride-2 3x3 transposed conv (padding 1, output padding 1) as the equal 2x2 conv to 4x the
    channels and a pixel shuffle (ONNX DepthToSpace). Same weights, same output up to rounding;
    ONNX Runtime's CPU provider has no int8 ConvTranspose, and this form quantizes."""

    # Output phase (row or column parity) -> its taps: (offset into the input, kernel index).
    TAPS = {0: ((0, 1),), 1: ((0, 2), (1, 0))}

    def __init__(self, t: torch.nn.ConvTranspose2d):
        super().__init__()
        w = t.weight.detach()                                  # [C_in, C_out, 3, 3]
        cin, cout = w.shape[:2]
        k = w.new_zeros(cout, 2, 2, cin, 2, 2)                 # [C_out, phase y, phase x, C_in, 2, 2]
        for a, rows in self.TAPS.items():
            for b, cols in self.TAPS.items():
                for dy, ky in rows:
                    for dx, kx in cols:
                        k[:, a, b, :, dy, dx] = w[:, :, ky, kx].T
        self.weight = torch.nn.Parameter(k.reshape(cout * 4, cin, 2, 2))
        self.bias = None if t.bias is None else torch.nn.Parameter(t.bias.detach().repeat_interleave(4))

    @staticmethod
    def fits(m: torch.nn.Module) -> bool:
        return (isinstance(m, torch.nn.ConvTranspose2d) and m.kernel_size == (3, 3) and m.stride == (2, 2)
                and m.padding == (1, 1) and m.output_padding == (1, 1) and m.groups == 1 and m.dilation == (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias), 2)


class PhaseConv(torch.nn.Module):
    """A stride-1 unpadded conv with few output channels (the student's 16 -> 3 RGB layer) as the
    equal stride-2 conv, one kernel larger, to 4x the channels (one per output pixel's row and
    column parity) and a pixel shuffle. ONNX Runtime's blocked convolutions pad output channels to
    a multiple of 8 or 16, so 3 channels cost as much as 16: 12 use the blocks, and the stride
    quarters the positions (bench/student.py times the forms). Needs even input sizes,
    which the student's (multiples of its size multiple, plus symmetric padding) always are."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        w = conv.weight.detach()                               # [C_out, C_in, kh, kw]
        cout, cin, kh, kw = w.shape
        k = w.new_zeros(cout, 2, 2, cin, kh + 1, kw + 1)       # [C_out, phase y, phase x, C_in, kh + 1, kw + 1]
        for a in range(2):
            for b in range(2):
                k[:, a, b, :, a:a + kh, b:b + kw] = w
        self.weight = torch.nn.Parameter(k.reshape(cout * 4, cin, kh + 1, kw + 1))
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().repeat_interleave(4))

    @staticmethod
    def fits(m: torch.nn.Module) -> bool:
        return (type(m) is torch.nn.Conv2d and m.out_channels <= 4 and m.stride == (1, 1) and m.padding == (0, 0)
                and m.groups == 1 and m.dilation == (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, stride=2), 2)


def export_form(model: torch.nn.Module, quantizable: bool = False) -> torch.nn.Module:
    """A copy of `model` as it is exported: its RGB layer as a PhaseConv and, for int8, every
    stride-2 transposed conv as a SubPixelUp. Same function, computed faster by ONNX Runtime."""
    model = copy.deepcopy(model)
    forms = [PhaseConv] + ([SubPixelUp] if quantizable else [])
    for name, m in list(model.named_modules()):
        form = next((f for f in forms if f.fits(m)), None)
        if form is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, form(m))
    return model


def export_graph(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int,
                 conditioned: bool = False) -> None:
    """Write `model` to the ONNX file `path` with the TorchScript exporter, traced on `example`
    ([1, 3, H, W]): input 'input' and output 'output', both with dynamic batch, height and width;
    `conditioned` adds the inputs 'style' (int64 [N]) and 'strength' (float32 [N])."""
    axes = {0: "batch", 2: "height", 3: "width"}
    args, names, dynamic = (example,), ["input"], {"input": axes, "output": axes}
    if conditioned:
        args += (torch.zeros(1, dtype=torch.int64), torch.ones(1))
        names += ["style", "strength"]
        dynamic |= {"style": {0: "batch"}, "strength": {0: "batch"}}
    # The TorchScript exporter: fast, and it keeps plain ONNX ops for every layer the students use.
    # Its warnings (instance norm exported with input statistics, which is what eval mode computes
    # too; constant folding of strided slices) are about choices that are right here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["output"],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)


def stable_norms(model: onnx.ModelProto, count: int) -> onnx.ModelProto:
    """A copy of `model` with its first `count` InstanceNormalization nodes (scale 1, bias 0: the
    students' affine-free norms) as LayerNormalization over (H, W), the same function. ONNX
    Runtime's CPU instance norm takes the variance in one pass (E[x^2] - E[x]^2), which loses
    digits where a channel's mean dwarfs its spread, as on the first layers' image-like activations
    of a smooth photo (the full student at 512 px misses the float32 parity limit there). Its
    LayerNormalization is exact but slower (bench/runtime.py times the export), so it is used only
    where needed."""
    model = copy.deepcopy(model)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    values |= {n.output[0]: onnx.numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value"}
    plain = [n for n in model.graph.node if n.op_type == "InstanceNormalization"
             and np.all(values.get(n.input[1], 0) == 1) and not np.any(values.get(n.input[2], 1))][:count]
    if plain:
        dtype = values[plain[0].input[1]].dtype           # float32, or float16 in an fp16 graph
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((1, 1), dtype), "stable_norm_scale"))
    for node in plain:
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        node.CopyFrom(onnx.helper.make_node("LayerNormalization", [node.input[0], "stable_norm_scale"],
                                            list(node.output), name=node.name, axis=2, epsilon=epsilon))
    return model


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    # keep_io_types: callers keep feeding float32; the casts sit at the graph's edges. The first and
    # last convolutions stay float32, as in mixed-precision training: they see the 8-bit photo and
    # make the 8-bit result, and keeping them halves the error at little cost.
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    model = convert_float_to_float16(model, keep_io_types=True, node_block_list=[convs[0], convs[-1]])
    _sort_topologically(model.graph)   # the converter appends its input casts after their consumers
    return model


def _sort_topologically(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ExportError(f"the fp16 graph has a cycle or a dangling input at node {pending[0].name}")
        for node in ready:
            known.update(node.output)
        ordered += ready
        pending = [n for n in pending if all(o not in known for o in n.output)]
    del graph.node[:]
    graph.node.extend(ordered)


def _parity_inputs(cfg: ExportConfig, res: int, multiple: int) -> dict[str, np.ndarray]:
    """Named input batches: random at the training size, random at another size, and real photos."""
    rng = np.random.default_rng(0)
    other = res + 2 * multiple if res <= 64 else res // 2
    inputs = {f"random {res}x{res}": rng.uniform(-1, 1, (2, 3, res, res)).astype(np.float32),
              f"random {other}x{res + multiple}": rng.uniform(-1, 1, (1, 3, other, res + multiple)).astype(np.float32)}
    for path in cfg.parity_images or (bundled_portrait(),):
        inputs[f"photo {Path(path).name}"] = quantize.load_batch(Path(path), res)
    return inputs


def parity_conditions(n: int, styles: int) -> tuple[np.ndarray, np.ndarray]:
    """(style int64 [n], strength float32 [n]) that a conditioned parity check feeds: every style
    in turn, strengths spread over [0, 1]."""
    return np.arange(n, dtype=np.int64) % styles, np.linspace(0.0, 1.0, n, dtype=np.float32)[::-1].copy()


def run_both(onnx_bytes: bytes, model: torch.nn.Module, inputs: dict[str, np.ndarray],
             styles: int = 0) -> dict[str, tuple]:
    """{name: (ONNX Runtime's output on CPU, PyTorch's)} for each named input batch; with `styles`,
    the conditioned model also gets parity_conditions."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    outputs = {}
    for name, x in inputs.items():
        feeds = {"input": x}
        if styles:
            feeds["style"], feeds["strength"] = parity_conditions(len(x), styles)
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        outputs[name] = session.run(["output"], feeds)[0], expected
    return outputs


def check_parity(outputs: dict[str, tuple], tolerance: float) -> dict[str, float]:
    """Max abs difference between ONNX Runtime and PyTorch per input (run_both); raises above `tolerance`."""
    diffs = {name: float(np.abs(got - expected).max()) for name, (got, expected) in outputs.items()}
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch on '{worst}': max abs diff "
                          f"{diffs[worst]:.2e} > {tolerance:.0e}",
                          hint="an op exported differently; try another --opset, or report it with the student file")
    return diffs


def triton_config(name: str, info: ModelInfo, max_batch_size: int, tensorrt: bool = False) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend: dynamic batching, GPU instances, dims [3, -1, -1]
    (and a conditioned model's style and strength, one value per image; tensorrt: through ORT's
    TensorRT execution accelerator, FP16)."""
    tensor = '  {{ name: "{}" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }}'
    inputs = [tensor.format(info.input_name)]
    if info.styles:
        inputs[0] += ","
        inputs += ['  { name: "style" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } },',
                   '  { name: "strength" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } }']
    return "\n".join([
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [", *inputs, "]",
        "output [", tensor.format(info.output_name), "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in _batch_sizes(max_batch_size))} ]",
        "  max_queue_delay_microseconds: 2000",
        "}",
        "instance_group [ { count: 1 kind: KIND_GPU } ]",
        *(TENSORRT_OPTIMIZATION if tensorrt else ()),
        "",
    ])


TENSORRT_OPTIMIZATION = (
    "optimization { execution_accelerators {",
    '  gpu_execution_accelerator: [ { name: "tensorrt"',
    '    parameters { key: "precision_mode" value: "FP16" }',
    '    parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ]',
    "} }",
)


def _batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch_size][-2:]
    return sizes or [max_batch_size]


def write_triton_repository(onnx_model: Path | bytes, repo: Path, name: str, info: ModelInfo,
                            max_batch_size: int, tensorrt: bool = False, storage_uri: str = "") -> Path:
    """Write `repo/name/config.pbtxt` and `repo/name/1/model.onnx` (the file `onnx_model`, or these
    bytes), the Python-backend models NAME_python and NAME_photo (distill/triton.py), and the KServe
    manifest REPO-kserve.yaml beside the repository; returns the ONNX model's folder."""
    folder = repo / name
    data = onnx_model if isinstance(onnx_model, bytes) else Path(onnx_model).read_bytes()
    write_bytes_atomic(folder / "1" / "model.onnx", data)
    write_bytes_atomic(folder / "config.pbtxt", triton_config(name, info, max_batch_size, tensorrt).encode())
    triton.write_python_models(repo, name, data, max_batch_size, info.input_name, info.output_name)
    triton.write_kserve_manifest(kserve_path(repo), name, storage_uri or f"pvc://toonify-fast/{name}")
    return folder


def kserve_path(repo: Path) -> Path:
    """Where the KServe manifest of the repository `repo` goes: beside it, REPO-kserve.yaml."""
    return repo.with_name(f"{repo.name}-kserve.yaml")


def _checked(graph: onnx.ModelProto) -> bytes:
    onnx.checker.check_model(graph, full_check=True)
    return graph.SerializeToString()


def parity_checked(graph: onnx.ModelProto, model: torch.nn.Module, inputs: dict[str, np.ndarray],
                    tolerance: float, styles: int = 0) -> tuple[bytes, dict[str, float], int]:
    """The graph as bytes, its parity per input, and how many norms had to be exported stable:
    none if parity holds, else the first two (the stem, where activations are still image-like),
    else all (stable_norms). Raises when even that is off by more than `tolerance`."""
    norms = sum(n.op_type == "InstanceNormalization" for n in graph.graph.node)
    for count in sorted({0, min(2, norms), norms}):
        data = _checked(stable_norms(graph, count))
        try:
            return data, check_parity(run_both(data, model, inputs, styles), tolerance), count
        except ExportError as e:
            if count == norms:
                raise
            note(f"{e.reason}; exporting {'the first 2' if count == 0 else 'all'} instance norms in ONNX Runtime's "
                 "exact (slower) form")


def _condition(cfg: ExportConfig, student: StudentInfo) -> tuple[int, float] | None:
    """(style index, strength) to fold into the model, or None to export the style and strength inputs."""
    if cfg.default_strength is not None and not student.styles:
        raise UsageError("--default-strength is for a conditioned student (trained on pairs with styles); this one "
                         "has a single style", cfg.student, hint="leave it out")
    if cfg.style is None and cfg.strength is None:
        return None
    if not student.styles:
        raise UsageError("--style and --strength are for a conditioned student (trained on pairs with styles); "
                         "this one has a single style", cfg.student, hint="leave them out")
    if cfg.style is None:
        raise UsageError("--strength is folded in with a style", cfg.student,
                         hint=f"add --style NAME, one of {', '.join(student.styles)}")
    if cfg.style not in student.styles:
        raise UsageError(f"no style {cfg.style!r} in this student", cfg.student,
                         hint=f"its styles: {', '.join(student.styles)}")
    strength = default_strength(cfg, student) if cfg.strength is None else cfg.strength
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"--strength must lie in [0, 1], got {strength}", hint="0 reconstructs the photo, 1 is the full style")
    return student.styles.index(cfg.style), strength


def default_strength(cfg: ExportConfig, student: StudentInfo) -> float:
    """The strength an exported model uses when none is asked for: --default-strength, else the student's."""
    value = student.default_strength if cfg.default_strength is None else cfg.default_strength
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--default-strength must lie in [0, 1], got {value}",
                         hint="0 reconstructs the photo, 1 is the full style")
    return float(value)


def export_student(cfg: ExportConfig) -> dict:
    """Export, check and write the student described by `cfg`; returns a report (paths, parity per input)."""
    if output_suffix(cfg.output, ".onnx") != ".onnx":
        raise UsageError("the output must end in .onnx", path=cfg.output)
    if cfg.fp16 and cfg.int8:
        raise UsageError("--fp16 and --int8 exclude each other")
    model, student = load_student(cfg.student)
    model, fold = model.eval().float(), _condition(cfg, student)
    if fold is not None:
        model = fold_condition(model, *fold)
    styles = len(student.styles) if fold is None else 0       # the graph's own style inputs
    if styles and cfg.int8:
        raise UsageError("--int8 calibrates a one-input model: fold a style into it", cfg.student,
                         hint=f"add --style {student.styles[0]} (and --strength S)")
    res, multiple = student.resolution, student.size_multiple
    precision = "fp16" if cfg.fp16 else "int8" if cfg.int8 else "fp32"
    calibration, held_out = quantize.split(quantize.calibration_images(cfg.calibration)) if cfg.int8 else ([], [])
    info = ModelInfo(
        input_name="input", output_name="output", resolution=res, size_multiple=multiple, preset=student.preset,
        teacher_base_sha256=student.teacher_base_sha256, teacher_blended_sha256=student.teacher_blended_sha256,
        exported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        toonify_fast_version=runtime.__version__, precision=precision,
        styles=",".join(student.styles) if styles else "", default_strength=default_strength(cfg, student),
        extra={**dict(cfg.extra_metadata),
               **({"style": student.styles[fold[0]], "strength": str(fold[1])} if fold is not None else {})})

    with tempfile.TemporaryDirectory() as tmp:
        graph_path = Path(tmp) / "student.onnx"
        # SubPixelUp does 16/9 the multiply-adds of a transposed conv: only worth it where it quantizes.
        export_graph(export_form(model, quantizable=cfg.int8), torch.zeros(1, 3, res, res), graph_path, cfg.opset,
                     conditioned=bool(styles))
        graph = onnx.load(str(graph_path))
    if cfg.fp16:
        graph = _to_fp16(graph)
    if cfg.int8:
        graph = quantize.quantize(graph, calibration, res)
    graph.doc_string = "toonify-fast student: photo face crop -> toon face crop"
    del graph.metadata_props[:]
    for key, value in info.to_metadata().items():
        graph.metadata_props.add(key=key, value=value)
    inputs = _parity_inputs(cfg, res, multiple) | {f"held-out {p.name}": quantize.load_batch(p, res) for p in held_out}
    report = {"output": str(cfg.output), "precision": precision, "metadata": info.to_metadata()}
    if cfg.int8:
        data = _checked(graph)
        outputs = run_both(data, model, inputs)
        # Random noise lies outside the calibrated ranges by design: real images decide.
        report["psnr"] = {name: quantize.psnr(*pair) for name, pair in outputs.items() if not name.startswith("random")}
        for name, score in report["psnr"].items():
            console.print(f"int8 {name}: PSNR {score:.1f} dB against float32 (limit {quantize.MIN_PSNR:.0f} dB)")
        quantize.check_quality(report["psnr"])
    else:
        data, report["parity"], report["stable_norms"] = parity_checked(graph, model, inputs, TOLERANCE[precision],
                                                                        styles)
        for name, diff in report["parity"].items():
            console.print(f"parity {precision} {name}: max abs diff {diff:.2e} (limit {TOLERANCE[precision]:.0e})")
    report["bytes"] = len(data)
    write_bytes_atomic(cfg.output, data)
    if cfg.triton is not None:
        # The bytes, not cfg.output read back: a pipe or device gives back nothing of what it was given.
        folder = write_triton_repository(data, cfg.triton, cfg.triton_name or cfg.output.stem,
                                         info, cfg.max_batch_size, cfg.triton_tensorrt, cfg.storage_uri)
        report["triton"] = str(folder)
        report["kserve"] = str(kserve_path(cfg.triton))
    return report
