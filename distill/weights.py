"""What a weights file must hold for an architecture: the one key-by-key comparison of tensors
that the student and VGG loaders and blending make (torch-free: any values with a `.shape`
compare). Foreign generator checkpoints are mapped name by name first (distill.checkpoint._fill,
which names the file's own tensor where one is missing or misshapen).

    why = state_dict_difference(model.state_dict(), loaded, ("the architecture", "the file"))
"""
from __future__ import annotations


def state_dict_difference(expected: dict, got: dict, names: tuple[str, str] = ("the model", "the file"),
                          extra: bool = True) -> str | None:
    """The first key or shape on which the tensors `got` differ from `expected`, in words ('x.weight
    has shape (64, 3) in the model and (32, 3) in the file'), or None when they fit. Keys are
    compared in `expected`'s order, so the first layer that does not fit is named. extra=False
    allows keys of `got` that `expected` lacks (a file holding more than the part that is used)."""
    for key, want in expected.items():
        if key not in got:
            return f"{key} is in {names[0]} but not in {names[1]}"
        if tuple(want.shape) != tuple(got[key].shape):
            return f"{key} has shape {tuple(want.shape)} in {names[0]} and {tuple(got[key].shape)} in {names[1]}"
    unexpected = [key for key in got if key not in expected] if extra else []
    return f"{unexpected[0]} is in {names[1]} but not in {names[0]}" if unexpected else None
