"""Read a legacy (pre-zip) PyTorch ``.pth`` state dict with numpy alone.

The legacy format is a sequence of pickles: magic number, protocol version, system info,
the state dict (tensors refer to storages by persistent id), the list of storage keys, then
each storage's raw bytes prefixed by its element count. Only the handful of globals a plain
state dict needs are allowed; anything else (``os.system``, arbitrary classes) is refused,
so a malicious file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asked for something a plain state dict never needs."""


class _Storage:
    def __init__(self, dtype: type, numel: int):
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_unused):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO):
        super().__init__(f)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise UnsafeCheckpointError(f"refusing to load global {module}.{name} from checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        _, dtype_name, key, _location, numel, _view = pid
        if dtype_name not in _STORAGE_DTYPES:
            raise UnsafeCheckpointError(f"unsupported storage type {dtype_name!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(_STORAGE_DTYPES[dtype_name], int(numel))
        return self.storages[key]


class _PlainDataUnpickler(pickle.Unpickler):
    """For the header pickles: numbers, strings, dicts only."""

    def find_class(self, module: str, name: str):
        raise UnsafeCheckpointError(f"refusing to load global {module}.{name} from checkpoint header")


def load_legacy_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """Return ``{name: ndarray}`` from a legacy PyTorch checkpoint, without torch or pickle.load."""
    with open(path, "rb") as f:
        magic = _PlainDataUnpickler(f).load()
        if magic != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch checkpoint (magic number {magic!r})")
        _PlainDataUnpickler(f).load()  # protocol version
        sys_info = _PlainDataUnpickler(f).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        unpickler = _RestrictedUnpickler(f)
        state = unpickler.load()
        keys = _PlainDataUnpickler(f).load()
        for key in keys:
            storage = unpickler.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != storage.numel:
                raise ValueError(f"{path}: storage {key} has {numel} elements, header says {storage.numel}")
            nbytes = numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated at storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: checkpoint holds a {type(state).__name__}, not a state dict")
    return collections.OrderedDict((k, v.materialize()) for k, v in state.items())
