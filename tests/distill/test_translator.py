import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from distill.translator import (PRESETS, GlobalGenerator, MultiscaleDiscriminator, StudentConfig, build_generator,
                                count_flops)

TINY = StudentConfig(ngf=4, n_downsampling=2, n_blocks=1)


def test_full_preset_is_pix2pixhd_default_size():
    with torch.device("meta"):  # 182M parameters: shapes only, no memory
        full = build_generator("full")
    assert PRESETS["full"] == StudentConfig(arch="global", ngf=64, n_downsampling=4, n_blocks=9, norm="instance")
    # pix2pixHD's default generator has 182M parameters (ours drop the biases that instance norm cancels).
    assert 182.0e6 < sum(p.numel() for p in full.parameters()) < 183.0e6
    widths = [m.out_channels for m in full.net.down if isinstance(m, torch.nn.Conv2d)]
    assert widths == [128, 256, 512, 1024]
    # 217.5G multiply-adds at 512x512; the ~550 GFLOPs often quoted counts transposed convs at output size.
    assert count_flops(full, 512, 512) / 1e9 == pytest.approx(435.07, abs=0.01)


def test_count_flops_matches_hand_count():
    model = build_generator(StudentConfig(ngf=4, n_downsampling=1, n_blocks=1, norm="none"))
    h = w = 8
    macs = (3 * 4 * 49 * h * w            # 7x7 head
            + 4 * 8 * 9 * (h // 2) * (w // 2)  # stride-2 down
            + 2 * 8 * 8 * 9 * (h // 2) * (w // 2)  # residual block
            + 8 * 4 * 9 * (h // 2) * (w // 2)  # transposed conv: one 3x3 scatter per input pixel
            + 4 * 3 * 49 * h * w)         # 7x7 to RGB
    assert count_flops(model, h, w) == 2 * macs


@pytest.mark.parametrize("cfg", [TINY, StudentConfig(ngf=4, n_downsampling=2, n_blocks=2, norm="batch",
                                                     block="separable", upsample="resize"),
                                 StudentConfig(arch="local", ngf=4, n_downsampling=1, n_blocks=1, norm="none")])
def test_generator_shapes_range_and_size_multiple(cfg):
    torch.manual_seed(0)
    model = build_generator(cfg).eval()
    m = cfg.size_multiple
    assert m == 2 ** (cfg.n_downsampling + (cfg.arch == "local"))
    x = torch.rand(2, 3, 2 * m, 3 * m) * 2 - 1
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and y.abs().max() < 1
    with pytest.raises(ValueError, match=rf"H and W must be multiples of {m}"):
        model(torch.zeros(1, 3, m + 2, m))


def test_presets_and_overrides():
    lite = PRESETS["lite"]
    assert lite.arch == "global" and lite.size_multiple == 8
    assert build_generator("lite", norm="batch").cfg == StudentConfig(**{**lite.__dict__, "norm": "batch"})
    with pytest.raises(ValueError, match="unknown student preset 'huge'"):
        build_generator("huge")
    with pytest.raises(ValueError, match=r"StudentConfig.norm must be one of \('instance', 'batch', 'none'\)"):
        StudentConfig(norm="layer")


def test_local_enhancer_takes_a_trained_global_generator():
    # pix2pixHD trains the global generator first, then wraps it (at 2x ngf) in the local enhancer.
    local_cfg = StudentConfig(arch="local", ngf=4, n_downsampling=2, n_blocks=1)
    trained_global = GlobalGenerator(local_cfg, ngf=8)
    local = build_generator(local_cfg)
    local.net.global_net.load_state_dict(trained_global.state_dict())
    assert torch.equal(local.net.global_net.head[1].weight, trained_global.head[1].weight)


def test_multiscale_discriminator_features():
    D = MultiscaleDiscriminator(ndf=8, n_layers=3, num_D=3)
    outs = D(torch.zeros(2, 6, 64, 64))
    assert len(outs) == 3 and all(len(scale) == 5 for scale in outs)
    assert [f.shape[1] for f in outs[0]] == [8, 16, 32, 64, 1]
    # Each scale sees the input average-pooled by 2 once more: 64 -> 32 -> 16 pixels.
    assert [scale[0].shape[-1] for scale in outs] == [33, 17, 9]
    assert outs[0][-1].shape == (2, 1, 11, 11)
    wide = MultiscaleDiscriminator(ndf=64, n_layers=4, num_D=1)
    assert wide.scales[0].layers[4][0].out_channels == 512  # channel cap


def _export(model: torch.nn.Module, path) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": axes, "output": axes},
                          opset_version=17, dynamo=False)


@pytest.mark.parametrize("cfg", [PRESETS["lite"], StudentConfig(arch="local", ngf=4, n_downsampling=2, n_blocks=1,
                                                                block="separable", upsample="resize", norm="batch")])
def test_exports_to_plain_onnx_with_dynamic_shapes(cfg, tmp_path):
    torch.manual_seed(0)
    model = build_generator(cfg).eval()
    _export(model, tmp_path / "student.onnx")
    graph = onnx.load(str(tmp_path / "student.onnx"))
    onnx.checker.check_model(graph)
    assert {o.domain for o in graph.opset_import} == {""} and graph.opset_import[0].version == 17
    # Standard ONNX operators only (no ATen fallbacks or custom domains), the convs among them.
    ops = {(n.domain, n.op_type) for n in graph.graph.node}
    assert all(domain == "" and onnx.defs.has(op) for domain, op in ops), ops
    assert {("", "Conv"), ("", "Pad"), ("", "Tanh")} <= ops
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    m = cfg.size_multiple
    for shape in [(1, 3, 32, 32), (3, 3, 2 * m, 5 * m)]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(["output"], {"input": x})[0]
        assert got.shape == shape
        np.testing.assert_allclose(got, expected, atol=1e-4)
