from pathlib import Path

import numpy as np
import pytest

from runtime.common import ToonifyError
from runtime.engine import Toonifier
from runtime.faces import FaceAligner, align, paste_back
from runtime.images import read_image, write_image
from runtime.photos import expand_inputs, plan_outputs, toonify_photo
from tests.helpers import build_model


def test_toonify_photo_is_align_run_paste_back(tmp_path, photos_dir):
    toonifier = Toonifier(build_model(tmp_path / "m.onnx", "invert", resolution=64), provider="cpu")
    aligner = FaceAligner()
    rgb, _ = read_image(photos_dir / "two_people.jpg")
    out, faces = toonify_photo(toonifier, aligner, rgb)
    expected = rgb
    for face in aligner.detect(rgb):
        expected = paste_back(expected, 255 - align(rgb, face.quad, 64), face.quad)
    assert len(faces) == 2
    np.testing.assert_array_equal(out, expected)
    whole, none = toonify_photo(toonifier, None, rgb[:64, :64])
    assert none is None and np.abs(whole.astype(int) - (255 - rgb[:64, :64])).max() == 0


def test_expand_inputs_sorts_folders_skips_outputs_and_duplicates(tmp_path):
    for name in ["b.png", "a.jpg", "a_toon.png", "a_toon_1.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert expand_inputs([str(tmp_path), str(tmp_path / "b.png")]) == [tmp_path / "a.jpg", tmp_path / "b.png"]
    assert expand_inputs([str(tmp_path / "*.png")]) == [tmp_path / "a_toon.png", tmp_path / "a_toon_1.png",
                                                       tmp_path / "b.png"]     # a glob is taken as typed
    with pytest.raises(ToonifyError, match="no images in this folder") as e:
        expand_inputs([str(tmp_path / "sub")])
    assert e.value.exit_code == 2


def test_plan_outputs_refuses_two_inputs_onto_one_file(tmp_path):
    a, b = tmp_path / "x.jpg", tmp_path / "x.png"
    assert plan_outputs([a], None) == [tmp_path / "x_toon.png"]
    assert plan_outputs([a], tmp_path / "out") == [tmp_path / "out" / "x_toon.png"]
    assert plan_outputs([a], tmp_path / "toon.jpg") == [tmp_path / "toon.jpg"]
    with pytest.raises(ToonifyError) as e:
        plan_outputs([a, b], None)
    assert e.value.reason == f"{a} and {b} would both be written here" and e.value.exit_code == 2
    write_image(tmp_path / "y.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ToonifyError, match="the output would overwrite the input"):
        plan_outputs([Path(tmp_path / "y.png")], tmp_path / "." / "y.png")
