import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.faces import FaceAligner, align
from runtime.images import read_image, write_image
from tests.conftest import ROOT
from tests.helpers import build_model, cli


def test_no_runtime_module_loads_torch_or_distill():
    modules = sorted(p.stem for p in (ROOT / "runtime").glob("*.py") if p.stem != "__init__")
    assert {"cli", "engine", "video", "videoio", "tracking", "motion", "stability"} <= set(modules)
    code = ("import importlib, sys; "
            f"[importlib.import_module('runtime.' + m) for m in {modules!r}]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'distill')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "distill" in out.stdout


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("model") / "invert.onnx", "invert", resolution=64)


def load(path):
    with Image.open(path) as im:
        return np.asarray(im)


def centre(box, rgb):
    left, top, right, bottom = box
    w, h = (right - left) // 4, (bottom - top) // 4
    return rgb[top + h:bottom - h, left + w:right - w, :3].astype(int)


def test_converts_one_face_two_faces_rgba_and_reports_no_face(tmp_path, model, photos_dir, capsys):
    names = ["obama.jpg", "two_people.jpg", "32bit.png", "dogs.jpg"]
    code, out, err = cli(capsys, *(photos_dir / n for n in names), "-o", tmp_path / "out", "--model", model)
    assert code == 1 and out == ""
    assert f"error: {photos_dir / 'dogs.jpg'}: no face found hint: if the image is already an aligned face, use --no-align" in err
    assert "3 converted, 1 failed, 4 faces" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["32bit_toon.png", "obama_toon.png", "two_people_toon.png"]
    aligner = FaceAligner()
    for name, faces in [("obama.jpg", 1), ("two_people.jpg", 2), ("32bit.png", 1)]:
        rgb, alpha = read_image(photos_dir / name)
        toon = load(tmp_path / "out" / f"{Path(name).stem}_toon.png")
        assert toon.shape[:2] == rgb.shape[:2]
        found = aligner.detect(rgb)
        assert len(found) == faces
        for face in found:       # the invert model: each face comes back as its negative
            assert np.abs(centre(face.box, toon) - (255 - centre(face.box, rgb))).mean() < 12
        assert (toon[-20:, :, :3] == rgb[-20:]).all()      # far below the faces: untouched
        if alpha is None:
            assert toon.ndim == 3 and toon.shape[2] == 3
        else:
            np.testing.assert_array_equal(toon[..., 3], alpha)


def test_image_beside_its_input_folders_and_globs(tmp_path, model, photos_dir, capsys):
    shutil.copy(photos_dir / "obama.jpg", tmp_path / "b.jpg")
    code, _, err = cli(capsys, tmp_path / "b.jpg", "-m", model)     # `toonify-fast IMAGE`: no `convert`
    assert code == 0 and (tmp_path / "b_toon.png").is_file()
    assert f"{tmp_path / 'b.jpg'} -> {tmp_path / 'b_toon.png'} (1 face)" in err
    shutil.copy(photos_dir / "obama.jpg", tmp_path / "a.jpg")
    code, _, err = cli(capsys, tmp_path, "-m", model)                # the folder: b_toon.png is not an input
    assert code == 0 and "2 converted, 0 failed, 2 faces" in err
    assert err.index("a.jpg ->") < err.index("b.jpg ->")
    code, _, err = cli(capsys, "convert", tmp_path / "a*.jpg", "-m", model, "-o", tmp_path / "g")
    assert code == 0 and [p.name for p in (tmp_path / "g").iterdir()] == ["a_toon.png"]


def test_crop_writes_the_aligned_toon_faces_largest_first(tmp_path, model, photos_dir, capsys):
    code, _, err = cli(capsys, photos_dir / "two_people.jpg", "--crop", "-o", tmp_path, "-m", model)
    assert code == 0 and "(2 faces)" in err
    rgb, _ = read_image(photos_dir / "two_people.jpg")
    faces = FaceAligner().detect(rgb)
    for i, face in enumerate(faces):
        np.testing.assert_array_equal(load(tmp_path / f"two_people_toon_{i}.png"), 255 - align(rgb, face.quad, 64))
    code, _, _ = cli(capsys, photos_dir / "two_people.jpg", "--crop", "--max-faces", "1", "-o", tmp_path / "one", "-m", model)
    assert code == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["two_people_toon_0.png"]


def test_no_align_converts_the_whole_image(tmp_path, model, capsys):
    y, x = np.mgrid[0:40, 0:48]
    rgb = np.stack([x * 5, y * 6, np.full_like(x, 90)], axis=2).astype(np.uint8)
    write_image(tmp_path / "face.png", rgb)
    code, _, err = cli(capsys, tmp_path / "face.png", "--no-align", "-o", tmp_path / "toon.webp", "-m", model)
    assert code == 0 and "(whole image)" in err
    toon = load(tmp_path / "toon.webp")
    assert toon.shape == rgb.shape and np.abs(toon.astype(int) - (255 - rgb)).mean() < 4


def test_bad_files_are_reported_and_the_batch_goes_on(tmp_path, model, photos_dir, capsys):
    shutil.copy(photos_dir / "obama.jpg", tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_text("not a photo")
    data = (photos_dir / "obama.jpg").read_bytes()
    (tmp_path / "c.jpg").write_bytes(data[:len(data) // 3])
    write_image(tmp_path / "d.png", np.zeros((100, 100, 3), np.uint8))
    code, _, err = cli(capsys, tmp_path, "-m", model, "--max-megapixels", "0.005", "-o", tmp_path / "out")
    assert code == 1 and "0 converted, 4 failed" in err         # a.jpg too is over 0.005 MP
    assert f"{tmp_path / 'a.jpg'}: 910x1137 is 1 MP, over the limit of 0.005 MP" in err
    code, _, err = cli(capsys, tmp_path, "-m", model, "-o", tmp_path / "out")
    assert code == 1 and "1 converted, 3 failed, 1 face" in err
    assert f"{tmp_path / 'b.jpg'}: not an image" in err
    assert f"{tmp_path / 'c.jpg'}: truncated or corrupt image" in err
    assert f"{tmp_path / 'd.png'}: no face found" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_toon.png"]


def test_unwritable_output_is_a_failure(tmp_path, model, photos_dir, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = cli(capsys, photos_dir / "obama.jpg", "-o", tmp_path / "file" / "x.png", "-m", model)
    assert code == 1 and f"{tmp_path / 'file' / 'x.png'}: cannot write it" in err


@pytest.mark.parametrize("args, message", [
    (["convert"], "Missing argument 'IMAGE'"),
    (["{photo}", "--colour", "red"], "No such option: --colour"),
    (["{tmp}/missing.jpg"], "{tmp}/missing.jpg: no such file or folder"),
    (["{tmp}/*.gif"], "no file matches '{tmp}/*.gif'"),
    (["{photo}", "--provider", "gpu"], "unknown provider 'gpu' hint: choose one of tensorrt, cuda, cpu, auto"),
    (["{photo}", "-o", "{photo}"], "{photo}: the output would overwrite the input {photo}"),
    (["{photo}", "{photo2}", "-o", "{tmp}/one.png"], "{tmp}/one.png: -o names one file but there are 2 inputs"),
    (["{photo}", "-m", "{tmp}/none.onnx"], "{tmp}/none.onnx: no such model file (--model) hint: build one with `make demo`"),
])
def test_bad_usage_exits_2(tmp_path, model, capsys, args, message):
    photo = tmp_path / "p.png"
    write_image(photo, np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "q.png", np.zeros((8, 8, 3), np.uint8))
    fill = {"photo": photo, "photo2": tmp_path / "q.png", "tmp": tmp_path}
    args = [a.format(**fill) for a in args] + ([] if "-m" in args else ["-m", model])
    code, _, err = cli(capsys, *args)
    assert code == 2 and message.format(**fill) in err, err
    assert load(photo).shape == (8, 8, 3)


def test_model_comes_from_the_environment_then_exports(tmp_path, model, photos_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOONIFY_FAST_MODEL", raising=False)
    photo = photos_dir / "obama.jpg"
    code, _, err = cli(capsys, photo, "-o", "out")
    assert code == 2 and "exports/toonify.onnx: no such model file (the default when neither --model nor" in err
    assert "make demo" in err and "toonify-fast distill export" in err
    monkeypatch.setenv("TOONIFY_FAST_MODEL", str(model))
    assert cli(capsys, photo, "-o", "env")[0] == 0
    monkeypatch.delenv("TOONIFY_FAST_MODEL")
    (tmp_path / "exports").mkdir()
    shutil.copy(model, tmp_path / "exports" / "toonify.onnx")
    assert cli(capsys, photo, "-o", "default")[0] == 0
    assert (tmp_path / "env" / "obama_toon.png").is_file() and (tmp_path / "default" / "obama_toon.png").is_file()


def test_info_prints_metadata_and_providers(tmp_path, model, capsys):
    code, out, _ = cli(capsys, "info", model)
    assert code == 0
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3}
    assert rows["resolution"] == "64" and rows["preset"] == "test-invert" and rows["toonify_fast.format"] == "1"
    assert "CPU" in rows["providers that start here"] and rows["auto runs on"].split()[0] in ("CPU", "CUDA")
    (tmp_path / "x.onnx").write_text("no")
    code, _, err = cli(capsys, "info", tmp_path / "x.onnx")
    assert code == 2 and f"{tmp_path / 'x.onnx'}: not an ONNX model" in err       # a bad model is bad usage
    assert cli(capsys, "info", tmp_path / "y.onnx")[0] == 2


def test_convert_help_explains_every_option(capsys):
    code, out, _ = cli(capsys, "convert", "--help")
    assert code == 0
    for option in ["--output", "--model", "--provider", "--batch-size", "--max-faces", "--crop", "--no-align",
                   "--max-megapixels", "TOONIFY_FAST_MODEL", "exports/toonify.onnx", "IMAGE_toon.png"]:
        assert option in out


def test_real_entry_point_exit_status(tmp_path, model, photos_dir):
    out = subprocess.run([sys.executable, "-m", "runtime.cli", photos_dir / "obama.jpg", photos_dir / "dogs.jpg",
                          "-m", model, "-o", tmp_path, "--provider", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert "1 converted, 1 failed, 1 face" in out.stderr and (tmp_path / "obama_toon.png").is_file()


def test_distill_without_the_extra_says_how_to_install_it():
    code = ("import sys; sys.modules['torch'] = None; from runtime.cli import main; "
            "main(['distill', 'blend', '--base', 'a.pkl', '--toon', 'b.pkl', '-o', 'c.safetensors'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "`toonify-fast distill` needs the training extra, which is not installed here (missing module: torch)" \
        in " ".join(out.stderr.split())
    assert "pip install 'toonify-fast[distill]'" in out.stderr
    assert "Traceback" not in out.stderr


def test_version(capsys):
    from runtime import __version__
    assert cli(capsys, "--version")[:2] == (0, f"toonify-fast {__version__}\n")


def test_help_writes_arguments_as_unix_usage_does(capsys):
    code, out, _ = cli(capsys, "convert", "--help")
    assert code == 0 and "Usage: toonify-fast convert [OPTIONS] IMAGE...\n" in out
    assert "\n  IMAGE...  Images, folders" in out and "{" not in out and "<list[str]>" not in out
    assert "  --crop  " in out.replace("--crop                  ", "--crop  ") and "<bool>" not in out
    assert "Usage: toonify-fast info [OPTIONS] MODEL\n" in cli(capsys, "info", "--help")[1]
    assert "Usage: toonify-fast video [OPTIONS] SOURCE\n" in cli(capsys, "video", "--help")[1]


def test_crop_with_an_output_file_and_one_face_writes_that_file(tmp_path, model, photos_dir, capsys):
    code, _, err = cli(capsys, photos_dir / "obama.jpg", "--crop", "-o", tmp_path / "face.png", "-m", model)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["face.png"]
    rgb, _ = read_image(photos_dir / "obama.jpg")
    np.testing.assert_array_equal(load(tmp_path / "face.png"), 255 - align(rgb, FaceAligner().detect(rgb)[0].quad, 64))
    code, _, err = cli(capsys, photos_dir / "two_people.jpg", "--crop", "-o", tmp_path / "two" / "faces.png", "-m", model)
    assert code == 0 and sorted(p.name for p in (tmp_path / "two").iterdir()) == ["faces_0.png", "faces_1.png"]


def test_a_video_as_a_photo_points_to_the_video_command(tmp_path, model, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    code, _, err = cli(capsys, clip, "-m", model)
    assert code == 1 and f"hint: a video? convert it with: toonify-fast video {clip} -o clip_toon.mp4" in err


def test_a_model_that_is_not_onnx_is_exit_2(tmp_path, photos_dir, capsys):
    (tmp_path / "bad.onnx").write_text("not a model")
    code, _, err = cli(capsys, photos_dir / "obama.jpg", "-m", tmp_path / "bad.onnx", "-o", tmp_path)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'bad.onnx'}: ONNX Runtime cannot load it: ")


def test_info_shows_what_starts_here(model, capsys):
    code, out, _ = cli(capsys, "info", model)
    assert code == 0
    from runtime.engine import LABELS, provider_status
    status = provider_status()
    starts = ", ".join(LABELS[p] for p, why in status.items() if not why)
    assert " ".join(f"providers that start here │ {starts}".split()) in " ".join(out.split())
    assert ("not here" in out) == any(status.values())


def readme_python() -> str:
    """The README's Python snippet (the first ```python block)."""
    text = (ROOT / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_snippet_runs_as_printed(tmp_path, model, photos_dir):
    (tmp_path / "exports").mkdir()
    shutil.copy(model, tmp_path / "exports" / "toonify.onnx")
    shutil.copy(photos_dir / "obama.jpg", tmp_path / "photo.jpg")
    code = readme_python()
    assert "read_image(" in code and "rgb" in code.split("read_image(")[0]     # rgb is defined before use
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    toon = read_image(tmp_path / "photo_toon.png")[0]
    rgb = read_image(tmp_path / "photo.jpg")[0]
    assert toon.shape == rgb.shape and not np.array_equal(toon, rgb)
    assert out.stdout == "1 face(s) -> photo_toon.png\n"
