"""Resolution-dependent blending: exact per-layer weights on toy state_dicts, the two limits on the
real 32 px fixture generator, architecture checks, and `distill blend` writing a loadable file."""
import math
import re

import pytest
import torch
from typer.testing import CliRunner

from distill.blend import (BlendConfig, BlendError, at_strength, blend_generators, blend_state_dicts,
                           block_weights, layer_weights, parse_block_weights)
from distill.checkpoint import file_sha256, load_generator, read_metadata
from distill.cli import app
from runtime.common import UsageError
from tests.conftest import FIXTURES
from tests.helpers import BASE, make_toon

TOY_KEYS = ["synthesis.b4.const", "synthesis.b4.conv1.weight", "synthesis.b4.conv1.noise_const",
            "synthesis.b8.conv0.affine.bias", "synthesis.b8.conv0.noise_const", "synthesis.b16.conv1.noise_strength",
            "synthesis.b32.torgb.weight", "mapping.fc0.weight", "mapping.w_avg"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    path = tmp_path_factory.mktemp("teachers") / "toon.safetensors"
    base, toon = make_toon(path)
    return base, toon, path


def toy_blend(cfg: BlendConfig) -> dict[str, float]:
    """Blend texture = 3 and structure = -1 everywhere; return y per key recovered from W = 4y - 1."""
    texture = {k: torch.full((2, 3), 3.0) for k in TOY_KEYS}
    structure = {k: torch.full((2, 3), -1.0) for k in TOY_KEYS}
    out = blend_state_dicts(texture, structure, layer_weights(TOY_KEYS, cfg))
    assert all(torch.all(texture[k] == 3) and torch.all(structure[k] == -1) for k in TOY_KEYS)  # inputs untouched
    assert all(torch.all(v == v.flatten()[0]) for v in out.values())
    return {k: (out[k].flatten()[0].item() + 1) / 4 for k in TOY_KEYS}


def test_hard_swap_layer_by_layer():
    y = toy_blend(BlendConfig(swap_res=8))
    assert y == {"synthesis.b4.const": 0.0, "synthesis.b4.conv1.weight": 0.0, "synthesis.b4.conv1.noise_const": 1.0,
                 "synthesis.b8.conv0.affine.bias": 0.0, "synthesis.b8.conv0.noise_const": 1.0,
                 "synthesis.b16.conv1.noise_strength": 1.0, "synthesis.b32.torgb.weight": 1.0,
                 "mapping.fc0.weight": 1.0, "mapping.w_avg": 1.0}
    y = toy_blend(BlendConfig(swap_res=8, mapping_from="toon"))
    assert [y[k] for k in ("synthesis.b4.conv1.noise_const", "synthesis.b8.conv0.noise_const",
                           "mapping.fc0.weight", "mapping.w_avg")] == [0.0] * 4
    assert y["synthesis.b32.torgb.weight"] == 1.0


def test_smooth_swap_layer_by_layer():
    # pos = log2(R) - 2, pos_swap = log2(16) - 2 + 0.5 = 2.5, width 0.5: y = 1 / (1 + exp(-(pos - 2.5) / 0.5))
    y = toy_blend(BlendConfig(swap_res=16, width=0.5))
    expected = {4: 0.0066928509, 8: 0.0474258732, 16: 0.2689414214, 32: 0.7310585786}
    for key, value in y.items():
        res = int(re.match(r"synthesis\.b(\d+)\.", key).group(1)) if key.startswith("synthesis") else None
        want = 1.0 if res is None or key.endswith("noise_const") else expected[res]
        assert value == pytest.approx(want, abs=1e-6), key
    weights = block_weights([4, 8, 16, 32], BlendConfig(swap_res=16, width=0.5))
    assert weights[16] + weights[32] == pytest.approx(1.0)     # the midpoint falls between b16 and b32
    for width in (0.01, 1e-6):   # width -> 0 is the hard swap (and exp() must not overflow on the way)
        sharp = block_weights([4, 8, 16, 32], BlendConfig(swap_res=16, width=width))
        assert sharp == pytest.approx({4: 0.0, 8: 0.0, 16: 0.0, 32: 1.0}, abs=1e-12)


def test_explicit_weights_and_callable():
    y = toy_blend(BlendConfig(weights=parse_block_weights("0,0.25,0.75,1")))
    assert [y[k] for k in TOY_KEYS[:7]] == [0.0, 0.0, 1.0, 0.25, 1.0, 0.75, 1.0]
    out = blend_state_dicts({"a": torch.tensor([2.0])}, {"a": torch.tensor([4.0])}, lambda key: 0.25)
    assert out["a"].item() == 0.25 * 2 + 0.75 * 4
    with pytest.raises(BlendError, match=r"3 per-block weights given, the model has 4 blocks \(b4, b8, b16, b32\)"):
        layer_weights(TOY_KEYS, BlendConfig(weights=(0, 0.5, 1)))


@pytest.mark.parametrize("kwargs, message", [
    ({"swap_res": 48}, "swap_res must be a power of two, got 48"),
    ({"width": 0.0}, "width must be a positive number of blocks, got 0.0"),
    ({"weights": (0.0, 1.5)}, r"per-block weights must lie in \[0, 1\], got 1.5"),
    ({"weights": (0.0, 1.0), "width": 1.0}, "explicit weights and a smooth width exclude each other"),
    ({"mapping_from": "both"}, "mapping_from must be 'base' or 'toon', got 'both'"),
])
def test_config_refuses_nonsense(kwargs, message):
    with pytest.raises(BlendError, match=message):
        BlendConfig(**kwargs)


def test_mismatched_state_dicts_name_the_first_difference():
    a = {"mapping.w_avg": torch.zeros(64), "synthesis.b4.const": torch.zeros(64, 4, 4)}
    with pytest.raises(BlendError) as e:
        blend_state_dicts(a, {**a, "synthesis.b4.const": torch.zeros(32, 4, 4)}, lambda k: 1.0)
    assert str(e.value).startswith("the models differ in architecture: synthesis.b4.const has shape (64, 4, 4) "
                                   "in the texture model and (32, 4, 4) in the structure model")
    with pytest.raises(BlendError, match="synthesis.b8.conv0.weight is in the structure model but not in the tex"):
        blend_state_dicts(a, {**a, "synthesis.b8.conv0.weight": torch.zeros(1)}, lambda k: 1.0)


def test_swap_below_every_block_is_the_base_and_above_every_block_the_toon(teachers):
    base, toon, _ = teachers
    z = torch.randn([3, base.z_dim], generator=torch.Generator().manual_seed(0))
    ws = base.mapping(z, truncation_psi=0.7)
    none = blend_generators(base, toon, BlendConfig(swap_res=2))
    assert torch.equal(none.synthesis(ws, noise_mode="const"), base.synthesis(ws, noise_mode="const"))
    every = blend_generators(base, toon, BlendConfig(swap_res=32, mapping_from="toon"))
    assert torch.equal(every(z, truncation_psi=0.7), toon(z, truncation_psi=0.7))
    # Base mapping and noise constants, toon synthesis weights: noise-free images are the toon's.
    every_base_mapping = blend_generators(base, toon, BlendConfig(swap_res=32))
    assert torch.equal(every_base_mapping.mapping(z, truncation_psi=0.7), ws)
    assert torch.equal(every_base_mapping.synthesis(ws, noise_mode="none"), toon.synthesis(ws, noise_mode="none"))
    # The reference swap at 8: b4 and b8 from the toon, b16 and b32 from the base.
    at8 = blend_generators(base, toon, BlendConfig(swap_res=8)).state_dict()
    sd_base, sd_toon = base.state_dict(), toon.state_dict()
    assert torch.equal(at8["synthesis.b8.conv1.weight"], sd_toon["synthesis.b8.conv1.weight"])
    assert torch.equal(at8["synthesis.b16.conv0.weight"], sd_base["synthesis.b16.conv0.weight"])
    assert not torch.equal(at8["synthesis.b8.conv1.weight"], sd_base["synthesis.b8.conv1.weight"])


def test_generators_of_other_architectures_are_refused(teachers):
    base, _, _ = teachers
    rosinality = load_generator(FIXTURES / "rosinality_32.pt")    # 32 channels everywhere, the base has 64
    with pytest.raises(BlendError) as e:
        blend_generators(base, rosinality, BlendConfig())
    assert str(e.value) == ("the models differ in architecture: synthesis.b4.const has shape (64, 4, 4) in the base "
                            "model and (32, 4, 4) in the toon model\n"
                            "  hint: blend a fine-tune with the model it was fine-tuned from")
    from distill.stylegan2 import Generator
    bigger = Generator(**{**base.init_kwargs, "img_resolution": 64})
    with pytest.raises(BlendError, match="img_resolution is 32 in the base model and 64 in the toon model"):
        blend_generators(base, bigger, BlendConfig())


def test_cli_blend_writes_a_loadable_safetensors_with_provenance(teachers, tmp_path):
    base, toon, toon_path = teachers
    out = tmp_path / "blended.safetensors"
    result = CliRunner().invoke(app, ["blend", "--base", str(BASE), "--toon", str(toon_path), "--swap-res", "16",
                                      "--width", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    G = load_generator(out)
    expected = blend_generators(base, toon, BlendConfig(swap_res=16, width=0.5)).state_dict()
    assert all(torch.equal(G.state_dict()[k], v) for k, v in expected.items())
    meta = read_metadata(out)["blend"]
    assert meta["base"] == {"file": BASE.name, "sha256": file_sha256(BASE)}
    assert meta["toon"] == {"file": "toon.safetensors", "sha256": file_sha256(toon_path)}
    assert meta["config"] == {"swap_res": 16, "width": 0.5, "weights": None, "mapping_from": "base", "strength": 1.0}
    assert meta["block_weights"]["b32"] == pytest.approx(1 / (1 + math.exp(-1)))


def test_cli_blend_refuses_a_bad_output_name(teachers, tmp_path):
    result = CliRunner().invoke(app, ["blend", "--base", str(BASE), "--toon", str(teachers[2]),
                                      "-o", str(tmp_path / "blended.pkl")])
    assert isinstance(result.exception, UsageError)
    assert str(result.exception) == (f"{tmp_path / 'blended.pkl'}: the blended model is written as .safetensors\n"
                                     "  hint: use -o blended.safetensors")
    assert not (tmp_path / "blended.pkl").exists()


def test_cli_blend_writes_the_blend_at_a_strength(teachers, tmp_path):
    base, toon, toon_path = teachers
    out = tmp_path / "blended.safetensors"
    result = CliRunner().invoke(app, ["blend", "--base", str(BASE), "--toon", str(toon_path), "--swap-res", "16",
                                      "--strength", "0.3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    # The written blend is the full blend and the base interpolated at 0.3, tensor by tensor.
    expected = at_strength(base.state_dict(), blend_generators(base, toon, BlendConfig(swap_res=16)).state_dict(), 0.3)
    got = load_generator(out).state_dict()
    assert all(torch.allclose(got[k], v, rtol=1e-5, atol=1e-6) for k, v in expected.items())    # float rounding
    assert any(float((got[k] - v).abs().max()) > 1e-3 for k, v in base.state_dict().items())
    meta = read_metadata(out)["blend"]
    assert meta["config"]["strength"] == 0.3
    assert meta["block_weights"] == {"b4": 0.7, "b8": 0.7, "b16": 0.7, "b32": 1.0}
    with pytest.raises(BlendError) as e:
        BlendConfig(strength=1.5)
    assert e.value.reason == "strength must lie in [0, 1], got 1.5"
    result = CliRunner().invoke(app, ["blend", "--base", str(BASE), "--toon", str(toon_path), "--strength", "2",
                                      "-o", str(tmp_path / "other.safetensors")])
    assert result.exit_code == 2 and not (tmp_path / "other.safetensors").exists()
