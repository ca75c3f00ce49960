"""PSNR and SSIM against closed forms, a hand-computed window and scikit-image; the held-out
evaluation of a student and its report."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity
from typer.testing import CliRunner

from distill.cli import app
from distill.evaluate import evaluate_student, psnr, ssim
from distill.train import TrainConfig, train
from tests.helpers import make_pair_folder

C1, C2 = 0.01 ** 2, 0.03 ** 2


def test_psnr_of_identical_images_is_infinite_and_of_an_offset_is_closed_form():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.8
    assert torch.isinf(psnr(x, x)).all()
    # A constant offset c gives MSE = c^2: PSNR = 20 log10(1 / c) = 20 dB for c = 0.1, 40 dB for 0.01.
    torch.testing.assert_close(psnr(x + 0.1, x), torch.tensor([20.0, 20.0], dtype=torch.float64))
    torch.testing.assert_close(psnr(x, x - 0.01), torch.tensor([40.0, 40.0], dtype=torch.float64))


def test_ssim_of_identical_and_of_constant_images():
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim(x, x), torch.tensor([1.0], dtype=torch.float64))
    # Flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.7
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    torch.testing.assert_close(ssim(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)),
                               torch.tensor([expected], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 10, 30), torch.zeros(1, 1, 10, 30))


def window_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one 11x11 window written out from the definition: Gaussian-weighted means,
    variances and covariance (sigma 1.5), then the formula."""
    r = np.arange(11) - 5
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()
    return (2 * mx * my + C1) * (2 * cxy + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))


def test_ssim_matches_the_definition_window_by_window():
    rng = np.random.default_rng(2)
    x, y = rng.random((13, 13)), rng.random((13, 13))
    # 13x13 has 3x3 window positions; SSIM is the mean of their values.
    expected = np.mean([window_ssim(x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]) for i in range(3) for j in range(3)])
    got = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])
    assert abs(got.item() - expected) < 1e-12


def test_ssim_matches_scikit_image_on_colour_images():
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 32, 40))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    got = ssim(torch.from_numpy(x), torch.from_numpy(y))
    # Wang et al.'s settings in scikit-image: Gaussian weights, population covariance, data range 1.
    expected = [structural_similarity(a, b, channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for a, b in zip(x, y)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


class Negate(torch.nn.Module):
    def forward(self, x):
        return -x


def test_evaluate_student_scores_student_and_identity(tmp_path):
    pairs = make_pair_folder(tmp_path / "pairs", count=1, val=5)
    # Toons are the negated photos: a student that negates is perfect, the identity is far off.
    report = evaluate_student(Negate(), pairs / "val", 32, batch_size=2)
    assert report["count"] == 5 and report["res"] == 32
    assert report["student"] == {"psnr": float("inf"), "ssim": 1.0}
    real = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in
                        sorted((pairs / "val" / "real").iterdir())]).permute(0, 3, 1, 2).double() / 255
    assert report["identity"]["psnr"] == pytest.approx(psnr(real, 1 - real).mean().item(), abs=1e-9)
    assert report["identity"]["ssim"] == pytest.approx(ssim(real, 1 - real).mean().item(), abs=1e-9)
    assert report["lpips"] == {"computed": False, "reason": "the lpips package is not installed (pip install lpips)"}


def test_eval_command_writes_a_json_report(tmp_path):
    pairs = make_pair_folder(tmp_path / "pairs", count=4, val=3)
    run = train(TrainConfig(pairs=pairs, output=tmp_path / "runs", res=32, steps=1, gan=False, vgg=False, l1_weight=1.0,
                            workers=0)).run_dir
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["eval", "--student", str(run / "student-ema.pt"), "--pairs",
                                      str(pairs / "val"), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["count"] == 3 and report["res"] == 32 and report["step"] == 1 and report["preset"] == "lite"
    assert set(report["student"]) == set(report["identity"]) == {"psnr", "ssim"}
    assert -1 < report["student"]["ssim"] < 1 and report["identity"]["psnr"] < 10
    printed = CliRunner().invoke(app, ["eval", "--student", str(run / "student-ema.pt"), "--pairs",
                                       str(pairs / "val"), "--device", "cpu"])
    assert json.loads(printed.stdout)["student"] == report["student"]
