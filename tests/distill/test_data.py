import numpy as np
import pytest
import torch
from PIL import Image

from distill.data import PairedDataset, PairFolderError

RES = 32


def make_pairs(root, n=6, size=48, same=True):
    """real/ and toon/ with n pairs of random images; the toon equals the real when `same`."""
    rng = np.random.default_rng(0)
    (root / "real").mkdir(parents=True)
    (root / "toon").mkdir()
    for i in range(n):
        # Smooth random images: a corner-to-corner ramp plus noise, so flips and shifts change them.
        ramp = np.linspace(0, 200, size)[None, :, None] + np.linspace(0, 55, size)[:, None, None]
        real = np.clip(ramp + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(real).save(root / "real" / f"{i:06d}.png")
        toon = real if same else 255 - real
        Image.fromarray(toon).save(root / "toon" / f"{i:06d}.png")
    return root


def test_items_are_tensors_in_range_and_deterministic(tmp_path):
    ds = PairedDataset(make_pairs(tmp_path, same=False), RES, seed=3)
    assert len(ds) == 6 and ds.skipped == 0
    real, toon = ds[2]
    assert real.shape == toon.shape == (3, RES, RES) and real.dtype == torch.float32
    assert real.min() >= -1 and real.max() <= 1
    # Item i of epoch e depends on (seed, e, i) only: not on the order of access or on other items.
    again = PairedDataset(tmp_path, RES, seed=3)
    _ = again[5], again[0]
    assert all(torch.equal(a, b) for a, b in zip(ds[2], again[2]))
    ds.set_epoch(1)
    assert not torch.equal(ds[2][1], again[2][1])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, RES, RES)


def test_geometry_is_identical_on_both_sides(tmp_path):
    ds = PairedDataset(make_pairs(tmp_path), RES, photometric=False, seed=1)
    plain = PairedDataset(tmp_path, RES, augment=False)
    moved = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            real, toon = ds[i]
            assert torch.equal(real, toon)  # flip/zoom/shift/rotation drawn once for both
            moved += not torch.equal(real, plain[i][0])
    assert moved >= 9  # the augmentation did change most items (p=0.5 flip, p=0.7 affine)


def test_photometric_changes_only_the_real_image(tmp_path):
    make_pairs(tmp_path)
    with_photo = PairedDataset(tmp_path, RES, seed=5)
    without = PairedDataset(tmp_path, RES, photometric=False, seed=5)
    changed = 0
    for i in range(len(with_photo)):
        (real, toon), (plain_real, plain_toon) = with_photo[i], without[i]
        assert torch.equal(toon, plain_toon)        # toon untouched, same geometry
        changed += (real - plain_real).abs().mean() > 0.01
    assert changed >= 4


def test_eval_resizes_with_antialiasing(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "toon").mkdir()
    # A one-pixel checkerboard, 4x larger than RES and not square: aliasing would keep black or white.
    board = ((np.indices((4 * RES, 6 * RES)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([board] * 3, -1)).save(tmp_path / "real" / "a.png")
    Image.fromarray(np.full((RES, RES, 3), 255, np.uint8)).save(tmp_path / "toon" / "a.jpg")
    real, toon = PairedDataset(tmp_path, RES, augment=False)[0]
    assert real.shape == toon.shape == (3, RES, RES)
    assert real.abs().max() < 0.01      # mid grey: every output pixel averages the pattern
    assert torch.equal(toon, torch.ones(3, RES, RES))


def test_corrupt_and_unmatched_files_are_named_and_skipped(tmp_path, capsys):
    make_pairs(tmp_path, n=4)
    (tmp_path / "real" / "000001.png").write_bytes(b"not an image")
    good = (tmp_path / "toon" / "000002.png").read_bytes()
    (tmp_path / "toon" / "000002.png").write_bytes(good[: len(good) // 2])   # truncated PNG
    Image.open(tmp_path / "toon" / "000000.png").save(tmp_path / "toon" / "000005.jpg")
    Image.open(tmp_path / "real" / "000000.png").save(tmp_path / "real" / "000005.jpg")
    good = (tmp_path / "real" / "000005.jpg").read_bytes()
    (tmp_path / "real" / "000005.jpg").write_bytes(good[: len(good) // 2])   # truncated JPEG
    Image.new("RGB", (8, 8)).save(tmp_path / "real" / "000077.png")          # no toon
    Image.new("RGB", (8, 8)).save(tmp_path / "toon" / "000003.jpg")          # stem used twice
    Image.new("RGB", (8, 8)).save(tmp_path / "real" / ".000004.partial-x1.png")  # a write in progress
    (tmp_path / "real" / "notes.txt").write_text("ignored")
    ds = PairedDataset(tmp_path, RES)
    assert [real.stem for real, _ in ds.pairs] == ["000000"]
    assert [p.name for p in ds.unreadable] == ["000001.png", "000002.png", "000005.jpg"]
    assert [p.relative_to(tmp_path).as_posix() for p in ds.unmatched] == [
        "real/000003.png", "real/000077.png", "toon/000003.jpg", "toon/000003.png"]
    assert ds.skipped == 7
    err = capsys.readouterr().err
    assert "4 unmatched image(s), skipped" in err and "real/000077.png: no toon image with this stem" in err
    assert "real/000003.png: several toon images have this stem" in err
    assert "toon/000003.jpg: another toon image has the same stem" in err
    assert "3 unreadable image(s), skipped" in err and "real/000001.png: cannot read" in err
    assert "toon/000002.png: cannot read" in err and "real/000005.jpg: cannot read" in err
    assert "partial" not in err


def test_a_file_broken_after_the_scan_is_named(tmp_path):
    ds = PairedDataset(make_pairs(tmp_path, n=2), RES)
    (tmp_path / "toon" / "000001.png").write_bytes(b"overwritten")
    with pytest.raises(PairFolderError, match=r"toon/000001.png: not an image .*\n  hint: delete this pair"):
        ds[1]


def test_empty_missing_and_unmatched_folders_raise(tmp_path):
    with pytest.raises(PairFolderError, match=r"nowhere: pair folder not found\n  hint: a pair folder holds real/STEM"):
        PairedDataset(tmp_path / "nowhere", RES)
    (tmp_path / "real").mkdir()
    (tmp_path / "samples").mkdir()
    with pytest.raises(PairFolderError, match=r": no toon/ folder in it \(found: real/, samples/\)"):
        PairedDataset(tmp_path, RES)
    (tmp_path / "toon").mkdir()
    with pytest.raises(PairFolderError, match=r"no usable pair: real/ has 0 image\(s\), toon/ has 0, "
                                              r"0 stem\(s\) in common, 0 unreadable file\(s\)\n  hint: "):
        PairedDataset(tmp_path, RES)
    Image.new("RGB", (8, 8)).save(tmp_path / "real" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "toon" / "b.png")
    with pytest.raises(PairFolderError, match=r"real/ has 1 image\(s\), toon/ has 1, 0 stem\(s\) in common"):
        PairedDataset(tmp_path, RES)
