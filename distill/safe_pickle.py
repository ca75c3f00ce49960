"""A restricted unpickler for network pickles: it builds tensors, arrays and plain containers, never code.

    data = load_pickle("network-snapshot.pkl")   # dicts of PersistentObject, or a (G, D, Gs) of TFNetwork

Every global a pickle names is looked up in ALLOWED; anything else (`posix.system`, the network
classes a pickle would import) stops the load with RefusedGlobal before it can be called. NVlabs'
persistent network objects come back as PersistentObject (class name and module state) and
legacy TensorFlow networks as TFNetwork (their state dict); the source code they embed stays an
unused string. Tensor storages nested in the pickle are read with torch's weights-only loader.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re

import numpy as np
import torch

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 1.26 has only the old spelling
    from numpy.core import multiarray as _multiarray


class PersistentObject:
    """What NVlabs' `_reconstruct_persistent_obj(meta)` yields here: the class name and the module
    state (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`, ...), never an instance."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state


def _reconstruct_persistent_obj(meta: dict) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("a persistent object that is not a class instance")
    return PersistentObject(meta["class_name"], meta["state"])


class EasyDict(dict):
    """Stands in for `dnnlib.util.EasyDict` (a dict with attribute access)."""


class TFNetwork:
    """Stands in for `dnnlib.tflib.network.Network`: keeps its pickled state dict."""

    def __setstate__(self, state: dict) -> None:
        self.state = state


class RefusedGlobal(pickle.UnpicklingError):
    """A name outside the allow-list; its text is the name, e.g. `posix.system`."""


def refused_name(error: pickle.UnpicklingError) -> str | None:
    """The global that torch's weights-only loader refused (`posix.system`), from its message;
    None when the error is about something else (garbage fails to unpickle too)."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    return found.group(1) if found else None


def _storage_from_bytes(data: bytes):
    # Tensors in plain pickles carry their storages as torch.save blobs: torch's restricted loader reads them.
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RefusedGlobal(refused_name(e) or "an object inside a tensor storage") from None


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(module, name): getattr(_multiarray, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("scalar", "_reconstruct")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names in ALLOWED: anything else stops the load before it can be called."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids, which plain network pickles never use")


def load_pickle(path: str | os.PathLike):
    """The object pickled in `path`, built by RestrictedUnpickler.

    Raises RefusedGlobal for a name outside ALLOWED (nothing it asked for has run), EOFError or
    pickle.UnpicklingError for a truncated or non-pickle file, and ValueError, TypeError, KeyError,
    IndexError, AttributeError or RuntimeError for a damaged one; callers turn these into their own errors.
    """
    with open(path, "rb") as f:
        return RestrictedUnpickler(f).load()
