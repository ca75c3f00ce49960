"""A restricted unpickler for network pickles: it builds tensors, arrays and plain containers, never code.

    data = load_pickle("network-snapshot.pkl")   # dicts of PersistentObject, or a (G, D, Gs) of TFNetwork

Every global a pickle names is looked up in ALLOWED; anything else (`posix.system`, the network
classes a pickle would import) stops the load with RefusedGlobal before it can be called. NVlabs'
persistent network objects come back as PersistentObject (class name and module state) and
legacy TensorFlow networks as TFNetwork (their state dict); the source code they embed stays an
unused string. Tensor storages nested in the pickle are read with torch's weights-only loader.

The file decides nothing about memory or pointers: the unpickler is pickle's pure-Python one
(its memo is a dict, so a memo index costs one entry, not an array that long), every length it
reads is checked against what is left of the file before it is read, tuples nest at most
MAX_TUPLE_DEPTH deep (hashing a deeper one overflows the C stack), and numpy dtypes, scalars and
arrays come from builders here that make only plain numeric dtypes from data of the exact
length. State (BUILD) reaches only the types of this module and fresh numpy arrays, never a
class or function. Torch blobs are scanned first (`torch_pickle_storages`), so a storage can
declare no more bytes than its file holds.
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re

import numpy as np
import torch

MAX_TUPLE_DEPTH = 100
MAX_NDIM = 16
READLINE_LIMIT = 1 << 16  # text opcodes (GLOBAL, INT) carry short lines
# numpy's own spellings of the plain numeric dtypes (`np.dtype(x).__reduce__()[1][0]`).
NUMERIC_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
# Bytes per element of the torch storage classes a torch.save file may name.
STORAGE_ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
                    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
                    "BoolStorage": 1, "UntypedStorage": 1}


class PersistentObject:
    """What NVlabs' `_reconstruct_persistent_obj(meta)` yields here: the class name and the module
    state (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`, ...), never an instance."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state


def _reconstruct_persistent_obj(meta: dict) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("a persistent object that is not a class instance")
    if not isinstance(meta.get("class_name"), str) or not isinstance(meta.get("state"), dict):
        raise pickle.UnpicklingError("a persistent object without a class name and a state dict")
    return PersistentObject(meta["class_name"], meta["state"])


class EasyDict(dict):
    """Stands in for `dnnlib.util.EasyDict` (a dict with attribute access)."""


class TFNetwork:
    """Stands in for `dnnlib.tflib.network.Network`: keeps its pickled state dict."""

    state: dict = {}

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a TensorFlow network whose state is a {type(state).__name__}, not a dict")
        self.state = state


class RefusedGlobal(pickle.UnpicklingError):
    """A name outside the allow-list; its text is the name, e.g. `posix.system`."""


def refused_name(error: pickle.UnpicklingError) -> str | None:
    """The global that torch's weights-only loader refused (`posix.system`), from its message;
    None when the error is about something else (garbage fails to unpickle too)."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    return found.group(1) if found else None


# --- numpy, rebuilt from checked pieces -----------------------------------------------------------

class NumpyDType:
    """What `numpy.dtype(spec, align, copy)` yields here: one plain numeric dtype, whose pickled
    state may set the byte order and nothing else (no fields, offsets, subarrays or objects)."""

    def __init__(self, spec, align=False, copy=True):
        if type(spec) is not str or spec not in NUMERIC_DTYPES or type(align) is not bool or type(copy) is not bool:
            raise pickle.UnpicklingError(f"numpy dtype {str(spec)[:40]!r}: only plain numeric dtypes load "
                                         f"({', '.join(NUMERIC_DTYPES)})")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state) -> None:
        plain = (type(state) is tuple and len(state) == 8 and state[0] == 3 and type(state[0]) is int
                 and all(v is None for v in state[2:5]) and all(type(v) is int for v in state[5:8])
                 and state[5:8] == (-1, -1, 0) and state[1] in ("<", ">", "=", "|") and type(state[1]) is str)
        if not plain or (state[1] == "|" and self.dtype.itemsize > 1):
            raise pickle.UnpicklingError(f"numpy dtype {self.dtype.str} with a state other than a byte order")
        self.dtype = self.dtype.newbyteorder(state[1]) if state[1] in "<>" else self.dtype


def _plain_dtype(dtype) -> np.dtype:
    if type(dtype) is not NumpyDType:
        raise pickle.UnpicklingError(f"a numpy value whose dtype is a {type(dtype).__name__}")
    return dtype.dtype


def _check_bool(data: bytes, dtype: np.dtype) -> None:
    if dtype.kind == "b" and data and max(data) > 1:
        raise pickle.UnpicklingError("a numpy bool that is neither 0 nor 1")


def _scalar(dtype, data=None):
    """`numpy.core.multiarray.scalar(dtype, data)`: one value of a plain dtype from its exact bytes."""
    dt = _plain_dtype(dtype)
    if type(data) is not bytes or len(data) != dt.itemsize:
        raise pickle.UnpicklingError(f"a numpy {dt.str} scalar whose data is not {dt.itemsize} bytes")
    _check_bool(data, dt)
    return np.frombuffer(data, dt)[0]


class NumpyNDArray:
    """What the name `numpy.ndarray` yields here: a marker `_reconstruct` accepts, not the class."""


def _reconstruct(subtype, shape, typecode):
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`: the empty array BUILD then fills."""
    if subtype is not NumpyNDArray or type(shape) is not tuple or shape != (0,) or typecode not in (b"b", "b"):
        raise pickle.UnpicklingError("a numpy array reconstructed other than as a plain ndarray")
    return np.empty((0,), np.int8)


def _set_array_state(array: np.ndarray, state) -> None:
    """ndarray.__setstate__ after checking: shape of non-negative ints, a plain dtype, data bytes of exactly
    shape x itemsize."""
    if type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1:
        state = state[1:]
    if type(state) is not tuple or len(state) != 4:
        raise pickle.UnpicklingError("a numpy array state that is not (shape, dtype, fortran, data)")
    shape, dtype, fortran, data = state
    if type(shape) is not tuple or len(shape) > MAX_NDIM or any(type(n) is not int or n < 0 for n in shape):
        raise pickle.UnpicklingError(f"a numpy array shape that is not up to {MAX_NDIM} non-negative ints")
    dt = _plain_dtype(dtype)
    if type(fortran) is not bool or type(data) is not bytes:
        raise pickle.UnpicklingError("a numpy array whose data is not bytes")
    if len(data) != math.prod(shape) * dt.itemsize:
        raise pickle.UnpicklingError(f"a numpy array of shape {list(shape)} ({dt.str}) with {len(data)} bytes of "
                                     f"data, not {math.prod(shape) * dt.itemsize}")
    _check_bool(data, dt)
    array.__setstate__((1, shape, dt, fortran, data))


# --- torch tensors and storages ---------------------------------------------------------------------

def _ints(value, what: str) -> tuple:
    if type(value) not in (tuple, torch.Size) or len(value) > MAX_NDIM or any(
            type(n) is not int or n < 0 for n in value):
        raise pickle.UnpicklingError(f"a tensor {what} that is not up to {MAX_NDIM} non-negative ints")
    return tuple(value)


def _no_hooks(hooks) -> None:
    if not (hooks is None or (type(hooks) is collections.OrderedDict and not hooks)):
        raise pickle.UnpicklingError("a tensor with backward hooks")


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 for a view that lies inside its storage and repeats no element."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor whose storage is a {type(storage).__name__}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    (offset,) = _ints((storage_offset,), "offset")
    if len(stride) != len(size) or type(requires_grad) is not bool or not (metadata is None or (type(metadata) is dict and not metadata)):
        raise pickle.UnpicklingError("a tensor with a malformed layout")
    _no_hooks(backward_hooks)
    numel, end = math.prod(size), offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    elements = storage._untyped_storage.nbytes() // torch._utils._element_size(storage.dtype)
    if numel and (end > elements or numel > elements - offset):
        raise pickle.UnpicklingError(f"a tensor of shape {list(size)} that does not fit its storage of "
                                     f"{elements} elements")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not torch.is_tensor(data) or type(requires_grad) is not bool:
        raise pickle.UnpicklingError("a parameter that is not a tensor")
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _storage_from_bytes(data: bytes):
    # Tensors in plain pickles carry their storages as torch.save blobs: torch's restricted loader reads them.
    if type(data) is not bytes:
        raise pickle.UnpicklingError("a tensor storage whose data is not bytes")
    check_legacy_torch(io.BytesIO(data))
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RefusedGlobal(refused_name(e) or "an object inside a tensor storage") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor storage blob that holds a {type(storage).__name__}")
    return storage


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib.tflib.network", "Network"): TFNetwork,
    ("numpy", "dtype"): NumpyDType,
    ("numpy", "ndarray"): NumpyNDArray,
    **{(module, name): builder for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, builder in (("scalar", _scalar), ("_reconstruct", _reconstruct))},
}
NEWOBJ_TYPES = (TFNetwork, EasyDict, collections.OrderedDict, set, frozenset)


# --- The unpickler ------------------------------------------------------------------------------------

class _BoundedReader:
    """A file whose reads never exceed what is left of it: no length field can make a reader allocate it."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else n
        if n > self.left:
            raise pickle.UnpicklingError(f"truncated: a field declares {n} bytes where {self.left} remain")
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.f.readline(min(self.left, READLINE_LIMIT))
        self.left -= len(line)
        return line


class _Opcodes(dict):
    def __missing__(self, code: int):
        raise pickle.UnpicklingError(f"invalid load key, {bytes([code])!r}")


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the names in ALLOWED: anything else stops the load before it can be called.

    `size` is how many bytes of `file` the pickle may use (the rest of the file when omitted).
    """

    dispatch = _Opcodes(pickle._Unpickler.dispatch)

    def __init__(self, file, size: int | None = None):
        if size is None:
            here = file.tell()
            size, _ = file.seek(0, os.SEEK_END) - here, file.seek(here)
        super().__init__(_BoundedReader(file, size))
        self._depths: dict[int, tuple[int, tuple]] = {}

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids, which plain network pickles never use")

    def build(self, inst, state) -> None:
        if type(inst) is np.ndarray:
            _set_array_state(inst, state)
        elif type(inst) in (NumpyDType, TFNetwork):
            inst.__setstate__(state)
        else:
            raise pickle.UnpicklingError(f"state for a {type(inst).__name__}, which takes none here")

    def load_build(self):
        state = self.stack.pop()
        self.build(self.stack[-1], state)
    dispatch[pickle.BUILD[0]] = load_build

    def new_object(self, cls, args: tuple, kwargs: dict):
        if not isinstance(cls, type) or not issubclass(cls, NEWOBJ_TYPES) or type(args) is not tuple:
            raise pickle.UnpicklingError(f"a new {getattr(cls, '__name__', type(cls).__name__)}, which is not a "
                                         "container or network stand-in")
        return cls.__new__(cls, *args, **kwargs)

    def load_newobj(self):
        args = self.stack.pop()
        self.stack[-1] = self.new_object(self.stack[-1], args, {})
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs, args = self.stack.pop(), self.stack.pop()
        if type(kwargs) is not dict:
            raise pickle.UnpicklingError("NEWOBJ_EX without a keyword dict")
        self.stack[-1] = self.new_object(self.stack[-1], args, kwargs)
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def refuse_buffers(self):
        raise pickle.UnpicklingError("out-of-band buffers (pickle protocol 5), which network pickles never use")
    for _op in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = refuse_buffers

    def track_depth(self):
        # Tuples are the only containers hashed by value, recursively and without a depth guard.
        top = self.stack[-1]
        depth = 1 + max((self._depths.get(id(x), (0,))[0] for x in top if type(x) is tuple), default=0)
        if depth > MAX_TUPLE_DEPTH:
            raise pickle.UnpicklingError(f"tuples nested deeper than {MAX_TUPLE_DEPTH} levels")
        self._depths[id(top)] = (depth, top)

    for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
        def _load_tuple(self, _base=pickle._Unpickler.dispatch[_op[0]]):
            _base(self)
            self.track_depth()
        dispatch[_op[0]] = _load_tuple
    del _op, _load_tuple


def load_pickle(path: str | os.PathLike):
    """The object pickled in `path`, built by RestrictedUnpickler.

    Raises RefusedGlobal for a name outside ALLOWED (nothing it asked for has run), EOFError or
    pickle.UnpicklingError for a truncated, malformed or non-pickle file, and other exceptions
    (ValueError, TypeError, KeyError, ...) for a damaged one; callers turn these into their own errors.
    """
    with open(path, "rb") as f:
        return RestrictedUnpickler(f).load()


# --- Scanning torch.save pickles before torch reads them ------------------------------------------

class _Anything(dict):
    """Whatever a scanned torch pickle names or builds: it takes any arguments, items and state, keeps
    its items (plain dicts' SETITEMS) and is hashed by identity."""

    __hash__, __eq__ = object.__hash__, object.__eq__

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass


class _StorageClass:
    def __init__(self, name: str):
        self.name, self.itemsize = name, STORAGE_ITEMSIZE[name]


class _ScanUnpickler(RestrictedUnpickler):
    """Walks a torch.save pickle without building it, collecting its storages' declared sizes."""

    def __init__(self, file, size: int | None = None):
        super().__init__(file, size)
        self.storages: dict[str, tuple[int, int]] = {}

    def find_class(self, module: str, name: str):
        return _StorageClass(name) if module == "torch" and name in STORAGE_ITEMSIZE else _Anything

    def persistent_load(self, pid):
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError("a torch persistent id that is not a storage")
        storage_class, key, numel = pid[1], pid[2], pid[4]
        if type(storage_class) is not _StorageClass or type(key) is not str or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("a torch storage with a malformed type, key or size")
        self.storages[key] = (numel, storage_class.itemsize)
        return _Anything()

    def build(self, inst, state) -> None:
        if type(inst) is not _Anything:
            super().build(inst, state)

    def new_object(self, cls, args: tuple, kwargs: dict):
        return _Anything()


def torch_pickle_storages(stream, size: int | None = None) -> dict[str, tuple[int, int]]:
    """{storage key: (elements, bytes per element)} that one torch.save pickle in `stream` declares,
    read from its persistent ids without building anything (the stream is left just past it).

    Raises pickle.UnpicklingError (or EOFError, ValueError, ...) for a malformed pickle, tuples nested
    too deep, or a storage type outside STORAGE_ITEMSIZE.
    """
    scanner = _ScanUnpickler(stream, size)
    scanner.load()
    return scanner.storages


def check_legacy_torch(stream) -> None:
    """Check a legacy (pre-1.6, non-zip) torch.save stream before torch reads it: its pickles are
    well formed and its storages declare no more bytes than follow them (torch allocates what they
    declare before reading). Raises pickle.UnpicklingError (or EOFError, ...) otherwise."""
    for _ in range(3):  # the magic number, protocol version and system info
        torch_pickle_storages(stream)
    declared = sum(8 + numel * size for numel, size in torch_pickle_storages(stream).values())
    torch_pickle_storages(stream)  # the storage keys
    here = stream.tell()
    left = stream.seek(0, os.SEEK_END) - here
    if declared > left:
        raise pickle.UnpicklingError(f"truncated: its tensor storages declare {declared} bytes where {left} remain")
