"""ADA: the augmentations (identity at p = 0, differentiable, a sample's transform fixed by its
generator) and the controller that moves p with the sign of D's outputs on reals."""
import torch

from distill.augment import AdaController, augment


def images(n=4, res=16, seed=0):
    return torch.rand([n, 3, res, res], generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_p_zero_is_the_identity_exactly():
    x = images()
    assert torch.equal(augment(x, 0.0, gens(4)), x)
    assert torch.equal(augment(x, 0.0), x)


def test_p_one_changes_every_sample_and_stays_differentiable():
    x = images().double().requires_grad_(True)
    y = augment(x, 1.0, gens(4))
    assert y.shape == x.shape and all(not torch.allclose(y[i], x[i]) for i in range(4))
    (grad,) = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape).double()).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda t: augment(t, 1.0, gens(1)), images(1, 6).double().requires_grad_(True),
                                    fast_mode=True)


def test_a_samples_transform_depends_only_on_its_generator():
    x = images()
    batch = augment(x, 0.7, gens(4, seed=5))
    again = augment(x, 0.7, gens(4, seed=5))
    assert torch.equal(batch, again)
    for i in range(4):   # alone, in a batch of one, it gets the same transform
        assert torch.allclose(augment(x[i:i + 1], 0.7, gens(1, seed=5 + i)), batch[i:i + 1], atol=1e-6)
    assert not torch.equal(augment(x, 0.7, gens(4, seed=9)), batch)


def test_some_samples_are_left_untouched_at_a_small_p():
    x = images(32)
    y = augment(x, 0.05, gens(32))
    kept = [torch.equal(y[i], x[i]) for i in range(32)]
    assert 0 < sum(kept) < 32


def test_ada_p_rises_while_reals_score_positive_and_falls_otherwise():
    ada = AdaController(target=0.6, batch=4, interval=4, kimg=0.1)   # a step of 4 * 4 / 100 = 0.16
    ps = []
    for logits in [torch.ones(4, 1)] * 8 + [-torch.ones(4, 1)] * 16:
        ada.accumulate(logits)
        ps.append(round(ada.update(), 6))
    assert ps[:8] == [0, 0, 0, 0.16, 0.16, 0.16, 0.16, 0.32]
    assert ps[8:16] == [0.32, 0.32, 0.32, 0.16, 0.16, 0.16, 0.16, 0.0] and ps[-1] == 0.0
    # Mostly positive but under the target (mean sign 0.5 < 0.6): less augmentation.
    ada = AdaController(target=0.6, batch=4, interval=4, kimg=0.1, p=0.5)
    for _ in range(4):
        ada.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))
        ada.update()
    assert round(ada.p, 6) == 0.34
    restored = AdaController(target=0.6, batch=4, interval=4, kimg=0.1)
    restored.load_state_dict(ada.state_dict())
    assert restored.p == ada.p and restored.steps == 4
