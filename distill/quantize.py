"""Static int8 quantization of an exported student for CPU serving, calibrated on real images and
checked against the float32 PyTorch student.

    toonify-fast distill export --student runs/00000-lite-256/student-ema.pt -o exports/toonify-int8.onnx \\
        --int8 --calibration pairs/

ONNX Runtime's QDQ format: per-channel int8 weights and uint8 activations, whose ranges come from
running the float32 graph on calibration images (the 99.999th percentile of each activation, so
one outlier pixel does not waste the 8 bits). The first and last convolutions stay float32: they
see and make the image itself, cost little, and quantizing them costs the most quality. On CPUs
with VNNI (AVX512-VNNI, AVX-VNNI) the int8 convolutions run several times faster than float32 ones
(bench/runtime.py measures the whole student).

int8 changes the numbers, so the float32 parity limit does not apply: the export is checked
instead by PSNR against PyTorch on real images the calibration did not see, and refused below
MIN_PSNR dB.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from distill import evaluate
from runtime.common import ToonifyError, UsageError, console
from runtime.images import hwc_to_nchw, list_images, read_image, resize

MIN_PSNR = 30.0           # dB, on outputs in [-1, 1], against the float32 PyTorch student
CALIBRATION_IMAGES = 32   # at most this many images (evenly spread over the ones given) calibrate
HELD_OUT_EVERY = 5        # every 5th of them is held out to check quality instead


class QuantizeError(ToonifyError):
    pass


def calibration_images(paths: tuple[Path, ...]) -> list[Path]:
    """Image files from `paths`: images, folders of images, or pair folders (their real/ side and
    val/real/), sorted by name, at most CALIBRATION_IMAGES evenly spread."""
    hint = "pass --calibration with the pair folder the student was trained on, or a folder of aligned face photos"
    if not paths:
        raise UsageError("--int8 needs calibration images", hint=hint)
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            folders = [f for f in (path / "real", path / "val" / "real") if f.is_dir()] or [path]
            found += [p for f in folders for p in list_images(f)[0]]
        else:
            raise UsageError("no such file or folder", path, hint)
    if len(found) < 2:
        raise UsageError(f"found {len(found)} calibration image(s) in {', '.join(map(str, paths))}; "
                         "at least 2 are needed (one is held out to check quality)", hint=hint)
    picks = np.unique(np.linspace(0, len(found) - 1, min(len(found), CALIBRATION_IMAGES)).round().astype(int))
    return [found[i] for i in picks]


def split(images: list[Path]) -> tuple[list[Path], list[Path]]:
    """(calibration, held out): every HELD_OUT_EVERY-th image held out, at least one of each."""
    held = images[HELD_OUT_EVERY - 1::HELD_OUT_EVERY] or images[-1:]
    return [p for p in images if p not in held], held


def load_batch(path: Path, res: int) -> np.ndarray:
    """An image file -> [1, 3, res, res] float32 in [-1, 1]."""
    rgb, _ = read_image(path)
    return hwc_to_nchw(resize(rgb, res, res))


def quantize(graph: onnx.ModelProto, images: list[Path], res: int) -> onnx.ModelProto:
    """The float32 student graph -> its QDQ int8 form, calibrated on `images` at res x res."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.paths = iter(images)

        def get_next(self):
            path = next(self.paths, None)
            return None if path is None else {graph.graph.input[0].name: load_batch(path, res)}

    convs = [n for n in graph.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    # The first conv and the last with all that follows it stay float32 (with a quantized output
    # ONNX Runtime would quantize the last conv's weights itself, at run time), and so do the pads
    # and ReLUs feeding them: quantizing those would only add Q/DQ pairs at full resolution.
    keep = (_feeders(graph.graph, convs[0]) | _feeders(graph.graph, convs[-1])
            | _downstream(graph.graph, convs[-1]))
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)        # per-tensor chatter from the quantizer
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plain, prepared, out = (Path(tmp) / name for name in ("plain.onnx", "prepared.onnx", "int8.onnx"))
            onnx.save(graph, str(plain))
            quant_pre_process(str(plain), str(prepared))
            # The calibrator prints its progress: keep it out of the user's way.
            with console.status(f"calibrating int8 ranges on {len(images)} image(s)"), \
                    contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=sorted(keep),
                    # Norms keep their own float32 statistics; quantizing their inputs only adds Q/DQ pairs.
                    op_types_to_quantize=["Conv", "ConvTranspose", "Add", "Relu", "Pad", "DepthToSpace"],
                    extra_options={"CalibPercentile": 99.999, "CalibTensorRangeSymmetric": False,
                                   "CalibMaxIntermediateOutputs": 4})
            return onnx.load(str(out))
    finally:
        logging.getLogger().setLevel(quiet)


def _downstream(graph: onnx.GraphProto, node: onnx.NodeProto) -> set[str]:
    """The names of `node` and of every node that uses its output, directly or not."""
    names, tensors = {node.name}, set(node.output)
    for n in graph.node:                               # the exporter writes nodes in topological order
        if tensors.intersection(n.input):
            names.add(n.name)
            tensors.update(n.output)
    return names


def _feeders(graph: onnx.GraphProto, node: onnx.NodeProto) -> set[str]:
    """The names of `node` and of the Pad and Relu nodes right before it, back to any other op."""
    makers = {o: n for n in graph.node for o in n.output}
    names, current = {node.name}, makers.get(node.input[0])
    while current is not None and current.op_type in ("Pad", "Relu"):
        names.add(current.name)
        current = makers.get(current.input[0])
    return names


def psnr(got: np.ndarray, expected: np.ndarray) -> float:
    """dB between batches of images in [-1, 1] ([N, 3, H, W]): the worst image's (distill.evaluate.psnr)."""
    return float(evaluate.psnr(evaluate.unit(got), evaluate.unit(expected)).min())


def check_quality(scores: dict[str, float]) -> None:
    """Refuse the export when the worst real image is below MIN_PSNR."""
    worst = min(scores, key=scores.get)
    if scores[worst] < MIN_PSNR:
        raise QuantizeError(f"int8 output is too far from float32 on '{worst}': PSNR {scores[worst]:.1f} dB "
                            f"< {MIN_PSNR:.0f} dB",
                            hint="calibrate on images like the ones it will serve (--calibration pairs/), "
                                 "or export float32")
