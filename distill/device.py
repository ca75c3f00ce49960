"""Which torch device a stage runs on: one resolver for every command's `--device`.

    device = resolve_device("auto")      # cuda (cuda:LOCAL_RANK under torchrun) when present, else cpu
"""
from __future__ import annotations

import os

import torch

from runtime.common import UsageError
from runtime.options import setting


def device_setting():
    """The `device` setting of every stage that runs a network."""
    return setting("auto", "auto (CUDA when present; cuda:LOCAL_RANK under torchrun), cpu, cuda, cuda:1, ...")


def resolve_device(spec: str) -> torch.device:
    """'auto' -> cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu; or the device named."""
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {spec} asked for, but no CUDA device is available", hint="use --device auto or cpu")
    return device
