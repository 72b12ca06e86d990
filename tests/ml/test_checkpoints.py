"""Crafted weight files: the legacy .pth reader, EfficientNet-Lite's state-dict check, ModelSpec.check_weights.

Checkpoints are written here with the standard library only (no torch): a pure-Python pickler
that emits ``torch._utils._rebuild_tensor_v2`` / ``torch.FloatStorage`` as bare GLOBAL opcodes,
so nothing named torch is ever imported or put in ``sys.modules``.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import struct
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pytest

from sparkvision.ml.models import efficientnet_lite, registry
from sparkvision.ml.models.torch_legacy import (
    LEGACY_MAGIC,
    CheckpointError,
    UnsafeCheckpointError,
    load_legacy_state_dict,
)
from sparkvision.ml.models.weights import resolve_weights

# ---------------------------------------------------------------------------------------------
# A legacy-format writer (what torch.save(..., _use_new_zipfile_serialization=False) produces)

_TYPE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
}


@dataclass
class Global:
    """Pickled as ``GLOBAL module name``, whether or not that module exists here."""

    module: str
    name: str

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise AssertionError("never called")


@dataclass
class Storage:
    data: np.ndarray                 # 1-D, written little-endian
    type_name: str | None = None     # default: from data's dtype
    numel: int | None = None         # in the persistent id; default len(data)
    file_numel: int | None = None    # written before the bytes; default numel
    module: str = "torch"
    pid: tuple | None = None         # the whole persistent id, verbatim


@dataclass
class Tensor:
    storage: str                     # key into the storages
    size: tuple
    stride: tuple
    offset: int = 0


@dataclass
class Reduce:
    """Anything pickled as ``func(*args)``."""

    func: object
    args: tuple

    def __reduce__(self):
        return self.func, self.args


REBUILD = Global("torch._utils", "_rebuild_tensor_v2")


class _Writer(pickle._Pickler):  # the pure-Python pickler: its save() can be extended
    def __init__(self, f, storages):
        super().__init__(f, protocol=2)
        self.storages = storages

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        if isinstance(obj, DupDict):  # a dict whose SETITEMS repeat a key
            if obj.plain:
                self.write(pickle.EMPTY_DICT)
            else:
                self.save_reduce(collections.OrderedDict, ())
            self.write(pickle.MARK)
            for key, value in obj.items:
                self.save(key)
                self.save(value)
            self.write(pickle.SETITEMS)
            return
        if isinstance(obj, Tensor):
            ref = _StorageRef(obj.storage)
            args = (ref, obj.offset, obj.size, obj.stride, False, collections.OrderedDict())
            self.save_reduce(REBUILD, args, obj=obj)
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        s = self.storages[obj.key]
        if s.pid is not None:
            return s.pid
        type_name = s.type_name or _TYPE_NAMES[s.data.dtype]
        numel = len(s.data) if s.numel is None else s.numel
        return ("storage", Global(s.module, type_name), obj.key, "cpu", numel, None)


@dataclass(frozen=True)
class _StorageRef:
    key: str


@dataclass
class DupDict:
    items: list
    plain: bool = False  # a dict, else an OrderedDict


def dumps(obj) -> bytes:
    out = io.BytesIO()
    _Writer(out, {}).dump(obj)
    return out.getvalue()


def checkpoint_bytes(state, storages: dict[str, Storage], keys=None, state_pickle: bytes | None = None) -> bytes:
    """The bytes of a legacy checkpoint: three header pickles, the state dict, the key list, the storages.

    ``keys`` (default: the storages' keys) is pickled as the key list; the storages follow in that
    order when it is a list of their keys, else in their own order.
    """
    out = io.BytesIO()
    for obj in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, out, protocol=2)
    if state_pickle is None:
        _Writer(out, storages).dump(state)
    else:
        out.write(state_pickle)
    pickle.dump(list(storages) if keys is None else keys, out, protocol=2)
    order = keys if isinstance(keys, list) and all(k in storages for k in keys) else list(storages)
    for key in order:
        s = storages[key]
        numel = len(s.data) if s.numel is None else s.numel
        out.write(struct.pack("<q", numel if s.file_numel is None else s.file_numel))
        out.write(s.data.astype(s.data.dtype.newbyteorder("<"), copy=False).tobytes())
    return out.getvalue()


def from_arrays(arrays: dict[str, np.ndarray]):
    """(state, storages) holding each array contiguously in a storage of its own."""
    state, storages = collections.OrderedDict(), {}
    for i, (name, a) in enumerate(arrays.items()):
        a = np.array(a, order="C")  # ascontiguousarray would make a 0-d array 1-d
        key = str(1000 + i)
        storages[key] = Storage(a.reshape(-1))
        state[name] = Tensor(key, a.shape, tuple(s // a.itemsize for s in a.strides))
    return state, storages


def write(path, state, storages, **kw):
    path.write_bytes(checkpoint_bytes(state, storages, **kw))
    return path


def tiny(tmp_path, size, stride, offset=0, name="w.pth", **storage_kw):
    """A file of a few hundred bytes: one tensor 'layer.weight' over a 4-element float storage '3'."""
    storages = {"3": Storage(np.arange(4, dtype=np.float32), **storage_kw)}
    return write(tmp_path / name, {"layer.weight": Tensor("3", size, stride, offset)}, storages)


def rejected(path, match, exc=ValueError, peak_limit=4 << 20, **kw):
    """Load ``path``: it must raise ``exc`` naming the file and matching ``match``, allocating little."""
    tracemalloc.start()
    try:
        with pytest.raises(exc, match=match) as info:
            load_legacy_state_dict(str(path), **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert peak < peak_limit, f"loading {path} allocated {peak} bytes"
    return info.value


# ---------------------------------------------------------------------------------------------
# The writer is right: a well-formed file round-trips exactly


def test_written_checkpoint_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn.running_var": rng.random(4).astype(np.float64),
        "half": rng.standard_normal((2, 5)).astype(np.float16),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    state, storages = from_arrays(arrays)
    # views of one shared storage: a transposed one, and a slice at an offset
    shared = np.arange(24, dtype=np.float32)
    storages["s"] = Storage(shared)
    state["transposed"] = Tensor("s", (4, 6), (1, 4))
    state["slice"] = Tensor("s", (2, 3), (6, 1), offset=7)
    path = write(tmp_path / "ok.pth", state, storages)
    assert path.stat().st_size < 4096

    sd = load_legacy_state_dict(str(path))
    assert list(sd) == list(state)
    for name, a in arrays.items():
        assert sd[name].dtype == a.dtype and sd[name].shape == a.shape
        assert np.array_equal(sd[name], a)
    assert np.array_equal(sd["transposed"], shared.reshape(6, 4).T)
    assert np.array_equal(sd["slice"], shared[7:19].reshape(2, 6)[:, :3])
    assert all(v.flags.c_contiguous and v.flags.writeable for v in sd.values())


# ---------------------------------------------------------------------------------------------
# Shapes, strides and offsets are checked against the storage before anything is built


def test_oversized_shape_is_refused_before_allocating(tmp_path):
    path = tiny(tmp_path, size=(1 << 14, 1 << 15), stride=(1 << 15, 1))  # 2 GiB of float32 claimed
    assert path.stat().st_size < 1024
    rejected(path, r"tensor 'layer.weight': size \(16384, 32768\) is 2147483648 bytes, over the cap")
    # with the cap out of the way, the storage bound still holds
    rejected(path, r"'layer.weight'.*reach element \d+ of storage '3' which has 4 elements", max_tensor_bytes=1 << 40)


def test_lower_cap_refuses_big_tensor(tmp_path):
    state, storages = from_arrays({"big": np.zeros((64, 64), dtype=np.float32)})
    path = write(tmp_path / "big.pth", state, storages)
    rejected(path, r"tensor 'big': storage '1000' declares 4096 elements \(16384 bytes\), over the cap of 1000",
             max_tensor_bytes=1000)
    assert load_legacy_state_dict(str(path), max_tensor_bytes=16384)["big"].shape == (64, 64)


def test_zero_stride_is_refused(tmp_path):
    rejected(tiny(tmp_path, size=(1000, 4), stride=(0, 1)), r"tensor 'layer.weight': stride \(0, 1\) repeats elements")
    # a dimension of size 1 may have any stride, 0 included
    assert load_legacy_state_dict(str(tiny(tmp_path, (1, 4), (0, 1), name="ok.pth")))["layer.weight"].shape == (1, 4)


def test_negative_stride_is_refused(tmp_path):
    rejected(tiny(tmp_path, size=(2,), stride=(-1,), offset=3), r"tensor 'layer.weight': negative stride \(-1,\)")


def test_huge_stride_is_refused(tmp_path):
    err = rejected(tiny(tmp_path, size=(2, 2), stride=(1 << 40, 1)), r"tensor 'layer.weight'")
    assert "reach element 1099511627777 of storage '3' which has 4 elements" in str(err)


def test_overlapping_strides_are_refused(tmp_path):
    # 4 elements of storage posing as a 1000 x 1000 tensor would be an amplification too
    rejected(tiny(tmp_path, size=(2, 3), stride=(1, 1)), r"tensor 'layer.weight': stride \(1, 1\) makes elements .* overlap")


def test_offset_past_end_of_storage_is_refused(tmp_path):
    rejected(tiny(tmp_path, size=(2,), stride=(1,), offset=3), r"'layer.weight'.*offset 3 reach element 4 of storage '3'")
    rejected(tiny(tmp_path, size=(1,), stride=(1,), offset=1 << 62, name="far.pth"), r"'layer.weight'.*reach element")


def test_malformed_size_stride_offset_are_refused(tmp_path):
    rejected(tiny(tmp_path, size=(2, 2), stride=(1,)), r"'layer.weight': size \(2, 2\) and stride \(1,\) differ in length")
    rejected(tiny(tmp_path, size=(2.0,), stride=(1,), name="f.pth"), r"'layer.weight': size .* must be tuples of integers")
    rejected(tiny(tmp_path, size=(2,), stride=(1,), offset=-1, name="o.pth"), r"'layer.weight': storage offset -1")
    rejected(tiny(tmp_path, size=(-2,), stride=(1,), name="n.pth"), r"'layer.weight': negative size")


def test_total_size_is_capped(tmp_path):
    storages = {"0": Storage(np.zeros(256, dtype=np.float32))}
    state = {f"view{i}": Tensor("0", (256,), (1,)) for i in range(10)}  # ten copies of one storage
    path = write(tmp_path / "many.pth", state, storages)
    rejected(path, r"tensors total 10240 bytes, over the cap of 5000 bytes", max_total_bytes=5000)
    assert len(load_legacy_state_dict(str(path))) == 10


# ---------------------------------------------------------------------------------------------
# Storages: declared sizes against the file, types, keys


def test_truncated_storage(tmp_path):
    state, storages = from_arrays({"a": np.ones(8, np.float32), "b": np.ones((16, 4), np.float32)})
    data = checkpoint_bytes(state, storages)
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:-10])
    rejected(path, r"tensor 'b': storage '1001': file truncated, storage needs 256 bytes but 246 remain")
    path.write_bytes(data[:-256 - 4])  # cut inside the element count
    rejected(path, r"tensor 'b': storage '1001': file truncated before the storage's element count")


def test_storage_numel_larger_than_file(tmp_path):
    # declared in the persistent id (and the element count): refused before reading anything
    huge = tiny(tmp_path, size=(2,), stride=(1,), name="b.pth", numel=1 << 28)
    assert huge.stat().st_size < 1024
    rejected(huge, r"'layer.weight': storage '3' declares 268435456 elements \(1073741824 bytes\) "
                   r"but the whole file is \d+ bytes")
    # only the count before the bytes is wrong
    bad = tiny(tmp_path, size=(2,), stride=(1,), name="c.pth", file_numel=1 << 60)
    rejected(bad, r"'layer.weight': storage '3': file says 1152921504606846976 elements, the state dict says 4")


def test_storage_larger_than_what_is_left(tmp_path):
    # declared size below the file size, above what is left after the pickles
    path = tiny(tmp_path, size=(2,), stride=(1,), name="x.pth")
    n = path.stat().st_size // 4 - 8
    path = tiny(tmp_path, size=(2,), stride=(1,), name="y.pth", numel=n)
    rejected(path, rf"'layer.weight': storage '3': file truncated, storage needs {4 * n} bytes but 16 remain")


@pytest.mark.parametrize("module, type_name", [("torch", "ComplexFloatStorage"), ("torch", "QInt8Storage")])
def test_storage_type_not_allowed(tmp_path, module, type_name):
    path = tiny(tmp_path, size=(2,), stride=(1,), type_name=type_name, module=module)
    rejected(path, rf"tensor 'layer.weight': storage '3' has unsupported type {module}.{type_name}")


def test_storage_type_from_elsewhere_is_a_refused_global(tmp_path):
    path = tiny(tmp_path, size=(2,), stride=(1,), type_name="Storage", module="numpy")
    rejected(path, r"refusing to load global numpy.Storage", exc=UnsafeCheckpointError)


@pytest.mark.parametrize(
    "pid, match",
    [
        (("storage", Global("torch", "FloatStorage"), "3", "cpu", 4), r"unexpected persistent id"),
        (("blob", Global("torch", "FloatStorage"), "3", "cpu", 4, None), r"unexpected persistent id"),
        (("storage", "FloatStorage", "3", "cpu", 4, None), r"storage '3': type 'FloatStorage' is not a torch storage class"),
        (("storage", Global("torch", "FloatStorage"), 3, "cpu", 4, None), r"storage key 3 is not a string"),
        (("storage", Global("torch", "FloatStorage"), "3", "cpu", -4, None), r"storage '3': element count -4"),
        (("storage", Global("torch", "FloatStorage"), "3", "cpu", 4, ("3", 0, 4)), r"storage '3': storage views"),
    ],
)
def test_malformed_persistent_ids(tmp_path, pid, match):
    rejected(tiny(tmp_path, size=(2,), stride=(1,), pid=pid), match)


def test_storage_keys_must_match_the_key_list(tmp_path):
    state, storages = from_arrays({"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)})
    rejected(write(tmp_path / "k1.pth", state, storages, keys=["1000"]),
             r"tensor 'b': storage '1001' is missing from the storage list")
    storages["spare"] = Storage(np.ones(2, np.float32))
    rejected(write(tmp_path / "k2.pth", state, storages), r"storage 'spare' is listed but no tensor refers to it")
    del storages["spare"]
    rejected(write(tmp_path / "k3.pth", state, storages, keys=["1000", "1001", "1000"]), r"storage '1000' is listed twice")
    rejected(write(tmp_path / "k4.pth", state, storages, keys="10001001"), r"storage key list .* is not a list of strings")


def test_same_storage_declared_twice_differently(tmp_path):
    liar = Storage(np.ones(4, np.float32), pid=("storage", Global("torch", "FloatStorage"), "0", "cpu", 8, None))
    storages = {"0": Storage(np.ones(4, np.float32)), "0b": liar}
    state = {"a": Tensor("0", (2,), (1,)), "b": Tensor("0b", (2,), (1,))}
    path = write(tmp_path / "twice.pth", state, storages, keys=["0"])
    rejected(path, r"storage '0': declared as 4 x torch.FloatStorage and as 8 x torch.FloatStorage")


def test_duplicate_and_non_string_tensor_names(tmp_path):
    storages = {"0": Storage(np.ones(4, np.float32))}
    t = Tensor("0", (2,), (1,))
    dup = DupDict([("w", t), ("w", Tensor("0", (2,), (1,), offset=2))])
    rejected(write(tmp_path / "dup.pth", dup, storages), r"tensor 'w' appears twice in the state dict")
    # a plain dict cannot say which name came twice, but the lost tensor shows
    plain = DupDict([("w", t), ("w", Tensor("0", (2,), (1,), offset=2))], plain=True)
    rejected(write(tmp_path / "dup2.pth", plain, storages), r"some tensors are not in the state dict \(a repeated name\?\)")
    rejected(write(tmp_path / "int.pth", {7: t}, storages), r"tensor name 7 is not a string")
    rejected(write(tmp_path / "val.pth", {"w": 1.5}, storages, keys=[]), r"tensor 'w': is a float, not a tensor")
    rejected(write(tmp_path / "list.pth", [t], storages), r"checkpoint holds a list, not a state dict")


# ---------------------------------------------------------------------------------------------
# The pickles themselves: no code, no allocation bigger than the file


def test_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    state = {"w": Reduce(Global("os", "system"), (f"touch {marker}",))}
    path = write(tmp_path / "evil.pth", state, {}, keys=[])
    err = rejected(path, r"refusing to load global os.system", exc=UnsafeCheckpointError)
    assert isinstance(err, pickle.UnpicklingError) and isinstance(err, CheckpointError)
    assert not marker.exists()
    # in a header pickle too
    path.write_bytes(dumps(Reduce(Global("os", "system"), ("true",))))
    rejected(path, r"refusing to load global os.system", exc=UnsafeCheckpointError)


@pytest.mark.parametrize(
    "state_pickle, match",
    [
        (b"\x80\x02}r\xff\xff\xff\xff.", r"memo index 4294967295 .* out of sequence"),  # LONG_BINPUT: 32 GiB memo
        (b"\x80\x02\x8e" + struct.pack("<Q", 1 << 40) + b"x.", r"state dict is not a valid pickle"),  # BINBYTES8: 1 TiB
        (b"\x80\x02X" + struct.pack("<I", 0xFFFFFFF0) + b"x.", r"state dict is not a valid pickle"),  # BINUNICODE: 4 GiB
        (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"}.", r"frame of 1099511627776 bytes runs past"),
        (b"\x80\x02}", r"is not a valid pickle"),  # no STOP: runs into the key list, then out of file
    ],
)
def test_pickle_lengths_are_checked_before_unpickling(tmp_path, state_pickle, match):
    path = tmp_path / "p.pth"
    path.write_bytes(checkpoint_bytes(None, {}, keys=[], state_pickle=state_pickle))
    rejected(path, match)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(1).bytes(2000))
    rejected(path, r"random.pth")
    path.write_bytes(pickle.dumps(123, protocol=2))
    rejected(path, r"not a legacy PyTorch checkpoint")
    path.write_bytes(b"")
    rejected(path, r"magic number is not a valid pickle")


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite's state-dict check ("wrong dtype" and friends)


def _bn(prefix, n, dtype=np.float32):
    return {f"{prefix}.{p}": np.ones(n, dtype) for p in ("weight", "bias", "running_mean", "running_var")}


def tiny_lite(head=16):
    """The smallest state dict shaped like EfficientNet-Lite: stem 8, two blocks of 4, head ``head``."""
    sd = {"_conv_stem.weight": np.ones((8, 3, 3, 3), np.float32), **_bn("_bn0", 8)}
    sd.update({"_blocks.0._depthwise_conv.weight": np.ones((8, 1, 3, 3), np.float32), **_bn("_blocks.0._bn1", 8)})
    sd.update({"_blocks.0._project_conv.weight": np.ones((4, 8, 1, 1), np.float32), **_bn("_blocks.0._bn2", 4)})
    sd.update({"_blocks.1._expand_conv.weight": np.ones((8, 4, 1, 1), np.float32), **_bn("_blocks.1._bn0", 8)})
    sd.update({"_blocks.1._depthwise_conv.weight": np.ones((8, 1, 5, 5), np.float32), **_bn("_blocks.1._bn1", 8)})
    sd.update({"_blocks.1._project_conv.weight": np.ones((4, 8, 1, 1), np.float32), **_bn("_blocks.1._bn2", 4)})
    sd.update({"_conv_head.weight": np.ones((head, 4, 1, 1), np.float32), **_bn("_bn1", head)})
    sd.update({"_fc.weight": np.ones((10, head), np.float32), "_fc.bias": np.ones(10, np.float32)})
    sd["_bn0.num_batches_tracked"] = np.array(3, np.int64)  # not read by the builder: any dtype
    return sd


def test_check_state_dict_accepts_a_lite_state_dict():
    assert efficientnet_lite.check_state_dict(tiny_lite(), "x.pth", include_top=True) == 16
    sd = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tiny_lite().items()}
    assert efficientnet_lite.check_state_dict(sd, "x.pth") == 16


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda sd: sd.update({"_blocks.1._depthwise_conv.weight": np.ones((8, 1, 5, 5), np.int64)}),
         r"'_blocks.1._depthwise_conv.weight' has dtype int64, expected float16, float32 or float64"),
        (lambda sd: sd.update({"_bn1.running_var": np.ones(16, np.bool_)}), r"'_bn1.running_var' has dtype bool"),
        (lambda sd: sd.pop("_blocks.0._bn2.running_mean"), r"'_blocks.0._bn2.running_mean' is missing"),
        (lambda sd: sd.pop("_conv_head.weight"), r"'_conv_head.weight' is missing"),
        (lambda sd: sd.update({"_conv_stem.weight": np.ones((8, 27), np.float32)}),
         r"'_conv_stem.weight' has shape \(8, 27\)"),
        (lambda sd: sd.update({"_blocks.1._bn1.weight": np.ones(7, np.float32)}),
         r"'_blocks.1._bn1.weight' has 7 channels, expected 8"),
        (lambda sd: sd.update({"_blocks.1._expand_conv.weight": np.ones((8, 5, 1, 1), np.float32)}),
         r"'_blocks.1._expand_conv.weight' has shape \(8, 5, 1, 1\), expected 4 input channels"),
        (lambda sd: sd.update({"_blocks.3._project_conv.weight": np.ones((4, 8, 1, 1), np.float32)}),
         r"block indices are not contiguous: '_blocks.2.' is missing"),
        (lambda sd: sd.update({"_fc.weight": np.ones((10, 15), np.float32)}), r"'_fc.weight' has shape \(10, 15\)"),
        (lambda sd: sd.update({"_fc.bias": np.ones((10,), np.int32)}), r"'_fc.bias' has dtype int32"),
    ],
)
def test_check_state_dict_names_origin_and_key(change, match):
    sd = tiny_lite()
    change(sd)
    with pytest.raises(ValueError, match=match) as info:
        efficientnet_lite.check_state_dict(sd, "weights/x.pth", include_top=True)
    assert str(info.value).startswith("weights/x.pth: ")


def test_check_state_dict_needs_blocks():
    sd = {k: v for k, v in tiny_lite().items() if not k.startswith("_blocks")}
    with pytest.raises(ValueError, match=r"x.pth: not an EfficientNet-Lite checkpoint: no '_blocks.N.' keys"):
        efficientnet_lite.check_state_dict(sd, "x.pth")


def test_wrong_dtype_in_a_file_is_refused_by_build_and_check_weights(tmp_path):
    sd = tiny_lite()
    sd["_blocks.0._project_conv.weight"] = sd["_blocks.0._project_conv.weight"].astype(np.int64)  # a LongStorage
    path = write(tmp_path / "long.pth", *from_arrays(sd))
    assert load_legacy_state_dict(str(path))["_blocks.0._project_conv.weight"].dtype == np.int64  # the reader is fine
    match = rf"{path}: '_blocks.0._project_conv.weight' has dtype int64"
    with pytest.raises(ValueError, match=match):
        efficientnet_lite.build(str(path), 224)  # refused before any Keras layer
    with pytest.raises(ValueError, match=match):
        registry.get("efficientnet_lite0").check_weights(path)


def test_check_weights_wants_the_specs_feature_width(tmp_path):
    path = write(tmp_path / "narrow.pth", *from_arrays(tiny_lite(head=16)))
    match = rf"{path}: not usable weights for efficientnet_lite0: .* gives 16 features, expected 1280"
    with pytest.raises(ValueError, match=match):
        registry.get("efficientnet_lite0").check_weights(str(path))


# ---------------------------------------------------------------------------------------------
# The real checkpoint, and explicit weights files through ModelSpec.check_weights


@pytest.fixture(scope="module")
def lite0_path():
    return resolve_weights(registry.get("efficientnet_lite0"))


def test_real_checkpoint_still_loads_and_passes(lite0_path):
    sd = load_legacy_state_dict(str(lite0_path))
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_conv_stem.weight"].dtype == np.float32
    assert efficientnet_lite.check_state_dict(sd, str(lite0_path), include_top=True) == 1280
    registry.get("efficientnet_lite0").check_weights(lite0_path)
    wider = dataclasses.replace(registry.get("efficientnet_lite0"), feature_dim=1536)
    with pytest.raises(ValueError, match=rf"{lite0_path}: .* gives 1280 features, expected 1536"):
        wider.check_weights(lite0_path)
    err = rejected(lite0_path, r"over the cap of 100000 bytes", max_tensor_bytes=100_000)
    assert "tensor '" in str(err)


def test_real_checkpoint_rewritten_round_trips(tmp_path, lite0_path):
    sd = load_legacy_state_dict(str(lite0_path))
    path = write(tmp_path / "copy.pth", *from_arrays(sd))
    again = load_legacy_state_dict(str(path))
    assert list(again) == list(sd) and all(np.array_equal(again[k], sd[k]) for k in sd)


def test_check_weights_refuses_truncated_and_random_lite_files(tmp_path, lite0_path):
    spec = registry.get("efficientnet_lite0")
    cut = tmp_path / "cut.pth"
    with open(lite0_path, "rb") as src:
        cut.write_bytes(src.read(lite0_path.stat().st_size // 2))
    with pytest.raises(ValueError, match=rf"{cut}: tensor '.*': storage '.*': file truncated"):
        spec.check_weights(cut)
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(2).bytes(100_000))
    with pytest.raises(ValueError, match=rf"{noise}: "):
        spec.check_weights(noise)


def test_check_weights_refuses_a_non_hdf5_keras_file(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(np.random.default_rng(3).bytes(5000))
    with pytest.raises(ValueError, match=rf"{path}: not usable weights for MobileNetV2: "):
        registry.get("MobileNetV2").check_weights(path)


def test_check_weights_refuses_an_h5_whose_arrays_declare_more_than_the_model_holds(tmp_path):
    import tracemalloc

    import h5py

    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # 40 GB declared, a few KB on disk (chunked, compressed, never written)
        f.create_dataset("layer/kernel", shape=(100_000, 100_000), dtype="f4", chunks=(1000, 1000), compression="gzip")
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{path}: not usable weights for MobileNetV2: its arrays declare "
                                             r"40,000,000,000 bytes.*'layer/kernel'"):
            registry.get("MobileNetV2").check_weights(path)
        assert tracemalloc.get_traced_memory()[1] < 512 * 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_check_weights_keras_h5_garbage_and_valid(tmp_path):
    import h5py

    spec = registry.get("MobileNetV2")
    garbage = tmp_path / "garbage.h5"
    with h5py.File(garbage, "w") as f:
        f["x"] = np.arange(10)
    with pytest.raises(ValueError, match=rf"{garbage}: not usable weights for MobileNetV2: "):
        spec.check_weights(garbage)
    good = tmp_path / "w.weights.h5"
    spec.build(None).save_weights(good)
    spec.check_weights(good)
    with pytest.raises(ValueError, match=rf"{good}: not usable weights for VGG16: "):
        registry.get("VGG16").check_weights(good)


def test_specs_without_checker_accept_anything(tmp_path):
    spec = registry.ModelSpec(
        name="Custom", input_size=32, feature_dim=8, preprocess="m:f", builder="m:g",
        weights=registry.WeightsSource(filename="x"),
    )
    assert spec.checker is None
    spec.check_weights(tmp_path / "whatever")
    builtin = ["InceptionV3", "Xception", "ResNet50", "VGG16", "VGG19", "MobileNetV2", "EfficientNetB0"]
    assert all(registry.get(n).checker for n in builtin + [f"efficientnet_lite{i}" for i in range(3)])
