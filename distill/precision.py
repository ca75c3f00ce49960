"""Mixed precision for `distill finetune --precision`: the autocast G's and D's forward passes run
under, and the gradient scaler fp16 needs.

    check_precision("bf16", device)            # fp16 off CUDA is a UsageError, raised before any work
    with autocast("bf16", device):
        loss = F.softplus(-D(G(z)).float()).mean()

fp32 runs exactly what a run without mixed precision runs (no autocast at all). bf16 has fp32's
exponent range, so its gradients need no scaling and it works on the CPU as well as on CUDA. fp16
underflows small gradients without a torch.amp.GradScaler, one per network (G's and D's losses
differ in size), whose state a checkpoint keeps. The regularisers (R1, path length) differentiate
their outputs with respect to the inputs and square the result: they run in fp32 whatever the
precision, as NVlabs keeps them safe.
"""
from __future__ import annotations

import contextlib

import torch

from runtime.common import UsageError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse fp16 where there is no CUDA device (CPU autocast to float16 is neither fast nor
    covered by a gradient scaler here); bf16 and fp32 run anywhere."""
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA device; this run is on {device}",
                         hint="use --precision bf16 (autocast on the CPU too) or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context of the G and D forward passes: nothing for fp32, else torch.autocast to bf16 or fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A fresh loss scaler for fp16 (on `device`), None for the precisions that need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
