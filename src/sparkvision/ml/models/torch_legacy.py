"""Read a legacy (pre-zip) PyTorch ``.pth`` state dict with numpy alone.

The legacy format is a sequence of pickles: magic number, protocol version, system info,
the state dict (tensors refer to storages by persistent id), the list of storage keys, then
each storage's raw bytes prefixed by its element count. Only the handful of globals a plain
state dict needs are allowed; anything else (``os.system``, arbitrary classes) is refused,
so a malicious file cannot run code.

Nothing in the file is trusted: before a byte of tensor data is read or an array is built,
every tensor's size, stride and offset are checked against its storage's declared size, every
storage against the bytes left in the file, and both against a size cap. Each pickle is
scanned first (lengths, memo indices) so the unpickler itself never allocates more than the
file holds. Every problem is a :class:`CheckpointError` (a ``ValueError``) naming the file and
the tensor or storage concerned.
"""

from __future__ import annotations

from sparkvision.errors import CheckpointError, UnsafeCheckpointError
import collections
import io
import math
import os
import pickle
import pickletools
import struct
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_TENSOR_BYTES = 1 << 30   # one tensor, or one storage, in bytes
MAX_TOTAL_BYTES = 4 << 30    # all tensors of a state dict together, once materialized

_STORAGE_DTYPES = {  # little-endian, whatever the host
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_STORAGE_MODULES = ("torch", "torch.cuda")  # a CUDA storage's bytes are the same; we load on CPU


class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: a name and a dtype (``None``: unsupported)."""

    def __init__(self, qualname: str, dtype: np.dtype | None):
        self.qualname, self.dtype = qualname, dtype


class _Storage:
    def __init__(self, key: str, stype: _StorageType, numel: int):
        self.key, self.stype, self.numel = key, stype, numel
        self.data: np.ndarray | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.stype.dtype


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        """Only after :func:`_check_tensor` passed and the storage was read."""
        if math.prod(self.size) == 0:
            return np.empty(self.size, dtype=self.storage.dtype)
        data = self.storage.data
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:],
            shape=self.size,
            strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, order="C")  # a copy; unlike ascontiguousarray, keeps 0-d tensors 0-d


class _RepeatedName(Exception):
    pass


class _StateDict(collections.OrderedDict):
    """``collections.OrderedDict`` as the unpickler builds it: a repeated name is an error, not a silent overwrite."""

    def __setitem__(self, key, value):
        if key in self:
            raise _RepeatedName(f"tensor {key!r} appears twice in the state dict")
        super().__setitem__(key, value)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, path: str):
        super().__init__(f)
        self.path = path
        self.storages: dict[str, _Storage] = {}
        self.tensors: list[_TensorRef] = []

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return _StateDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor_v2
        if module in _STORAGE_MODULES and name.endswith("Storage") and name.isidentifier():
            return _StorageType(f"{module}.{name}", _STORAGE_DTYPES.get(name))
        raise UnsafeCheckpointError(f"{self.path}: refusing to load global {module}.{name} from checkpoint")

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        # Arguments are checked later, with the tensor's name, before anything is read or built.
        ref = _TensorRef(storage, storage_offset, size, stride)
        self.tensors.append(ref)
        return ref

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CheckpointError(
                f"{self.path}: unexpected persistent id {_short(pid)}; "
                "expected ('storage', type, key, location, numel, view)"
            )
        _, stype, key, location, numel, view = pid
        if not isinstance(key, str):
            raise CheckpointError(f"{self.path}: storage key {_short(key)} is not a string")
        where = f"{self.path}: storage {key!r}"
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{where}: type {_short(stype)} is not a torch storage class")
        if not isinstance(location, str):
            raise CheckpointError(f"{where}: location {_short(location)} is not a string")
        if type(numel) is not int or numel < 0:
            raise CheckpointError(f"{where}: element count {_short(numel)} is not a non-negative integer")
        if view is not None:
            raise CheckpointError(f"{where}: storage views (torch < 0.4 checkpoints) are not supported")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(key, stype, numel)
        elif known.stype.qualname != stype.qualname or known.numel != numel:
            raise CheckpointError(
                f"{where}: declared as {known.numel} x {known.stype.qualname} and as {numel} x {stype.qualname}"
            )
        return known


class _PlainDataUnpickler(pickle.Unpickler):
    """For the header pickles: numbers, strings, dicts only."""

    def __init__(self, f: BinaryIO, path: str):
        super().__init__(f)
        self.path = path

    def find_class(self, module: str, name: str):
        raise UnsafeCheckpointError(f"{self.path}: refusing to load global {module}.{name} from checkpoint header")

    def persistent_load(self, pid):
        raise CheckpointError(f"{self.path}: unexpected persistent id {_short(pid)} in checkpoint header")


def _short(obj, limit: int = 80) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


class _BoundedReader:
    """Reads of the file that never ask for more than it holds (the scan below trusts no length)."""

    def __init__(self, f: BinaryIO, end: int):
        self.f, self.end, self.pos = f, end, f.tell()

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        left = max(self.end - self.pos, 0)
        data = self.f.read(left if n is None or n < 0 else min(n, left))
        self.pos += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        left = max(self.end - self.pos, 0)
        data = self.f.readline(left if limit is None or limit < 0 else min(limit, left))
        self.pos += len(data)
        return data


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
_REFUSED_OPCODES = ("NEXT_BUFFER", "READONLY_BUFFER")  # out-of-band buffers: never in a file


def _load_pickle(f: BinaryIO, file_size: int, path: str, what: str, unpickler_cls):
    """Scan the pickle at ``f``'s position (every length within the file, memo indices dense), then load it.

    The scan is what keeps a few crafted bytes from making the C unpickler allocate gigabytes:
    it allocates counted strings before reading them, and grows its memo to the largest index.
    """
    start = f.tell()
    reader = _BoundedReader(f, file_size)
    ops = 0
    try:
        for op, arg, _pos in pickletools.genops(reader):
            ops += 1
            if op.name in _MEMO_PUTS and arg > ops:
                raise CheckpointError(f"{path}: {what}: memo index {arg} at opcode {ops} is out of sequence")
            if op.name == "FRAME" and arg > file_size - reader.pos:
                raise CheckpointError(f"{path}: {what}: frame of {arg} bytes runs past the end of the file")
            if op.name in _REFUSED_OPCODES:
                raise CheckpointError(f"{path}: {what}: opcode {op.name} is not allowed")
    except CheckpointError:
        raise
    except Exception as exc:  # pickletools reports a short or malformed pickle as ValueError
        raise CheckpointError(f"{path}: {what} is not a valid pickle ({exc})") from exc
    end = reader.pos
    f.seek(start)
    unpickler = unpickler_cls(io.BytesIO(f.read(end - start)), path)
    try:
        return unpickler, unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # only our own callables run: any error is a malformed file
        raise CheckpointError(f"{path}: cannot read {what}: {exc}") from exc


def _is_index_tuple(value) -> bool:
    return isinstance(value, (tuple, list)) and all(type(v) is int for v in value)


def _check_storage(where: str, storage: _Storage, file_size: int, max_bytes: int) -> None:
    if storage.dtype is None:
        raise CheckpointError(f"{where}: storage {storage.key!r} has unsupported type {storage.stype.qualname}")
    nbytes = storage.numel * storage.dtype.itemsize
    if nbytes > max_bytes:
        raise CheckpointError(
            f"{where}: storage {storage.key!r} declares {storage.numel} elements ({nbytes} bytes), "
            f"over the cap of {max_bytes} bytes"
        )
    if nbytes > file_size:
        raise CheckpointError(
            f"{where}: storage {storage.key!r} declares {storage.numel} elements ({nbytes} bytes) "
            f"but the whole file is {file_size} bytes"
        )


def _check_tensor(path: str, name: str, ref, file_size: int, max_bytes: int) -> int:
    """Validate one tensor's geometry against its storage's declared size; return its size in bytes."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(ref, _TensorRef):
        raise CheckpointError(f"{where}: is a {type(ref).__name__}, not a tensor")
    storage = ref.storage
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"{where}: refers to a {type(storage).__name__}, not a storage")
    _check_storage(where, storage, file_size, max_bytes)
    size, stride, offset = ref.size, ref.stride, ref.offset
    if not _is_index_tuple(size) or not _is_index_tuple(stride):
        raise CheckpointError(f"{where}: size {_short(size)} and stride {_short(stride)} must be tuples of integers")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride):
        raise CheckpointError(f"{where}: size {size} and stride {stride} differ in length")
    if any(s < 0 for s in size):
        raise CheckpointError(f"{where}: negative size {size}")
    if any(s < 0 for s in stride):
        raise CheckpointError(f"{where}: negative stride {stride}")
    if type(offset) is not int or offset < 0:
        raise CheckpointError(f"{where}: storage offset {_short(offset)} is not a non-negative integer")
    numel = math.prod(size)
    nbytes = numel * storage.dtype.itemsize
    if nbytes > max_bytes:
        raise CheckpointError(f"{where}: size {size} is {nbytes} bytes, over the cap of {max_bytes} bytes")
    ref.size, ref.stride = size, stride
    if numel == 0:
        return 0
    if any(st == 0 and sz > 1 for sz, st in zip(size, stride)):
        raise CheckpointError(f"{where}: stride {stride} repeats elements (stride 0) for size {size}")
    last = offset + sum((sz - 1) * st for sz, st in zip(size, stride))
    if last >= storage.numel:
        raise CheckpointError(
            f"{where}: size {size}, stride {stride}, offset {offset} reach element {last} "
            f"of storage {storage.key!r} which has {storage.numel} elements"
        )
    extent = 0  # elements never overlap: each stride clears the span of the smaller ones
    for st, sz in sorted((st, sz) for sz, st in zip(size, stride) if sz > 1):
        if st <= extent:
            raise CheckpointError(f"{where}: stride {stride} makes elements of size {size} overlap")
        extent += (sz - 1) * st
    return nbytes


def load_legacy_state_dict(
    path: str | os.PathLike,
    max_tensor_bytes: int = MAX_TENSOR_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> "collections.OrderedDict[str, np.ndarray]":
    """Return ``{name: ndarray}`` from a legacy PyTorch checkpoint, without torch or pickle.load.

    ``max_tensor_bytes`` caps each tensor and each storage, ``max_total_bytes`` all tensors
    together. Raises :class:`CheckpointError` (a ``ValueError``) naming the file and the tensor
    for anything malformed, inconsistent or too large, :class:`UnsafeCheckpointError` for a
    global a state dict never needs.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size

        def plain(what):
            return _load_pickle(f, file_size, path, what, _PlainDataUnpickler)[1]

        magic = plain("magic number")
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a legacy PyTorch checkpoint (magic number {_short(magic)})")
        plain("protocol version")
        sys_info = plain("system info")
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        unpickler, state = _load_pickle(f, file_size, path, "state dict", _RestrictedUnpickler)
        keys = plain("storage key list")

        # Everything is checked against the declared sizes before a byte of tensor data is read.
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: checkpoint holds a {type(state).__name__}, not a state dict")
        total, users = 0, {}
        for name, ref in state.items():
            if not isinstance(name, str):
                raise CheckpointError(f"{path}: tensor name {_short(name)} is not a string")
            total += _check_tensor(path, name, ref, file_size, max_tensor_bytes)
            users.setdefault(ref.storage.key, name)
        if total > max_total_bytes:
            raise CheckpointError(f"{path}: tensors total {total} bytes, over the cap of {max_total_bytes} bytes")
        reachable = {id(ref) for ref in state.values()}
        if any(id(ref) not in reachable for ref in unpickler.tensors):
            raise CheckpointError(f"{path}: some tensors are not in the state dict (a repeated name?)")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(f"{path}: storage key list {_short(keys)} is not a list of strings")
        seen = set()
        for key in keys:
            if key in seen:
                raise CheckpointError(f"{path}: storage {key!r} is listed twice")
            seen.add(key)
            if key not in unpickler.storages:
                raise CheckpointError(f"{path}: storage {key!r} is listed but no tensor refers to it")
        for key, name in users.items():
            if key not in seen:
                raise CheckpointError(f"{path}: tensor {name!r}: storage {key!r} is missing from the storage list")

        for key in keys:
            storage = unpickler.storages[key]
            where = f"{path}: tensor {users.get(key)!r}: storage {key!r}"
            header = f.read(8)
            if len(header) != 8:
                raise CheckpointError(f"{where}: file truncated before the storage's element count")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise CheckpointError(f"{where}: file says {numel} elements, the state dict says {storage.numel}")
            nbytes = numel * storage.dtype.itemsize
            left = file_size - f.tell()
            if nbytes > left:
                raise CheckpointError(f"{where}: file truncated, storage needs {nbytes} bytes but {left} remain")
            raw = f.read(nbytes)
            if len(raw) != nbytes:  # the file shrank while we read it
                raise CheckpointError(f"{where}: file truncated, storage needs {nbytes} bytes, read {len(raw)}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return collections.OrderedDict((name, ref.materialize()) for name, ref in state.items())
