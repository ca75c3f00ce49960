"""make demo's pieces that are quick to check: the labelled contact sheet and the next command it prints."""
import sys

import numpy as np

from distill.cli import own_command
from distill.demo import SHEET_ROWS, contact_sheet
from runtime.images import grid_margins, image_grid, read_image, resize
from tests.conftest import PHOTOS
from tests.helpers import build_model, make_pair_folder


def test_the_contact_sheet_labels_its_rows_and_the_photo(tmp_path):
    pairs = make_pair_folder(tmp_path / "pairs", count=1, val=6, res=32)
    model = build_model(tmp_path / "m.onnx", resolution=32)
    sheet_path = contact_sheet(pairs / "val", model, PHOTOS / "obama.jpg", PHOTOS / "obama.jpg", tmp_path / "sheet.png")
    sheet = read_image(sheet_path)[0]
    names = sorted(p.name for p in (pairs / "val" / "real").iterdir())
    real = [read_image(pairs / "val" / "real" / n)[0] for n in names]
    toon = [read_image(pairs / "val" / "toon" / n)[0] for n in names]
    grid = image_grid([real, toon, [255 - r for r in real]], tile=128, row_labels=list(SHEET_ROWS))
    left, _ = grid_margins(row_labels=list(SHEET_ROWS))
    assert left > 20 and np.array_equal(sheet[:3 * 128], grid)        # labelled rows: base, blended, student
    assert (sheet[:3 * 128, :left] < 100).any()
    np.testing.assert_array_equal(sheet[:128, left:left + 128], resize(real[0], 128, 128))
    _, top = grid_margins(col_labels=["photo", "toon"])
    bottom = sheet[3 * 128 + 8:]
    assert (bottom[:top] < 100).any() and (bottom[:top] == 255).mean() > 0.8   # "photo" and "toon" over the pair


def test_the_next_command_names_the_venv_script_when_it_is_not_on_path(monkeypatch, tmp_path):
    script = tmp_path / ".venv" / "bin" / "toonify-fast"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [".venv/bin/toonify-fast", "distill", "demo"])
    assert own_command() == ".venv/bin/toonify-fast"
    monkeypatch.setattr(sys, "argv", [str(script), "distill", "demo"])
    assert own_command() == ".venv/bin/toonify-fast"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert own_command() == "toonify-fast"
    monkeypatch.setattr(sys, "argv", ["/x/distill/__main__.py", "demo"])
    assert own_command() == "toonify-fast"
