"""`distill align`: faces of the shared photos aligned as the runtime aligns them, duplicates and faceless
images listed in align.json, --mirror, and --no-align's resize of square images (non-square ones skipped)."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from distill.align import NO_FACE, AlignConfig, align_folder
from runtime.common import ToonifyError
from runtime.faces import FaceAligner, align
from runtime.images import read_image, resize
from tests.helpers import cli

RES = 64


def load(path):
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def aligned(photos_dir, tmp_path_factory):
    """One run over one face, two faces, no face, and a byte copy of the first photo."""
    copy = tmp_path_factory.mktemp("inputs") / "obama_copy.jpg"
    shutil.copyfile(photos_dir / "obama.jpg", copy)
    images = (photos_dir / "obama.jpg", photos_dir / "two_people.jpg", photos_dir / "dogs.jpg", copy)
    out = tmp_path_factory.mktemp("aligned")
    return images, out, align_folder(AlignConfig(images=images, output=out, res=RES))


def test_writes_every_face_as_the_runtime_crops_it(aligned):
    (obama, two, _, _), out, summary = aligned
    assert sorted(p.name for p in out.iterdir()) == ["align.json", "obama_0.png", "two_people_0.png", "two_people_1.png"]
    assert summary.written == [out / "obama_0.png", out / "two_people_0.png", out / "two_people_1.png"]
    aligner = FaceAligner()
    for source, count in ((obama, 1), (two, 2)):
        rgb = read_image(source)[0]
        faces = aligner.detect(rgb)
        assert len(faces) == count
        for i, face in enumerate(faces):
            written = load(out / f"{source.stem}_{i}.png")
            assert written.shape == (RES, RES, 3)
            assert np.array_equal(written, align(rgb, face.quad, RES))


def test_lists_no_face_and_duplicates_in_align_json(aligned):
    (obama, _, dogs, copy), out, summary = aligned
    skipped = [{"image": str(dogs), "reason": NO_FACE},
               {"image": str(copy), "reason": f"duplicate of {obama}: the same pixels"}]
    assert "cartoon" in NO_FACE and "--no-align" in NO_FACE
    assert json.loads((out / "align.json").read_text()) == {
        "res": RES, "align": True, "mirror": False, "skipped": skipped,
        "written": ["obama_0.png", "two_people_0.png", "two_people_1.png"]}
    assert summary.skipped == skipped and summary.duplicates == 1 and summary.failed == 1


def align_cli(capsys, *args):
    return cli(capsys, "distill", "align", *args)


def test_cli_mirror_doubles_and_exit_status(photos_dir, tmp_path, capsys):
    code, stdout, err = align_cli(capsys, photos_dir / "obama.jpg", "-o", tmp_path / "a", "--res", 32, "--mirror")
    assert (code, stdout) == (0, f"{tmp_path / 'a' / 'align.json'}\n")
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == ["obama_0.png", "obama_0_mirror.png"]
    crop = load(tmp_path / "a" / "obama_0.png")
    assert crop.shape == (32, 32, 3) and np.array_equal(load(tmp_path / "a" / "obama_0_mirror.png"), crop[:, ::-1])
    assert "2 images of 32x32 from 1 input in" in err
    code, _, err = align_cli(capsys, photos_dir / "dogs.jpg", "-o", tmp_path / "b", "--res", 32)
    assert code == 1 and f"skipped {photos_dir / 'dogs.jpg'}: no face found" in err


def test_no_align_resizes_square_images_and_skips_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, [100, 100, 3], dtype=np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(square).save(tmp_path / "a" / "face.png")
    Image.fromarray(square).save(tmp_path / "b" / "same.bmp")      # the same pixels in another format
    Image.fromarray(square[:, ::-1]).save(tmp_path / "b" / "face.png")  # another image with the same name
    Image.fromarray(square[:80]).save(tmp_path / "b" / "wide.png")
    cutout = np.dstack([square, np.where(np.arange(100) < 50, 255, 0).astype(np.uint8)[None].repeat(100, 0)])
    Image.fromarray(cutout, "RGBA").save(tmp_path / "b" / "cutout.png")
    images = (tmp_path / "a" / "face.png", tmp_path / "b" / "same.bmp", tmp_path / "b" / "face.png",
              tmp_path / "b" / "wide.png", tmp_path / "b" / "cutout.png")
    out = tmp_path / "out"
    summary = align_folder(AlignConfig(images=images, output=out, res=RES, align=False, mirror=True))
    assert [p.name for p in summary.written] == ["face.png", "face_mirror.png", "face-2.png", "face-2_mirror.png",
                                                 "cutout.png", "cutout_mirror.png"]
    assert np.array_equal(load(out / "face.png"), resize(square, RES, RES))
    assert np.array_equal(load(out / "face-2.png"), resize(np.ascontiguousarray(square[:, ::-1]), RES, RES))
    # Transparent parts become white.
    opaque = square.copy()
    opaque[:, 50:] = 255
    assert np.array_equal(load(out / "cutout.png"), resize(opaque, RES, RES))
    assert summary.skipped == [
        {"image": str(images[1]), "reason": f"duplicate of {images[0]}: the same pixels"},
        {"image": str(images[3]), "reason": "not square (100x80): --no-align takes already aligned, square faces; "
                                            "crop it square first"}]
    assert summary.failed == 1


def test_usage_errors(tmp_path, photos_dir):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(ToonifyError, match="is in the output folder, where it could be overwritten") as e:
        align_folder(AlignConfig(images=(tmp_path / "x.png",), output=tmp_path, res=RES, align=False))
    assert e.value.exit_code == 2
    with pytest.raises(ToonifyError, match="--res must be at least 4, got 0"):
        align_folder(AlignConfig(images=(photos_dir / "obama.jpg",), output=tmp_path / "o", res=0))
