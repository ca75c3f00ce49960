"""Test teachers: the 32 px NVlabs fixture as base, and a perturbed copy standing in for a toon fine-tune."""
import torch

from distill.checkpoint import load_generator, save_generator
from tests.conftest import FIXTURES

BASE = FIXTURES / "nvlabs_sg2ada_32.pkl"


def make_toon(path, seed: int = 1):
    """A stand-in toon fine-tune: the fixture generator with every synthesis weight perturbed
    (noise constants kept, as a fine-tune keeps them), saved to `path`. Returns (base, toon)."""
    base, toon = load_generator(BASE), load_generator(BASE)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in toon.state_dict().items():
            if key.startswith("synthesis.") and not key.endswith(".noise_const"):
                t.add_(torch.randn(t.shape, generator=g) * 0.3 * (t.std() if t.numel() > 1 else 1))
    save_generator(toon, path)
    return base, toon
