import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from runtime.images import ImageError, grid_margins, hwc_to_nchw, image_grid, nchw_to_hwc, read_image, write_image


def test_conversion_round_trip_is_exact():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    x = hwc_to_nchw(images)
    assert x.shape == (2, 3, 5, 7) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    assert hwc_to_nchw(np.array([[[0, 255, 0]]], np.uint8)).ravel().tolist() == [-1.0, 1.0, -1.0]
    np.testing.assert_array_equal(nchw_to_hwc(x), images)


def test_conversion_clips_and_rejects_wrong_layout():
    assert nchw_to_hwc(np.full((1, 3, 1, 1), 3.0)).ravel().tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match=r"expected \[N, H, W, 3\] uint8"):
        hwc_to_nchw(np.zeros((1, 3, 4, 4), np.uint8))


def stripes(h=24, w=32):
    """Four vertical colour bands: any rotation or channel swap shows."""
    rgb = np.zeros((h, w, 3), np.uint8)
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]):
        rgb[:, i * w // 4:(i + 1) * w // 4] = colour
    return rgb


def test_rgba_png_round_trips_with_its_alpha(tmp_path):
    rgb = stripes()
    alpha = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    path = write_image(tmp_path / "a.png", rgb, alpha)
    got, got_alpha = read_image(path)
    np.testing.assert_array_equal(got, rgb)
    np.testing.assert_array_equal(got_alpha, alpha)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]       # no temporary file left


@pytest.mark.parametrize("suffix, exact", [(".bmp", True), (".png", True), (".webp", False), (".jpg", False)])
def test_formats_follow_the_extension(tmp_path, suffix, exact):
    rgb = stripes()
    path = write_image(tmp_path / f"x{suffix}", rgb, np.full((24, 32), 7, np.uint8))
    with Image.open(path) as im:
        assert im.format == Image.registered_extensions()[suffix]
    got, alpha = read_image(path)
    assert (alpha is not None) == (suffix in (".png", ".webp"))    # JPEG and BMP drop the alpha
    with Image.open(path) as im:
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))
    if exact:
        np.testing.assert_array_equal(got, rgb)
    else:
        assert np.abs(got.astype(int) - rgb).mean() < 12           # lossy, at quality 95


def test_exif_orientation_is_honoured(tmp_path):
    rgb = stripes()
    exif = Image.Exif()
    exif[0x0112] = 6                 # stored rotated: display turned 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
    got, _ = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(got, np.rot90(rgb, k=-1))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    im = Image.fromarray(stripes()).convert(mode)
    path = tmp_path / f"m.{'tif' if mode == 'CMYK' else 'png'}"
    im.save(path)
    got, alpha = read_image(path)
    assert got.shape == (24, 32, 3) and got.dtype == np.uint8
    assert (alpha is not None) == (mode == "LA")
    np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))


def test_palette_transparency_becomes_alpha(tmp_path):
    im = Image.fromarray(stripes()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    index = np.asarray(im)[0, 0]
    im.save(tmp_path / "t.png", transparency=int(index))
    _, alpha = read_image(tmp_path / "t.png")
    assert alpha[0, 0] == 0 and alpha[:, -1].min() == 255


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg")   # no ink but magenta + yellow: red
    got, _ = read_image(tmp_path / "c.jpg")
    assert got[..., 0].min() > 230 and got[..., 1:].max() < 25


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 32).astype(np.uint16)
    Image.fromarray(np.tile(values, (8, 1))).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    got, _ = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(got[0, :, 0], np.rint(values / 257).astype(np.uint8))
    assert (got[..., 0] == got[..., 2]).all() and got[0, -1, 0] == 255 and got[0, 16, 0] == 132


def _png_header_claiming(path, width, height):
    """A real PNG whose IHDR claims another size (with a valid CRC): only decoding would notice."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8                                # signature, then length + type of the first chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    bomb = _png_header_claiming(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ImageError) as e:
        read_image(bomb)
    assert str(e.value) == (f"{bomb}: more than 179 MP, over the limit of 80 MP\n"
                            "  hint: downscale it, or raise the limit (--max-megapixels)")
    # Between our limit and the size where Pillow refuses by itself, our check answers.
    with pytest.raises(ImageError, match=r"9000x9000 is 81 MP, over the limit of 80 MP"):
        read_image(_png_header_claiming(tmp_path / "big.png", 9000, 9000))
    write_image(tmp_path / "small.png", stripes())
    with pytest.raises(ImageError, match=r"32x24 is 0 MP, over the limit of 0.0005 MP"):
        read_image(tmp_path / "small.png", max_pixels=500)


def test_unreadable_files_name_the_file_and_reason(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    write_image(tmp_path / "full.jpg", stripes(200, 200))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    cases = {"notes.jpg": "not an image (or in a format Pillow cannot read)",
             "missing.png": "no such file", "cut.jpg": "truncated or corrupt image (image file is truncated"}
    for name, reason in cases.items():
        with pytest.raises(ImageError) as e:
            read_image(tmp_path / name)
        assert e.value.path == str(tmp_path / name) and e.value.reason.startswith(reason)


def test_write_refuses_unknown_formats_and_reports_unwritable_places(tmp_path):
    with pytest.raises(ImageError, match=r"x.toon: unknown image format '.toon'"):
        write_image(tmp_path / "x.toon", stripes())
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ImageError) as e:
        write_image(tmp_path / "file" / "x.png", stripes())
    assert e.value.reason.startswith("cannot write it") and e.value.path == str(tmp_path / "file" / "x.png")


def test_a_video_given_as_an_image_points_to_the_video_command(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    with pytest.raises(ImageError) as e:
        read_image(clip)
    assert str(e.value) == (f"{clip}: not an image (or in a format Pillow cannot read)\n"
                            f"  hint: a video? convert it with: toonify-fast video {clip} -o clip_toon.mp4")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "notes.txt")
    assert e.value.hint == "use JPEG, PNG, WebP, BMP or TIFF"      # TIFF is read too (IMAGE_SUFFIXES)


def tiles(n, size=16):
    return [np.full((size, size, 3), 40 * (i + 1), np.uint8) for i in range(n)]


def test_image_grid_labels_rows_and_columns():
    rows = [tiles(3), tiles(3)[::-1]]
    plain = image_grid(rows)
    assert plain.shape == (32, 48, 3) and np.array_equal(plain[:16, 16:32], rows[0][1])
    labels = dict(row_labels=["base", "toon"], col_labels=["seed 0", "seed 1", "seed 2"])
    grid = image_grid(rows, **labels)
    left, top = grid_margins(**labels)
    assert left > 20 and top > 8 and grid.shape == (top + 32, left + 48, 3)
    assert np.array_equal(grid[top:, left:], plain)                # the images are untouched
    assert (grid[:top, left:] < 100).any() and (grid[top:, :left] < 100).any()     # the names, in black
    assert (grid[:top, :left - 2] == 255).all()                    # on white (antialiasing may touch the edge)
    assert grid_margins(row_labels=["base"]) == (left, 0) and grid_margins() == (0, 0)
    assert np.array_equal(image_grid(rows, row_labels=["base", "toon"])[:, left:], plain)
    with pytest.raises(ValueError, match="2 labels for 3 columns"):
        image_grid(rows, col_labels=["a", "b"])
