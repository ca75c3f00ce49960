"""Projection (the original Toonify path) and `compare`: a teacher render projects back to a latent
that reconstructs it, the blended model renders that latent, missing VGG weights stop the run with
a clear message, and the student is compared end to end on a real photo."""
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distill.checkpoint import load_generator
from distill.cli import app
from distill.evaluate import psnr
from distill.export import ExportConfig, export_student
from distill.losses import MissingWeightsError, find_vgg_weights
from distill.pairs import seed_latents
from distill.project import COMPARE_COLUMNS, FeatureDistance, ProjectConfig, noise_maps, project_files, project_image
from distill.runs import StudentInfo, save_student
from distill.translator import PRESETS, build_generator
from runtime.images import grid_margins, hwc_to_nchw, nchw_to_hwc, read_image, write_image
from tests.conftest import PHOTOS
from tests.helpers import BASE, fake_vgg_state, make_toon

STEPS = 150


@pytest.fixture(scope="module")
def G():
    return load_generator(BASE)


def _unit(u8: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(hwc_to_nchw(u8)).double() + 1) / 2


def test_projection_reconstructs_a_teacher_render(G, tmp_path):
    # The target: the fixture's render of seed 1 at psi 0.7 (stored noise), as the 8-bit image a user has.
    with torch.no_grad():
        ws = G.mapping(seed_latents([1], G.z_dim), None, truncation_psi=0.7)
        target = nchw_to_hwc(G.synthesis(ws, noise_mode="const").numpy())[0]
        mean_image = nchw_to_hwc(G.synthesis(G.mapping.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1)).numpy())[0]
    write_image(tmp_path / "seed1.png", target)
    cfg = ProjectConfig(base=BASE, blended=BASE, images=(tmp_path / "seed1.png",), output=tmp_path / "out",
                        steps=STEPS, vgg=False, align=False, device="cpu")
    [result] = project_files(cfg)

    projected = read_image(tmp_path / "out" / "seed1_projected.png")[0]
    recon_db, mean_db = (float(psnr(_unit(x), _unit(target))[0]) for x in (projected, mean_image))
    print(f"\nPSNR vs target after {STEPS} steps: projection {recon_db:.2f} dB, w_avg image {mean_db:.2f} dB")
    assert recon_db >= mean_db + 3
    assert result["psnr"] == pytest.approx(recon_db)
    # The target written is the crop itself (no alignment, already at 32 px).
    assert np.array_equal(read_image(tmp_path / "out" / "seed1_target.png")[0], target)
    # The "blended" model is the base here: it must render the same latent and noise to the same image.
    assert np.array_equal(read_image(tmp_path / "out" / "seed1_toon.png")[0], projected)
    assert np.load(tmp_path / "out" / "seed1_w.npy").shape == (1, G.w_dim)
    report = json.loads((tmp_path / "out" / "project.json").read_text())
    assert report["loss"] == "pixel MSE (--no-vgg)" and report["results"] == [result]
    assert report["config"]["steps"] == STEPS and report["config"]["images"] == [str(tmp_path / "seed1.png")]


def test_project_image_wplus_shapes_and_leaves_the_generator_alone(G):
    before = {k: v.clone() for k, v in noise_maps(G).items()}
    target = torch.zeros(1, 3, 32, 32)
    cfg = ProjectConfig(base=BASE, blended=BASE, images=(), output=BASE.parent, steps=5, wplus=True, vgg=False)
    ws, noise = project_image(G, target, cfg)
    assert ws.shape == (1, G.num_ws, G.w_dim) and not ws.requires_grad
    assert not torch.equal(ws[0, 0], ws[0, -1])                     # w+: the layers moved apart
    assert {k: v.shape for k, v in noise.items()} == {k: v.shape for k, v in before.items()}
    for v in noise.values():                                        # renormalised after every step
        assert abs(float(v.mean())) < 1e-5 and float(v.square().mean()) == pytest.approx(1, abs=1e-4)
    assert all(torch.equal(v, before[k]) for k, v in noise_maps(G).items())
    again, _ = project_image(G, target, cfg)
    assert torch.equal(ws, again)                                   # seeded: the same run twice
    with pytest.raises(ValueError, match=r"target must be \[1, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        project_image(G, torch.zeros(1, 3, 64, 64), cfg)


def test_perceptual_distance_with_local_vgg16_weights(G, tmp_path):
    weights = tmp_path / "vgg16-test.pth"
    torch.save(fake_vgg_state("vgg16"), weights)    # random weights in torchvision's layout: a test fixture only
    distance = FeatureDistance(weights)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(distance(x, distance.features(x))) == 0
    # Unit-normalised features: each tap contributes at most 4 (two opposite unit vectors per position).
    assert 0 < float(distance(y, distance.features(x))) <= 4 * 5
    cfg = ProjectConfig(base=BASE, blended=BASE, images=(), output=tmp_path, steps=3, vgg=True, vgg_weights=weights)
    ws, _ = project_image(G, x, cfg, distance)
    assert torch.isfinite(ws).all()


def test_missing_vgg_weights_stop_the_projection(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["project", "--base", str(BASE), "--blended", str(BASE), "-o", str(tmp_path / "out"),
                                      "--no-align", "--device", "cpu", str(PHOTOS / "obama.jpg")])
    assert isinstance(result.exception, MissingWeightsError)
    with pytest.raises(MissingWeightsError) as expected:
        find_vgg_weights("vgg16")
    assert str(result.exception) == str(expected.value)       # the loss module's message, unchanged
    cache = "hub/checkpoints/vgg16-397923af.pth"
    assert str(result.exception).startswith("no VGG16 weights found (the perceptual loss needs pretrained ImageNet "
                                            "weights; random ones would be meaningless); looked in: "
                                            f"{tmp_path}/torch/{cache}, {tmp_path}/home/.cache/torch/{cache}\n")
    assert "--vgg-weights PATH" in str(result.exception) and "--no-vgg" in str(result.exception)
    assert not (tmp_path / "out").exists()                    # stopped before any work


@pytest.fixture(scope="module")
def student_onnx(tmp_path_factory):
    """A random-init lite student at 32 px, exported as `distill export` does."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("student")
    save_student(build_generator("lite"), folder / "student.pt", StudentInfo(PRESETS["lite"], "lite", 32))
    export_student(ExportConfig(student=folder / "student.pt", output=folder / "student.onnx",
                                parity_images=(PHOTOS / "obama.jpg",)))
    return folder / "student.onnx"


def test_compare_on_a_real_photo_end_to_end(student_onnx, tmp_path):
    make_toon(tmp_path / "toon.safetensors")
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, ["compare", "--student", str(student_onnx), "--base", str(BASE),
                                      "--blended", str(tmp_path / "toon.safetensors"), "-o", str(out),
                                      "--steps", "10", "--no-vgg", "--device", "cpu",
                                      str(PHOTOS / "obama.jpg"), str(PHOTOS / "dogs.jpg")])
    assert result.exit_code == 1, result.output       # dogs.jpg has no human face: skipped, and said so
    assert result.stdout.strip() == str(out / "compare.json")
    labelled, _ = read_image(out / "obama_compare.png")
    left, top = grid_margins(col_labels=list(COMPARE_COLUMNS))
    assert left == 0 and top > 8 and labelled.shape == (top + 32, 4 * 32, 3)
    assert (labelled[:top] < 128).any() and (labelled[:top] > 128).any()   # black names on white
    sheet = labelled[top:]
    report = json.loads((out / "compare.json").read_text())
    obama, dogs = report["results"]
    assert dogs == {"image": str(PHOTOS / "dogs.jpg"),
                    "skipped": "no face found (pass --no-align if it is already an aligned face)"}
    assert all(math.isfinite(obama[k]) for k in ("psnr", "ssim", "projection_seconds", "student_ms"))
    assert -1 <= obama["ssim"] <= 1 and obama["side_by_side"] == str(out / "obama_compare.png")
    assert report["mean"]["psnr"] == obama["psnr"] and report["mean"]["ssim"] == obama["ssim"]
    # The tiles are the projection's own outputs (at 32 px, the teacher's resolution too).
    for i, name in enumerate(("target", "projected", "toon")):
        assert np.array_equal(sheet[:, 32 * i:32 * (i + 1)], read_image(out / f"obama_{name}.png")[0])
    toon = read_image(out / "obama_toon.png")[0]
    assert obama["psnr"] == pytest.approx(float(psnr(_unit(sheet[:, 96:]), _unit(toon))[0]))
