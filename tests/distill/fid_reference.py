"""The reference features that distill/inception.py must reproduce: pytorch-fid's own network on
the same weights.

    python -m tests.distill.fid_reference DIR      # rewrites tests/distill/fid_reference.npz

DIR holds pytorch-fid 0.3.0 and torchvision 0.28.0 (`pip install --no-deps --target DIR ...`).
pytorch-fid's `InceptionV3([3])` (its FID Inception, resize and normalisation on) is built with
the weights of tests.helpers.fake_inception_state in place of the download it would make (none
is possible here), then run on seeded uint8 images scaled to [0, 1] as pytorch-fid takes them.
The file holds the uint8 images and the 2048-d features of each.

torchvision's PyPI wheel here is built for CUDA torch, so its compiled operators do not load
against the CPU torch; only its Python model code is imported (inception.py and what it
imports), which needs none of them.
"""
from __future__ import annotations

import importlib
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("fid_reference.npz")


def _torchvision_models(folder: Path):
    """torchvision's model code from `folder` without its package __init__ (which loads the operators)."""
    package = types.ModuleType("torchvision")
    package.__path__, package.__version__ = [str(folder / "torchvision")], "0.28.0"
    models = types.ModuleType("torchvision.models")
    models.__path__ = [str(folder / "torchvision" / "models")]
    sys.modules.update({"torchvision": package, "torchvision.models": models})
    package.models = models
    inception = importlib.import_module("torchvision.models.inception")
    models.inception, models.inception_v3, models.Inception3 = inception, inception.inception_v3, inception.Inception3


def main(folder: Path) -> None:
    sys.path.insert(0, str(folder))
    _torchvision_models(folder)
    import torch
    import pytorch_fid.inception as pytorch_fid

    from tests.helpers import fake_inception_state
    with tempfile.TemporaryDirectory() as tmp:
        state = torch.load(fake_inception_state(Path(tmp) / "inception.pt"), weights_only=True)
    pytorch_fid.load_state_dict_from_url = lambda *args, **kwargs: state
    net = pytorch_fid.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    images = torch.randint(0, 256, (4, 3, 48, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        features = net(images.float() / 255)[0].flatten(1).numpy()
    np.savez_compressed(OUT, images=images.numpy(), features=features)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
