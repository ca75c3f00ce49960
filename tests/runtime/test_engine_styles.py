"""Conditioned models at run time: the style and strength inputs, the metadata that lists the
styles, the one-input (folded) model's refusals, and the command-line options."""
import numpy as np
import pytest
from PIL import Image

from runtime.cli import main
from runtime.common import UsageError
from runtime.engine import EngineError, ModelInfo, Toonifier, read_model_info
from runtime.images import hwc_to_nchw, nchw_to_hwc, write_image
from runtime.video import VideoConfig, convert_video, parse_strength_ramp, strength_ramp
from tests.helpers import build_conditioned_model, build_model


def faces(n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def expected(u8, style, strength):
    """What build_conditioned_model computes, as the uint8 images a user gets."""
    s = np.asarray(strength, np.float32).reshape(-1, 1, 1, 1)
    return nchw_to_hwc(hwc_to_nchw(u8) * (np.float32(1) - np.float32(2) * s) + np.float32(0.5) * style)


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory):
    return build_conditioned_model(tmp_path_factory.mktemp("styles") / "styles.onnx", default_strength=0.25)


def test_metadata_lists_the_styles_and_old_models_still_load(conditioned, tmp_path):
    info = read_model_info(conditioned)
    assert info.style_names == ("cartoon", "ukiyoe") and info.default_strength == 0.25
    assert info.to_metadata()["styles"] == "cartoon,ukiyoe" and info.to_metadata()["default_strength"] == "0.25"
    plain = ModelInfo(input_name="input", output_name="output", resolution=32)
    assert "styles" not in plain.to_metadata() and "default_strength" not in plain.to_metadata()
    old = read_model_info(build_model(tmp_path / "old.onnx"))
    assert old.style_names == () and old.default_strength == 1.0 and old.extra == {}


def test_run_takes_a_style_by_name_or_index_and_a_strength_per_run_or_per_image(conditioned):
    t = Toonifier(conditioned, "cpu", batch_size=2)
    x = faces()
    assert t.styles == ("cartoon", "ukiyoe")
    np.testing.assert_array_equal(t.run(x), expected(x, 0, 0.25))                  # first style, default strength
    np.testing.assert_array_equal(t.run(x, style="ukiyoe", strength=0.0), expected(x, 1, 0.0))
    np.testing.assert_array_equal(t.run(x, style=1, strength=1.0), expected(x, 1, 1.0))
    ramp = [0.0, 0.5, 1.0]                                                         # across batches of 2
    np.testing.assert_array_equal(t.run(list(x), style="cartoon", strength=ramp), expected(x, 0, ramp))
    np.testing.assert_array_equal(t.run(x, style="cartoon", strength=0.0), x)     # strength 0: the photo itself


@pytest.mark.parametrize("kwargs, error, reason", [
    ({"style": "pixar"}, UsageError, "no style 'pixar' in this model"),
    ({"style": 2}, UsageError, "style index 2 is out of range"),
    ({"strength": 1.5}, UsageError, "strength must lie in [0, 1], got 1.5"),
    ({"strength": [0.1, 0.2]}, EngineError, "strength must be one value or one per image (3), got shape (2,)"),
])
def test_bad_conditions_are_refused(conditioned, kwargs, error, reason):
    with pytest.raises(error) as e:
        Toonifier(conditioned, "cpu").run(faces(), **kwargs)
    assert e.value.reason == reason


def test_a_one_input_model_takes_only_the_style_folded_into_it(tmp_path):
    plain = Toonifier(build_model(tmp_path / "plain.onnx", "invert"), "cpu")
    x = faces(1)
    np.testing.assert_array_equal(plain.run(x), 255 - x)
    with pytest.raises(UsageError) as e:
        plain.run(x, style="ukiyoe")
    assert e.value.reason == "this model has no style or strength input"
    meta = {**ModelInfo(input_name="input", output_name="output", resolution=32).to_metadata(),
            "style": "ukiyoe", "strength": "0.6"}
    folded = Toonifier(build_model(tmp_path / "folded.onnx", "invert", metadata=meta), "cpu")
    np.testing.assert_array_equal(folded.run(x, style="ukiyoe", strength=0.6), 255 - x)
    with pytest.raises(UsageError) as e:
        folded.run(x, strength=0.2)
    assert e.value.reason == "this model has no style or strength input: it has ukiyoe at strength 0.6 built in"


def test_video_strength_is_one_value_or_a_ramp_over_the_frames():
    assert parse_strength_ramp("0.6") == (0.6, 0.6) and parse_strength_ramp("0:1") == (0.0, 1.0)
    with pytest.raises(UsageError) as e:
        parse_strength_ramp("0:2")
    assert e.value.reason == "cannot read --strength '0:2'"
    ramp = strength_ramp((0.0, 1.0), 5)
    assert [ramp(i) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert strength_ramp(None, None)(3) is None and strength_ramp((0.4, 0.4), None)(7) == 0.4
    with pytest.raises(UsageError):
        strength_ramp((0.0, 1.0), None)


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code or 0, out.out, " ".join(out.err.split())


def test_cli_converts_at_a_style_and_strength_and_info_lists_the_styles(conditioned, tmp_path, capsys):
    rgb = faces(1)[0]
    write_image(tmp_path / "face.png", rgb)
    code, _, err = cli(capsys, tmp_path / "face.png", "--no-align", "-m", conditioned, "--style", "ukiyoe",
                       "--strength", "1", "-o", tmp_path / "toon.png")
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "toon.png")), expected(rgb[None], 1, 1.0)[0])
    code, _, err = cli(capsys, tmp_path / "face.png", "--no-align", "-m", conditioned, "--style", "pixar")
    assert code == 2 and "no style 'pixar' in this model" in err and "its styles: cartoon, ukiyoe" in err
    code, out, _ = cli(capsys, "info", conditioned)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3}
    assert code == 0 and rows["styles"] == "cartoon,ukiyoe" and rows["default_strength"] == "0.25"


def test_video_runs_at_the_models_default_strength_or_ramps_it_over_the_frames(conditioned, photos_dir, tmp_path):
    """Three frames of the shared clip with a face, as aligned toon crops (PNG frames, exact)."""
    def crops(name, strength=None):
        cfg = VideoConfig(photos_dir / "short_hamilton_clip.mp4", tmp_path / name, conditioned, provider="cpu",
                          start=4.0, max_frames=3, crop=True, style="ukiyoe", strength=strength)
        report = convert_video(cfg)
        assert report["faces_per_frame"] == [1, 1, 1]
        return [np.asarray(Image.open(p)) for p in sorted((tmp_path / name).iterdir())]

    at = {s: crops(f"at{s * 100:.0f}", (s, s)) for s in (0.0, 0.25, 0.5, 1.0)}
    default = crops("default")
    assert all(np.array_equal(a, b) for a, b in zip(default, at[0.25]))              # the model's 0.25
    assert not any(np.array_equal(a, b) for a, b in zip(default, at[1.0]))
    ramp = crops("ramp", (0.0, 1.0))                                                  # 0, 0.5, 1 over 3 frames
    assert all(np.array_equal(ramp[i], at[s][i]) for i, s in enumerate((0.0, 0.5, 1.0)))
    assert not np.array_equal(ramp[2], at[0.0][2])
