"""KID and FID: against closed forms and a direct numpy computation on fixed numbers; the FID
Inception built from a file with the real names and shapes, its features against pytorch-fid's
own network on the same weights (fid_reference.npz), and refused with the exact reason."""
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.inception import InceptionError, features, fid, kid, load_inception
from tests.helpers import fake_inception_state


def test_fid_matches_the_closed_form_of_known_gaussians():
    # Diagonal Gaussians: FID = |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200_000, 3)) * [1.0, 2.0, 3.0] + [0.0, 1.0, 0.0]
    b = rng.standard_normal((200_000, 3)) * [2.0, 2.0, 1.0] + [1.0, 0.0, 0.0]
    assert fid(a, b) == pytest.approx(2.0 + 1.0 + 0.0 + 4.0, abs=0.05)
    assert abs(fid(a, a)) < 1e-8


def test_fid_matches_a_direct_computation_on_fixed_numbers():
    a = np.array([[0.0, 1.0], [2.0, 0.5], [1.0, 3.0], [4.0, 1.0]])
    b = np.array([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0], [1.5, 1.5], [2.0, 2.5]])
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S_a S_b with real non-negative eigenvalues
    m = s_a @ s_b
    direct = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a) + np.trace(s_b) \
        - 2 * np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    assert fid(a, b) == pytest.approx(direct, rel=1e-10)


def test_kid_matches_a_straightforward_unbiased_mmd():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3

    def k(x, y):
        return (np.dot(x, y) / 5 + 1) ** 3
    m = 12   # subsets of all 12: every subset is a permutation, so the subset draws do not matter
    xx = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(b[i], a[j]) for i in range(m) for j in range(m)) / (m * m)
    assert kid(a, b, num_subsets=3) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert kid(a, a + 3.0) > 1.0


def test_inception_loads_real_names_and_gives_2048_features(tmp_path):
    net = load_inception(fake_inception_state(tmp_path / "pt_inception.pth"))
    x = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    f = features(net, x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and f.std() > 0
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(features(net, u8), features(net, u8.float() / 127.5 - 1))


def test_features_match_pytorch_fids_own_network_on_the_same_weights(tmp_path):
    """fid_reference.npz holds what pytorch-fid 0.3.0's InceptionV3 computes with these weights
    (tests/distill/fid_reference.py says how it was made)."""
    reference = np.load(Path(__file__).with_name("fid_reference.npz"))
    net = load_inception(fake_inception_state(tmp_path / "pt_inception.pth"))
    images = torch.from_numpy(reference["images"])
    for x in (images, images.float() / 127.5 - 1):
        np.testing.assert_allclose(features(net, x).numpy(), reference["features"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind, reason", [
    ("drop", "Mixed_7c.branch_pool.conv.weight is in the FID Inception but not in the file"),
    ("reshape", "Conv2d_1a_3x3.conv.weight has shape (32, 3, 3, 3) in the FID Inception and "
                "(32, 3, 3, 1) in the file"),
    ("damaged", "it is not a readable torch state dict"),
    ("missing", "no such file")])
def test_a_wrong_inception_file_is_refused_with_the_reason(tmp_path, kind, reason):
    path = tmp_path / "pt_inception.pth"
    if kind == "drop":
        fake_inception_state(path, drop="Mixed_7c.branch_pool.conv.weight")
    elif kind == "reshape":
        fake_inception_state(path, reshape="Conv2d_1a_3x3.conv.weight")
    elif kind == "damaged":
        path.write_bytes(b"not a torch file")
    with pytest.raises(InceptionError) as err:
        load_inception(path)
    assert err.value.reason.startswith(reason) and err.value.path == str(path)
    assert "pt_inception-2015-12-05" in err.value.hint
